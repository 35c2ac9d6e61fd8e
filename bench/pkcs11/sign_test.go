package pkcs11bench

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"slices"
	"testing"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/pkcs11store"
)

func BenchmarkSign(b *testing.B) {
	ctx := context.Background()
	h := testpeers.StartSoftHSM(b, testpeers.SoftHSMOptions{})
	st, err := pkcs11store.Open(ctx, h.StoreURI(), keystore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	bare, err := crypto11.Configure(&crypto11.Config{Path: h.Module, TokenLabel: h.Label, Pin: h.PIN})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bare.Close() })
	digest := sha256.Sum256([]byte("benchmark"))

	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		name := "bench-" + string(alg)
		uri, err := st.KeyURI(name)
		if err != nil {
			b.Fatal(err)
		}
		key, err := st.Generate(ctx, uri, alg)
		if err != nil {
			b.Fatal(err)
		}
		// The same key, found by crypto11 alone in its own context.
		c11, err := bare.FindKeyPair([]byte(name), []byte(name))
		if err != nil {
			b.Fatal(err)
		}
		if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c11.Public()) {
			b.Fatal("crypto11 found another key")
		}
		signers := []struct {
			name string
			s    crypto.Signer
		}{{"crypto11", c11}, {"thingcert", key}}
		for _, s := range signers {
			b.Run(string(alg)+"/"+s.name, func(b *testing.B) {
				for b.Loop() {
					if _, err := s.s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		b.Run(string(alg)+"/interleaved", func(b *testing.B) {
			var spent [2]time.Duration
			ratios := make([]float64, 0, b.N)
			for i := 0; i < b.N; i++ {
				var pair [2]time.Duration
				for j := range signers {
					// Alternate which goes first, so neither always
					// follows the other.
					k := (i + j) % 2
					start := time.Now()
					if _, err := signers[k].s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
						b.Fatal(err)
					}
					pair[k] = time.Since(start)
					spent[k] += pair[k]
				}
				ratios = append(ratios, float64(pair[1])/float64(pair[0]))
			}
			bareNs := float64(spent[0].Nanoseconds()) / float64(b.N)
			oursNs := float64(spent[1].Nanoseconds()) / float64(b.N)
			b.ReportMetric(bareNs, "crypto11-ns/sign")
			b.ReportMetric(oursNs, "thingcert-ns/sign")
			b.ReportMetric(oursNs/bareNs, "ratio")
			// The median of the call-by-call ratios shrugs off the bursts
			// of other work on a shared machine.
			slices.Sort(ratios)
			b.ReportMetric(ratios[len(ratios)/2], "median-ratio")
		})
	}
}
