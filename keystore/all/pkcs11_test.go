//go:build cgo

package all_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
	"github.com/thingcert/thingcert/keystore/pkcs11store"
)

// TestOpenDispatchesPKCS11: pkcs11: URIs reach the PKCS#11 store, from a
// store URI and from a key URI (whose store is the same URI without object
// and id).
func TestOpenDispatchesPKCS11(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	ctx := context.Background()
	s, err := keystore.Open(ctx, h.StoreURI(), keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, ok := s.(*pkcs11store.Store); !ok {
		t.Fatalf("keystore.Open(pkcs11:...) = %T, want *pkcs11store.Store", s)
	}
	uri, err := s.KeyURI("dispatch")
	if err != nil {
		t.Fatal(err)
	}
	made, err := s.Generate(ctx, uri, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}

	ks, k, err := keystore.OpenKey(ctx, h.KeyURI("dispatch"), keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	if k.URI() != made.URI() {
		t.Errorf("OpenKey found %s, want %s", k.URI(), made.URI())
	}
	d := sha256.Sum256([]byte("dispatch"))
	sig, err := k.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(made.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature does not verify")
	}
}
