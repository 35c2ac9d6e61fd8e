package tpmstore_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	keyfile "github.com/foxboron/go-tpm-keyfiles"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/tpmstore"
)

var ctx = context.Background()

// openStore opens a store with its own connection to the swtpm.
func openStore(t *testing.T, uri string) *tpmstore.Store {
	t.Helper()
	s, err := tpmstore.Open(ctx, uri, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// signAndVerify signs with every option crypto/tls uses for the key and
// checks each signature in software.
func signAndVerify(t *testing.T, k keystore.Key) {
	t.Helper()
	digest := sha256.Sum256([]byte("thingcert " + k.URI()))
	switch pub := k.Public().(type) {
	case *ecdsa.PublicKey:
		sig, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("Sign: %v", err)
		}
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			t.Fatal("ECDSA signature does not verify")
		}
	case *rsa.PublicKey:
		sig, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("Sign PKCS#1 v1.5: %v", err)
		}
		if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
			t.Fatal(err)
		}
		pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
		sig, err = k.Sign(rand.Reader, digest[:], pss)
		if err != nil {
			t.Fatalf("Sign PSS: %v", err)
		}
		if err := rsa.VerifyPSS(pub, crypto.SHA256, digest[:], sig, pss); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unexpected public key %T", pub)
	}
}

func csrVerifies(t *testing.T, k keystore.Key) {
	t.Helper()
	der, err := keystore.CreateCSR(k, "CN=tpm-interop", keystore.CSROptions{})
	if err != nil {
		t.Fatal(err)
	}
	testpeers.VerifyCSR(t, keystore.EncodeCSR(der))
}

