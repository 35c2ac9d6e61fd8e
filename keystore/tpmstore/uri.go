package tpmstore

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/thingcert/thingcert/keystore"
)

// DefaultDevice is the kernel's TPM resource manager: several programs may use
// it at once and it swaps objects in and out of the TPM's few slots.
const DefaultDevice = "/dev/tpmrm0"

// DefaultBlobDir is where a store URI without blob-dir= keeps its key files.
const DefaultBlobDir = "/var/lib/thingcert/keys"

// BlobExt is the file name extension of the store's key files.
const BlobExt = ".tpmkey"

// Persistent handles a signing key may occupy (TPM_HT_PERSISTENT), and the one
// the TCG reserves for the storage root key.
const (
	persistentFirst = 0x81000000
	persistentLast  = 0x81FFFFFF
	srkHandle       = 0x81000001
)

// location says where one key is kept: a key file or a persistent handle.
type location struct {
	blob   string // absolute path of a TSS2 PRIVATE KEY file
	handle uint32 // persistent handle, when blob is ""
}

func (l location) String() string {
	if l.blob != "" {
		return "blob:" + l.blob
	}
	return fmt.Sprintf("handle:0x%08x", l.handle)
}

// keyRef is a parsed key URI: which key, on which TPM, with which authorization.
type keyRef struct {
	loc        location
	device     string
	authSource string // file holding the key's authorization value, or ""
}

// storeRef is a parsed store URI.
type storeRef struct {
	device     string
	blobDir    string
	authSource string
}

// Attributes a TPM URI may carry. Anything else is refused: a misspelt
// attribute quietly ignored could open the wrong TPM or key.
var (
	pathAttrs  = map[string]bool{"blob": true, "handle": true, "blob-dir": true}
	queryAttrs = map[string]bool{"device": true, "auth-source": true}
)

func parseTPMURI(s string) (*keystore.URI, error) {
	u, err := keystore.ParseURI(s)
	if err != nil {
		return nil, err
	}
	if u.Scheme != keystore.SchemeTPM {
		return nil, fmt.Errorf("tpmstore: %s: %w: not a tpm: URI", u.Redacted(), keystore.ErrInvalidURI)
	}
	for k := range u.Attrs {
		if !pathAttrs[k] {
			return nil, fmt.Errorf("tpmstore: %s: %w: unknown attribute %q; a TPM URI takes blob=, handle= or blob-dir=, then ?device= and &auth-source=", u.Redacted(), keystore.ErrInvalidURI, k)
		}
	}
	for k := range u.Query {
		if !queryAttrs[k] {
			return nil, fmt.Errorf("tpmstore: %s: %w: unknown query attribute %q; a TPM URI takes ?device= and &auth-source=", u.Redacted(), keystore.ErrInvalidURI, k)
		}
	}
	n := 0
	for _, k := range []string{"blob", "handle", "blob-dir"} {
		if _, ok := u.Attrs[k]; ok {
			n++
		}
	}
	if n > 1 {
		return nil, fmt.Errorf("tpmstore: %s: %w: give only one of blob=, handle= and blob-dir=", u.Redacted(), keystore.ErrInvalidURI)
	}
	return u, nil
}

// parseKeyURI reads tpm:blob=/abs/path.tpmkey or tpm:handle=0x81xxxxxx, each
// with optional ?device= and &auth-source=.
func parseKeyURI(s string) (keyRef, error) {
	u, err := parseTPMURI(s)
	if err != nil {
		return keyRef{}, err
	}
	ref := keyRef{}
	if ref.device, err = parseDevice(u); err != nil {
		return keyRef{}, err
	}
	if ref.authSource, err = parseAuthSource(u); err != nil {
		return keyRef{}, err
	}
	switch {
	case u.Attrs["blob"] != "":
		p := u.Attrs["blob"]
		if !filepath.IsAbs(p) {
			return keyRef{}, fmt.Errorf("tpmstore: %s: %w: blob= needs an absolute path (tpm:blob=/var/lib/thingcert/keys/device%s)", u.Redacted(), keystore.ErrInvalidURI, BlobExt)
		}
		ref.loc.blob = filepath.Clean(p)
	case u.Attrs["handle"] != "":
		h, err := parseHandle(u.Attrs["handle"])
		if err != nil {
			return keyRef{}, fmt.Errorf("tpmstore: %s: %w: %v", u.Redacted(), keystore.ErrInvalidURI, err)
		}
		ref.loc.handle = h
	default:
		return keyRef{}, fmt.Errorf("tpmstore: %s: %w: a TPM key URI names its key with blob=/abs/path%s or handle=0x81000010", u.Redacted(), keystore.ErrInvalidURI, BlobExt)
	}
	return ref, nil
}

