package tpmstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	keyfile "github.com/foxboron/go-tpm-keyfiles"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/thingcert/thingcert/internal/atomicfile"
	"github.com/thingcert/thingcert/keystore"
)

// Store makes and opens signing keys in one TPM. Key files go in its folder
// (blob-dir=); persistent keys live in the TPM itself. Keys it opens stay
// loaded until Close.
type Store struct {
	dev     *Device
	ownsDev bool
	ref     storeRef
	log     *slog.Logger
	// ctx lives as long as the store: crypto.Signer's Sign takes no context,
	// so signatures run under this one and Close cancels them.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	keys   map[location]*Key
	closed bool
}

var _ keystore.Store = (*Store)(nil)

// Open opens the TPM a store URI (or key URI) names and a store on it:
//
//	tpm:                                            /dev/tpmrm0, key files in /var/lib/thingcert/keys
//	tpm:blob-dir=/var/lib/thingcert/keys?device=/dev/tpm0
//	tpm:?device=tcp:127.0.0.1:2321&auth-source=/etc/thingcert/tpm-auth
//	tpm:blob=/var/lib/thingcert/keys/device.tpmkey  (the key's folder)
//
// Closing the store closes the TPM connection.
func Open(ctx context.Context, storeURI string, opts keystore.Options) (*Store, error) {
	ref, err := parseStoreURI(storeURI)
	if err != nil {
		return nil, err
	}
	dev, err := OpenDevice(ctx, ref.device)
	if err != nil {
		return nil, err
	}
	s := newStore(ctx, dev, ref, opts)
	s.ownsDev = true
	return s, nil
}

// NewStore opens a store on a TPM that is already open, so several stores
// share one connection (swtpm and /dev/tpm0 admit only one). The store URI's
// device must be dev's. Closing the store leaves dev open.
func NewStore(ctx context.Context, dev *Device, storeURI string, opts keystore.Options) (*Store, error) {
	ref, err := parseStoreURI(storeURI)
	if err != nil {
		return nil, err
	}
	if ref.device != dev.name {
		return nil, fmt.Errorf("tpmstore: store %s is on TPM %s, but the device given is %s: %w", keystore.RedactURI(storeURI), ref.device, dev.name, keystore.ErrInvalidURI)
	}
	return newStore(ctx, dev, ref, opts), nil
}

func newStore(ctx context.Context, dev *Device, ref storeRef, opts keystore.Options) *Store {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &Store{dev: dev, ref: ref, log: opts.Log(), ctx: sctx, cancel: cancel, keys: map[location]*Key{}}
}

// Device is the TPM the store uses.
func (s *Store) Device() *Device { return s.dev }

// URI is the store's canonical URI.
func (s *Store) URI() string { return storeURIString(s.ref) }

// KeyURI is the URI of a key file named name in the store's folder:
// tpm:blob=<blob-dir>/<name>.tpmkey, with the store's device and auth-source.
func (s *Store) KeyURI(name string) (string, error) {
	if err := keystore.ValidKeyName(name); err != nil {
		return "", err
	}
	return keyURI(location{blob: filepath.Join(s.ref.blobDir, name+BlobExt)}, s.ref.device, s.ref.authSource), nil
}

// Algorithms lists what the TPM can make, by asking it.
func (s *Store) Algorithms(ctx context.Context) ([]keystore.Algorithm, error) {
	return s.dev.Algorithms(ctx)
}

func (s *Store) parse(keyURI string) (keyRef, error) {
	ref, err := parseKeyURI(keyURI)
	if err != nil {
		return ref, err
	}
	if ref.device != s.ref.device {
		return ref, fmt.Errorf("tpmstore: key %s is on TPM %s, but this store is on %s: open a store for that device: %w", keystore.RedactURI(keyURI), ref.device, s.ref.device, keystore.ErrInvalidURI)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ref, fmt.Errorf("tpmstore: store %s is closed", s.URI())
	}
	return ref, nil
}

