// Package backends opens any keystore from its URI. It imports every backend, so
// a program that needs only one should import that backend's package instead.
package backends

import (
	"context"
	"fmt"

	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/pkcs11store"
)

// Open opens the store a store URI or a key URI belongs to: for a key URI the
// store is the key's folder, token or TPM.
func Open(ctx context.Context, uri string, opts keystore.Options) (keystore.Store, error) {
	u, err := keystore.ParseURI(uri)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case keystore.SchemeFile:
		return openFile(ctx, uri, opts)
	case keystore.SchemePKCS11:
		return openPKCS11(ctx, uri, opts)
	case keystore.SchemeTPM:
		return openTPM(ctx, uri, opts)
	}
	return nil, fmt.Errorf("keystore: %s: %w", u.Redacted(), keystore.ErrInvalidURI)
}

// OpenKey opens the store of keyURI and the key in it. Closing the store
// releases the key.
func OpenKey(ctx context.Context, keyURI string, opts keystore.Options) (keystore.Store, keystore.Key, error) {
	s, err := Open(ctx, keyURI, opts)
	if err != nil {
		return nil, nil, err
	}
	k, err := s.Open(ctx, keyURI)
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	return s, k, nil
}

// Schemes lists the URI schemes this build can open, in a fixed order: file
// and tpm always, pkcs11 only in a cgo build (a PKCS#11 module is a C library).
func Schemes() []string {
	s := []string{keystore.SchemeFile, keystore.SchemeTPM}
	if pkcs11store.Available {
		s = append(s, keystore.SchemePKCS11)
	}
	return s
}
