//go:build cgo

package testpeers

import (
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// softHSMIdle fails when this process still has the module initialized: a
// store left open by an earlier test, which would pin that test's token store
// (SoftHSM reads SOFTHSM2_CONF only in C_Initialize).
func softHSMIdle(module string) error {
	p := pkcs11.New(module)
	if p == nil {
		return fmt.Errorf("cannot load the PKCS#11 module %s", module)
	}
	defer p.Destroy()
	err := p.Initialize()
	if err == nil {
		return p.Finalize()
	}
	var pe pkcs11.Error
	if errors.As(err, &pe) && pe == pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
		return fmt.Errorf("the PKCS#11 module %s is still initialized in this process: a store was left open (close every store in t.Cleanup)", module)
	}
	return fmt.Errorf("initializing %s: %w", module, err)
}
