// Package keystore defines how thingcert holds a device's private key: the Key and
// Store interfaces every backend implements, the algorithm policy AWS IoT imposes on
// device certificates, key and store URIs, and CSR creation.
//
// A Key is a crypto.Signer whose private half never leaves its store: a TPM 2.0
// (keystore/tpmstore), a PKCS#11 token (keystore/pkcs11store) or, least secure, a
// file (keystore/filestore). Importing a backend registers its URI scheme with
// Open; keystore/all imports the three. A program that wants one imports that
// backend alone, so a file-only build carries neither cgo nor a TPM stack.
package keystore
