package rotation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/keystore"
)

func TestVerify(t *testing.T) {
	root := newTestCA(t, "root")
	// An intermediate under root signs the leaf: the chain must be followed.
	ik, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	itmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "intermediate"},
		NotBefore: t0.Add(-year), NotAfter: t0.Add(10 * year), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	ider, err := x509.CreateCertificate(rand.Reader, itmpl, root.cert, ik.Public(), root.key)
	if err != nil {
		t.Fatal(err)
	}
	icert, _ := x509.ParseCertificate(ider)
	inter := &testCA{key: ik, cert: icert}

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := t0
	good := inter.issue(t, key.Public(), now.Add(-time.Minute), now.Add(year), x509.ECDSAWithSHA256)

	leafWith := func(mod func(*x509.Certificate), pub any, signer *testCA) *x509.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(99), Subject: pkix.Name{CommonName: "d"}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(year)}
		mod(tmpl)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, signer.cert, pub, signer.key)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	rsaSmall, _ := rsa.GenerateKey(rand.Reader, 1024)

	tests := []struct {
		name  string
		chain []*x509.Certificate
		pub   any
		roots *x509.CertPool
		id    string
		want  string // "" for success
		is    error
	}{
		{"good, through an intermediate", []*x509.Certificate{good, icert}, key.Public(), root.pool(), certificateID(good), "", nil},
		{"good, no roots configured", []*x509.Certificate{good}, key.Public(), nil, "", "", nil},
		{"missing intermediate", []*x509.Certificate{good}, key.Public(), root.pool(), "", "does not chain", nil},
		{"empty", nil, key.Public(), nil, "", "no certificate", nil},
		{"RSA-1024 key", []*x509.Certificate{leafWith(func(*x509.Certificate) {}, &rsaSmall.PublicKey, root)}, &rsaSmall.PublicKey, root.pool(), "", "at least 2048 bits", keystore.ErrPolicy},
		{"server-only usage", []*x509.Certificate{leafWith(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }, key.Public(), root)}, key.Public(), root.pool(), "", "does not chain", nil},
		{"client usage", []*x509.Certificate{leafWith(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} }, key.Public(), root)}, key.Public(), root.pool(), "", "", nil},
		{"ID mismatch", []*x509.Certificate{good, icert}, key.Public(), root.pool(), strings.Repeat("0", 64), "SHA-256 is", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Verify(tt.chain, VerifyOptions{PublicKey: tt.pub, Roots: tt.roots, CertificateID: tt.id, Now: now})
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrBadCertificate) {
				t.Fatalf("Verify = %v; want ErrBadCertificate saying %q", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("Verify = %v; want it to wrap %v", err, tt.is)
			}
			if c, _ := Classify(err); c != Fatal {
				t.Errorf("classified %s, want fatal", c)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		err   error
		class Class
		hint  time.Duration
	}{
		{NewTransient("x", errors.New("throttled"), time.Minute), Transient, time.Minute},
		{NewFatal("x", errors.New("rejected")), Fatal, 0},
		{errors.Join(errors.New("wrapped"), ErrBadCertificate), Fatal, 0},
		{keystore.ErrPolicy, Fatal, 0},
		{ErrFatal, Fatal, 0},
		{netErr{}, Transient, 0},
		{errors.New("mystery"), Transient, 0},
		{errors.Join(errors.New("stop"), context.Canceled), Stopped, 0},
	}
	for _, tt := range tests {
		c, h := Classify(tt.err)
		if c != tt.class || h != tt.hint {
			t.Errorf("Classify(%v) = %s, %s; want %s, %s", tt.err, c, h, tt.class, tt.hint)
		}
	}
	e := NewTransient("CreateCertificateFromCsr", errors.New("rate exceeded"), 2*time.Second)
	if !errors.Is(e, ErrTransient) || errors.Is(e, ErrFatal) {
		t.Error("transient Error does not match its sentinel")
	}
}
