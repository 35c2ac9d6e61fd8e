package device_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
)

// The main line with the device's keys in SoftHSM2 (the claim key in the same
// token) and in swtpm (the claim key in a file), each rotation in a new
// "process", as `thingcert rotate` runs.

func TestProvisionRotateRotateAgainSoftHSM(t *testing.T) {
	testpeers.Need(t, "softhsm2-util", "pkcs11-tool")
	testpeers.NeedFile(t, testpeers.SoftHSMModule, "the SoftHSM2 PKCS#11 module")
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	mainLine(t, func(t *testing.T, dir string) (keystore.Store, keystore.Store) {
		s, err := keystore.Open(context.Background(), h.StoreURI(), keystore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return s, s
	}, true)
}

func TestProvisionRotateRotateAgainTPM(t *testing.T) {
	tpm := testpeers.StartSWTPM(t)
	mainLine(t, func(t *testing.T, dir string) (keystore.Store, keystore.Store) {
		keys := filepath.Join(dir, "keys")
		if err := os.MkdirAll(keys, 0o700); err != nil {
			t.Fatal(err)
		}
		s, err := keystore.Open(context.Background(), "tpm:blob-dir="+keys+"?device="+tpm.Device(), keystore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		_, c := fileStores(t, dir)
		return s, c
	}, true)
}