func attr(t *testing.T, k keystore.Key, name string) string {
	t.Helper()
	p, err := k.(keystore.ProtectionReporter).Protection(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range p.Attributes {
		if a.Name == name {
			return a.Value
		}
	}
	t.Fatalf("Protection has no %s attribute: %+v", name, p.Attributes)
	return ""
}

// TestHandleForm makes persistent keys through thingcert, checks their
// attributes with tpm2_readpublic, and uses and deletes them from a new
// connection.
func TestHandleForm(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	dev := "?device=" + sw.Device()
	ecURI, rsaURI := "tpm:handle=0x81000020"+dev, "tpm:handle=0x81000021"+dev

	s := openStore(t, "tpm:blob-dir="+t.TempDir()+dev)
	ec, err := s.Generate(ctx, ecURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	if ec.URI() != ecURI {
		t.Errorf("URI() = %s, want %s", ec.URI(), ecURI)
	}
	signAndVerify(t, ec)
	rk, err := s.Generate(ctx, rsaURI, keystore.RSA2048)
	if err != nil {
		t.Fatal(err)
	}
	signAndVerify(t, rk)
	if _, err := s.Generate(ctx, ecURI, keystore.ECDSAP256); !errors.Is(err, keystore.ErrExists) {
		t.Errorf("Generate on a taken handle: %v, want ErrExists", err)
	}
	if _, err := s.Generate(ctx, "tpm:handle=0x81000001"+dev, keystore.ECDSAP256); err == nil {
		t.Error("Generate at the SRK handle 0x81000001 was accepted")
	}
	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(list, ecURI) || !slices.Contains(list, rsaURI) {
		t.Errorf("List() = %v, want both handles", list)
	}
	if got := attr(t, ec, "storage"); got != "handle" {
		t.Errorf("storage = %s, want handle", got)
	}
	ecPub := ec.Public()
	s.Close()

	// The TPM's own view of thingcert's key, through tpm2-tools.
	out := sw.Tool("tpm2_readpublic", "-c", "0x81000020")
	m := regexp.MustCompile(`(?m)^attributes:\s*\n\s*value:\s*(\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no attributes in tpm2_readpublic output:\n%s", out)
	}
	for _, want := range []string{"fixedtpm", "fixedparent", "sensitivedataorigin", "userwithauth", "sign"} {
		if !slices.Contains(strings.Split(m[1], "|"), want) {
			t.Errorf("tpm2_readpublic attributes %s lack %s", m[1], want)
		}
	}
	if strings.Contains(m[1], "decrypt") || strings.Contains(m[1], "restricted") {
		t.Errorf("a signing key should be neither decrypt nor restricted: %s", m[1])
	}

	s = openStore(t, "tpm:"+dev)
	k, err := s.Open(ctx, ecURI)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Public().(*ecdsa.PublicKey).Equal(ecPub) {
		t.Fatal("reopened persistent key has another public key")
	}
	signAndVerify(t, k)
	for _, u := range []string{ecURI, rsaURI} {
		if err := s.Delete(ctx, u); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Open(ctx, u); !errors.Is(err, keystore.ErrNotFound) {
			t.Errorf("Open after Delete: %v, want ErrNotFound", err)
		}
		if err := s.Delete(ctx, u); !errors.Is(err, keystore.ErrNotFound) {
			t.Errorf("second Delete: %v, want ErrNotFound", err)
		}
	}
	if _, err := k.Sign(rand.Reader, make([]byte, 32), crypto.SHA256); err == nil {
		t.Error("a deleted key still signs")
	}
	s.Close()
	if out := sw.Tool("tpm2_getcap", "handles-persistent"); strings.Contains(out, "0x81000020") || strings.Contains(out, "0x81000021") {
		t.Errorf("deleted keys still persistent:\n%s", out)
	}
}

// TestToolsMadeKeys: keys made and persisted by tpm2-tools, one with an
// authorization value, are usable through tpm:handle=.
func TestToolsMadeKeys(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	// swtpm has no resource manager and tpm2-tools leave objects loaded:
	// flush them after each step or the TPM's three object slots fill up.
	sw.Tool("tpm2_createprimary", "-C", "o", "-G", "ecc256", "-c", "primary.ctx")
	sw.Tool("tpm2_flushcontext", "-t")
	sw.Tool("tpm2_create", "-C", "primary.ctx", "-G", "ecc256", "-u", "ec.pub", "-r", "ec.priv")
	sw.Tool("tpm2_flushcontext", "-t")
	sw.Tool("tpm2_create", "-C", "primary.ctx", "-G", "rsa2048", "-p", "hunter2", "-u", "rsa.pub", "-r", "rsa.priv")
	sw.Tool("tpm2_flushcontext", "-t")
	sw.Tool("tpm2_load", "-C", "primary.ctx", "-u", "ec.pub", "-r", "ec.priv", "-c", "ec.ctx")
	sw.Tool("tpm2_evictcontrol", "-C", "o", "-c", "ec.ctx", "0x81000010")
	sw.Tool("tpm2_flushcontext", "-t")
	sw.Tool("tpm2_load", "-C", "primary.ctx", "-u", "rsa.pub", "-r", "rsa.priv", "-c", "rsa.ctx")
	sw.Tool("tpm2_evictcontrol", "-C", "o", "-c", "rsa.ctx", "0x81000011")
	sw.Tool("tpm2_flushcontext", "-t")
	sw.Tool("tpm2_readpublic", "-c", "0x81000010", "-f", "pem", "-o", "ec.pem")

	dir := t.TempDir()
	authFile := filepath.Join(dir, "rsa-auth")
	if err := os.WriteFile(authFile, []byte("hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := "device=" + sw.Device()
	s := openStore(t, "tpm:?"+dev)

	ec, err := s.Open(ctx, "tpm:handle=0x81000010?"+dev)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := os.ReadFile(filepath.Join(sw.StateDir, "ec.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pemBytes)
	toolPub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !ec.Public().(*ecdsa.PublicKey).Equal(toolPub) {
		t.Fatal("thingcert reads another public key than tpm2_readpublic")
	}
	signAndVerify(t, ec)
	csrVerifies(t, ec)

	rsaURI := "tpm:handle=0x81000011?auth-source=" + authFile + "&" + dev
	rk, err := s.Open(ctx, rsaURI)
	if err != nil {
		t.Fatal(err)
	}
	signAndVerify(t, rk)
	csrVerifies(t, rk)
	if got := attr(t, rk, "authValue"); !strings.HasPrefix(got, "set") || strings.Contains(got, "hunter2") {
		t.Errorf("authValue attribute = %q", got)
	}

	// Without its authorization value the key does not sign, and says why.
	noAuth, err := s.Open(ctx, "tpm:handle=0x81000011?"+dev)
	if err != nil {
		t.Fatal(err)
	}
	_, err = noAuth.Sign(rand.Reader, make([]byte, 32), crypto.SHA256)
	if err == nil || !strings.Contains(err.Error(), "wrong authorization value") {
		t.Errorf("Sign without the authorization value: %v", err)
	}
	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(list, "tpm:handle=0x81000010?"+dev) || !slices.Contains(list, "tpm:handle=0x81000011?"+dev) {
		t.Errorf("List() = %v, want the tools' keys", list)
	}
}

// TestPersistentSRKReused: with a storage key at 0x81000001 thingcert makes
// keys under it (no primary key made) and the key file names it.
func TestPersistentSRKReused(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	sw.Tool("tpm2_createprimary", "-C", "o", "-G", "ecc256:aes128cfb", "-a",
		"fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt", "-c", "srk.ctx")
	sw.Tool("tpm2_evictcontrol", "-C", "o", "-c", "srk.ctx", "0x81000001")
	sw.Tool("tpm2_flushcontext", "-t")

	dir := t.TempDir()
	s := openStore(t, "tpm:blob-dir="+dir+"?device="+sw.Device())
	u, _ := s.KeyURI("under-srk")
	k, err := s.Generate(ctx, u, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	signAndVerify(t, k)
	if got := attr(t, k, "parent"); !strings.HasPrefix(got, "0x81000001") {
		t.Errorf("parent = %s, want 0x81000001", got)
	}
	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range list {
		if strings.Contains(l, "0x81000001") {
			t.Errorf("List() includes the SRK: %v", list)
		}
	}
	s.Close()
	b, err := os.ReadFile(filepath.Join(dir, "under-srk.tpmkey"))
	if err != nil {
		t.Fatal(err)
	}
	tk, err := keyfile.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if tk.Parent != 0x81000001 {
		t.Errorf("key file parent = %#x, want 0x81000001", uint32(tk.Parent))
	}
	if out := sw.Tool("tpm2_getcap", "handles-transient"); out != "" {
		t.Errorf("a primary key was made or left loaded although an SRK is persistent: %s", out)
	}
}

// TestBlobSurvivesRestart: a key file made before a TPM restart loads and
// signs after it, as after a device reboot.
func TestBlobSurvivesRestart(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	dir := t.TempDir()
	s := openStore(t, "tpm:blob-dir="+dir+"?device="+sw.Device())
	pubs := map[string]crypto.PublicKey{}
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		u, _ := s.KeyURI("restart-" + string(alg))
		k, err := s.Generate(ctx, u, alg)
		if err != nil {
			t.Fatal(err)
		}
		pubs[string(alg)] = k.Public()
	}
	s.Close()
	pid := sw.PID()
	sw.Restart()
	if sw.PID() == pid {
		t.Fatal("swtpm was not restarted")
	}

	s = openStore(t, "tpm:blob-dir="+dir+"?device="+sw.Device())
	for alg, pub := range pubs {
		u, _ := s.KeyURI("restart-" + alg)
		k, err := s.Open(ctx, u)
		if err != nil {
			t.Fatalf("after restart: %v", err)
		}
		if !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()) {
			t.Fatalf("%s: another public key after restart", alg)
		}
		signAndVerify(t, k)
	}
}

// TestPSSSaltMismatch asks for a salt length the TPM cannot give (the TPM
// always uses the hash length): the signature is caught before it is returned.
func TestPSSSaltMismatch(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	s := openStore(t, "tpm:blob-dir="+t.TempDir()+"?device="+sw.Device())
	u, _ := s.KeyURI("pss")
	k, err := s.Generate(ctx, u, keystore.RSA2048)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("m"))
	_, err = k.Sign(rand.Reader, digest[:], &rsa.PSSOptions{SaltLength: 20, Hash: crypto.SHA256})
	if err == nil || !strings.Contains(err.Error(), "32-byte salt, but 20 bytes were asked for") {
		t.Fatalf("Sign with a 20-byte salt: %v; want the salt mismatch explained", err)
	}
	// Auto accepts what the TPM does.
	sig, err := k.Sign(rand.Reader, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPSS(k.Public().(*rsa.PublicKey), crypto.SHA256, digest[:], sig, nil); err != nil {
		t.Fatal(err)
	}
}

// TestAuthValue: a key file made with an authorization value needs it.
func TestAuthValue(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	dir := t.TempDir()
	authFile := filepath.Join(t.TempDir(), "auth")
	if err := os.WriteFile(authFile, []byte("correct horse"), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := "device=" + sw.Device()
	s := openStore(t, "tpm:blob-dir="+dir+"?auth-source="+authFile+"&"+dev)
	u, _ := s.KeyURI("authed")
	if !strings.Contains(u, "auth-source="+authFile) {
		t.Fatalf("KeyURI %s lost the store's auth-source", u)
	}
	k, err := s.Generate(ctx, u, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	signAndVerify(t, k)
	b, _ := os.ReadFile(filepath.Join(dir, "authed.tpmkey"))
	if tk, err := keyfile.Decode(b); err != nil || tk.EmptyAuth {
		t.Fatalf("key file should record a non-empty authorization (err %v)", err)
	}
	if bytes.Contains(b, []byte("correct horse")) {
		t.Fatal("the authorization value is in the key file")
	}
	bare := "tpm:blob=" + filepath.Join(dir, "authed.tpmkey") + "?" + dev
	if _, err := s.Open(ctx, bare); err == nil || !strings.Contains(err.Error(), "auth-source=") {
		t.Errorf("Open without auth-source: %v", err)
	}
	if err := os.Chmod(authFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(ctx, u); !errors.Is(err, keystore.ErrInsecure) {
		t.Errorf("Open with a world-readable auth file: %v, want ErrInsecure", err)
	}
	if err := os.Chmod(authFile, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(authFile, []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, "tpm:blob-dir="+dir+"?auth-source="+authFile+"&"+dev)
	s.Close()
	k2, err := s2.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k2.Sign(rand.Reader, make([]byte, 32), crypto.SHA256); err == nil || !strings.Contains(err.Error(), "wrong authorization value") {
		t.Errorf("Sign with a wrong authorization value: %v", err)
	}
}

// opensslModules finds the folder of OpenSSL's providers.
func tpm2Provider(t *testing.T) {
	t.Helper()
	openssl := testpeers.Need(t, "openssl")[0]
	out, err := exec.Command(openssl, "version", "-m").Output()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`MODULESDIR: "([^"]+)"`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("openssl version -m: %s", out)
	}
	testpeers.NeedFile(t, filepath.Join(string(m[1]), "tpm2.so"), "the tpm2-openssl provider (Debian package tpm2-openssl)")
}