// Generate makes a new signing key inside the TPM. For tpm:blob= the TPM-wrapped
// key goes in a new TSS2 PRIVATE KEY file (mode 0600, never overwriting one);
// for tpm:handle= the key is made persistent at that handle.
func (s *Store) Generate(ctx context.Context, keyURI string, alg keystore.Algorithm) (keystore.Key, error) {
	if err := alg.Check(); err != nil {
		return nil, fmt.Errorf("tpmstore: %s: %w", keystore.RedactURI(keyURI), err)
	}
	ref, err := s.parse(keyURI)
	if err != nil {
		return nil, err
	}
	uri := keyURIOf(ref)
	auth, err := readAuth(ref.authSource)
	if err != nil {
		return nil, err
	}
	tmpl, err := keyTemplate(alg)
	if err != nil {
		return nil, err
	}
	if ref.loc.blob != "" {
		if _, err := os.Lstat(ref.loc.blob); err == nil {
			return nil, fmt.Errorf("tpmstore: %s: %w: delete it first, or pick another name", uri, keystore.ErrExists)
		}
		if fi, err := os.Stat(filepath.Dir(ref.loc.blob)); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("tpmstore: %s: the folder %s does not exist: create it (mode 0700) first", uri, filepath.Dir(ref.loc.blob))
		}
	}
	if ref.loc.handle == srkHandle {
		return nil, fmt.Errorf("tpmstore: %s: %w: 0x81000001 is reserved for the storage root key; pick another handle such as 0x81000010", uri, keystore.ErrInvalidURI)
	}

	var created *tpm2.CreateResponse
	var parent *parentKey
	var k *Key
	err = s.dev.Run(ctx, func(t transport.TPM) error {
		if err := s.dev.supports(t, alg); err != nil {
			return err
		}
		if ref.loc.handle != 0 {
			_, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(ref.loc.handle)}.Execute(t)
			if err == nil {
				return fmt.Errorf("%w: the persistent handle is taken", keystore.ErrExists)
			}
			if !isHandleMissing(err) {
				return err
			}
		}
		if parent, err = s.dev.newKeyParent(t); err != nil {
			return err
		}
		created, err = tpm2.Create{
			ParentHandle: tpm2.AuthHandle{Handle: parent.handle, Name: parent.name, Auth: tpm2.PasswordAuth(nil)},
			InSensitive:  tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: auth}}},
			InPublic:     tpm2.New2B(tmpl),
		}.Execute(t)
		if err != nil {
			return err
		}
		if ref.loc.handle != 0 {
			k, err = s.persist(t, ref, uri, created, parent, auth)
		}
		return err
	})
	if err != nil {
		return nil, s.wrap("generating "+string(alg)+" key", uri, err)
	}
	if k == nil {
		if err := s.writeBlob(ref, uri, created, parent, auth); err != nil {
			return nil, err
		}
		err = s.dev.Run(ctx, func(t transport.TPM) error {
			k, err = s.load(t, ref, uri, created.OutPublic, created.OutPrivate, parent, auth)
			return err
		})
		if err != nil {
			// The file is no identity yet: take it back so the name stays free.
			_ = os.Remove(ref.loc.blob)
			return nil, s.wrap("loading the new key", uri, err)
		}
	}
	if k.alg != alg {
		return nil, fmt.Errorf("tpmstore: %s: asked the TPM for %s and got %s", uri, alg, k.alg)
	}
	s.log.Info("tpmstore: key generated", "uri", uri, "algorithm", alg)
	return s.remember(k), nil
}

// persist loads a new key, makes it persistent at ref's handle and flushes
// the transient copy. Call with the turn held.
func (s *Store) persist(t transport.TPM, ref keyRef, uri string, created *tpm2.CreateResponse, parent *parentKey, auth []byte) (*Key, error) {
	loaded, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: parent.handle, Name: parent.name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    created.OutPrivate,
		InPublic:     created.OutPublic,
	}.Execute(t)
	if err != nil {
		return nil, err
	}
	_, err = tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: loaded.ObjectHandle, Name: loaded.Name},
		PersistentHandle: tpm2.TPMHandle(ref.loc.handle),
	}.Execute(t)
	_, ferr := tpm2.FlushContext{FlushHandle: loaded.ObjectHandle}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("making the key persistent (TPM2_EvictControl; needs an empty owner password): %w", err)
	}
	if ferr != nil {
		return nil, ferr
	}
	pub, err := created.OutPublic.Contents()
	if err != nil {
		return nil, err
	}
	return s.newKey(ref, uri, pub, tpm2.TPMHandle(ref.loc.handle), loaded.Name, nil, auth)
}

// writeBlob writes a new key file in the TSS2 PRIVATE KEY format, atomically and
// only if the name is free.
func (s *Store) writeBlob(ref keyRef, uri string, created *tpm2.CreateResponse, parent *parentKey, auth []byte) error {
	tk := keyfile.NewTPMKey(keyfile.OIDLoadableKey, created.OutPublic, created.OutPrivate,
		keyfile.WithParent(parent.fileParent),
		keyfile.WithUserAuth(auth),
		// No description field: tpm2-openssl 1.1 refuses files that have one.
	)
	var buf bytes.Buffer
	if err := keyfile.Encode(&buf, tk); err != nil {
		return fmt.Errorf("tpmstore: %s: encoding the key file: %w", uri, err)
	}
	if err := atomicfile.CreateExclusive(ref.loc.blob, buf.Bytes(), 0o600); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("tpmstore: %s: %w: another key file appeared there meanwhile", uri, keystore.ErrExists)
		}
		return fmt.Errorf("tpmstore: %s: %w", uri, err)
	}
	return nil
}

