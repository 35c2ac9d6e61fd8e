// Package filestore_bench measures what Sign through a file-backed keystore.Key
// costs beside the crypto/ecdsa or crypto/rsa call it wraps. Run with
// bench/ratio.sh (see bench/README.md).
package filestore_bench

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/filestore"
)

func BenchmarkSign(b *testing.B) {
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		s, err := filestore.Open(context.Background(), "file:"+b.TempDir()+"/", keystore.Options{})
		if err != nil {
			b.Fatal(err)
		}
		uri, _ := s.KeyURI("bench")
		if _, err := s.Generate(context.Background(), uri, alg); err != nil {
			b.Fatal(err)
		}
		key, err := s.Open(context.Background(), uri)
		if err != nil {
			b.Fatal(err)
		}
		// The raw signer is the very key the file holds, read the same way.
		raw, err := filestore.ReadKeyFile(s.Dir() + "/bench.pem")
		if err != nil {
			b.Fatal(err)
		}
		digest := sha256.Sum256([]byte("thingcert"))
		for _, c := range []struct {
			name   string
			signer crypto.Signer
		}{{"raw", raw}, {"thingcert", key}} {
			b.Run(string(alg)+"/"+c.name, func(b *testing.B) {
				for b.Loop() {
					if _, err := c.signer.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
