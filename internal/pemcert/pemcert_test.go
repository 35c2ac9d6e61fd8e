package pemcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var data []byte
	for i := 1; i <= 2; i++ {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i)), Subject: pkix.Name{CommonName: "c"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 1, 0}})...)
	}
	certs, err := Parse(data)
	if err != nil || len(certs) != 2 || certs[1].SerialNumber.Int64() != 2 {
		t.Fatalf("Parse: %d certificates, %v", len(certs), err)
	}
	if HasPrivateKey(data) {
		t.Errorf("HasPrivateKey on certificates only")
	}
	der, _ := x509.MarshalECPrivateKey(key)
	withKey := append(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), data...)
	if !HasPrivateKey(withKey) {
		t.Errorf("HasPrivateKey missed an EC PRIVATE KEY")
	}
	if _, err := Parse(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})); !errors.Is(err, ErrNone) {
		t.Errorf("a key alone: %v, want ErrNone", err)
	}
	bad := append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}})...)
	if _, err := Parse(bad); err == nil || err.Error()[:13] != "certificate 3" {
		t.Errorf("a broken third certificate: %v", err)
	}
}
