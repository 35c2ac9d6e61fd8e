//go:build cgo

package pkcs11store

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/keystoretest"
)

// openStore opens uri and closes it when the test ends.
func openStore(t *testing.T, uri string) *Store {
	t.Helper()
	s, err := open(context.Background(), uri, keystore.Options{})
	if err != nil {
		t.Fatalf("Open(%s): %v", keystore.RedactURI(uri), err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	keystoretest.Run(t, keystoretest.Harness{
		NewStore:   func(t *testing.T) keystore.Store { return openStore(t, h.StoreURI()) },
		Algorithms: keystore.Algorithms(),
	})
}

// A token that offers only ECDSA: RSA keys are refused with ErrUnsupported,
// found out from the token's mechanism list. (SoftHSM 2.6's "-CKM_..." deny
// list has no effect; an allow list does.)
func TestConformanceWithoutRSA(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{ExtraConf: []string{"slots.mechanisms = CKM_EC_KEY_PAIR_GEN,CKM_ECDSA"}})
	keystoretest.Run(t, keystoretest.Harness{
		NewStore:   func(t *testing.T) keystore.Store { return openStore(t, h.StoreURI()) },
		Algorithms: []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDSAP384, keystore.ECDSAP521},
	})
	s := openStore(t, h.StoreURI())
	uri, _ := s.KeyURI("no-rsa")
	_, err := s.Generate(context.Background(), uri, keystore.RSA2048)
	if !errors.Is(err, keystore.ErrUnsupported) || !strings.Contains(err.Error(), "CKM_RSA_PKCS_KEY_PAIR_GEN") {
		t.Fatalf("Generate(rsa-2048) on a token without RSA key generation: %v; want ErrUnsupported naming CKM_RSA_PKCS_KEY_PAIR_GEN", err)
	}
}

func TestGeneratedKeyProtection(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	s := openStore(t, h.StoreURI())
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		uri, _ := s.KeyURI("prot-" + string(alg))
		k, err := s.Generate(context.Background(), uri, alg)
		if err != nil {
			t.Fatal(err)
		}
		p, err := k.(keystore.ProtectionReporter).Protection(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, a := range p.Attributes {
			got[a.Name] = a.Value
		}
		want := map[string]string{
			"sensitive": "true", "extractable": "false", "local": "true",
			"always-sensitive": "true", "never-extractable": "true", "private": "true",
			"token": h.Label, "token-serial": h.Serial, "token-model": "SoftHSM project SoftHSM v2",
		}
		for name, v := range want {
			if got[name] != v {
				t.Errorf("%s: protection %s = %q, want %q (all: %v)", alg, name, got[name], v, p.Attributes)
			}
		}
		if p.Backend != "pkcs11" || !p.Hardware {
			t.Errorf("%s: protection %+v, want backend pkcs11 and hardware", alg, p)
		}
	}
}

func TestOpenByLabelOrID(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	s := openStore(t, h.StoreURI())
	ctx := context.Background()
	uri, _ := s.KeyURI("dev")
	k, err := s.Generate(ctx, uri, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	want := "pkcs11:token=" + h.Label + ";object=dev;id=%64%65%76?module-path=" + h.Module + "&pin-source=file:" + h.PINFile
	if k.URI() != want || uri != want {
		t.Errorf("KeyURI = %s, key URI = %s, want %s", uri, k.URI(), want)
	}
	for _, u := range []string{
		"pkcs11:token=" + h.Label + ";object=dev?module-path=" + h.Module + "&pin-source=" + h.PINFile,
		"pkcs11:token=" + h.Label + ";id=dev?module-path=" + h.Module + "&pin-source=file://" + h.PINFile,
		"pkcs11:serial=" + h.Serial + ";id=%64%65%76;type=private?module-path=" + h.Module + "&pin-source=file:" + h.PINFile,
	} {
		ks, err := open(ctx, u, keystore.Options{})
		if err != nil {
			t.Fatalf("open store of %s: %v", u, err)
		}
		got, err := ks.Open(ctx, u)
		if err != nil {
			ks.Close()
			t.Fatalf("Open(%s): %v", u, err)
		}
		if !publicEqual(got.Public(), k.Public()) {
			t.Errorf("Open(%s) found another key", u)
		}
		if !strings.Contains(got.URI(), ";object=dev;id=%64%65%76?") {
			t.Errorf("Open(%s).URI() = %s, want label and id", u, got.URI())
		}
		ks.Close()
	}
	// Same label, other id, and same id, other label: both refused.
	for _, u := range []string{
		"pkcs11:token=" + h.Label + ";object=dev;id=%01?module-path=" + h.Module + "&pin-source=" + h.PINFile,
		"pkcs11:token=" + h.Label + ";object=other;id=dev?module-path=" + h.Module + "&pin-source=" + h.PINFile,
	} {
		if _, err := s.Generate(ctx, u, keystore.ECDSAP256); !errors.Is(err, keystore.ErrExists) {
			t.Errorf("Generate(%s): %v, want ErrExists", u, err)
		}
	}
}

func TestKeyURIOfAnotherToken(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	s := openStore(t, h.StoreURI())
	other := "pkcs11:token=elsewhere;object=dev?module-path=" + h.Module + "&pin-source=" + h.PINFile
	if _, err := s.Open(context.Background(), other); !errors.Is(err, keystore.ErrInvalidURI) {
		t.Fatalf("Open of a key URI naming another token: %v, want ErrInvalidURI", err)
	}
}

// Two tokens with one label: the label alone is refused as ambiguous, naming
// the serials; serial= or slot-id= picks one.
func TestAmbiguousTokenLabel(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{Label: "twin"})
	second := h.AddToken(t, "twin")
	_, err := open(context.Background(), h.StoreURI(), keystore.Options{})
	if err == nil || !strings.Contains(err.Error(), "2 tokens match") || !strings.Contains(err.Error(), second) || !strings.Contains(err.Error(), h.Serial) {
		t.Fatalf("Open with an ambiguous label: %v; want an error listing both serials", err)
	}
	s := openStore(t, "pkcs11:token=twin;serial="+second+"?module-path="+h.Module+"&pin-source="+h.PINFile)
	c, _ := s.current()
	if got := strings.TrimSpace(c.token.SerialNumber); got != second {
		t.Fatalf("serial= selected token %s, want %s", got, second)
	}
	bySlot := openStore(t, "pkcs11:slot-id="+strconv.FormatUint(uint64(c.slot), 10)+"?module-path="+h.Module+"&pin-source="+h.PINFile)
	if c2, _ := bySlot.current(); c2.slot != c.slot {
		t.Fatalf("slot-id= selected slot %d, want %d", c2.slot, c.slot)
	}
}

