//go:build !cgo

package pkcs11store

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/keystore"
)

// TestOpenWithoutCgo runs in CGO_ENABLED=0 builds (TestBuiltWithoutCgo runs it
// from a normal build).
func TestOpenWithoutCgo(t *testing.T) {
	_, err := Open(context.Background(), "pkcs11:token=T;object=dev?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=12345678", keystore.Options{})
	if !errors.Is(err, keystore.ErrUnsupported) || !strings.Contains(err.Error(), "built without cgo") || !strings.Contains(err.Error(), "PKCS#11 needs cgo") {
		t.Fatalf("Open without cgo: %v; want ErrUnsupported saying the binary was built without cgo and PKCS#11 needs it", err)
	}
	if strings.Contains(err.Error(), "12345678") {
		t.Fatalf("the error carries the PIN: %v", err)
	}
}