// load loads a wrapped key under its parent. Call with the turn held.
func (s *Store) load(t transport.TPM, ref keyRef, uri string, public tpm2.TPM2BPublic, private tpm2.TPM2BPrivate, parent *parentKey, auth []byte) (*Key, error) {
	rsp, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: parent.handle, Name: parent.name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    private,
		InPublic:     public,
	}.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCObjectMemory) {
			return nil, fmt.Errorf("%w: the TPM has no free object slot; through %s only about 3 objects fit at once: use /dev/tpmrm0 (the kernel's resource manager), or close other stores", err, s.dev.name)
		}
		if errors.Is(err, tpm2.TPMRCIntegrity) {
			return nil, fmt.Errorf("%w: the key file was not made under this TPM's storage root key (another TPM, or the TPM was cleared)", err)
		}
		return nil, err
	}
	pub, err := public.Contents()
	if err != nil {
		return nil, err
	}
	k, err := s.newKey(ref, uri, pub, rsp.ObjectHandle, rsp.Name, parent, auth)
	if err != nil {
		_, _ = tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(t)
		return nil, err
	}
	return k, nil
}

func (s *Store) newKey(ref keyRef, uri string, pub *tpm2.TPMTPublic, h tpm2.TPMHandle, name tpm2.TPM2BName, parent *parentKey, auth []byte) (*Key, error) {
	gopub, err := publicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("reading the key's public part: %w", err)
	}
	alg, err := keystore.AlgorithmOf(gopub)
	if err != nil {
		return nil, err
	}
	return &Key{
		store: s, uri: uri, ref: ref, alg: alg, pub: gopub, public: *pub,
		pubRaw: tpm2.Marshal(tpm2.New2B(*pub)), handle: h, name: name,
		parent: parent, auth: auth, fixed: keyScheme(pub),
	}, nil
}

// remember keeps k as the loaded key at its location, so opening it again
// costs no TPM command.
func (s *Store) remember(k *Key) *Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[k.ref.loc] = k
	return k
}

// cached returns the loaded key at loc if it is still the same key.
func (s *Store) cached(loc location, pubRaw []byte, auth []byte, uri string) *Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[loc]
	if k != nil && (pubRaw == nil || bytes.Equal(k.pubRaw, pubRaw)) && bytes.Equal(k.auth, auth) && k.uri == uri {
		return k
	}
	return nil
}

// forget drops the key at loc and flushes it if it was loaded.
func (s *Store) forget(ctx context.Context, loc location) error {
	s.mu.Lock()
	k := s.keys[loc]
	delete(s.keys, loc)
	s.mu.Unlock()
	if k == nil {
		return nil
	}
	return s.dev.Run(ctx, func(t transport.TPM) error { return s.unload(t, k) })
}

// unload flushes a transient key. Call with the turn held.
func (s *Store) unload(t transport.TPM, k *Key) error {
	if k.gone != nil {
		return nil
	}
	k.gone = fmt.Errorf("tpmstore: %s: the key was closed or deleted", k.uri)
	if k.parent == nil {
		return nil // persistent: nothing loaded
	}
	if _, err := (tpm2.FlushContext{FlushHandle: k.handle}).Execute(t); err != nil {
		return fmt.Errorf("tpmstore: flushing %s: %w", k.uri, err)
	}
	return nil
}

// Open loads an existing key: one TPM2_Load for a key file (plus, once per
// TPM connection, making the storage root key), one TPM2_ReadPublic for a
// persistent key. A key already open in this store is returned as it is.
func (s *Store) Open(ctx context.Context, keyURI string) (keystore.Key, error) {
	ref, err := s.parse(keyURI)
	if err != nil {
		return nil, err
	}
	uri := keyURIOf(ref)
	auth, err := readAuth(ref.authSource)
	if err != nil {
		return nil, err
	}
	if ref.loc.blob != "" {
		return s.openBlob(ctx, ref, uri, auth)
	}
	if k := s.cached(ref.loc, nil, auth, uri); k != nil {
		return k, nil
	}
	var k *Key
	err = s.dev.Run(ctx, func(t transport.TPM) error {
		h := tpm2.TPMHandle(ref.loc.handle)
		rsp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(t)
		if err != nil {
			if isHandleMissing(err) {
				return fmt.Errorf("%w: no object at that persistent handle", keystore.ErrNotFound)
			}
			return err
		}
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			return err
		}
		if why := signingKeyProblem(pub); why != "" {
			return fmt.Errorf("%w: %s", keystore.ErrUnsupported, why)
		}
		k, err = s.newKey(ref, uri, pub, h, rsp.Name, nil, auth)
		return err
	})
	if err != nil {
		return nil, s.wrap("opening", uri, err)
	}
	return s.remember(k), nil
}