func TestPINSource(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		if err := os.Chmod(h.PINFile, mode); err != nil {
			t.Fatal(err)
		}
		_, err := open(context.Background(), h.StoreURI(), keystore.Options{})
		if !errors.Is(err, keystore.ErrInsecure) || !strings.Contains(err.Error(), "chmod 600 "+h.PINFile) {
			t.Errorf("PIN file mode %04o: %v; want ErrInsecure and the chmod that fixes it", mode, err)
		}
	}
	if err := os.Chmod(h.PINFile, 0o400); err != nil {
		t.Fatal(err)
	}
	s, err := open(context.Background(), h.StoreURI(), keystore.Options{})
	if err != nil {
		t.Fatalf("PIN file mode 0400: %v", err)
	}
	// PKCS#11 login belongs to the process: while a store is logged in, any
	// PIN "works". Close it so the wrong PIN below meets the token.
	s.Close()

	wrong := t.TempDir() + "/wrong.pin"
	if err := os.WriteFile(wrong, []byte("not-the-pin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = open(context.Background(), "pkcs11:token="+h.Label+"?module-path="+h.Module+"&pin-source="+wrong, keystore.Options{})
	if err == nil {
		s.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "wrong PIN") || strings.Contains(err.Error(), "not-the-pin") {
		t.Errorf("wrong PIN: %v; want a wrong-PIN error without the PIN", err)
	}
	s, err = open(context.Background(), "pkcs11:token="+h.Label+"?module-path="+h.Module, keystore.Options{})
	if err == nil {
		s.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "needs a PIN") {
		t.Errorf("no PIN: %v; want an error asking for pin-source", err)
	}
}

// pin-value works, with a warning that never carries the PIN; errors and the
// redacted URI do not carry it either.
func TestPINValue(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	var logs bytes.Buffer
	uri := "pkcs11:token=" + h.Label + ";object=inline?module-path=" + h.Module + "&pin-value=" + h.PIN
	st, err := Open(context.Background(), uri, keystore.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if !strings.Contains(logs.String(), "pin-value") || strings.Contains(logs.String(), h.PIN) {
		t.Errorf("log = %q; want a pin-value warning without the PIN", logs.String())
	}
	_, err = st.Open(context.Background(), uri)
	if !errors.Is(err, keystore.ErrNotFound) || strings.Contains(err.Error(), h.PIN) {
		t.Errorf("Open of a missing key: %v; want ErrNotFound without the PIN", err)
	}
	k, err := st.Generate(context.Background(), uri, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(k.URI(), "pin-value="+h.PIN) || strings.Contains(keystore.RedactURI(k.URI()), h.PIN) {
		t.Errorf("key URI %q should reopen the key (PIN inline) and redact to no PIN", keystore.RedactURI(k.URI()))
	}
}

// The private values of keys made here cannot be read: C_GetAttributeValue on
// CKA_VALUE (EC) and CKA_PRIVATE_EXPONENT (RSA) fails with
// CKR_ATTRIBUTE_SENSITIVE, asked through a raw PKCS#11 handle.
func TestPrivateValueIsSensitive(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	s := openStore(t, h.StoreURI())
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		uri, _ := s.KeyURI("sens-" + string(alg))
		k, err := s.Generate(context.Background(), uri, alg)
		if err != nil {
			t.Fatal(err)
		}
		err = readPrivateValue(t, s, k.(*Key))
		if code := pkcs11Code(err); code != ckrAttributeSensitive {
			t.Errorf("%s: reading the private value: %v; want CKR_ATTRIBUTE_SENSITIVE", alg, err)
		}
	}
}
