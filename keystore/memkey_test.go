package keystore_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/thingcert/thingcert/keystore"
)

// memKey is a software key for tests of code that only needs a keystore.Key.
type memKey struct {
	crypto.Signer
	alg keystore.Algorithm
}

func (k memKey) URI() string                   { return "file:/nonexistent/mem.pem" }
func (k memKey) Algorithm() keystore.Algorithm { return k.alg }

func newMemKey(t *testing.T, alg keystore.Algorithm) keystore.Key {
	t.Helper()
	var s crypto.Signer
	var err error
	if alg.IsRSA() {
		s, err = rsa.GenerateKey(rand.Reader, alg.RSABits())
	} else {
		s, err = ecdsa.GenerateKey(alg.Curve(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	return memKey{s, alg}
}
