package filestore_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/filestore"
)

// FuzzParsePrivateKeyPEM: what key import reads (a key made elsewhere, such
// as CreateKeysAndCertificate's). It never panics; a key it accepts passes
// the algorithm policy, signs what its public key verifies, and survives a
// PKCS#8 round trip unchanged.
func FuzzParsePrivateKeyPEM(f *testing.F) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p8, _ := x509.MarshalPKCS8PrivateKey(ec)
	sec1, _ := x509.MarshalECPrivateKey(ec)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ed := ed25519.NewKeyFromSeed(make([]byte, 32))
	edp8, _ := x509.MarshalPKCS8PrivateKey(ed)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p224der, _ := x509.MarshalECPrivateKey(p224)
	for _, b := range [][]byte{
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}),
		append([]byte("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})...),
		pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)}),
		pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: []byte{1}}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: edp8}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: p224der}),
		[]byte("not a key"),
	} {
		f.Add(b)
	}
	digest := sha256.Sum256([]byte("thingcert"))
	f.Fuzz(func(t *testing.T, data []byte) {
		priv, err := filestore.ParsePrivateKeyPEM(data)
		if err != nil {
			return
		}
		if _, err := keystore.AlgorithmOf(priv.Public()); err != nil {
			t.Fatalf("accepted a key the policy refuses: %v", err)
		}
		sig, err := priv.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("an accepted key cannot sign: %v", err)
		}
		switch pub := priv.Public().(type) {
		case *ecdsa.PublicKey:
			if !ecdsa.VerifyASN1(pub, digest[:], sig) {
				t.Fatal("signature does not verify with the key's public key")
			}
		case *rsa.PublicKey:
			if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
				t.Fatalf("signature does not verify: %v", err)
			}
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			t.Fatalf("an accepted key does not encode as PKCS#8: %v", err)
		}
		again, err := filestore.ParsePrivateKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		if err != nil {
			t.Fatalf("its PKCS#8 form is refused: %v", err)
		}
		a, _ := x509.MarshalPKIXPublicKey(priv.Public())
		b, _ := x509.MarshalPKIXPublicKey(again.Public())
		if !bytes.Equal(a, b) {
			t.Fatal("the PKCS#8 round trip changed the key")
		}
	})
}
