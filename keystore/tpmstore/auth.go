package tpmstore

import (
	"bytes"
	"fmt"
	"os"

	"github.com/thingcert/thingcert/keystore"
)

// maxAuthLen: a TPM takes an authorization value no longer than the digest of
// the key's name algorithm, SHA-256 here.
const maxAuthLen = 32

// readAuth reads a key's authorization value from the auth-source file. Like a
// PKCS#11 PIN file, it must be readable by its owner alone, and one trailing
// newline is not part of the value. The value itself is never logged or
// put in an error.
func readAuth(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tpmstore: reading the key authorization value (auth-source=%s): %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("tpmstore: auth-source=%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("tpmstore: %s holds a TPM key's authorization value but its mode %04o lets others read or change it: %w; run: chmod 600 %s", path, perm, keystore.ErrInsecure, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tpmstore: reading the key authorization value (auth-source=%s): %w", path, err)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	b = bytes.TrimSuffix(b, []byte("\r"))
	if len(b) > maxAuthLen {
		return nil, fmt.Errorf("tpmstore: the authorization value in %s is %d bytes; a TPM takes at most %d", path, len(b), maxAuthLen)
	}
	return b, nil
}
