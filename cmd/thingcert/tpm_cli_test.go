package main

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
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
			out, stderr, code := run(t, "key", "generate", "--key", uri, "--alg", alg)
			if code != 0 {
				t.Fatalf("key generate: exit %d: %s", code, stderr)
			}
			blk, _ := pem.Decode([]byte(out))
			if blk == nil || blk.Type != "PUBLIC KEY" {
				t.Fatalf("key generate printed no public key: %q", out)
			}
			pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}

			out, stderr, code = run(t, "key", "show", "--key", uri)
			if code != 0 {
				t.Fatalf("key show: exit %d: %s", code, stderr)
			}
			for _, want := range []string{"Backend:      tpm", "Hardware:     true", "fixedTPM:              true", "fixedParent:           true", "sensitiveDataOrigin:   true", "storage:               blob", "Algorithm:    " + alg} {
				if !strings.Contains(out, want) {
					t.Errorf("key show lacks %q:\n%s", want, out)
				}
			}

			out, stderr, code = run(t, "csr", "--key", uri, "--subject", "CN=dev")
			if code != 0 {
				t.Fatalf("csr: exit %d: %s", code, stderr)
			}
			testpeers.VerifyCSR(t, []byte(out))
			blk, _ = pem.Decode([]byte(out))
			csr, err := x509.ParseCertificateRequest(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if !csr.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
				t.Fatal("the CSR carries another public key than key generate printed")
			}

			if _, stderr, code = run(t, "key", "generate", "--key", uri, "--alg", alg); code == 0 || !strings.Contains(stderr, "already exists") {
				t.Errorf("a second generate at the same URI: exit %d: %s", code, stderr)
			}
			if _, stderr, code = run(t, "key", "delete", "--key", uri); code != 0 {
				t.Fatalf("key delete: exit %d: %s", code, stderr)
			}
		})
	}
}
