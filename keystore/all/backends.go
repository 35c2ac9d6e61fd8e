// Package all links every key store backend (file, PKCS#11, TPM) into a
// program, so keystore.Open opens any key or store URI. A program that needs
// only one backend imports that backend's package instead, and carries
// neither cgo PKCS#11 nor a TPM stack it does not use.
package all

import (
	_ "github.com/thingcert/thingcert/keystore/filestore"   // file:
	_ "github.com/thingcert/thingcert/keystore/pkcs11store" // pkcs11:
	_ "github.com/thingcert/thingcert/keystore/tpmstore"    // tpm:
)
