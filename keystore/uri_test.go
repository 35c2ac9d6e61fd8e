package keystore_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/keystore"
)

func TestParseURI(t *testing.T) {
	u, err := keystore.ParseURI("pkcs11:token=My%20Token;object=dev;id=%01%02?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin")
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme != "pkcs11" || u.Attrs["token"] != "My Token" || u.Attrs["id"] != "\x01\x02" || u.Query["module-path"] != "/usr/lib/softhsm/libsofthsm2.so" || u.Query["pin-source"] != "file:/etc/pin" {
		t.Fatalf("parsed %+v", u)
	}
	again, err := keystore.ParseURI(u.String())
	if err != nil || again.String() != u.String() {
		t.Fatalf("round trip: %q -> %v %v", u.String(), again, err)
	}
	f, err := keystore.ParseURI("file:///var/lib/thingcert/keys/a%20b.pem")
	if err != nil || f.Path != "/var/lib/thingcert/keys/a b.pem" {
		t.Fatalf("file: %+v %v", f, err)
	}
	for _, bad := range []string{
		"", "nokey", "file:relative/k.pem", "file://host/k.pem", "file:/k.pem?x=1",
		"pkcs11:token=a;token=b", "pkcs11:token", "pkcs11:=x", "pkcs11:token=%zz",
		"tpm:blob=/a#frag", "gopher:x",
	} {
		if _, err := keystore.ParseURI(bad); !errors.Is(err, keystore.ErrInvalidURI) {
			t.Errorf("ParseURI(%q) = %v, want ErrInvalidURI", bad, err)
		}
	}
}

func TestRedaction(t *testing.T) {
	const secret = "123456"
	s := "pkcs11:token=t;object=o?module-path=/m.so&pin-value=" + secret
	if r := keystore.RedactURI(s); strings.Contains(r, secret) {
		t.Errorf("RedactURI kept the PIN: %s", r)
	}
	u, err := keystore.ParseURI(s)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(u.Redacted(), secret) || u.Query["pin-value"] != secret {
		t.Errorf("Redacted %q, parsed pin %q", u.Redacted(), u.Query["pin-value"])
	}
	_, err = keystore.ParseURI("pkcs11:token=a;token=b?pin-value=" + secret)
	if err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("parse error leaks the PIN: %v", err)
	}
}

func FuzzParseURIRoundTrip(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=T;object=dev;id=%01?module-path=/x.so&pin-source=file:/p",
		"tpm:blob=/var/k.tpmkey?device=tcp:127.0.0.1:2321", "tpm:handle=0x81000010",
		"file:/a/b.pem", "pkcs11:token=a%3Bb", "pkcs11:?pin-value=1234",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := keystore.ParseURI(s)
		if err != nil {
			if u != nil {
				t.Fatalf("error with a result")
			}
			return
		}
		// What parses must print canonically and parse back to the same thing.
		again, err := keystore.ParseURI(u.String())
		if err != nil {
			t.Fatalf("ParseURI(%q).String() = %q does not parse: %v", s, u.String(), err)
		}
		if again.String() != u.String() {
			t.Fatalf("not canonical: %q -> %q -> %q", s, u.String(), again.String())
		}
		if pin := u.Query["pin-value"]; len(pin) > 3 && strings.Contains(u.Redacted(), "pin-value="+pin) {
			t.Fatalf("Redacted kept the PIN")
		}
	})
}
