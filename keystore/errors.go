package keystore

import "errors"

// Sentinel errors. Backends wrap them with %w and add the key URI and what to do,
// so callers test with errors.Is and people read the rest.
var (
	// ErrNotFound: no key at that URI.
	ErrNotFound = errors.New("key not found")
	// ErrExists: Generate or Import was asked to overwrite a key; thingcert never
	// replaces a key in place, since that would destroy an identity.
	ErrExists = errors.New("key already exists")
	// ErrUnsupported: the store cannot do this (an algorithm its hardware lacks,
	// import into a TPM, a backend not compiled in).
	ErrUnsupported = errors.New("not supported")
	// ErrPolicy: AWS IoT would refuse this key, CSR or certificate.
	ErrPolicy = errors.New("refused by AWS IoT certificate policy")
	// ErrInvalidURI: the key or store URI cannot be parsed.
	ErrInvalidURI = errors.New("invalid key URI")
	// ErrInsecure: a secret (key file, PIN file) is readable by others.
	ErrInsecure = errors.New("insecure permissions")
)
