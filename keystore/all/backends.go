// Package all links every key store backend (file, PKCS#11, TPM) into a
// program, so keystore.Open opens any key or store URI. A program that needs
// only one backend imports that backend's package instead, and carries
// neither cgo PKCS#11 nor a TPM stack it does not use.
package all

import (
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/filestore" // file:
	"github.com/thingcert/thingcert/keystore/pkcs11store" // pkcs11:
	_ "github.com/thingcert/thingcert/keystore/tpmstore"  // tpm:
)

// Schemes lists the URI schemes this build can open, in a fixed order: file
// and tpm always, pkcs11 only in a cgo build (a PKCS#11 module is a C
// library; without cgo the scheme is registered only to say so).
func Schemes() []string {
	s := []string{keystore.SchemeFile, keystore.SchemeTPM}
	if pkcs11store.Available {
		s = append(s, keystore.SchemePKCS11)
	}
	return s
}
