// Package filestore keeps device keys as PKCS#8 PEM files, mode 0600 in a 0700
// folder. It is the least secure backend — anyone who can read the file, or the
// disk, has the key — and exists for development, for devices without a TPM or
// token, and for keys AWS IoT made in the cloud (CreateKeysAndCertificate), which
// gain nothing from secure storage because they already existed outside it.
package filestore

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/thingcert/thingcert/internal/atomicfile"
	"github.com/thingcert/thingcert/keystore"
)

// keyExt is the file name ending of keys the store makes and lists.
const keyExt = ".pem"

// Store is a folder of key files.
type Store struct {
	dir  string
	opts keystore.Options
}

var (
	_ keystore.Store    = (*Store)(nil)
	_ keystore.Importer = (*Store)(nil)
)

// Open opens the folder named by a store URI (file:/var/lib/thingcert/keys/) or
// the folder of a key URI (file:/var/lib/thingcert/keys/device.pem). The folder
// need not exist yet: Generate creates it with mode 0700.
func Open(_ context.Context, uri string, opts keystore.Options) (*Store, error) {
	p, err := parse(uri)
	if err != nil {
		return nil, err
	}
	dir := p
	if !strings.HasSuffix(uri, "/") {
		if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
			dir = filepath.Dir(p)
		}
	}
	dir = filepath.Clean(dir)
	// A power cut in the middle of writing a key can leave its temporary
	// copy, a hidden file nothing else would ever delete: a full copy of a
	// private key that retirement would not remove. The store is its folder's
	// only writer, so what is there at open is a leftover. Best effort: a
	// reader without write access (status) leaves them to the next writer.
	_, _ = atomicfile.SweepTemporary(dir)
	return &Store{dir: dir, opts: opts}, nil
}

func parse(uri string) (string, error) {
	u, err := keystore.ParseURI(uri)
	if err != nil {
		return "", err
	}
	if u.Scheme != keystore.SchemeFile {
		return "", fmt.Errorf("filestore: %s: %w: not a file: URI", u.Redacted(), keystore.ErrInvalidURI)
	}
	return u.Path, nil
}

// keyPath resolves a key URI to a file in this store's folder. A key elsewhere
// is refused: a store answers for its own folder only, so a typo cannot write a
// key somewhere unexpected.
func (s *Store) keyPath(uri string) (string, error) {
	p, err := parse(uri)
	if err != nil {
		return "", err
	}
	p = filepath.Clean(p)
	if filepath.Dir(p) != s.dir {
		return "", fmt.Errorf("filestore: %s: %w: the key is not in this store's folder %s", uri, keystore.ErrInvalidURI, s.dir)
	}
	return p, nil
}

// Dir is the store's folder.
func (s *Store) Dir() string { return s.dir }

// KeyURI is file:<folder>/<name>.pem.
func (s *Store) KeyURI(name string) (string, error) {
	if err := keystore.ValidKeyName(name); err != nil {
		return "", err
	}
	return fileURI(filepath.Join(s.dir, name+keyExt)), nil
}

func fileURI(path string) string {
	return (&keystore.URI{Scheme: keystore.SchemeFile, Path: path}).String()
}

// Generate makes a key in software and writes it, never replacing an existing file.
func (s *Store) Generate(ctx context.Context, uri string, alg keystore.Algorithm) (keystore.Key, error) {
	path, priv, err := s.generate(ctx, uri, alg)
	if err != nil {
		return nil, err
	}
	return s.write(path, priv, alg)
}

var _ keystore.UnsyncedGenerator = (*Store)(nil)

