package backends

import (
	"context"

	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/pkcs11store"
)

// openPKCS11 opens the token of a pkcs11: store or key URI (a key URI's store
// is the same URI without object and id). In a build without cgo it returns
// an error that says PKCS#11 needs cgo.
func openPKCS11(ctx context.Context, uri string, opts keystore.Options) (keystore.Store, error) {
	return pkcs11store.Open(ctx, uri, opts)
}
