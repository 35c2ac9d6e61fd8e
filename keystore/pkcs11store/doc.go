// Package pkcs11store keeps device keys inside a PKCS#11 token (an HSM, a
// secure element, a smart card, tpm2-pkcs11, SoftHSM2) through
// github.com/ThalesGroup/crypto11.
//
// Keys and stores are named by RFC 7512 URIs:
//
//	pkcs11:token=T;object=dev;id=%64%65%76?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/thingcert/pin
//
// A store URI is a key URI without object and id. The token is selected by
// token (label), serial, slot-id, manufacturer and model: all given must match
// and exactly one token may match them. The PIN comes from pin-source, a file
// only its owner can read, or, with a logged warning, from pin-value.
//
// Keys made here are CKA_TOKEN, CKA_PRIVATE and CKA_SENSITIVE, never
// CKA_EXTRACTABLE: their private half cannot be read through the PKCS#11 API.
//
// A session that dies under a long-running program (token unplugged and
// plugged back, module re-initialized, session closed or logged out by
// someone else) is re-established: the operation that meets the dead session
// opens a new crypto11 context, logs in again, finds its key again by label
// and id, checks it is still the same key, and runs once more.
//
// PKCS#11 modules are C libraries: this package needs cgo. Built with
// CGO_ENABLED=0 it still compiles, and Open explains why it cannot work.
package pkcs11store
