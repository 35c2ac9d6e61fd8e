package tpmstore_test

import (
	"context"
	"slices"
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