// GenerateUnsynced is Generate with the file's fsync and the folder's left to
// sync (keystore.UnsyncedGenerator). A key file damaged by a power cut before
// sync returned is refused by Open, never used.
func (s *Store) GenerateUnsynced(ctx context.Context, uri string, alg keystore.Algorithm) (keystore.Key, func() error, error) {
	path, priv, err := s.generate(ctx, uri, alg)
	if err != nil {
		return nil, nil, err
	}
	data, err := s.encode(path, priv)
	if err != nil {
		return nil, nil, err
	}
	sync, err := atomicfile.CreateExclusiveUnsynced(path, data, 0o600)
	if err != nil {
		return nil, nil, s.writeErr(path, err)
	}
	return newKey(path, priv, alg), sync, nil
}

// SyncKey fsyncs a key file and its folder, together.
func (s *Store) SyncKey(_ context.Context, uri string) error {
	path, err := s.keyPath(uri)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("filestore: %s: %w", fileURI(path), keystore.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("filestore: syncing %s: %w", fileURI(path), err)
	}
	defer f.Close()
	dirErr := make(chan error, 1)
	go func() { dirErr <- atomicfile.SyncDir(s.dir) }()
	err = f.Sync()
	if derr := <-dirErr; err == nil {
		err = derr
	}
	if err != nil {
		return fmt.Errorf("filestore: syncing %s: %w", fileURI(path), err)
	}
	return nil
}

func (s *Store) generate(ctx context.Context, uri string, alg keystore.Algorithm) (string, crypto.Signer, error) {
	if err := alg.Check(); err != nil {
		return "", nil, err
	}
	path, err := s.keyPath(uri)
	if err != nil {
		return "", nil, err
	}
	if err := ctx.Err(); err != nil {
		return "", nil, err
	}
	var priv crypto.Signer
	if alg.IsRSA() {
		priv, err = rsa.GenerateKey(rand.Reader, alg.RSABits())
	} else {
		priv, err = ecdsa.GenerateKey(alg.Curve(), rand.Reader)
	}
	if err != nil {
		return "", nil, fmt.Errorf("filestore: generating %s key for %s: %w", alg, fileURI(path), err)
	}
	return path, priv, nil
}

// Import stores a key made elsewhere, under the same policy as generated keys.
func (s *Store) Import(_ context.Context, uri string, priv crypto.Signer) (keystore.Key, error) {
	alg, err := keystore.AlgorithmOf(priv.Public())
	if err != nil {
		return nil, fmt.Errorf("filestore: importing into %s: %w", uri, err)
	}
	path, err := s.keyPath(uri)
	if err != nil {
		return nil, err
	}
	return s.write(path, priv, alg)
}

func (s *Store) write(path string, priv crypto.Signer, alg keystore.Algorithm) (keystore.Key, error) {
	data, err := s.encode(path, priv)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.CreateExclusive(path, data, 0o600); err != nil {
		return nil, s.writeErr(path, err)
	}
	return newKey(path, priv, alg), nil
}

