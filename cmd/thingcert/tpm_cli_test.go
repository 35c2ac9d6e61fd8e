package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
)

// TestTPMKeyGenerateShowCSR: the acceptance flow against swtpm —
// generate a TPM key file, show its TPM attributes, make a CSR that
// `openssl req -verify` accepts, delete it.
func TestTPMKeyGenerateShowCSR(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	for _, alg := range []string{"ecdsa-p256", "rsa-2048"} {
		t.Run(alg, func(t *testing.T) {
			uri := "tpm:blob=" + filepath.Join(t.TempDir(), "dev.tpmkey") + "?device=" + sw.Device()
			keyCLIFlow(t, uri, alg, func(t *testing.T, out string) {
				for _, want := range []string{"Backend:      tpm", "Hardware:     true", "fixedTPM:              true", "fixedParent:           true", "sensitiveDataOrigin:   true", "storage:               blob", "Algorithm:    " + alg} {
					if !strings.Contains(out, want) {
						t.Errorf("key show lacks %q:\n%s", want, out)
					}
				}
			})
		})
	}
}
