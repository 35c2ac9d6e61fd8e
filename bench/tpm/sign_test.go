// Package tpm_bench measures Sign through a TPM-backed keystore.Key beside one
// raw go-tpm tpm2.Sign on the same loaded key, against swtpm, and counts the
// TPM commands each Sign sends. Run with
//
//	go test -run '^$' -bench . -count 5 ./bench/tpm/
//
// or bench/ratio.sh ./bench/tpm 5 for the ratios of the raw and thingcert
// cases. The paired cases alternate the two within one run and report their
// median times, their ratio and the TPM commands per Sign of each: read those
// on a busy machine.
package tpm_bench

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/tpmstore"
)

// counter counts every command that reaches the TPM, retries included.
type counter struct {
	transport.TPMCloser
	n atomic.Int64
}

func (c *counter) Send(cmd []byte) ([]byte, error) {
	c.n.Add(1)
	return c.TPMCloser.Send(cmd)
}

func BenchmarkSign(b *testing.B) {
	ctx := context.Background()
	sw := testpeers.StartSWTPM(b)
	raw, err := tpmstore.OpenTransport(ctx, sw.Device())
	if err != nil {
		b.Fatal(err)
	}
	ct := &counter{TPMCloser: raw}
	dev := tpmstore.NewDevice(sw.Device(), ct)
	defer dev.Close()
	s, err := tpmstore.NewStore(ctx, dev, "tpm:blob-dir="+b.TempDir()+"?device="+sw.Device(), keystore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()

	digest := sha256.Sum256([]byte("thingcert"))
	pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	cases := []struct {
		name   string
		alg    keystore.Algorithm
		opts   crypto.SignerOpts
		scheme tpm2.TPMAlgID
	}{
		{"ecdsa-p256", keystore.ECDSAP256, crypto.SHA256, tpm2.TPMAlgECDSA},
		{"rsa-2048-pkcs1", keystore.RSA2048, crypto.SHA256, tpm2.TPMAlgRSASSA},
		{"rsa-2048-pss", keystore.RSA2048, pss, tpm2.TPMAlgRSAPSS},
	}
	keys := map[keystore.Algorithm]keystore.Key{}
	for _, c := range cases {
		key := keys[c.alg]
		if key == nil {
			uri, _ := s.KeyURI("bench-" + string(c.alg))
			if key, err = s.Generate(ctx, uri, c.alg); err != nil {
				b.Fatal(err)
			}
			keys[c.alg] = key
		}
		// Warm up: the TPM tests an algorithm the first time it is used
		// (swtpm answers TPM_RC_RETRY once), which the raw call would not retry.
		if _, err := key.Sign(rand.Reader, digest[:], c.opts); err != nil {
			b.Fatal(err)
		}
		// The raw reference: one TPM2_Sign, marshalled and parsed by go-tpm, on
		// the handle thingcert loaded, straight to the transport; no DER
		// encoding, no locking, no PSS check.
		handle := key.(*tpmstore.Key).Handle()
		var name tpm2.TPM2BName
		if err := dev.Run(ctx, func(t transport.TPM) error {
			rp, err := tpm2.ReadPublic{ObjectHandle: handle}.Execute(t)
			if err == nil {
				name = rp.Name
			}
			return err
		}); err != nil {
			b.Fatal(err)
		}
		rawSign := tpm2.Sign{
			KeyHandle:  tpm2.AuthHandle{Handle: handle, Name: name, Auth: tpm2.PasswordAuth(nil)},
			Digest:     tpm2.TPM2BDigest{Buffer: digest[:]},
			InScheme:   tpm2.TPMTSigScheme{Scheme: c.scheme, Details: tpm2.NewTPMUSigScheme(c.scheme, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}
		b.Run(c.name+"/raw", func(b *testing.B) {
			start := ct.n.Load()
			for b.Loop() {
				if _, err := rawSign.Execute(ct); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(ct.n.Load()-start)/float64(b.N), "tpm-cmds/op")
		})
		b.Run(c.name+"/thingcert", func(b *testing.B) {
			start := ct.n.Load()
			for b.Loop() {
				if _, err := key.Sign(rand.Reader, digest[:], c.opts); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(ct.n.Load()-start)/float64(b.N), "tpm-cmds/op")
		})
		// paired alternates one raw and one thingcert Sign per iteration and
		// reports the medians, so a busy shared machine slows both alike.
		b.Run(c.name+"/paired", func(b *testing.B) {
			var rawNs, tcNs []float64
			var rawCmds, tcCmds int64
			i := 0
			for b.Loop() {
				sign := func(thingcert bool) {
					n0, t0 := ct.n.Load(), time.Now()
					var err error
					if thingcert {
						_, err = key.Sign(rand.Reader, digest[:], c.opts)
					} else {
						_, err = rawSign.Execute(ct)
					}
					d, n := float64(time.Since(t0).Nanoseconds()), ct.n.Load()-n0
					if err != nil {
						b.Fatal(err)
					}
					if thingcert {
						tcNs, tcCmds = append(tcNs, d), tcCmds+n
					} else {
						rawNs, rawCmds = append(rawNs, d), rawCmds+n
					}
				}
				// Alternate the order so neither side always follows the other.
				sign(i%2 == 1)
				sign(i%2 == 0)
				i++
			}
			r, m := median(rawNs), median(tcNs)
			b.ReportMetric(r, "raw-ns/sign")
			b.ReportMetric(m, "thingcert-ns/sign")
			b.ReportMetric(m/r, "ratio")
			b.ReportMetric(float64(rawCmds)/float64(len(rawNs)), "raw-tpm-cmds/sign")
			b.ReportMetric(float64(tcCmds)/float64(len(tcNs)), "thingcert-tpm-cmds/sign")
		})
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
