// Package keystore defines how thingcert holds a device's private key: the Key and
// Store interfaces every backend implements, the algorithm policy AWS IoT imposes on
// device certificates, key and store URIs, and CSR creation.
//
// A Key is a crypto.Signer whose private half never leaves its store: a TPM 2.0
// (keystore/tpmstore), a PKCS#11 token (keystore/pkcs11store) or, least secure, a
// file (keystore/filestore). Programs that want every backend open stores through
// keystore/backends; programs that want one import that backend alone, so a
// file-only build carries neither cgo nor a TPM stack.
package keystore
