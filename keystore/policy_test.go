package keystore_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
)

func TestParseAlgorithm(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    keystore.Algorithm
		errPart string
	}{
		{"", keystore.ECDSAP256, ""},
		{"ecdsa-p256", keystore.ECDSAP256, ""},
		{"ECDSA-P384", keystore.ECDSAP384, ""},
		{"ecdsa-p521", keystore.ECDSAP521, ""},
		{"rsa-2048", keystore.RSA2048, ""},
		{"rsa-3072", keystore.RSA3072, ""},
		{"rsa-4096", keystore.RSA4096, ""},
		{"rsa-1024", "", "at least 2048 bits (asked for 1024)"},
		{"rsa-512", "", "at least 2048 bits"},
		{"rsa-8192", "", "2048, 3072 or 4096"},
		{"ecdsa-p224", "", "only on NIST P-256, P-384 or P-521"},
		{"secp256k1", "", "only on NIST P-256, P-384 or P-521"},
		{"ed25519", "", "does not accept EdDSA"},
		{"rsa-pss", "", "TLS 1.3"},
		{"dsa", "", "allowed: ecdsa-p256"},
	} {
		got, err := keystore.ParseAlgorithm(c.in)
		if c.errPart == "" {
			if err != nil || got != c.want {
				t.Errorf("ParseAlgorithm(%q) = %v, %v; want %v", c.in, got, err, c.want)
			}
			continue
		}
		if !errors.Is(err, keystore.ErrPolicy) || !strings.Contains(err.Error(), c.errPart) {
			t.Errorf("ParseAlgorithm(%q) error = %v; want ErrPolicy saying %q", c.in, err, c.errPart)
		}
	}
}

func TestAlgorithmOf(t *testing.T) {
	r1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	r2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if a, err := keystore.AlgorithmOf(r2048.Public()); a != keystore.RSA2048 || err != nil {
		t.Errorf("RSA-2048: %v %v", a, err)
	}
	if a, err := keystore.AlgorithmOf(p521.Public()); a != keystore.ECDSAP521 || err != nil {
		t.Errorf("P-521: %v %v", a, err)
	}
	for name, pub := range map[string]any{"rsa-1024": r1024.Public(), "p-224": p224.Public()} {
		if _, err := keystore.AlgorithmOf(pub); !errors.Is(err, keystore.ErrPolicy) {
			t.Errorf("%s: %v, want ErrPolicy", name, err)
		}
	}
}

func TestSignatureAlgorithms(t *testing.T) {
	if _, err := keystore.ParseSignatureAlgorithm("md5WithRSA"); !errors.Is(err, keystore.ErrPolicy) {
		t.Errorf("md5WithRSA accepted: %v", err)
	}
	sa, err := keystore.ParseSignatureAlgorithm("sha256withrsaandmgf1")
	if err != nil || sa != keystore.SHA256WithRSAPSS || sa.X509() != x509.SHA256WithRSAPSS {
		t.Errorf("PSS name: %v %v", sa, err)
	}
	if err := keystore.CheckSignatureAlgorithmForKey(keystore.SHA256WithRSA, keystore.ECDSAP256); !errors.Is(err, keystore.ErrPolicy) {
		t.Errorf("RSA signature for an EC key accepted: %v", err)
	}
	if err := keystore.CheckSignatureAlgorithmForKey(keystore.DSAWithSHA256, keystore.RSA2048); !errors.Is(err, keystore.ErrPolicy) {
		t.Errorf("DSA signature for a device key accepted: %v", err)
	}
	for alg, want := range map[keystore.Algorithm]keystore.SignatureAlgorithm{
		keystore.ECDSAP256: keystore.ECDSAWithSHA256, keystore.ECDSAP384: keystore.ECDSAWithSHA384,
		keystore.ECDSAP521: keystore.ECDSAWithSHA512, keystore.RSA3072: keystore.SHA256WithRSA,
	} {
		if got := keystore.DefaultSignatureAlgorithm(alg); got != want {
			t.Errorf("default for %s = %s, want %s", alg, got, want)
		}
	}
}

func TestCheckCertificate(t *testing.T) {
	ca, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	mk := func(pub any, sa x509.SignatureAlgorithm, signer any) *x509.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "dev"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), SignatureAlgorithm: sa}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	dev, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err := keystore.CheckCertificate(mk(dev.Public(), x509.ECDSAWithSHA384, ca)); err != nil {
		t.Errorf("good certificate refused: %v", err)
	}
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	if err := keystore.CheckCertificate(mk(weak.Public(), x509.ECDSAWithSHA256, ca)); !errors.Is(err, keystore.ErrPolicy) {
		t.Errorf("RSA-1024 certificate accepted: %v", err)
	}
	rca, _ := rsa.GenerateKey(rand.Reader, 2048)
	if err := keystore.CheckCertificate(mk(dev.Public(), x509.SHA1WithRSA, rca)); !errors.Is(err, keystore.ErrPolicy) {
		t.Errorf("SHA1WithRSA certificate accepted: %v", err)
	}
}

// An RSA-PSS public key (id-RSASSA-PSS) is refused with the TLS explanation; the
// CSR is made by openssl, since Go cannot make one.
func TestCheckCSRRefusesPSSKey(t *testing.T) {
	openssl := testpeers.Need(t, "openssl")[0]
	dir := t.TempDir()
	key := filepath.Join(dir, "pss.key")
	csr := filepath.Join(dir, "pss.csr")
	if out, err := exec.Command(openssl, "genpkey", "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key).CombinedOutput(); err != nil {
		t.Fatalf("openssl genpkey: %v\n%s", err, out)
	}
	if out, err := exec.Command(openssl, "req", "-new", "-key", key, "-subj", "/CN=pss", "-out", csr).CombinedOutput(); err != nil {
		t.Fatalf("openssl req: %v\n%s", err, out)
	}
	data, _ := os.ReadFile(csr)
	b, _ := pem.Decode(data)
	req, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	err = keystore.CheckCSR(req)
	if !errors.Is(err, keystore.ErrPolicy) || !strings.Contains(err.Error(), "TLS 1.3") || !strings.Contains(err.Error(), "Go's TLS") {
		t.Fatalf("CheckCSR(RSA-PSS key) = %v; want ErrPolicy explaining TLS 1.3 and Go", err)
	}
}

// A CSR from openssl with an ordinary key passes the policy, and a P-224 one fails.
func TestCheckCSRFromOpenSSL(t *testing.T) {
	openssl := testpeers.Need(t, "openssl")[0]
	for curve, ok := range map[string]bool{"prime256v1": true, "secp384r1": true, "secp224r1": false} {
		dir := t.TempDir()
		key, csr := filepath.Join(dir, "k"), filepath.Join(dir, "c")
		if out, err := exec.Command(openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:"+curve, "-nodes", "-keyout", key, "-subj", "/CN=x", "-out", csr).CombinedOutput(); err != nil {
			t.Fatalf("openssl: %v\n%s", err, out)
		}
		data, _ := os.ReadFile(csr)
		b, _ := pem.Decode(data)
		req, err := x509.ParseCertificateRequest(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if err := keystore.CheckCSR(req); (err == nil) != ok {
			t.Errorf("%s: CheckCSR = %v, want ok=%t", curve, err, ok)
		}
	}
}
