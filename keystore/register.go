package keystore

import (
	"context"
	"fmt"
	"sort"
	"sync"
)

// Opener opens the store that a store URI or a key URI belongs to (for a key
// URI: the key's folder, token or TPM).
type Opener func(ctx context.Context, uri string, opts Options) (Store, error)

// The backends linked into this program, by URI scheme. Each backend package
// registers itself when imported, as database/sql drivers do, so a program
// links only the stores it imports: a file-key device never carries cgo
// PKCS#11 or a TPM stack. This is the package's one piece of global state; it
// is written only from init functions.
var (
	backendsMu sync.RWMutex
	backends   = map[string]Opener{}
)

// RegisterBackend makes a backend available to Open for a URI scheme. It is
// called from the backend package's init; registering a scheme twice panics,
// as two backends for one scheme is a programming error.
func RegisterBackend(scheme string, open Opener) {
	backendsMu.Lock()
	defer backendsMu.Unlock()
	if _, dup := backends[scheme]; dup {
		panic("keystore: backend for scheme " + scheme + " registered twice")
	}
	backends[scheme] = open
}

// Backends lists the schemes of the backends linked into this program.
func Backends() []string {
	backendsMu.RLock()
	defer backendsMu.RUnlock()
	out := make([]string, 0, len(backends))
	for s := range backends {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// Open opens the store that a store URI or a key URI belongs to, with the
// backend registered for its scheme.
func Open(ctx context.Context, uri string, opts Options) (Store, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	backendsMu.RLock()
	open := backends[u.Scheme]
	backendsMu.RUnlock()
	if open == nil {
		return nil, fmt.Errorf("keystore: %s: no %s: key store is linked into this program (import github.com/thingcert/thingcert/keystore/%s, or keystore/all for every backend): %w",
			u.Redacted(), u.Scheme, backendPackage(u.Scheme), ErrUnsupported)
	}
	return open(ctx, uri, opts)
}

// OpenKey opens the store of keyURI and the key in it. Closing the store
// releases the key.
func OpenKey(ctx context.Context, keyURI string, opts Options) (Store, Key, error) {
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

func backendPackage(scheme string) string {
	switch scheme {
	case SchemeFile:
		return "filestore"
	case SchemePKCS11:
		return "pkcs11store"
	case SchemeTPM:
		return "tpmstore"
	}
	return scheme + "store"
}
