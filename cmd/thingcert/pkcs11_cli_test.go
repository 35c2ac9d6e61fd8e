package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
)

// showAttrs reads the "name: value" lines of `key show`.
func showAttrs(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if name, value, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			m[name] = strings.TrimSpace(value)
		}
	}
	return m
}

// TestPKCS11KeyGenerateShowCSR: the acceptance flow against SoftHSM2,
// with the issue's own URI form (pin-source as a plain path) — generate a key
// in the token, show its PKCS#11 protection, make a CSR that `openssl req
// -verify` accepts, refuse a second generate, delete it.
func TestPKCS11KeyGenerateShowCSR(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{Label: "T"})
	for _, alg := range []string{"ecdsa-p256", "rsa-2048"} {
		t.Run(alg, func(t *testing.T) {
			object := "dev-" + alg
			uri := "pkcs11:token=T;object=" + object + "?module-path=" + h.Module + "&pin-source=" + h.PINFile
			keyCLIFlow(t, uri, alg, func(t *testing.T, out string) {
				got := showAttrs(out)
				for name, want := range map[string]string{
					"Algorithm": alg, "Backend": "pkcs11", "Hardware": "true",
					"sensitive": "true", "extractable": "false", "local": "true",
					"always-sensitive": "true", "never-extractable": "true", "private": "true",
					"token": "T", "token-model": "SoftHSM project SoftHSM v2", "token-serial": h.Serial,
				} {
					if got[name] != want {
						t.Errorf("key show: %s = %q, want %q\n%s", name, got[name], want, out)
					}
				}
				if !strings.Contains(got["URI"], ";object="+object+";id=%") {
					t.Errorf("key show: URI %q lacks the key's label and id", got["URI"])
				}
			})
		})
	}
}

// A PIN given inline works, draws a warning, and is printed nowhere; a PIN
// file others can read is refused with the chmod that fixes it.
func TestPKCS11PINRules(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{Label: "T"})
	uri := "pkcs11:token=T;object=inline?module-path=" + h.Module + "&pin-value=" + h.PIN
	for _, args := range [][]string{
		{"key", "generate", "--key", uri},
		{"key", "show", "--key", uri},
		{"csr", "--key", uri, "--subject", "CN=inline"},
		{"key", "delete", "--key", uri},
	} {
		out, stderr, code := run(t, args...)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", strings.Join(args[:2], " "), code, stderr)
		}
		if strings.Contains(out, h.PIN) || strings.Contains(stderr, h.PIN) {
			t.Errorf("%s printed the PIN:\n%s\n%s", strings.Join(args[:2], " "), out, stderr)
		}
		if !strings.Contains(stderr, "pin-value") {
			t.Errorf("%s gave no warning about pin-value: %q", strings.Join(args[:2], " "), stderr)
		}
	}
	if err := os.Chmod(h.PINFile, 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := run(t, "key", "generate", "--key", h.KeyURI("dev"))
	if code == 0 || !strings.Contains(stderr, "chmod 600 "+h.PINFile) {
		t.Errorf("a world-readable PIN file: exit %d: %s; want a refusal with the chmod that fixes it", code, stderr)
	}
}

// A thingcert built without cgo still builds, and says why a pkcs11: URI
// cannot work.
func TestPKCS11WithoutCgo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds thingcert without cgo")
	}
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		testpeers.Missing(t, "no go command next to this test's toolchain: "+err.Error())
	}
	bin := filepath.Join(t.TempDir(), "thingcert-nocgo")
	build := exec.Command(goTool, "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build ./cmd/thingcert: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "key", "show", "--key", "pkcs11:token=T;object=dev?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/thingcert/pin")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("key show with a pkcs11: URI in a cgo-less build: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "thingcert: ") || !strings.Contains(string(out), "built without cgo") || !strings.Contains(string(out), "PKCS#11 needs cgo") {
		t.Fatalf("the cgo-less build says %q; want one line saying it was built without cgo and PKCS#11 needs it", out)
	}
}
