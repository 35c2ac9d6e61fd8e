package agent_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/thingcert/thingcert/keystore"
)

// keySource makes a device key for a test. Every connection test runs once per
// source, so a new backend is one row here.
type keySource struct {
	name string
	new  func(t *testing.T) keystore.Key
}

func keySources() []keySource {
	return []keySource{
		{"memory-ecdsa-p256", func(t *testing.T) keystore.Key { return newMemKey(t, keystore.ECDSAP256) }},
		{"memory-rsa-2048", func(t *testing.T) keystore.Key { return newMemKey(t, keystore.RSA2048) }},
	}
}

// memKey is a keystore.Key held in memory, for tests only.
type memKey struct {
	crypto.Signer
	alg keystore.Algorithm
}

func (k memKey) URI() string                   { return "file:/nonexistent/memory-" + string(k.alg) + ".pem" }
func (k memKey) Algorithm() keystore.Algorithm { return k.alg }

func newMemKey(t testing.TB, alg keystore.Algorithm) keystore.Key {
	t.Helper()
	var (
		s   crypto.Signer
		err error
	)
	if alg.IsRSA() {
		s, err = rsa.GenerateKey(rand.Reader, alg.RSABits())
	} else {
		s, err = ecdsa.GenerateKey(alg.Curve(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	return memKey{Signer: s, alg: alg}
}
