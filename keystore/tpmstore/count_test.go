package tpmstore

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
)

// countingTPM counts the commands that reach the TPM. A command the TPM asked
// to send again (TPM_RC_RETRY: swtpm says it now and then to TPM2_Sign) is
// counted once, when it is answered; the extra tries are counted apart.
type countingTPM struct {
	transport.TPMCloser
	n       atomic.Int64
	retried atomic.Int64
}

func (c *countingTPM) Send(cmd []byte) ([]byte, error) {
	rsp, err := c.TPMCloser.Send(cmd)
	if err == nil && retryable(responseCode(rsp)) {
		c.retried.Add(1)
	} else {
		c.n.Add(1)
	}
	return rsp, err
}

// TestOneCommandPerSign checks the steady state: the storage root key is made
// once per connection, a key is loaded once, each Sign is one TPM2_Sign, and
// Close flushes what was loaded.
func TestOneCommandPerSign(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	ctx := context.Background()
	raw, err := OpenTransport(ctx, sw.Device())
	if err != nil {
		t.Fatal(err)
	}
	ct := &countingTPM{TPMCloser: raw}
	dev := NewDevice(sw.Device(), ct)
	s, err := NewStore(ctx, dev, "tpm:blob-dir="+t.TempDir()+"?device="+sw.Device(), keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var uris []string
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		u, _ := s.KeyURI("count-" + string(alg))
		if _, err := s.Generate(ctx, u, alg); err != nil {
			t.Fatal(err)
		}
		uris = append(uris, u)
	}
	s.Close()

	// A fresh store on the same connection: the storage root key is already there.
	s, err = NewStore(ctx, dev, "tpm:blob-dir=/nonexistent?device="+sw.Device(), keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, u := range uris {
		before := ct.n.Load()
		k, err := s.Open(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		if n := ct.n.Load() - before; n != 1 {
			t.Errorf("Open of key %d took %d TPM commands, want 1 (TPM2_Load)", i, n)
		}
		before = ct.n.Load()
		if _, err := s.Open(ctx, u); err != nil {
			t.Fatal(err)
		}
		if n := ct.n.Load() - before; n != 0 {
			t.Errorf("reopening a loaded key took %d TPM commands, want 0", n)
		}
		digest := sha256.Sum256([]byte("x"))
		opts := []crypto.SignerOpts{crypto.SHA256}
		if _, ok := k.Public().(*rsa.PublicKey); ok {
			opts = append(opts, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
		}
		for _, o := range opts {
			before = ct.n.Load()
			const signs = 20
			for j := 0; j < signs; j++ {
				if _, err := k.Sign(rand.Reader, digest[:], o); err != nil {
					t.Fatal(err)
				}
			}
			if n := ct.n.Load() - before; n != signs {
				t.Errorf("%s %T: %d Signs took %d TPM commands, want exactly %d", k.Algorithm(), o, signs, n, signs)
			}
		}
	}
	t.Logf("the TPM asked for %d retries", ct.retried.Load())
	before := ct.n.Load()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := ct.n.Load() - before; n != 2 {
		t.Errorf("Close sent %d commands, want 2 (one TPM2_FlushContext per loaded key)", n)
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	// Nothing is left loaded in the TPM: swtpm has no resource manager, so a
	// transient object not flushed would still be listed.
	if out := sw.Tool("tpm2_getcap", "handles-transient"); out != "" {
		t.Errorf("transient objects left in the TPM after Close: %s", out)
	}
}

// swtpm, like a TPM reached without the kernel's resource manager, holds three
// transient objects: the storage root key and two keys. A third key is
// refused with advice, not with a bare response code.
func TestObjectMemoryExplained(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	ctx := context.Background()
	s, err := Open(ctx, "tpm:blob-dir="+t.TempDir()+"?device="+sw.Device(), keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i, name := range []string{"current", "next", "third"} {
		u, _ := s.KeyURI(name)
		_, err := s.Generate(ctx, u, keystore.ECDSAP256)
		if i < 2 && err != nil {
			t.Fatalf("generating key %d: %v", i, err)
		}
		if i == 2 && (!errors.Is(err, tpm2.TPMRCObjectMemory) || !strings.Contains(err.Error(), "/dev/tpmrm0")) {
			t.Fatalf("third key: %v; want TPM_RC_OBJECT_MEMORY with advice", err)
		}
	}
}

// A process killed with keys loaded leaves them in a TPM reached without the
// resource manager. The next opener flushes them, so it has the TPM's object
// slots to itself.
func TestOrphansFlushedOnOpen(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	ctx := context.Background()
	dir := t.TempDir()
	raw, err := OpenTransport(ctx, sw.Device())
	if err != nil {
		t.Fatal(err)
	}
	dead := NewDevice(sw.Device(), raw)
	s, err := NewStore(ctx, dead, "tpm:blob-dir="+dir+"?device="+sw.Device(), keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var uris []string
	for _, name := range []string{"a", "b"} {
		u, _ := s.KeyURI(name)
		if _, err := s.Generate(ctx, u, keystore.ECDSAP256); err != nil {
			t.Fatal(err)
		}
		uris = append(uris, u)
	}
	// The "kill": the connection goes without a single FlushContext.
	raw.Close()

	s2, err := Open(ctx, "tpm:blob-dir="+dir+"?device="+sw.Device(), keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for _, u := range uris {
		k, err := s2.Open(ctx, u)
		if err != nil {
			t.Fatalf("reopening %s after the earlier process died with keys loaded: %v", u, err)
		}
		digest := sha256.Sum256([]byte("x"))
		if _, err := k.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
			t.Fatal(err)
		}
	}
}
