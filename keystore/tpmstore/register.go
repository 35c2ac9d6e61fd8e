package tpmstore

import (
	"context"

	"github.com/thingcert/thingcert/keystore"
)

func init() {
	keystore.RegisterBackend(keystore.SchemeTPM, func(ctx context.Context, uri string, o keystore.Options) (keystore.Store, error) {
		s, err := Open(ctx, uri, o)
		if err != nil {
			return nil, err // not a typed nil inside the interface
		}
		return s, nil
	})
}
