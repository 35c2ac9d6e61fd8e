package agent_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/backends"
)

// keySource makes a device key for a test. Every connection test runs once per
// source, so a new backend is one row here.
type keySource struct {
	name string
	new  func(t *testing.T) keystore.Key
}

func keySources() []keySource {
	return []keySource{
		{"file-ecdsa-p256", func(t *testing.T) keystore.Key {
			return newStoreKey(t, "file:"+t.TempDir()+"/keys/device.pem", keystore.ECDSAP256)
		}},
		{"file-rsa-2048", func(t *testing.T) keystore.Key {
			return newStoreKey(t, "file:"+t.TempDir()+"/keys/device.pem", keystore.RSA2048)
		}},
	}
}

// newStoreKey makes a key in the store uri names and opens it again the way
// the CLI does, through backends.OpenKey.
func newStoreKey(t *testing.T, uri string, alg keystore.Algorithm) keystore.Key {
	t.Helper()
	ctx := context.Background()
	s, err := backends.Open(ctx, uri, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Generate(ctx, uri, alg); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, k, err := backends.OpenKey(ctx, uri, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return k
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