func (s *Store) openBlob(ctx context.Context, ref keyRef, uri string, auth []byte) (keystore.Key, error) {
	tk, err := readBlob(ref.loc.blob)
	if errors.Is(err, fs.ErrNotExist) {
		_ = s.forget(ctx, ref.loc)
		return nil, fmt.Errorf("tpmstore: %s: %w: no key file at %s", uri, keystore.ErrNotFound, ref.loc.blob)
	}
	if err != nil {
		return nil, fmt.Errorf("tpmstore: %s: %w", uri, err)
	}
	if fi, err := os.Stat(ref.loc.blob); err == nil && fi.Mode().Perm()&0o077 != 0 {
		// Only this TPM can use the file, but anyone who can read it and open
		// the TPM device can sign with a key that has no authorization value.
		s.log.Warn("tpmstore: key file is readable by others; run chmod 600 on it", "file", ref.loc.blob, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	pub, err := tk.Pubkey.Contents()
	if err != nil {
		return nil, fmt.Errorf("tpmstore: %s: the key file's public part: %w", uri, err)
	}
	if why := signingKeyProblem(pub); why != "" {
		return nil, fmt.Errorf("tpmstore: %s: %w: %s", uri, keystore.ErrUnsupported, why)
	}
	switch {
	case tk.EmptyAuth && len(auth) > 0:
		return nil, fmt.Errorf("tpmstore: %s: the key file says the key has no authorization value, but auth-source=%s was given: drop auth-source", uri, ref.authSource)
	case !tk.EmptyAuth && len(auth) == 0:
		return nil, fmt.Errorf("tpmstore: %s: the key needs its authorization value: add auth-source=file:/path/to/file (mode 0600) to the key URI", uri)
	}
	if k := s.cached(ref.loc, tpm2.Marshal(tk.Pubkey), auth, uri); k != nil {
		return k, nil
	}
	if err := s.forget(ctx, ref.loc); err != nil {
		return nil, err
	}
	var k *Key
	err = s.dev.Run(ctx, func(t transport.TPM) error {
		parent, err := s.dev.parentFor(t, tk.Parent)
		if err != nil {
			return err
		}
		k, err = s.load(t, ref, uri, tk.Pubkey, tk.Privkey, parent, auth)
		return err
	})
	if err != nil {
		return nil, s.wrap("loading", uri, err)
	}
	return s.remember(k), nil
}

// readBlob reads and checks a TSS2 PRIVATE KEY file.
func readBlob(path string) (*keyfile.TPMKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	tk, err := keyfile.Decode(b)
	if err != nil {
		return nil, fmt.Errorf("%s is not a TSS2 PRIVATE KEY file: %v", path, err)
	}
	switch {
	case !tk.Keytype.Equal(keyfile.OIDLoadableKey) && !tk.Keytype.Equal(keyfile.OIDOldLoadableKey):
		return nil, fmt.Errorf("%s holds a TPM key of type %v; thingcert loads only loadable keys (%v): %w", path, tk.Keytype, keyfile.OIDLoadableKey, keystore.ErrUnsupported)
	case len(tk.Policy) > 0 || len(tk.AuthPolicy) > 0:
		return nil, fmt.Errorf("%s: the key is bound to a TPM policy, which thingcert does not run: %w", path, keystore.ErrUnsupported)
	}
	return tk, nil
}

// Delete removes a key: its file, or the persistent object at its handle.
// Anything that is not a signing key is left alone.
func (s *Store) Delete(ctx context.Context, keyURI string) error {
	ref, err := s.parse(keyURI)
	if err != nil {
		return err
	}
	uri := keyURIOf(ref)
	if ref.loc.blob != "" {
		if _, err := readBlob(ref.loc.blob); err != nil {
			_ = s.forget(ctx, ref.loc)
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("tpmstore: %s: %w", uri, keystore.ErrNotFound)
			}
			return fmt.Errorf("tpmstore: refusing to delete %s: %w", uri, err)
		}
		if err := s.forget(ctx, ref.loc); err != nil {
			return err
		}
		if err := os.Remove(ref.loc.blob); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("tpmstore: %s: %w", uri, keystore.ErrNotFound)
			}
			return fmt.Errorf("tpmstore: deleting %s: %w", uri, err)
		}
		if err := atomicfile.SyncDir(filepath.Dir(ref.loc.blob)); err != nil {
			return err
		}
		s.log.Info("tpmstore: key deleted", "uri", uri)
		return nil
	}
	if ref.loc.handle == srkHandle {
		return fmt.Errorf("tpmstore: refusing to delete %s: 0x81000001 is the storage root key", uri)
	}
	s.mu.Lock()
	delete(s.keys, ref.loc)
	s.mu.Unlock()
	err = s.dev.Run(ctx, func(t transport.TPM) error {
		h := tpm2.TPMHandle(ref.loc.handle)
		rsp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(t)
		if err != nil {
			if isHandleMissing(err) {
				return keystore.ErrNotFound
			}
			return err
		}
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			return err
		}
		if why := signingKeyProblem(pub); why != "" {
			return fmt.Errorf("refusing to evict it: %s", why)
		}
		_, err = tpm2.EvictControl{
			Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			ObjectHandle:     tpm2.NamedHandle{Handle: h, Name: rsp.Name},
			PersistentHandle: h,
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("evicting it (TPM2_EvictControl; needs an empty owner password): %w", err)
		}
		return nil
	})
	if err != nil {
		return s.wrap("deleting", uri, err)
	}
	s.log.Info("tpmstore: key deleted", "uri", uri)
	return nil
}

