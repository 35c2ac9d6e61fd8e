package testpeers

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// VerifyCSR runs `openssl req -verify` on a PEM CSR and fails the test if openssl
// does not accept its signature.
func VerifyCSR(t testing.TB, csrPEM []byte) {
	t.Helper()
	openssl := Need(t, "openssl")[0]
	path := filepath.Join(t.TempDir(), "req.csr")
	if err := os.WriteFile(path, csrPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(openssl, "req", "-in", path, "-noout", "-verify").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl req -verify refused the CSR: %v\n%s", err, out)
	}
}
