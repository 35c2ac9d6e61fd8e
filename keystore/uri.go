package keystore

import (
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// URI is a parsed key or store URI. All three schemes share one shape:
//
//	file:/abs/path/key.pem
//	pkcs11:token=T;object=dev?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin
//	tpm:blob=/var/lib/thingcert/keys/dev.tpmkey?device=/dev/tpmrm0
//
// For file the part after the scheme is a path; for pkcs11 and tpm it is a list of
// ';'-separated path attributes, as in RFC 7512, followed by optional query
// attributes. Values are percent-decoded. Parsing is strict: an attribute given
// twice, an empty name or a bad escape is an error, because a quietly ignored
// attribute could select the wrong key.
type URI struct {
	Scheme string
	// Path is the file path for file URIs.
	Path string
	// Attrs are the path attributes (pkcs11, tpm).
	Attrs map[string]string
	// Query are the query attributes (module-path, pin-source, device, ...).
	Query map[string]string
}

// Schemes thingcert knows.
const (
	SchemeFile   = "file"
	SchemePKCS11 = "pkcs11"
	SchemeTPM    = "tpm"
)

// ParseURI parses a key or store URI.
func ParseURI(s string) (*URI, error) {
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok || scheme == "" {
		return nil, fmt.Errorf("keystore: %q: %w: want file:/path, pkcs11:... or tpm:...", RedactURI(s), ErrInvalidURI)
	}
	u := &URI{Scheme: strings.ToLower(scheme), Attrs: map[string]string{}, Query: map[string]string{}}
	switch u.Scheme {
	case SchemeFile:
		// file:///abs and file:/abs are both common spellings.
		p := rest
		if strings.HasPrefix(p, "//") {
			p = strings.TrimPrefix(p, "//")
			if !strings.HasPrefix(p, "/") {
				return nil, fmt.Errorf("keystore: %q: %w: file URIs take no host; write file:/abs/path", RedactURI(s), ErrInvalidURI)
			}
		}
		if strings.ContainsAny(p, "?#") {
			return nil, fmt.Errorf("keystore: %q: %w: file URIs take no query or fragment", RedactURI(s), ErrInvalidURI)
		}
		dec, err := url.PathUnescape(p)
		if err != nil {
			return nil, fmt.Errorf("keystore: %q: %w: %v", RedactURI(s), ErrInvalidURI, err)
		}
		if !strings.HasPrefix(dec, "/") {
			return nil, fmt.Errorf("keystore: %q: %w: a file key needs an absolute path (file:/abs/path/key.pem)", RedactURI(s), ErrInvalidURI)
		}
		u.Path = dec
		return u, nil
	case SchemePKCS11, SchemeTPM:
		path, query, _ := strings.Cut(rest, "?")
		if strings.Contains(query, "#") || strings.Contains(path, "#") {
			return nil, fmt.Errorf("keystore: %q: %w: fragments are not allowed", RedactURI(s), ErrInvalidURI)
		}
		if err := parseAttrs(path, ";", u.Attrs); err != nil {
			return nil, fmt.Errorf("keystore: %q: %w: %v", RedactURI(s), ErrInvalidURI, err)
		}
		if err := parseAttrs(query, "&", u.Query); err != nil {
			return nil, fmt.Errorf("keystore: %q: %w: %v", RedactURI(s), ErrInvalidURI, err)
		}
		return u, nil
	}
	return nil, fmt.Errorf("keystore: %q: %w: unknown scheme %q; want file, pkcs11 or tpm", RedactURI(s), ErrInvalidURI, RedactURI(scheme))
}

func parseAttrs(s, sep string, into map[string]string) error {
	if s == "" {
		return nil
	}
	for _, part := range strings.Split(s, sep) {
		if part == "" {
			continue // a trailing separator is harmless
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok || k == "" {
			return fmt.Errorf("attribute %q is not name=value", redactPart(part))
		}
		k = strings.ToLower(k)
		dv, err := url.PathUnescape(v)
		if err != nil {
			return fmt.Errorf("attribute %s: bad percent-encoding", k)
		}
		if _, dup := into[k]; dup {
			return fmt.Errorf("attribute %s is given twice", k)
		}
		into[k] = dv
	}
	return nil
}

func redactPart(p string) string {
	// Anywhere in the part, not only at its start: a malformed attribute such
	// as "=pin-value=1234" still carries the PIN.
	if strings.Contains(strings.ToLower(p), "pin-value") {
		return "pin-value=…"
	}
	return p
}

// String formats the URI canonically: attributes sorted, values escaped.
func (u *URI) String() string {
	if u.Scheme == SchemeFile {
		p := (&url.URL{Path: u.Path}).EscapedPath()
		if strings.HasPrefix(p, "//") {
			// "file://x" would read as host x: keep the path with an empty authority.
			return "file://" + p
		}
		return "file:" + p
	}
	var b strings.Builder
	b.WriteString(u.Scheme)
	b.WriteByte(':')
	b.WriteString(joinAttrs(u.Attrs, ";"))
	if len(u.Query) > 0 {
		b.WriteByte('?')
		b.WriteString(joinAttrs(u.Query, "&"))
	}
	return b.String()
}

func joinAttrs(m map[string]string, sep string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+escapeAttr(m[k]))
	}
	return strings.Join(parts, sep)
}

