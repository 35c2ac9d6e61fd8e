package iot_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
)

// keySource is where a test's device keys live. Every connection test runs
// once per source, so a new backend is one row in keySources: a store URI
// made for the test (one token, one TPM per test: swtpm serves one connection
// at a time, so all of a test's keys come from the one store opened here).
type keySource struct {
	name     string
	alg      keystore.Algorithm
	storeURI func(t *testing.T) string
}

func keySources() []keySource {
	file := func(t *testing.T) string { return "file:" + t.TempDir() + "/keys/" }
	softhsm := func(t *testing.T) string { return testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{}).StoreURI() }
	swtpm := func(t *testing.T) string {
		return "tpm:blob-dir=" + t.TempDir() + "?device=" + testpeers.StartSWTPM(t).Device()
	}
	return []keySource{
		{"file-ecdsa-p256", keystore.ECDSAP256, file},
		{"file-rsa-2048", keystore.RSA2048, file},
		{"pkcs11-ecdsa-p256", keystore.ECDSAP256, softhsm},
		{"pkcs11-rsa-2048", keystore.RSA2048, softhsm},
		{"tpm-ecdsa-p256", keystore.ECDSAP256, swtpm},
		{"tpm-rsa-2048", keystore.RSA2048, swtpm},
	}
}

// keys opens the source's store for this test and returns a function making
// keys named in it.
func (ks keySource) keys(t *testing.T) func(name string) keystore.Key {
	t.Helper()
	ctx := context.Background()
	s, err := keystore.Open(ctx, ks.storeURI(t), keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return func(name string) keystore.Key {
		t.Helper()
		uri, err := s.KeyURI(name)
		if err != nil {
			t.Fatal(err)
		}
		k, err := s.Generate(ctx, uri, ks.alg)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
}

// memKey is a keystore.Key held in memory, for tests that need any key.
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
