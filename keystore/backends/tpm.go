package backends

import (
	"context"

	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/tpmstore"
)

func openTPM(ctx context.Context, uri string, opts keystore.Options) (keystore.Store, error) {
	s, err := tpmstore.Open(ctx, uri, opts)
	if err != nil {
		return nil, err
	}
	return s, nil
}
