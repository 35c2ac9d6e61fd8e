//go:build !cgo

package pkcs11store

import (
	"context"
	"fmt"

	"github.com/thingcert/thingcert/keystore"
)

// Available says whether this build can open PKCS#11 tokens: false without cgo.
const Available = false

// Open would open the token a pkcs11: store or key URI names. This binary was
// built without cgo, and a PKCS#11 module is a C library that only a cgo build
// can load, so it refuses with an error that says so, whatever the URI.
func Open(ctx context.Context, uri string, opts keystore.Options) (keystore.Store, error) {
	return nil, fmt.Errorf("pkcs11store: %s: %w: this thingcert binary was built without cgo (CGO_ENABLED=0), and PKCS#11 needs cgo to load the token's module; use a build made with CGO_ENABLED=1",
		keystore.RedactURI(uri), keystore.ErrUnsupported)
}
