package filestore

import (
	"context"
	"crypto"
	"fmt"
	"io"
	"os"

	"github.com/thingcert/thingcert/keystore"
)

// Key is a private key read from a file. Sign calls the crypto/ecdsa or
// crypto/rsa key directly; both are safe for concurrent use.
type Key struct {
	path   string
	uri    string
	signer crypto.Signer
	alg    keystore.Algorithm
}

var (
	_ keystore.Key                = (*Key)(nil)
	_ keystore.ProtectionReporter = (*Key)(nil)
)

func newKey(path string, s crypto.Signer, alg keystore.Algorithm) *Key {
	return &Key{path: path, uri: fileURI(path), signer: s, alg: alg}
}

// Public returns the public half.
func (k *Key) Public() crypto.PublicKey { return k.signer.Public() }

// Sign signs a digest.
func (k *Key) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return k.signer.Sign(rand, digest, opts)
}

// URI is the key's file: URI.
func (k *Key) URI() string { return k.uri }

// Algorithm is the key's algorithm.
func (k *Key) Algorithm() keystore.Algorithm { return k.alg }

// Protection reports the file's mode and owner: all a file key has.
func (k *Key) Protection(context.Context) (keystore.Protection, error) {
	fi, err := os.Stat(k.path)
	if err != nil {
		return keystore.Protection{}, fmt.Errorf("filestore: %s: %w", k.uri, err)
	}
	p := keystore.Protection{Backend: "file", Hardware: false, Attributes: []keystore.Attribute{
		{Name: "path", Value: k.path},
		{Name: "mode", Value: fmt.Sprintf("%04o", fi.Mode().Perm())},
	}}
	if uid, ok := ownerUID(fi); ok {
		p.Attributes = append(p.Attributes, keystore.Attribute{Name: "owner-uid", Value: fmt.Sprint(uid)})
	}
	p.Attributes = append(p.Attributes, keystore.Attribute{Name: "note", Value: "the private key is a file: anyone who can read it or the disk has the key"})
	return p, nil
}
