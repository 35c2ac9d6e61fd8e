// Package keystoretest is the conformance suite every keystore backend must pass.
// A backend's test calls Run with a Harness that makes fresh stores; the suite
// generates each algorithm, reopens keys by URI from a new store, signs from many
// goroutines and verifies, authenticates TLS 1.2 and 1.3 clients, makes CSRs
// that Go and `openssl req -verify` accept,
// deletes, and checks the sentinel errors and the algorithm policy.
package keystoretest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
)

// Harness tells the suite how to make stores of one backend.
type Harness struct {
	// NewStore opens the backend's store for one test. Calling it again within
	// the same test must open the same underlying store (same folder, token or
	// TPM) as a new instance, so the suite can check that keys persist.
	// The suite closes every store it gets.
	NewStore func(t *testing.T) keystore.Store
	// Algorithms the backend supports; Generate with any other allowed algorithm
	// must fail with ErrUnsupported.
	Algorithms []keystore.Algorithm
	// Signers is how many goroutines sign at once in the concurrency check
	// (default 8).
	Signers int
}

// Run runs the conformance suite.
func Run(t *testing.T, h Harness) {
	if h.Signers == 0 {
		h.Signers = 8
	}
	for _, alg := range h.Algorithms {
		t.Run(string(alg), func(t *testing.T) { testAlgorithm(t, h, alg) })
	}
	t.Run("exists", func(t *testing.T) { testExists(t, h) })
	t.Run("not-found", func(t *testing.T) { testNotFound(t, h) })
	t.Run("refused-algorithms", func(t *testing.T) { testRefused(t, h) })
	t.Run("list", func(t *testing.T) { testList(t, h) })
}

func open(t *testing.T, h Harness) keystore.Store {
	t.Helper()
	s := h.NewStore(t)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func keyURI(t *testing.T, s keystore.Store, name string) string {
	t.Helper()
	u, err := s.KeyURI(name)
	if err != nil {
		t.Fatalf("KeyURI(%q): %v", name, err)
	}
	return u
}

func testAlgorithm(t *testing.T, h Harness, alg keystore.Algorithm) {
	ctx := context.Background()
	s := open(t, h)
	uri := keyURI(t, s, "conf-"+string(alg))
	key, err := s.Generate(ctx, uri, alg)
	if err != nil {
		t.Fatalf("Generate(%s, %s): %v", uri, alg, err)
	}
	if key.Algorithm() != alg {
		t.Errorf("Algorithm() = %s, want %s", key.Algorithm(), alg)
	}
	if got, err := keystore.AlgorithmOf(key.Public()); err != nil || got != alg {
		t.Errorf("public key is %v (%v), want %s", got, err, alg)
	}

	// A new store instance finds the same key by the URI the key reports.
	s2 := open(t, h)
	again, err := s2.Open(ctx, key.URI())
	if err != nil {
		t.Fatalf("Open(%s) from a new store: %v", key.URI(), err)
	}
	if !publicEqual(key.Public(), again.Public()) {
		t.Fatalf("reopened key has another public key")
	}
	if again.Algorithm() != alg {
		t.Errorf("reopened Algorithm() = %s, want %s", again.Algorithm(), alg)
	}

	signConcurrently(t, again, h.Signers)
	t.Run("tls-client-auth", func(t *testing.T) { CheckTLSClientAuth(t, again) })

	for _, sa := range keystore.SignatureAlgorithms(alg) {
		t.Run(string(sa), func(t *testing.T) {
			der, err := keystore.CreateCSR(again, "CN=conformance-"+string(alg)+",O=thingcert", keystore.CSROptions{SignatureAlgorithm: sa})
			if err != nil {
				t.Fatalf("CreateCSR(%s): %v", sa, err)
			}
			csr, err := x509.ParseCertificateRequest(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := csr.CheckSignature(); err != nil {
				t.Fatalf("Go refuses the CSR signature: %v", err)
			}
			if csr.SignatureAlgorithm != sa.X509() {
				t.Errorf("CSR signature algorithm %s, want %s", csr.SignatureAlgorithm, sa)
			}
			if !publicEqual(csr.PublicKey, key.Public()) {
				t.Errorf("CSR carries another public key")
			}
			testpeers.VerifyCSR(t, keystore.EncodeCSR(der))
		})
	}

	if err := s2.Delete(ctx, key.URI()); err != nil {
		t.Fatalf("Delete(%s): %v", key.URI(), err)
	}
	if _, err := s.Open(ctx, key.URI()); !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("Open after Delete: %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, key.URI()); !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("second Delete: %v, want ErrNotFound", err)
	}
}

// signConcurrently signs distinct digests from many goroutines with every option
// crypto/tls may pass and verifies each signature in software.
func signConcurrently(t *testing.T, key keystore.Key, n int) {
	t.Helper()
	type job struct {
		opts crypto.SignerOpts
	}
	var jobs []job
	switch key.Public().(type) {
	case *rsa.PublicKey:
		jobs = []job{
			{crypto.SHA256}, {crypto.SHA384}, {crypto.SHA512},
			{&rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}},
			{&rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA384}},
			{&rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA512}},
		}
	default:
		jobs = []job{{crypto.SHA256}, {crypto.SHA384}, {crypto.SHA512}}
	}
	var wg sync.WaitGroup
	errs := make(chan error, n*len(jobs))
	for g := 0; g < n; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, j := range jobs {
				msg := []byte(fmt.Sprintf("goroutine %d job %d", g, i))
				h := j.opts.HashFunc().New()
				h.Write(msg)
				digest := h.Sum(nil)
				sig, err := key.Sign(rand.Reader, digest, j.opts)
				if err != nil {
					errs <- fmt.Errorf("Sign(%T %v): %w", j.opts, j.opts.HashFunc(), err)
					continue
				}
				if err := verify(key.Public(), digest, sig, j.opts); err != nil {
					errs <- fmt.Errorf("signature (%T %v) does not verify: %w", j.opts, j.opts.HashFunc(), err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func verify(pub crypto.PublicKey, digest, sig []byte, opts crypto.SignerOpts) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			return rsa.VerifyPSS(k, pss.Hash, digest, sig, pss)
		}
		return rsa.VerifyPKCS1v15(k, opts.HashFunc(), digest, sig)
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return errors.New("ECDSA signature invalid")
		}
		return nil
	}
	return fmt.Errorf("unexpected public key %T", pub)
}

func publicEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

func testExists(t *testing.T, h Harness) {
	ctx := context.Background()
	s := open(t, h)
	uri := keyURI(t, s, "conf-exists")
	first, err := s.Generate(ctx, uri, h.Algorithms[0])
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	if _, err := s.Generate(ctx, uri, h.Algorithms[0]); !errors.Is(err, keystore.ErrExists) {
		t.Fatalf("second Generate at %s: %v, want ErrExists", uri, err)
	}
	// The first key must be untouched by the refused second Generate.
	k, err := s.Open(ctx, uri)
	if err != nil {
		t.Fatalf("Open after refused Generate: %v", err)
	}
	if !publicEqual(first.Public(), k.Public()) {
		t.Fatalf("a refused Generate replaced the key at %s", uri)
	}
	if err := s.Delete(ctx, uri); err != nil {
		t.Fatal(err)
	}
}

func testNotFound(t *testing.T, h Harness) {
	s := open(t, h)
	uri := keyURI(t, s, "conf-never-made")
	if _, err := s.Open(context.Background(), uri); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Open(%s): %v, want ErrNotFound", uri, err)
	}
	if err := s.Delete(context.Background(), uri); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Delete(%s): %v, want ErrNotFound", uri, err)
	}
}

func testRefused(t *testing.T, h Harness) {
	ctx := context.Background()
	s := open(t, h)
	for _, alg := range []keystore.Algorithm{"rsa-1024", "ecdsa-p224", "ed25519", ""} {
		uri := keyURI(t, s, "conf-refused")
		if _, err := s.Generate(ctx, uri, alg); !errors.Is(err, keystore.ErrPolicy) {
			t.Errorf("Generate(%q): %v, want ErrPolicy", alg, err)
		}
		if _, err := s.Open(ctx, uri); !errors.Is(err, keystore.ErrNotFound) {
			t.Errorf("a refused Generate(%q) left something at %s: %v", alg, uri, err)
		}
	}
	for _, alg := range keystore.Algorithms() {
		if slices.Contains(h.Algorithms, alg) {
			continue
		}
		uri := keyURI(t, s, "conf-unsupported")
		if _, err := s.Generate(ctx, uri, alg); !errors.Is(err, keystore.ErrUnsupported) {
			t.Errorf("Generate(%s) on a store that does not list it: %v, want ErrUnsupported", alg, err)
		}
	}
}

func testList(t *testing.T, h Harness) {
	ctx := context.Background()
	s := open(t, h)
	var made []string
	for _, name := range []string{"conf-list-a", "conf-list-b"} {
		k, err := s.Generate(ctx, keyURI(t, s, name), h.Algorithms[0])
		if err != nil {
			t.Fatal(err)
		}
		made = append(made, k.URI())
	}
	got, err := s.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	for _, u := range made {
		if !slices.Contains(got, u) {
			t.Errorf("List() = %v, missing %s", got, u)
		}
		if err := s.Delete(ctx, u); err != nil {
			t.Error(err)
		}
	}
	got, err = s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range made {
		if slices.Contains(got, u) {
			t.Errorf("List() after Delete still has %s", u)
		}
	}
}
