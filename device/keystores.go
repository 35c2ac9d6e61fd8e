package device

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/thingcert/thingcert/keystore"
)

// keyStores opens key stores on demand: the device's store (where rotation
// makes keys) and the store of any key outside it (a claim key on another
// token or in another folder). Safe for concurrent use.
type keyStores struct {
	log  *slog.Logger
	wrap func(keystore.Key) keystore.Key

	mu     sync.Mutex
	main   keystore.Store
	uri    string
	others map[string]keystore.Store // by the key URI that needed them
}

func openKeyStores(ctx context.Context, opts *Options, log *slog.Logger) (*keyStores, error) {
	s, err := keystore.Open(ctx, opts.Store, keystore.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("device: key store %s: %w", keystore.RedactURI(opts.Store), err)
	}
	wrap := opts.WrapKey
	if wrap == nil {
		wrap = func(k keystore.Key) keystore.Key { return k }
	}
	return &keyStores{log: log, wrap: wrap, main: s, uri: opts.Store, others: map[string]keystore.Store{}}, nil
}

// openKey opens a key in the device's store, or in its own store.
func (k *keyStores) openKey(ctx context.Context, uri string) (keystore.Key, error) {
	key, err := k.main.Open(ctx, uri)
	if !errors.Is(err, keystore.ErrInvalidURI) {
		if err != nil {
			return nil, err
		}
		return k.wrap(key), nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	s, ok := k.others[uri]
	if !ok {
		// A key's own store: the key URI names it (a store URI is a key URI
		// without the key's name, and every backend opens a store from either).
		if s, err = keystore.Open(ctx, uri, keystore.Options{Logger: k.log}); err != nil {
			return nil, fmt.Errorf("device: key store of %s: %w", keystore.RedactURI(uri), err)
		}
		k.others[uri] = s
	}
	key, err = s.Open(ctx, uri)
	if err != nil {
		return nil, err
	}
	return k.wrap(key), nil
}

func (k *keyStores) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	var errs []error
	for _, s := range k.others {
		errs = append(errs, s.Close())
	}
	k.others = nil
	errs = append(errs, k.main.Close())
	return errors.Join(errs...)
}
