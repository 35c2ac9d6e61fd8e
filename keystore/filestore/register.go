package filestore

import (
	"context"

	"github.com/thingcert/thingcert/keystore"
)

func init() {
	keystore.RegisterBackend(keystore.SchemeFile, func(ctx context.Context, uri string, o keystore.Options) (keystore.Store, error) {
		return Open(ctx, uri, o)
	})
}