// List returns the key files in the store's folder and the signing keys at
// persistent handles (the storage root key and other objects left out).
func (s *Store) List(ctx context.Context) ([]string, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("tpmstore: store %s is closed", s.URI())
	}
	var out []string
	entries, err := os.ReadDir(s.ref.blobDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("tpmstore: listing %s: %w", s.ref.blobDir, err)
	}
	for _, e := range entries {
		if e.Type().IsRegular() && strings.HasSuffix(e.Name(), BlobExt) && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, keyURI(location{blob: filepath.Join(s.ref.blobDir, e.Name())}, s.ref.device, s.ref.authSource))
		}
	}
	err = s.dev.Run(ctx, func(t transport.TPM) error {
		handles, err := s.dev.persistentHandles(t)
		if err != nil {
			return err
		}
		for _, h := range handles {
			if h == srkHandle {
				continue
			}
			rsp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(t)
			if err != nil {
				continue // evicted meanwhile, or not readable: not ours to list
			}
			pub, err := rsp.OutPublic.Contents()
			if err != nil || signingKeyProblem(pub) != "" {
				continue
			}
			out = append(out, keyURI(location{handle: uint32(h)}, s.ref.device, s.ref.authSource))
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap("listing keys of", s.URI(), err)
	}
	slices.Sort(out)
	return out, nil
}

// Close flushes the keys the store loaded and, if Open opened the TPM,
// closes the connection. Keys of a closed store no longer sign.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	keys := make([]*Key, 0, len(s.keys))
	for _, k := range s.keys {
		keys = append(keys, k)
	}
	s.keys = nil
	s.mu.Unlock()
	s.cancel()
	// Flushing must run although the store's context just ended.
	ctx := context.WithoutCancel(s.ctx)
	var errs []error
	err := s.dev.Run(ctx, func(t transport.TPM) error {
		for _, k := range keys {
			if err := s.unload(t, k); err != nil {
				errs = append(errs, err)
			}
		}
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	if s.ownsDev {
		errs = append(errs, s.dev.Close())
	}
	return errors.Join(errs...)
}

// wrap names the key and keeps the sentinel a caller tests for.
func (s *Store) wrap(what, uri string, err error) error {
	if errors.Is(err, tpm2.TPMRCObjectMemory) {
		// Keys stay loaded so that Sign is one command; without the kernel's
		// resource manager a TPM holds only about three objects, the storage
		// root key among them.
		return fmt.Errorf("tpmstore: %s %s on %s: %w: the TPM has no room for another loaded key; use /dev/tpmrm0 (the kernel's resource manager), or close keys that are not in use (without it, two keys can be open at once)", what, uri, s.dev.name, err)
	}
	return fmt.Errorf("tpmstore: %s %s on %s: %w", what, uri, s.dev.name, err)
}

func keyURIOf(ref keyRef) string { return keyURI(ref.loc, ref.device, ref.authSource) }
