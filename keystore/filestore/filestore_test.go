package filestore_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/filestore"
	"github.com/thingcert/thingcert/keystore/keystoretest"
)

func TestConformance(t *testing.T) {
	// Each subtest gets one folder, shared by every store it opens, so the suite
	// can check that keys persist across store instances.
	var dirs sync.Map
	keystoretest.Run(t, keystoretest.Harness{
		NewStore: func(t *testing.T) keystore.Store {
			d, _ := dirs.LoadOrStore(t, t.TempDir())
			dir := d.(string)
			s, err := filestore.Open(context.Background(), "file:"+dir+"/", keystore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		Algorithms: keystore.Algorithms(),
	})
}

func TestGeneratedFileIsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	s, err := filestore.Open(context.Background(), "file:"+dir+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	uri, _ := s.KeyURI("device")
	if _, err := s.Generate(context.Background(), uri, keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "device.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("key folder mode %04o, want 0700", di.Mode().Perm())
	}
	data, _ := os.ReadFile(filepath.Join(dir, "device.pem"))
	if b, _ := pem.Decode(data); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("key file is not PKCS#8 PEM")
	}
	// No temporary file is left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("folder holds %d entries, want only the key", len(entries))
	}
}

func TestReadableKeyFileRefused(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		dir := t.TempDir()
		s, _ := filestore.Open(context.Background(), "file:"+dir+"/", keystore.Options{})
		uri, _ := s.KeyURI("k")
		if _, err := s.Generate(context.Background(), uri, keystore.ECDSAP256); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "k.pem")
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := s.Open(context.Background(), uri)
		if !errors.Is(err, keystore.ErrInsecure) {
			t.Fatalf("mode %04o: Open = %v, want ErrInsecure", mode, err)
		}
		if !strings.Contains(err.Error(), "chmod 600 "+path) {
			t.Errorf("mode %04o: error does not say how to fix it: %v", mode, err)
		}
	}
}

func TestWritableFolderRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	s, _ := filestore.Open(context.Background(), "file:"+dir+"/", keystore.Options{})
	uri, _ := s.KeyURI("k")
	_, err := s.Generate(context.Background(), uri, keystore.ECDSAP256)
	if !errors.Is(err, keystore.ErrInsecure) || !strings.Contains(err.Error(), "chmod 700") {
		t.Fatalf("Generate in a 0777 folder = %v, want ErrInsecure with the chmod", err)
	}
}

func TestKeyOutsideStoreFolderRefused(t *testing.T) {
	s, _ := filestore.Open(context.Background(), "file:"+t.TempDir()+"/", keystore.Options{})
	_, err := s.Generate(context.Background(), "file:"+t.TempDir()+"/other.pem", keystore.ECDSAP256)
	if !errors.Is(err, keystore.ErrInvalidURI) {
		t.Fatalf("Generate outside the folder = %v, want ErrInvalidURI", err)
	}
}

func TestImportForms(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	sec1, _ := x509.MarshalECPrivateKey(ec)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(ec)
	cases := []struct {
		name string
		pem  []byte
		alg  keystore.Algorithm
	}{
		{"pkcs1", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)}), keystore.RSA2048},
		{"sec1", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), keystore.ECDSAP384},
		{"pkcs8", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), keystore.ECDSAP384},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			priv, err := filestore.ParsePrivateKeyPEM(c.pem)
			if err != nil {
				t.Fatal(err)
			}
			s, _ := filestore.Open(context.Background(), "file:"+t.TempDir()+"/", keystore.Options{})
			uri, _ := s.KeyURI("imported")
			k, err := s.Import(context.Background(), uri, priv)
			if err != nil {
				t.Fatal(err)
			}
			if k.Algorithm() != c.alg {
				t.Errorf("algorithm %s, want %s", k.Algorithm(), c.alg)
			}
			again, err := s.Open(context.Background(), uri)
			if err != nil || !again.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(priv.Public()) {
				t.Fatalf("reopened imported key: %v", err)
			}
		})
	}
}

func TestImportRefusesWeakKeys(t *testing.T) {
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	p224der, _ := x509.MarshalECPrivateKey(p224)
	edder, _ := x509.MarshalPKCS8PrivateKey(ed)
	for name, data := range map[string][]byte{
		"rsa-1024": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(weak)}),
		"p-224":    pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: p224der}),
		"ed25519":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: edder}),
	} {
		if _, err := filestore.ParsePrivateKeyPEM(data); !errors.Is(err, keystore.ErrPolicy) {
			t.Errorf("%s: ParsePrivateKeyPEM = %v, want ErrPolicy", name, err)
		}
	}
	s, _ := filestore.Open(context.Background(), "file:"+t.TempDir()+"/", keystore.Options{})
	uri, _ := s.KeyURI("weak")
	if _, err := s.Import(context.Background(), uri, weak); !errors.Is(err, keystore.ErrPolicy) {
		t.Errorf("Import(rsa-1024) = %v, want ErrPolicy", err)
	}
}

func TestEncryptedKeyExplained(t *testing.T) {
	_, err := filestore.ParsePrivateKeyPEM([]byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"))
	if err == nil || !strings.Contains(err.Error(), "passphrase") {
		t.Fatalf("encrypted key: %v, want an explanation", err)
	}
}

// TestOpenSweepsLeftoverTemporaryCopies: a power cut while a key was written
// can leave its hidden temporary copy; opening the store removes it, and
// leaves the keys and anything else alone.
func TestOpenSweepsLeftoverTemporaryCopies(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "keys")
	s, err := filestore.Open(ctx, "file:"+dir+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	key, err := s.Generate(ctx, "file:"+filepath.Join(dir, "device.pem"), keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	pemKey, _ := os.ReadFile(filepath.Join(dir, "device.pem"))
	leftover := filepath.Join(dir, ".device-2.pem.tmp-3141592")
	if err := os.WriteFile(leftover, pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := filestore.Open(ctx, key.URI(), keystore.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the leftover copy of a key is still there after Open: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "device.pem")); err != nil {
		t.Errorf("the key itself: %v", err)
	}
}

// GenerateUnsynced writes the key as Generate does (private file in a
// private folder, PKCS#8, no temporary copy, never over an existing key),
// leaving only its syncs for later; SyncKey syncs a key that exists.
func TestGenerateUnsynced(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "keys")
	s, err := filestore.Open(ctx, "file:"+dir+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	uri, _ := s.KeyURI("device")
	k, sync, err := s.GenerateUnsynced(ctx, uri, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if err := sync(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "device.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("folder holds %d entries, want only the key", len(entries))
	}
	opened, err := s.Open(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	if !opened.Public().(*ecdsa.PublicKey).Equal(k.Public()) {
		t.Error("the key read back is not the key made")
	}
	if _, _, err := s.GenerateUnsynced(ctx, uri, keystore.ECDSAP256); !errors.Is(err, keystore.ErrExists) {
		t.Errorf("over an existing key: %v, want ErrExists", err)
	}
	if err := s.SyncKey(ctx, uri); err != nil {
		t.Errorf("SyncKey: %v", err)
	}
	other, _ := s.KeyURI("absent")
	if err := s.SyncKey(ctx, other); !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("SyncKey of a missing key: %v, want ErrNotFound", err)
	}
}
