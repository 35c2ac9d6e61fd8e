package pkcs11store

import "github.com/thingcert/thingcert/keystore"

// Registered in cgo and non-cgo builds alike: without cgo, Open says that
// PKCS#11 needs a cgo build instead of the scheme looking unknown.
func init() { keystore.RegisterBackend(keystore.SchemePKCS11, Open) }
