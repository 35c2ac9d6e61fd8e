//go:build cgo

package pkcs11store

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
)

// The store's session is broken under it by a second handle on the same
// module, the way another program, a module reload or a replugged token
// breaks it in the field. The next Sign must work, on the same key.
func TestSessionRecovery(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	var logs testpeers.Buffer
	st, err := open(context.Background(), h.StoreURI(), keystore.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	uri, _ := st.KeyURI("survivor")
	key, err := st.Generate(context.Background(), uri, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	pub := key.Public().(*ecdsa.PublicKey)
	signVerify := func(t *testing.T, what string) {
		t.Helper()
		d := sha256.Sum256([]byte(what))
		sig, err := key.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("Sign after %s: %v", what, err)
		}
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			t.Fatalf("signature after %s does not verify", what)
		}
	}
	signVerify(t, "nothing")

	breaks := []struct {
		name  string
		do    func(t *testing.T, r *rawPeer)
		cause string
	}{
		{"C_CloseAllSessions", func(t *testing.T, r *rawPeer) {
			if err := r.p.CloseAllSessions(r.slot); err != nil {
				t.Fatal(err)
			}
		}, ""},
		{"C_Logout", func(t *testing.T, r *rawPeer) {
			sh := r.session(t)
			defer r.p.CloseSession(sh)
			if err := r.p.Logout(sh); err != nil {
				t.Fatal(err)
			}
		}, ""},
		// The module finalized and initialized again, as when a module is
		// reloaded: every session and object handle is gone.
		{"C_Finalize", func(t *testing.T, r *rawPeer) {
			if err := r.p.Finalize(); err != nil {
				t.Fatal(err)
			}
		}, "CKR_CRYPTOKI_NOT_INITIALIZED"},
	}
	for _, b := range breaks {
		t.Run(b.name, func(t *testing.T) {
			before := strings.Count(logs.String(), "re-established")
			b.do(t, newRawPeer(t, h.Module, h.Label))
			// Many signers meet the dead session at once: all succeed, and
			// the store reconnects once, not once per signer.
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for i := 0; i < 8; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					d := sha256.Sum256([]byte(fmt.Sprint(b.name, i)))
					sig, err := key.Sign(rand.Reader, d[:], crypto.SHA256)
					if err == nil && !ecdsa.VerifyASN1(pub, d[:], sig) {
						err = fmt.Errorf("signature does not verify")
					}
					if err != nil {
						errs <- err
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Errorf("Sign after %s: %v", b.name, err)
			}
			after := strings.Count(logs.String(), "re-established")
			if after-before != 1 {
				t.Errorf("after %s the store reconnected %d times, want once; log:\n%s", b.name, after-before, logs.String())
			}
			if b.cause != "" && !strings.Contains(logs.String(), b.cause) {
				t.Errorf("the log does not name the cause %s:\n%s", b.cause, logs.String())
			}
			signVerify(t, b.name+" and recovery")
			// Everything else works on the new session too.
			if _, err := st.List(context.Background()); err != nil {
				t.Errorf("List after %s: %v", b.name, err)
			}
			if _, err := key.(keystore.ProtectionReporter).Protection(context.Background()); err != nil {
				t.Errorf("Protection after %s: %v", b.name, err)
			}
		})
	}
	if strings.Contains(logs.String(), h.PIN) {
		t.Errorf("the log carries the PIN")
	}
}

// Open, List, Generate and Delete meet a dead session too: the login is gone,
// so the token looks empty; they must not conclude "not found" or "free".
func TestSessionRecoveryOnLookups(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	st := openStore(t, h.StoreURI())
	ctx := context.Background()
	uri, _ := st.KeyURI("present")
	if _, err := st.Generate(ctx, uri, keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	logout := func(t *testing.T) {
		t.Helper()
		r := newRawPeer(t, h.Module, h.Label)
		if err := r.p.CloseAllSessions(r.slot); err != nil {
			t.Fatal(err)
		}
	}
	logout(t)
	if _, err := st.Open(ctx, uri); err != nil {
		t.Errorf("Open after the login was lost: %v", err)
	}
	logout(t)
	if l, err := st.List(ctx); err != nil || len(l) != 1 {
		t.Errorf("List after the login was lost: %v %v, want the one key", l, err)
	}
	logout(t)
	if _, err := st.Generate(ctx, uri, keystore.ECDSAP256); err == nil || !strings.Contains(err.Error(), "already has a key") {
		t.Errorf("Generate over an existing key after the login was lost: %v, want ErrExists", err)
	}
	logout(t)
	if err := st.Delete(ctx, uri); err != nil {
		t.Errorf("Delete after the login was lost: %v", err)
	}
}

// A token that stays away makes operations fail with an error that says so,
// and they work again when it is back, without reopening the store. The
// token is "unplugged" by moving its directory away and reloading the module.
func TestSessionRecoveryWhileTokenIsGone(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	st := openStore(t, h.StoreURI())
	uri, _ := st.KeyURI("k")
	key, err := st.Generate(context.Background(), uri, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	peer := newRawPeer(t, h.Module, h.Label)
	away := h.TokenDir + ".unplugged"
	if err := os.Rename(h.TokenDir, away); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(h.TokenDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := peer.p.Finalize(); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	for i := 0; i < 2; i++ {
		_, err = key.Sign(rand.Reader, d[:], crypto.SHA256)
		if err == nil || !strings.Contains(err.Error(), "no token in module") && !strings.Contains(err.Error(), "could not find PKCS#11 token") {
			t.Fatalf("Sign %d while the token is gone: %v; want an error saying the token is not there", i, err)
		}
	}
	if err := os.Remove(h.TokenDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(away, h.TokenDir); err != nil {
		t.Fatal(err)
	}
	sig, err := key.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign once the token is back: %v", err)
	}
	if !ecdsa.VerifyASN1(key.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature does not verify")
	}
}

// Closing a store while its keys sign and it lists is safe: every operation
// either completes or fails with an error, and none runs after the module's
// handle is gone.
func TestCloseWhileInUse(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	st, err := open(context.Background(), h.StoreURI(), keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	key, err := st.Generate(context.Background(), must(st.KeyURI("busy")), keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	started := make(chan struct{}, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := sha256.Sum256([]byte("busy"))
			for j := 0; ; j++ {
				var err error
				if i%2 == 0 {
					_, err = key.Sign(rand.Reader, d[:], crypto.SHA256)
				} else {
					_, err = st.List(context.Background())
				}
				if j == 0 {
					started <- struct{}{}
				}
				if err != nil {
					return // closed
				}
			}
		}()
	}
	for i := 0; i < 8; i++ {
		<-started
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	d := sha256.Sum256([]byte("after"))
	if _, err := key.Sign(rand.Reader, d[:], crypto.SHA256); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Sign after Close: %v, want an error saying the store is closed", err)
	}
}
