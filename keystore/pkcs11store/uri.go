package pkcs11store

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/thingcert/thingcert/keystore"
)

// tokenURI is a pkcs11: URI (RFC 7512) reduced to what thingcert uses: which
// module, which token, how to log in, and, for a key URI, which key.
//
// It is pure data, parsed and formatted without touching a token, so the same
// code runs (and is fuzzed) in builds without cgo.
type tokenURI struct {
	// Token selection: every attribute given must match, and exactly one token
	// may match them all.
	Token        string // "token": the token label
	Manufacturer string // "manufacturer"
	Model        string // "model"
	Serial       string // "serial"
	SlotID       *uint  // "slot-id"

	// Key selection (empty in a store URI).
	Object string // "object": CKA_LABEL
	ID     []byte // "id": CKA_ID, raw bytes

	ModulePath string // "module-path"
	// PINFile is the path from pin-source (file:/path or /path).
	PINFile string
	// PINValue is the PIN given inline. It is never formatted into logs or
	// errors (see format).
	PINValue    string
	HasPINValue bool
}

// RFC 7512 attributes thingcert does not use. They are refused by name rather
// than ignored, since ignoring one could select another token or key than the
// one the URI's author meant.
var unsupportedPathAttrs = map[string]string{
	"slot-description":     "select the token with token=, serial= or slot-id=",
	"slot-manufacturer":    "select the token with token=, serial= or slot-id=",
	"library-manufacturer": "name the module with module-path=",
	"library-description":  "name the module with module-path=",
	"library-version":      "name the module with module-path=",
}

// parseTokenURI parses a pkcs11: store or key URI. keystore.ParseURI does the
// RFC 7512 syntax (attributes, percent-decoding, duplicates); this adds the
// meaning of each attribute.
func parseTokenURI(s string) (*tokenURI, error) {
	u, err := keystore.ParseURI(s)
	if err != nil {
		return nil, err
	}
	if u.Scheme != keystore.SchemePKCS11 {
		return nil, fmt.Errorf("pkcs11store: %q: %w: not a pkcs11: URI", keystore.RedactURI(s), keystore.ErrInvalidURI)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("pkcs11store: %s: %w: %s", u.Redacted(), keystore.ErrInvalidURI, fmt.Sprintf(format, args...))
	}
	t := &tokenURI{}
	for k, v := range u.Attrs {
		if v == "" {
			return nil, bad("attribute %s is empty", k)
		}
		switch k {
		case "token":
			t.Token = v
		case "manufacturer":
			t.Manufacturer = v
		case "model":
			t.Model = v
		case "serial":
			t.Serial = v
		case "slot-id":
			n, err := strconv.ParseUint(v, 10, 0)
			if err != nil {
				return nil, bad("slot-id %q is not a decimal number", v)
			}
			id := uint(n)
			t.SlotID = &id
		case "object":
			t.Object = v
		case "id":
			t.ID = []byte(v)
		case "type":
			// A key pair is found by its private half; a URI copied from a tool
			// that names the public half means the same pair.
			if v != "private" && v != "public" {
				return nil, bad("type=%s: thingcert uses key pairs; write type=private or leave it out", v)
			}
		default:
			if hint, ok := unsupportedPathAttrs[k]; ok {
				return nil, bad("attribute %s is not supported by thingcert; %s", k, hint)
			}
			return nil, bad("unknown attribute %s; thingcert knows token, manufacturer, model, serial, slot-id, object, id and type", k)
		}
	}
	for k, v := range u.Query {
		switch k {
		case "module-path":
			if !filepath.IsAbs(v) {
				return nil, bad("module-path %q must be an absolute path to the PKCS#11 module (.so)", v)
			}
			t.ModulePath = filepath.Clean(v)
		case "pin-source":
			p, err := pinSourcePath(v)
			if err != nil {
				return nil, bad("%v", err)
			}
			t.PINFile = p
		case "pin-value":
			if v == "" {
				return nil, bad("pin-value is empty")
			}
			t.PINValue, t.HasPINValue = v, true
		case "module-name":
			return nil, bad("module-name is not supported; give the module's full path with module-path=")
		default:
			return nil, bad("unknown query attribute %s; thingcert knows module-path, pin-source and pin-value", k)
		}
	}
	if t.ModulePath == "" {
		return nil, bad("module-path is missing: add ?module-path=/path/to/module.so (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)")
	}
	if t.Token == "" && t.Serial == "" && t.SlotID == nil {
		return nil, bad("no token selected: add token=<label> (or serial=<serial>, or slot-id=<n>)")
	}
	if t.PINFile != "" && t.HasPINValue {
		return nil, bad("both pin-source and pin-value are given; keep pin-source")
	}
	return t, nil
}

