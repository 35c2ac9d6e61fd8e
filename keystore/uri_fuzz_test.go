package keystore

import (
	"maps"
	"strings"
	"testing"
)

// FuzzParseURI checks the properties the backends rely on: parsing never
// panics; a parsed URI formats to a string that parses back to the same URI;
// and neither Redacted nor RedactURI lets a pin-value through.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"file:/var/lib/thingcert/keys/device.pem",
		"file:///abs/path%20with%20space.pem",
		"pkcs11:token=T;object=dev;id=%64%65%76?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin",
		"pkcs11:token=My%20Token;serial=12ab;slot-id=3?module-path=/m.so&pin-value=1234",
		"PKCS11:TOKEN=a;;object=b?&pin-value=x%26y&module-path=/m",
		"pkcs11:token=a;pin-value=1234",
		"tpm:blob=/var/lib/thingcert/keys/dev.tpmkey?device=tcp:127.0.0.1:2321",
		"tpm:handle=0x81000010",
		"pkcs11:id=%00%ff;object=%3B%3F%26%3D%25",
		"pkcs11:a=b=c?d=e?f",
		"pkcs11:token=a;%zz=1?pin-value=12345678",
		"pkcs11:token=a?pin-value=12345678&pin-value=12345678",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			// A PIN of 8+ digits found nowhere else in a printable s must
			// not be in the error (shorter ones could be in the message by
			// chance, and %q escapes of unprintable bytes add digits).
			if pin, ok := pinValueIn(s); ok && len(pin) >= 8 && strings.Trim(pin, "0123456789") == "" &&
				printableASCII(s) && strings.Count(s, pin) == 1 && strings.Contains(err.Error(), pin) {
				t.Fatalf("error for %q carries the pin-value: %v", s, err)
			}
			return
		}
		again, err := ParseURI(u.String())
		if err != nil {
			t.Fatalf("ParseURI(%q) ok, but its String %q does not parse: %v", s, u.String(), err)
		}
		if again.Scheme != u.Scheme || again.Path != u.Path || !maps.Equal(again.Attrs, u.Attrs) || !maps.Equal(again.Query, u.Query) {
			t.Fatalf("round trip of %q through %q: got %+v, want %+v", s, u.String(), again, u)
		}
		for _, red := range []string{u.Redacted(), RedactURI(s), RedactURI(u.String())} {
			r, err := ParseURI(red)
			if err != nil {
				continue
			}
			for _, m := range []map[string]string{r.Attrs, r.Query} {
				if v, ok := m["pin-value"]; ok && v != "REDACTED" && v != "" {
					t.Fatalf("redacted form %q of %q still has pin-value %q", red, s, v)
				}
			}
		}
	})
}

// pinValueIn finds the raw text after "pin-value=" in s.
func pinValueIn(s string) (string, bool) {
	i := indexASCIIFold(s, "pin-value=")
	if i < 0 {
		return "", false
	}
	v := s[i+len("pin-value="):]
	if j := strings.IndexAny(v, "&;#?"); j >= 0 {
		v = v[:j]
	}
	return v, true
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// FuzzRedactURI checks RedactURI on any text around a pin-value, in every
// scheme's shape: no byte that occurs only in the PIN survives redaction.
func FuzzRedactURI(f *testing.F) {
	for _, seed := range [][3]string{
		{"pkcs11:token=a?module-path=/m.so&", "ab#cd", ""},
		{"pkcs11:token=a;", "12345678", ";object=k"},
		{"pkcs11:token=a?", "x;y#z", "&module-path=/m"},
		{"PKCS11:TOKEN=a?MODULE-PATH=/m&", "%41%42", "#frag"},
		{"tpm:blob=/k.tpmkey?device=/dev/tpmrm0&", "s3cr3t", ""},
		{"file:/var/lib/k.pem?", "hunter2", ""},
		{"pkcs11:?", "a?b", "&pin-value=again"},
	} {
		f.Add(seed[0], seed[1], seed[2], uint8(0))
		f.Add(seed[0], seed[1], seed[2], uint8(1))
	}
	f.Fuzz(func(t *testing.T, prefix, pin, suffix string, sepChoice uint8) {
		sep := []string{"", "&", ";"}[int(sepChoice)%3]
		if strings.ContainsAny(pin, "&;?") {
			return // those end the value; what follows is not the PIN
		}
		s := prefix + "pin-value=" + pin + sep + suffix
		rest := prefix + "pin-value=REDACTED" + sep + suffix
		var only []byte // bytes found in the PIN and nowhere else
		for i := 0; i < len(pin); i++ {
			if !strings.Contains(rest, pin[i:i+1]) {
				only = append(only, pin[i])
			}
		}
		out := RedactURI(s)
		for _, c := range only {
			if strings.IndexByte(out, c) >= 0 {
				t.Fatalf("RedactURI(%q) = %q keeps %q, a byte of the PIN %q", s, out, c, pin)
			}
		}
	})
}