// escapeAttr escapes what would end an attribute; '/' and ':' stay readable.
func escapeAttr(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == ';' || c == '&' || c == '?' || c == '#' || c == '%' || c == '=' || c <= ' ' || c >= 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Redacted is String with any pin-value hidden, for logs and errors. A
// pin-value misplaced among the path attributes is hidden too.
func (u *URI) Redacted() string {
	_, inQuery := u.Query["pin-value"]
	_, inPath := u.Attrs["pin-value"]
	if !inQuery && !inPath {
		return u.String()
	}
	c := *u
	c.Attrs, c.Query = redactPIN(u.Attrs), redactPIN(u.Query)
	return c.String()
}

func redactPIN(m map[string]string) map[string]string {
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	if _, ok := c["pin-value"]; ok {
		c["pin-value"] = "REDACTED"
	}
	return c
}

// RedactURI hides a pin-value in a URI string, parsed or not. Every error and log
// line that names a key URI goes through it. A value ends where ParseURI would
// end it: at ';' or '?' among the path attributes, at '&' in the query.
func RedactURI(s string) string {
	var b strings.Builder
	rest, inQuery := s, false
	for {
		i := indexASCIIFold(rest, "pin-value=")
		if i < 0 {
			b.WriteString(rest)
			return b.String()
		}
		inQuery = inQuery || strings.IndexByte(rest[:i], '?') >= 0
		j := i + len("pin-value=")
		// The value runs to the next attribute separator of its part. '#'
		// is not one: a value may hold it (ParseURI refuses such a URI, but
		// the text still reaches an error or a log), so redacting through it
		// hides too much rather than leaking the rest of the PIN.
		stops := ";?"
		if inQuery {
			stops = "&"
		}
		b.WriteString(rest[:j])
		b.WriteString("REDACTED")
		end := strings.IndexAny(rest[j:], stops)
		if end < 0 {
			return b.String()
		}
		rest = rest[j+end:]
	}
}

// indexASCIIFold is strings.Index ignoring ASCII case. (strings.ToLower would
// not do: it rewrites invalid UTF-8, so its indexes do not fit s.)
func indexASCIIFold(s, lowerSubstr string) int {
	for i := 0; i+len(lowerSubstr) <= len(s); i++ {
		match := true
		for j := 0; j < len(lowerSubstr); j++ {
			c := s[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != lowerSubstr[j] {
				match = false
				break
			}
		}
		if match {
			return i
		}
	}
	return -1
}

// ValidKeyName reports whether name can name a key in any store: letters, digits,
// '.', '_' and '-', 1 to 64 of them, not starting with '.'.
func ValidKeyName(name string) error {
	if name == "" || len(name) > 64 || name[0] == '.' {
		return fmt.Errorf("keystore: key name %q: want 1-64 letters, digits, '.', '_' or '-', not starting with '.'", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("keystore: key name %q: want 1-64 letters, digits, '.', '_' or '-'", name)
		}
	}
	return nil
}
