//go:build cgo

package pkcs11store

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
)

// Keys made at the "factory" by pkcs11-tool are found by thingcert by label
// or by id, sign CSRs that openssl accepts, and are deleted, both halves.
func TestInteropPkcs11ToolKeys(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	login := []string{"--token-label", h.Label, "--login", "--pin", h.PIN}
	h.Tool(t, append(login, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "factory-ec", "--id", "0a0b")...)
	h.Tool(t, append(login, "--keypairgen", "--key-type", "rsa:2048", "--label", "factory-rsa", "--id", "0c")...)

	st := openStore(t, h.StoreURI())
	ctx := context.Background()
	base := "pkcs11:token=" + h.Label
	query := "?module-path=" + h.Module + "&pin-source=file:" + h.PINFile
	for _, c := range []struct {
		uri, canonical string
		alg            keystore.Algorithm
	}{
		{base + ";object=factory-ec" + query, base + ";object=factory-ec;id=%0A%0B" + query, keystore.ECDSAP256},
		{base + ";id=%0a%0b" + query, base + ";object=factory-ec;id=%0A%0B" + query, keystore.ECDSAP256},
		{base + ";object=factory-rsa;id=%0C" + query, base + ";object=factory-rsa;id=%0C" + query, keystore.RSA2048},
	} {
		k, err := st.Open(ctx, c.uri)
		if err != nil {
			t.Fatalf("Open(%s): %v", c.uri, err)
		}
		if k.URI() != c.canonical || k.Algorithm() != c.alg {
			t.Errorf("Open(%s) = %s (%s), want %s (%s)", c.uri, k.URI(), k.Algorithm(), c.canonical, c.alg)
		}
		d := sha256.Sum256([]byte("factory key"))
		opts := []crypto.SignerOpts{crypto.SHA256}
		if c.alg.IsRSA() {
			opts = append(opts, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
		}
		for _, o := range opts {
			sig, err := k.Sign(rand.Reader, d[:], o)
			if err != nil {
				t.Fatalf("Sign(%s): %v", c.uri, err)
			}
			var ok bool
			switch pub := k.Public().(type) {
			case *ecdsa.PublicKey:
				ok = ecdsa.VerifyASN1(pub, d[:], sig)
			case *rsa.PublicKey:
				if pss, isPSS := o.(*rsa.PSSOptions); isPSS {
					ok = rsa.VerifyPSS(pub, crypto.SHA256, d[:], sig, pss) == nil
				} else {
					ok = rsa.VerifyPKCS1v15(pub, crypto.SHA256, d[:], sig) == nil
				}
			}
			if !ok {
				t.Errorf("signature by %s (%T) does not verify", c.uri, o)
			}
		}
		csr, err := keystore.CreateCSR(k, "CN=factory-device", keystore.CSROptions{})
		if err != nil {
			t.Fatal(err)
		}
		testpeers.VerifyCSR(t, keystore.EncodeCSR(csr))
	}
	list, err := st.List(ctx)
	if err != nil || len(list) != 2 {
		t.Errorf("List = %v, %v; want the two factory keys", list, err)
	}
	if err := st.Delete(ctx, base+";object=factory-ec"+query); err != nil {
		t.Fatal(err)
	}
	out := h.Tool(t, append(login, "--list-objects")...)
	if strings.Contains(out, "factory-ec") {
		t.Errorf("after Delete pkcs11-tool still lists a half of factory-ec:\n%s", out)
	}
	if !strings.Contains(out, "factory-rsa") {
		t.Errorf("Delete of factory-ec took factory-rsa too:\n%s", out)
	}
	if _, err := st.Open(ctx, base+";object=factory-ec"+query); !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("Open after Delete: %v, want ErrNotFound", err)
	}
}

// Keys made by thingcert are seen by pkcs11-tool as sensitive, never
// extractable and made on the token, and pkcs11-tool can sign with them.
func TestInteropThingcertKeysInPkcs11Tool(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	st := openStore(t, h.StoreURI())
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		name := "made-by-thingcert-" + string(alg)
		k, err := st.Generate(context.Background(), must(st.KeyURI(name)), alg)
		if err != nil {
			t.Fatal(err)
		}
		out := h.Tool(t, "--token-label", h.Label, "--login", "--pin", h.PIN, "--list-objects", "--type", "privkey")
		block := objectBlock(out, name)
		if block == "" {
			t.Fatalf("pkcs11-tool does not list the private key %s:\n%s", name, out)
		}
		if !strings.Contains(block, "Access:     sensitive, always sensitive, never extractable, local") {
			t.Errorf("pkcs11-tool says of %s:\n%s\nwant Access: sensitive, always sensitive, never extractable, local", name, block)
		}
		if !strings.Contains(block, "Usage:      sign") || strings.Contains(block, "decrypt") || strings.Contains(block, "derive") {
			t.Errorf("pkcs11-tool says of %s:\n%s\nwant usage sign only", name, block)
		}

		dir := t.TempDir()
		d := sha256.Sum256([]byte("signed by pkcs11-tool"))
		in, sigFile := filepath.Join(dir, "digest"), filepath.Join(dir, "sig")
		if err := os.WriteFile(in, d[:], 0o600); err != nil {
			t.Fatal(err)
		}
		mech := "ECDSA"
		if alg.IsRSA() {
			mech = "SHA256-RSA-PKCS"
			if err := os.WriteFile(in, []byte("signed by pkcs11-tool"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		// By --id: pkcs11-tool 0.23 fails RSA signing by --label alone with
		// CKR_GENERAL_ERROR, for keys it made itself too.
		h.Tool(t, "--token-label", h.Label, "--login", "--pin", h.PIN, "--sign", "--mechanism", mech, "--id", hex.EncodeToString([]byte(name)),
			"--input-file", in, "--output-file", sigFile, "--signature-format", "openssl")
		sig, err := os.ReadFile(sigFile)
		if err != nil {
			t.Fatal(err)
		}
		switch pub := k.Public().(type) {
		case *ecdsa.PublicKey:
			if !ecdsa.VerifyASN1(pub, d[:], sig) {
				t.Errorf("pkcs11-tool's signature with %s does not verify", name)
			}
		case *rsa.PublicKey:
			if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, d[:], sig); err != nil {
				t.Errorf("pkcs11-tool's signature with %s does not verify: %v", name, err)
			}
		}
	}
}

// objectBlock returns pkcs11-tool's paragraph about the object labelled label.
func objectBlock(listing, label string) string {
	var blocks []string
	var cur []string
	for _, line := range strings.Split(listing, "\n") {
		if strings.HasSuffix(strings.SplitN(line, ";", 2)[0], "Object") && !strings.HasPrefix(line, " ") {
			blocks = append(blocks, strings.Join(cur, "\n"))
			cur = nil
		}
		cur = append(cur, line)
	}
	blocks = append(blocks, strings.Join(cur, "\n"))
	for _, b := range blocks {
		if strings.Contains(b, "label:      "+label+"\n") {
			return b
		}
	}
	return ""
}

func must(s string, err error) string {
	if err != nil {
		panic(err)
	}
	return s
}
