package pkcs11store

import (
	"strings"
	"testing"
)

// FuzzParseTokenURI checks what the store relies on: no panic; the canonical
// form parses back to the same URI (so a key's URI, List and KeyURI agree);
// the redacted form keeps no pin-value.
func FuzzParseTokenURI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=T;object=dev" + mod + "&pin-source=file:/etc/thingcert/pin",
		"pkcs11:token=My%20Token;id=%00%01%FF;type=private;object=a%3Bb" + mod + "&pin-source=/etc/pin",
		"pkcs11:serial=0123abcd;slot-id=7;manufacturer=SoftHSM%20project;model=SoftHSM%20v2" + mod + "&pin-source=file:///run/pin",
		"pkcs11:token=T;id=dev" + mod + "&pin-value=12%2634",
		"pkcs11:token=%3F%26%3B%25;object=%2F%3A" + mod + "%3F&pin-value=%3B%3F",
		"pkcs11:slot-id=18446744073709551615" + mod,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := parseTokenURI(s)
		if err != nil {
			return
		}
		again, err := parseTokenURI(u.String())
		if err != nil {
			t.Fatalf("%q parses, its canonical form %q does not: %v", s, u.String(), err)
		}
		if !equalURI(u, again) {
			t.Fatalf("%q: canonical form %q parses to %+v, want %+v", s, u.String(), again, u)
		}
		if again.String() != u.String() {
			t.Fatalf("canonical form is not stable: %q then %q", u.String(), again.String())
		}
		if u.HasPINValue {
			r, err := parseTokenURI(u.Redacted())
			if err != nil || r.PINValue != "REDACTED" || strings.Count(u.Redacted(), "pin-value=") != 1 {
				t.Fatalf("Redacted() = %q (%v) does not hide the PIN", u.Redacted(), err)
			}
		}
		if store := u.storeURI(); store.isKey() || !store.sameToken(u) {
			t.Fatalf("storeURI of %q = %q", s, store.String())
		}
	})
}
