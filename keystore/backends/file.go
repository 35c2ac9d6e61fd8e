package backends

import (
	"context"
	"fmt"

	"github.com/thingcert/thingcert/keystore"
)

func openFile(ctx context.Context, uri string, opts keystore.Options) (keystore.Store, error) {
	return nil, fmt.Errorf("keystore: %s: %w: the file backend is not built yet", keystore.RedactURI(uri), keystore.ErrUnsupported)
}