// encode checks the folder and encodes the key as it is written.
func (s *Store) encode(path string, priv crypto.Signer) ([]byte, error) {
	if err := s.ensureDir(); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("filestore: encoding key for %s: %w", fileURI(path), err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func (s *Store) writeErr(path string, err error) error {
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("filestore: %s: %w: thingcert never overwrites a key; delete it first or choose another name", fileURI(path), keystore.ErrExists)
	}
	return fmt.Errorf("filestore: writing %s: %w", fileURI(path), err)
}

// ensureDir creates the folder 0700, or checks that an existing one cannot be
// written by others, who could otherwise swap the key for their own.
func (s *Store) ensureDir() error {
	fi, err := os.Stat(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			return fmt.Errorf("filestore: creating key folder %s: %w", s.dir, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("filestore: key folder %s: %w", s.dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("filestore: key folder %s is not a folder", s.dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("filestore: key folder %s: %w: it is writable by group or others (mode %04o); run: chmod 700 %s", s.dir, keystore.ErrInsecure, fi.Mode().Perm(), s.dir)
	}
	return nil
}

// Open reads a key file. A file readable by group or others is refused, as
// OpenSSH refuses such a private key: the key may already be compromised, and
// using it silently would hide that.
func (s *Store) Open(_ context.Context, uri string) (keystore.Key, error) {
	path, err := s.keyPath(uri)
	if err != nil {
		return nil, err
	}
	priv, err := ReadKeyFile(path)
	if err != nil {
		return nil, err
	}
	alg, err := keystore.AlgorithmOf(priv.Public())
	if err != nil {
		return nil, fmt.Errorf("filestore: %s: %w", fileURI(path), err)
	}
	return newKey(path, priv, alg), nil
}

// ReadKeyFile reads a private key file with the store's permission rules.
func ReadKeyFile(path string) (crypto.Signer, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("filestore: %s: %w", fileURI(path), keystore.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("filestore: %s: %w", fileURI(path), err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("filestore: %s: %w", fileURI(path), err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("filestore: %s: %w: the key file is accessible by group or others (mode %04o); run: chmod 600 %s", fileURI(path), keystore.ErrInsecure, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("filestore: reading %s: %w", fileURI(path), err)
	}
	priv, err := ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("filestore: %s: %w", fileURI(path), err)
	}
	return priv, nil
}

// ParsePrivateKeyPEM reads a private key in PKCS#8 ("PRIVATE KEY"), PKCS#1
// ("RSA PRIVATE KEY") or SEC1 ("EC PRIVATE KEY") PEM, the forms AWS IoT, openssl
// and other tools write. It checks the key against the policy.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key found (want PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			if block.Headers["Proc-Type"] != "" {
				return nil, errors.New("the key is encrypted with a passphrase; decrypt it first (openssl pkey -in KEY -out PLAIN) and import the plain key")
			}
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			if block.Headers["Proc-Type"] != "" {
				return nil, errors.New("the key is encrypted with a passphrase; decrypt it first (openssl pkey -in KEY -out PLAIN) and import the plain key")
			}
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("the key is encrypted with a passphrase; decrypt it first (openssl pkey -in KEY -out PLAIN) and import the plain key")
		case "EC PARAMETERS":
			continue // openssl ecparam -genkey writes these before the key
		default:
			return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", block.Type, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%T keys cannot sign", key)
		}
		if _, err := keystore.AlgorithmOf(signer.Public()); err != nil {
			return nil, err
		}
		return signer, nil
	}
}

// Delete removes the key file and syncs the folder so the deletion persists.
// (Overwriting the file first would not reliably erase it on flash storage, whose
// wear levelling keeps old blocks; a key that must be unrecoverable belongs in a
// TPM or token.)
func (s *Store) Delete(ctx context.Context, uri string) error {
	sync, err := s.DeleteUnsynced(ctx, uri)
	if err != nil {
		return err
	}
	return sync()
}

var _ keystore.UnsyncedDeleter = (*Store)(nil)

// DeleteUnsynced is Delete with the folder's sync left to sync
// (keystore.UnsyncedDeleter).
func (s *Store) DeleteUnsynced(_ context.Context, uri string) (func() error, error) {
	path, err := s.keyPath(uri)
	if err != nil {
		return nil, err
	}
	if err := os.Remove(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("filestore: %s: %w", fileURI(path), keystore.ErrNotFound)
	} else if err != nil {
		return nil, fmt.Errorf("filestore: deleting %s: %w", fileURI(path), err)
	}
	return func() error { return atomicfile.SyncDir(s.dir) }, nil
}

// List returns the URIs of the *.pem files in the folder.
func (s *Store) List(context.Context) ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("filestore: listing %s: %w", s.dir, err)
	}
	var uris []string
	for _, e := range entries {
		if e.Type().IsRegular() && strings.HasSuffix(e.Name(), keyExt) && !strings.HasPrefix(e.Name(), ".") {
			uris = append(uris, fileURI(filepath.Join(s.dir, e.Name())))
		}
	}
	sort.Strings(uris)
	return uris, nil
}

// Close releases nothing: keys are plain memory. It exists for the interface.
func (s *Store) Close() error { return nil }