// parseStoreURI reads a store URI: tpm:[blob-dir=/abs/dir][?device=...&auth-source=...].
// A key URI is accepted too; its store is the key's folder on the key's TPM.
func parseStoreURI(s string) (storeRef, error) {
	u, err := parseTPMURI(s)
	if err != nil {
		return storeRef{}, err
	}
	ref := storeRef{blobDir: DefaultBlobDir}
	if ref.device, err = parseDevice(u); err != nil {
		return storeRef{}, err
	}
	if ref.authSource, err = parseAuthSource(u); err != nil {
		return storeRef{}, err
	}
	switch {
	case u.Attrs["blob-dir"] != "":
		d := u.Attrs["blob-dir"]
		if !filepath.IsAbs(d) {
			return storeRef{}, fmt.Errorf("tpmstore: %s: %w: blob-dir= needs an absolute path", u.Redacted(), keystore.ErrInvalidURI)
		}
		ref.blobDir = filepath.Clean(d)
	case u.Attrs["blob"] != "" || u.Attrs["handle"] != "":
		k, err := parseKeyURI(s)
		if err != nil {
			return storeRef{}, err
		}
		if k.loc.blob != "" {
			ref.blobDir = filepath.Dir(k.loc.blob)
		}
	}
	return ref, nil
}

func parseDevice(u *keystore.URI) (string, error) {
	d, ok := u.Query["device"]
	if !ok || d == "" {
		return DefaultDevice, nil
	}
	if strings.HasPrefix(d, "tcp:") {
		hostPort := strings.TrimPrefix(d, "tcp:")
		i := strings.LastIndex(hostPort, ":")
		if i <= 0 {
			return "", fmt.Errorf("tpmstore: %s: %w: device %q: want tcp:HOST:PORT (swtpm's data port)", u.Redacted(), keystore.ErrInvalidURI, d)
		}
		if p, err := strconv.Atoi(hostPort[i+1:]); err != nil || p <= 0 || p > 65535 {
			return "", fmt.Errorf("tpmstore: %s: %w: device %q: bad port", u.Redacted(), keystore.ErrInvalidURI, d)
		}
		return d, nil
	}
	if !filepath.IsAbs(d) {
		return "", fmt.Errorf("tpmstore: %s: %w: device %q: want /dev/tpmrm0, /dev/tpm0 or tcp:HOST:PORT", u.Redacted(), keystore.ErrInvalidURI, d)
	}
	return filepath.Clean(d), nil
}

func parseAuthSource(u *keystore.URI) (string, error) {
	a, ok := u.Query["auth-source"]
	if !ok {
		return "", nil
	}
	p := strings.TrimPrefix(a, "file:")
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("tpmstore: %s: %w: auth-source= needs an absolute file path (auth-source=file:/etc/thingcert/tpm-auth)", u.Redacted(), keystore.ErrInvalidURI)
	}
	return filepath.Clean(p), nil
}

// parseHandle reads a persistent handle such as 0x81000010.
func parseHandle(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return 0, fmt.Errorf("handle %q is not a number (write it as 0x81000010)", s)
	}
	h := uint32(v)
	if h < persistentFirst || h > persistentLast {
		return 0, fmt.Errorf("handle %s is not a persistent handle (0x81000000-0x81ffffff)", s)
	}
	return h, nil
}

// keyURI formats the canonical URI of a key: the device only when it is not the
// default, so URIs stay short on a typical device.
func keyURI(loc location, device, authSource string) string {
	u := &keystore.URI{Scheme: keystore.SchemeTPM, Attrs: map[string]string{}, Query: map[string]string{}}
	if loc.blob != "" {
		u.Attrs["blob"] = loc.blob
	} else {
		u.Attrs["handle"] = fmt.Sprintf("0x%08x", loc.handle)
	}
	if device != DefaultDevice {
		u.Query["device"] = device
	}
	if authSource != "" {
		u.Query["auth-source"] = authSource
	}
	return u.String()
}

// storeURIString is the canonical URI of a store.
func storeURIString(r storeRef) string {
	u := &keystore.URI{Scheme: keystore.SchemeTPM, Attrs: map[string]string{"blob-dir": r.blobDir}, Query: map[string]string{}}
	if r.device != DefaultDevice {
		u.Query["device"] = r.device
	}
	if r.authSource != "" {
		u.Query["auth-source"] = r.authSource
	}
	return u.String()
}
