package main

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
)

func TestKeyGenerateRefusesDisallowedAlgorithms(t *testing.T) {
	dir := t.TempDir()
	for alg, rule := range map[string]string{
		"rsa-1024":   "at least 2048 bits",
		"ecdsa-p224": "only on NIST P-256, P-384 or P-521",
		"ed25519":    "EdDSA",
	} {
		_, stderr, code := run(t, "key", "generate", "--key", "file:"+dir+"/k.pem", "--alg", alg)
		if code == 0 || !strings.Contains(stderr, rule) || strings.Count(stderr, "\n") > 1 {
			t.Errorf("--alg %s: exit %d, stderr %q; want one line naming the rule %q", alg, code, stderr, rule)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "k.pem")); err == nil {
		t.Errorf("a refused generate left a key file")
	}
}

func TestKeyLifecycleAndCSR(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	uri := "file:" + dir + "/dev.pem"
	pub, _, code := run(t, "key", "generate", "--key", uri, "--alg", "ecdsa-p384")
	if code != 0 || !strings.HasPrefix(pub, "-----BEGIN PUBLIC KEY-----") {
		t.Fatalf("generate: exit %d, %q", code, pub)
	}
	if _, stderr, code := run(t, "key", "generate", "--key", uri); code == 0 || !strings.Contains(stderr, "already exists") {
		t.Errorf("second generate: exit %d %q, want already exists", code, stderr)
	}
	show, _, code := run(t, "key", "show", "--key", uri, "--json")
	if code != 0 || !strings.Contains(show, `"algorithm": "ecdsa-p384"`) || !strings.Contains(show, `"backend": "file"`) || !strings.Contains(show, strings.Split(pub, "\n")[1]) {
		t.Errorf("show --json: exit %d\n%s", code, show)
	}
	for _, sa := range []string{"", "ECDSA-WITH-SHA256", "ECDSA-WITH-SHA512"} {
		args := []string{"csr", "--key", uri, "--subject", "CN=dev-1,O=Acme"}
		if sa != "" {
			args = append(args, "--sig-alg", sa)
		}
		csr, stderr, code := run(t, args...)
		if code != 0 {
			t.Fatalf("csr %s: exit %d %s", sa, code, stderr)
		}
		testpeers.VerifyCSR(t, []byte(csr))
	}
	out := filepath.Join(t.TempDir(), "dev.csr")
	if _, _, code := run(t, "csr", "--key", uri, "--subject", "CN=dev-1", "--out", out); code != 0 {
		t.Fatal("csr --out failed")
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	testpeers.VerifyCSR(t, data)
	if _, stderr, code := run(t, "csr", "--key", uri, "--subject", "CN=x", "--sig-alg", "SHA256WITHRSA"); code == 0 || !strings.Contains(stderr, "cannot be made by a ecdsa-p384 key") {
		t.Errorf("RSA sig-alg for EC key: exit %d %q", code, stderr)
	}
	if _, _, code := run(t, "key", "delete", "--key", uri); code != 0 {
		t.Errorf("delete failed")
	}
	if _, stderr, code := run(t, "key", "show", "--key", uri); code == 0 || !strings.Contains(stderr, "not found") {
		t.Errorf("show after delete: exit %d %q", code, stderr)
	}
}

func TestKeyShowRefusesReadableFile(t *testing.T) {
	dir := t.TempDir()
	uri := "file:" + dir + "/k.pem"
	if _, _, code := run(t, "key", "generate", "--key", uri); code != 0 {
		t.Fatal("generate failed")
	}
	os.Chmod(filepath.Join(dir, "k.pem"), 0o644)
	_, stderr, code := run(t, "key", "show", "--key", uri)
	if code == 0 || !strings.Contains(stderr, "chmod 600 "+filepath.Join(dir, "k.pem")) {
		t.Errorf("0644 key: exit %d %q, want refusal with the chmod", code, stderr)
	}
}

func TestKeyImport(t *testing.T) {
	openssl := testpeers.Need(t, "openssl")[0]
	dir := t.TempDir()
	src := filepath.Join(dir, "aws.key")
	// AWS IoT's CreateKeysAndCertificate hands out PKCS#1 RSA keys.
	if out, err := execCommand(openssl, "genrsa", "-traditional", "-out", src, "2048"); err != nil {
		t.Fatalf("openssl genrsa: %v %s", err, out)
	}
	uri := "file:" + dir + "/keys/aws.pem"
	if _, stderr, code := run(t, "key", "import", "--key", uri, "--from", src); code != 0 {
		t.Fatalf("import: %s", stderr)
	}
	show, _, _ := run(t, "key", "show", "--key", uri, "--json")
	if !strings.Contains(show, `"algorithm": "`+string(keystore.RSA2048)+`"`) {
		t.Errorf("imported key: %s", show)
	}
	weak := filepath.Join(dir, "weak.key")
	execCommand(openssl, "genrsa", "-out", weak, "1024")
	if _, stderr, code := run(t, "key", "import", "--key", "file:"+dir+"/keys/weak.pem", "--from", weak); code == 0 || !strings.Contains(stderr, "at least 2048") {
		t.Errorf("weak import: exit %d %q", code, stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	_, stderr, code := run(t, "key", "generate")
	if code != 2 || !strings.Contains(stderr, "needs --key") {
		t.Errorf("missing flag: exit %d %q", code, stderr)
	}
	_, stderr, code = run(t, "csr", "--key", "file:/x/k.pem", "--bogus")
	if code != 2 || !strings.Contains(stderr, "--help") {
		t.Errorf("unknown flag: exit %d %q", code, stderr)
	}
}

// keyCLIFlow is the acceptance flow every key store passes through the CLI:
// generate (the public key is printed), show (checkShow reads what `key show`
// says of the key's protection), a CSR that `openssl req -verify` accepts and
// that carries the printed public key, a second generate at the same URI
// refused, delete, and show refusing the deleted key.
func keyCLIFlow(t *testing.T, uri, alg string, checkShow func(t *testing.T, out string)) {
	t.Helper()
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
	checkShow(t, out)
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
	if _, stderr, code = run(t, "key", "show", "--key", uri); code == 0 || !strings.Contains(stderr, "not found") {
		t.Errorf("key show after delete: exit %d: %s", code, stderr)
	}
}

func TestFileKeyGenerateShowCSR(t *testing.T) {
	for _, alg := range []string{"ecdsa-p256", "rsa-2048"} {
		t.Run(alg, func(t *testing.T) {
			uri := "file:" + filepath.Join(t.TempDir(), "keys", "dev.pem")
			keyCLIFlow(t, uri, alg, func(t *testing.T, out string) {
				got := showAttrs(out)
				for name, want := range map[string]string{"Algorithm": alg, "Backend": "file", "Hardware": "false", "mode": "0600"} {
					if got[name] != want {
						t.Errorf("key show: %s = %q, want %q\n%s", name, got[name], want, out)
					}
				}
			})
		})
	}
}
