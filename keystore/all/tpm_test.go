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
	"github.com/thingcert/thingcert/keystore/tpmstore"
)

// TestOpenDispatchesTPM: tpm: URIs reach the TPM store, from a store URI and
// from a key URI.
func TestOpenDispatchesTPM(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	ctx := context.Background()
	s, err := keystore.Open(ctx, "tpm:blob-dir="+t.TempDir()+"?device="+sw.Device(), keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.(*tpmstore.Store); !ok {
		t.Fatalf("keystore.Open(tpm:...) = %T, want *tpmstore.Store", s)
	}
	uri, err := s.KeyURI("dispatch")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Generate(ctx, uri, keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	s.Close() // swtpm takes one connection at a time

	s, k, err := keystore.OpenKey(ctx, uri, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	digest := sha256.Sum256([]byte("dispatch"))
	sig, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatal("signature does not verify")
	}
}
