package tpmstore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/keystoretest"
	"github.com/thingcert/thingcert/keystore/tpmstore"
)

// toolAlgorithms asks tpm2_testparms (not thingcert) which key types the TPM
// supports, so the store's own answer can be checked against it. It must run
// before the test connects: swtpm serves one connection at a time.
func toolAlgorithms(t *testing.T, sw *testpeers.SWTPM) []keystore.Algorithm {
	t.Helper()
	names := map[keystore.Algorithm]string{
		keystore.ECDSAP256: "ecc256", keystore.ECDSAP384: "ecc384", keystore.ECDSAP521: "ecc521",
		keystore.RSA2048: "rsa2048", keystore.RSA3072: "rsa3072", keystore.RSA4096: "rsa4096",
	}
	var out []keystore.Algorithm
	for _, alg := range keystore.Algorithms() {
		if _, err := sw.TryTool("tpm2_testparms", names[alg]); err == nil {
			out = append(out, alg)
		}
	}
	return out
}

// openDevice connects to the swtpm and closes the connection when the test ends.
func openDevice(t *testing.T, sw *testpeers.SWTPM) *tpmstore.Device {
	t.Helper()
	dev, err := tpmstore.OpenDevice(context.Background(), sw.Device())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dev.Close(); err != nil {
			t.Errorf("closing the TPM: %v", err)
		}
	})
	return dev
}

func TestConformanceBlob(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	want := toolAlgorithms(t, sw)
	dev := openDevice(t, sw)
	got, err := dev.Algorithms(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("store says the TPM supports %v; tpm2_testparms says %v", got, want)
	}
	for _, must := range []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDSAP384, keystore.RSA2048} {
		if !slices.Contains(got, must) {
			t.Fatalf("swtpm should support %s; the store says %v", must, got)
		}
	}
	dir := t.TempDir()
	storeURI := "tpm:blob-dir=" + dir + "?device=" + sw.Device()
	keystoretest.Run(t, keystoretest.Harness{
		NewStore: func(t *testing.T) keystore.Store {
			s, err := tpmstore.NewStore(context.Background(), dev, storeURI, keystore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		Algorithms: got,
	})
}

// TestUnsupportedAlgorithmSaysWhy: an algorithm the TPM lacks (rsa-4096 on
// swtpm 0.7) is refused with ErrUnsupported, naming the algorithm and the TPM.
func TestUnsupportedAlgorithmSaysWhy(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	dir := t.TempDir()
	s := openStore(t, "tpm:blob-dir="+dir+"?device="+sw.Device())
	have, err := s.Algorithms(ctx)
	if err != nil {
		t.Fatal(err)
	}
	missing := 0
	for _, alg := range keystore.Algorithms() {
		if slices.Contains(have, alg) {
			continue
		}
		missing++
		u, _ := s.KeyURI("unsupported")
		_, err := s.Generate(ctx, u, alg)
		if !errors.Is(err, keystore.ErrUnsupported) {
			t.Fatalf("Generate(%s): %v, want ErrUnsupported", alg, err)
		}
		t.Logf("Generate(%s): %v", alg, err)
		for _, want := range []string{string(alg), sw.Device(), "cannot make"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "unsupported.tpmkey")); err == nil {
			t.Errorf("a refused Generate(%s) left a key file", alg)
		}
	}
	if missing == 0 {
		t.Logf("this TPM supports every algorithm; nothing to refuse")
	}
}