// TestTPM2OpenSSLReadsKeyFiles: tpm2-openssl loads thingcert's key files and
// signs with them, so the files are the standard TSS2 format.
func TestTPM2OpenSSLReadsKeyFiles(t *testing.T) {
	tpm2Provider(t)
	sw := testpeers.StartSWTPM(t)
	dir := t.TempDir()
	s := openStore(t, "tpm:blob-dir="+dir+"?device="+sw.Device())
	pubs := map[string]crypto.PublicKey{}
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		u, _ := s.KeyURI(string(alg))
		k, err := s.Generate(ctx, u, alg)
		if err != nil {
			t.Fatal(err)
		}
		pubs[string(alg)] = k.Public()
	}
	s.Close()

	msg := filepath.Join(dir, "msg")
	if err := os.WriteFile(msg, []byte("signed by tpm2-openssl"), 0o600); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("signed by tpm2-openssl"))
	for alg, pub := range pubs {
		keyFile := filepath.Join(dir, alg+".tpmkey")
		run := func(args ...string) []byte {
			cmd := exec.Command("openssl", args...)
			cmd.Env = append(os.Environ(), "TPM2OPENSSL_TCTI="+sw.TCTI())
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
			}
			return out
		}
		out := run("pkey", "-provider", "tpm2", "-provider", "default", "-in", keyFile, "-pubout")
		blk, _ := pem.Decode(out)
		if blk == nil {
			t.Fatalf("%s: openssl printed no public key: %s", alg, out)
		}
		got, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(got) {
			t.Fatalf("%s: tpm2-openssl reads another public key", alg)
		}
		sigFile := filepath.Join(dir, alg+".sig")
		// The base provider, not default: default would try to sign itself.
		run("pkeyutl", "-provider", "tpm2", "-provider", "base", "-sign", "-inkey", keyFile, "-rawin", "-digest", "sha256", "-in", msg, "-out", sigFile)
		sig, err := os.ReadFile(sigFile)
		if err != nil {
			t.Fatal(err)
		}
		switch p := pub.(type) {
		case *ecdsa.PublicKey:
			if !ecdsa.VerifyASN1(p, digest[:], sig) {
				t.Errorf("%s: tpm2-openssl's signature does not verify", alg)
			}
		case *rsa.PublicKey:
			if err := rsa.VerifyPKCS1v15(p, crypto.SHA256, digest[:], sig); err != nil {
				t.Errorf("%s: tpm2-openssl's signature does not verify: %v", alg, err)
			}
		}
	}
}