// pinSourcePath accepts RFC 7512's "file:/path" (and "file:///path") and a
// plain absolute path.
func pinSourcePath(v string) (string, error) {
	p := v
	if strings.HasPrefix(p, "file:") {
		p = strings.TrimPrefix(p, "file:")
		if strings.HasPrefix(p, "//") {
			p = strings.TrimPrefix(p, "//")
		}
	}
	if strings.HasPrefix(p, "|") {
		return "", fmt.Errorf("pin-source %q: thingcert reads the PIN only from a file (pin-source=file:/path)", v)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("pin-source %q must be an absolute path (pin-source=file:/etc/thingcert/pin)", v)
	}
	return filepath.Clean(p), nil
}

// isKey reports whether the URI names a key rather than only a token.
func (t *tokenURI) isKey() bool { return t.Object != "" || len(t.ID) > 0 }

// sameToken reports whether two URIs select the same token of the same module,
// by the same attributes.
func (t *tokenURI) sameToken(o *tokenURI) bool {
	slotEq := (t.SlotID == nil) == (o.SlotID == nil) && (t.SlotID == nil || *t.SlotID == *o.SlotID)
	return t.ModulePath == o.ModulePath && t.Token == o.Token && t.Manufacturer == o.Manufacturer &&
		t.Model == o.Model && t.Serial == o.Serial && slotEq
}

// storeURI is the URI without its key attributes.
func (t *tokenURI) storeURI() *tokenURI {
	c := *t
	c.Object, c.ID = "", nil
	return &c
}

// withKey is the URI of the key labelled object with CKA_ID id in the same token.
func (t *tokenURI) withKey(object string, id []byte) *tokenURI {
	c := *t
	c.Object, c.ID = object, bytes.Clone(id)
	return &c
}

// format writes the canonical form: path attributes in a fixed order, id
// percent-encoded byte by byte as RFC 7512 shows it, query attributes last.
// With redact, a pin-value is written as REDACTED.
func (t *tokenURI) format(redact bool) string {
	var b strings.Builder
	b.WriteString("pkcs11:")
	sep := ""
	attr := func(name, v string) {
		b.WriteString(sep)
		b.WriteString(name)
		b.WriteByte('=')
		b.WriteString(v)
		sep = ";"
	}
	if t.Token != "" {
		attr("token", escapePath(t.Token))
	}
	if t.Manufacturer != "" {
		attr("manufacturer", escapePath(t.Manufacturer))
	}
	if t.Model != "" {
		attr("model", escapePath(t.Model))
	}
	if t.Serial != "" {
		attr("serial", escapePath(t.Serial))
	}
	if t.SlotID != nil {
		attr("slot-id", strconv.FormatUint(uint64(*t.SlotID), 10))
	}
	if t.Object != "" {
		attr("object", escapePath(t.Object))
	}
	if len(t.ID) > 0 {
		var id strings.Builder
		for _, c := range t.ID {
			fmt.Fprintf(&id, "%%%02X", c)
		}
		attr("id", id.String())
	}
	b.WriteString("?module-path=")
	b.WriteString(escapeQuery(t.ModulePath))
	if t.PINFile != "" {
		b.WriteString("&pin-source=file:")
		b.WriteString(escapeQuery(t.PINFile))
	}
	if t.HasPINValue {
		b.WriteString("&pin-value=")
		if redact {
			b.WriteString("REDACTED")
		} else {
			b.WriteString(escapeQuery(t.PINValue))
		}
	}
	return b.String()
}

// String is the canonical URI, PIN included: it reopens the key. Anything
// shown to a person goes through Redacted.
func (t *tokenURI) String() string { return t.format(false) }

// Redacted is the canonical URI with any pin-value hidden.
func (t *tokenURI) Redacted() string { return t.format(true) }

// escapePath keeps RFC 7512's pk11-pchar unescaped and percent-encodes the rest.
func escapePath(v string) string { return escape(v, ":[]@!$'()*+,") }

// escapeQuery keeps pk11-qchar: pk11-pchar plus '/', '?' and '|'.
func escapeQuery(v string) string { return escape(v, ":[]@!$'()*+,/?|") }

func escape(v, keep string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || strings.IndexByte(keep, c) >= 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// maxPINLen bounds what is read from a PIN file: PKCS#11 PINs are short, and
// a PIN file pointed at something large is a mistake.
const maxPINLen = 1024

// readPINFile reads the PIN from a pin-source file. The file must be a regular
// file that neither group nor others can read: the PIN is the only thing
// between a local user and the token's keys.
func readPINFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("pkcs11store: reading the token PIN: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("pkcs11store: reading the token PIN: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("pkcs11store: PIN file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("pkcs11store: PIN file %s has mode %04o: %w: group or others can read the token PIN; run `chmod 600 %s`",
			path, perm, keystore.ErrInsecure, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxPINLen+1))
	if err != nil {
		return "", fmt.Errorf("pkcs11store: reading PIN file %s: %w", path, err)
	}
	if len(data) > maxPINLen {
		return "", fmt.Errorf("pkcs11store: PIN file %s is longer than %d bytes; it should hold only the PIN", path, maxPINLen)
	}
	pin := strings.TrimRight(string(data), "\r\n")
	if pin == "" {
		return "", fmt.Errorf("pkcs11store: PIN file %s is empty; write the token's user PIN into it", path)
	}
	return pin, nil
}
