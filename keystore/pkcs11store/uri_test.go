package pkcs11store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/keystore"
)

const mod = "?module-path=/usr/lib/softhsm/libsofthsm2.so"

func TestParseTokenURI(t *testing.T) {
	slot := uint(7)
	for _, c := range []struct {
		in        string
		want      tokenURI
		canonical string
	}{
		{
			in:        "pkcs11:token=T;object=dev" + mod + "&pin-source=file:/etc/thingcert/pin",
			want:      tokenURI{Token: "T", Object: "dev", ModulePath: "/usr/lib/softhsm/libsofthsm2.so", PINFile: "/etc/thingcert/pin"},
			canonical: "pkcs11:token=T;object=dev" + mod + "&pin-source=file:/etc/thingcert/pin",
		},
		{
			// RFC 7512's own example style: percent-encoded id, spaces in labels.
			in:        "pkcs11:token=My%20Token;id=%00%01%FF;type=private;object=a%3Bb" + mod + "&pin-source=/etc/pin",
			want:      tokenURI{Token: "My Token", Object: "a;b", ID: []byte{0, 1, 0xff}, ModulePath: "/usr/lib/softhsm/libsofthsm2.so", PINFile: "/etc/pin"},
			canonical: "pkcs11:token=My%20Token;object=a%3Bb;id=%00%01%FF" + mod + "&pin-source=file:/etc/pin",
		},
		{
			in:        "pkcs11:serial=0123abcd;slot-id=7;manufacturer=SoftHSM%20project;model=SoftHSM%20v2" + mod + "&pin-source=file:///run/pin",
			want:      tokenURI{Serial: "0123abcd", SlotID: &slot, Manufacturer: "SoftHSM project", Model: "SoftHSM v2", ModulePath: "/usr/lib/softhsm/libsofthsm2.so", PINFile: "/run/pin"},
			canonical: "pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2;serial=0123abcd;slot-id=7" + mod + "&pin-source=file:/run/pin",
		},
		{
			in:        "pkcs11:token=T;id=dev" + mod + "&pin-value=12%2634",
			want:      tokenURI{Token: "T", ID: []byte("dev"), ModulePath: "/usr/lib/softhsm/libsofthsm2.so", PINValue: "12&34", HasPINValue: true},
			canonical: "pkcs11:token=T;id=%64%65%76" + mod + "&pin-value=12%2634",
		},
	} {
		got, err := parseTokenURI(c.in)
		if err != nil {
			t.Errorf("parseTokenURI(%s): %v", c.in, err)
			continue
		}
		if !equalURI(got, &c.want) {
			t.Errorf("parseTokenURI(%s) = %+v, want %+v", c.in, got, c.want)
		}
		if got.String() != c.canonical {
			t.Errorf("parseTokenURI(%s).String() = %s, want %s", c.in, got.String(), c.canonical)
		}
		if got.HasPINValue && strings.Contains(got.Redacted(), got.PINValue) {
			t.Errorf("Redacted() = %s carries the PIN", got.Redacted())
		}
	}
}

func equalURI(a, b *tokenURI) bool {
	slot := (a.SlotID == nil) == (b.SlotID == nil) && (a.SlotID == nil || *a.SlotID == *b.SlotID)
	return slot && a.Token == b.Token && a.Manufacturer == b.Manufacturer && a.Model == b.Model && a.Serial == b.Serial &&
		a.Object == b.Object && bytes.Equal(a.ID, b.ID) && a.ModulePath == b.ModulePath && a.PINFile == b.PINFile &&
		a.PINValue == b.PINValue && a.HasPINValue == b.HasPINValue
}

func TestParseTokenURIRefuses(t *testing.T) {
	for _, c := range []struct{ in, why string }{
		{"file:/etc/key.pem", "not a pkcs11: URI"},
		{"pkcs11:token=T", "module-path is missing"},
		{"pkcs11:object=dev" + mod, "no token selected"},
		{"pkcs11:token=T" + "?module-path=libsofthsm2.so", "absolute path"},
		{"pkcs11:token=T?module-name=softhsm2", "module-name is not supported"},
		{"pkcs11:token=T;slot-description=x" + mod, "slot-description is not supported"},
		{"pkcs11:token=T;color=blue" + mod, "unknown attribute color"},
		{"pkcs11:token=T" + mod + "&pin-file=/x", "unknown query attribute pin-file"},
		{"pkcs11:token=T;type=cert" + mod, "type=cert"},
		{"pkcs11:slot-id=one" + mod, "not a decimal number"},
		{"pkcs11:token=T;id=" + mod, "id is empty"},
		{"pkcs11:token=T" + mod + "&pin-source=etc/pin", "absolute path"},
		{"pkcs11:token=T" + mod + "&pin-source=%7C/bin/pinentry", "only from a file"},
		{"pkcs11:token=T" + mod + "&pin-source=/etc/pin&pin-value=12345678", "both pin-source and pin-value"},
		{"pkcs11:token=T" + mod + "&pin-value=", "pin-value is empty"},
		{"pkcs11:token=T;token=U" + mod, "given twice"},
		{"pkcs11:token=T;pin-value=12345678" + mod, "unknown attribute pin-value"},
	} {
		_, err := parseTokenURI(c.in)
		if !errors.Is(err, keystore.ErrInvalidURI) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("parseTokenURI(%s): %v; want ErrInvalidURI saying %q", c.in, err, c.why)
		}
		if err != nil && strings.Contains(err.Error(), "12345678") {
			t.Errorf("parseTokenURI(%s): the error carries the PIN: %v", c.in, err)
		}
	}
}

func TestReadPINFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		name, content string
		mode          os.FileMode
		pin           string
	}{
		{"lf", "1234\n", 0o600, "1234"},
		{"crlf", "1234\r\n", 0o400, "1234"},
		{"bare", "12 34", 0o600, "12 34"},
	} {
		pin, err := readPINFile(write(c.name, c.content, c.mode))
		if err != nil || pin != c.pin {
			t.Errorf("%s: readPINFile = %q, %v; want %q", c.name, pin, err, c.pin)
		}
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644, 0o606} {
		p := write("open", "1234\n", mode)
		_, err := readPINFile(p)
		if !errors.Is(err, keystore.ErrInsecure) || !strings.Contains(err.Error(), "chmod 600 "+p) {
			t.Errorf("mode %04o: %v; want ErrInsecure and `chmod 600 %s`", mode, err, p)
		}
		if err != nil && strings.Contains(err.Error(), "1234") {
			t.Errorf("the error carries the PIN: %v", err)
		}
	}
	for _, c := range []struct{ name, content, why string }{
		{"empty", "\n", "is empty"},
		{"long", strings.Repeat("1", maxPINLen+1), "longer than"},
	} {
		if _, err := readPINFile(write(c.name, c.content, 0o600)); err == nil || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: %v; want an error saying %q", c.name, err, c.why)
		}
	}
	if _, err := readPINFile(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory as PIN file: %v", err)
	}
	if _, err := readPINFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing PIN file: %v", err)
	}
}
