package backends

import (
	"context"

	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/filestore"
)

func openFile(ctx context.Context, uri string, opts keystore.Options) (keystore.Store, error) {
	return filestore.Open(ctx, uri, opts)
}
