package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/filestore"

	"github.com/thingcert/thingcert/internal/testpeers"

	"github.com/thingcert/thingcert/emulator"
)

// runCLI runs thingcert with args and returns stdout and the error.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRootCmd(&out, &errb)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	if err != nil {
		t.Logf("thingcert %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), err
}

func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runCLI(t, args...)
	if err != nil {
		t.Fatalf("thingcert %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// writeCert makes a certificate (a CA when parent is nil) and writes it.
func writeCert(t *testing.T, dir, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
	}
	signer := key
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
		parent = tmpl
	} else {
		signer = parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	path := filepath.Join(dir, name+".pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key, path
}

func TestEmulatorCommandsOfflineAndOnline(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if _, err := runCLI(t, "emulator", "list", "accounts"); err == nil || exitCode(err) != 2 {
		t.Fatalf("no --state: %v, want a usage error", err)
	}

	// Offline: nothing runs on the folder.
	if out := mustCLI(t, "emulator", "add-account", "--state", state, "--name", "dev", "--prefix", "abc123"); strings.TrimSpace(out) != "abc123-ats.iot.us-east-1.amazonaws.com" {
		t.Fatalf("add-account printed %q", out)
	}
	caCert, caKey, caPath := writeCert(t, dir, "ca", nil, nil)
	mustCLI(t, "emulator", "register-ca", "--state", state, "--account", "dev", "--cert", caPath, "--mode", "SNI_ONLY")
	devCert, devKey, devPath := writeCert(t, dir, "device", caCert, caKey)
	id := strings.TrimSpace(mustCLI(t, "emulator", "register-cert", "--state", state, "--account", "dev", "--cert", devPath, "--thing", "dev-1"))
	if id != emulator.CertificateID(devCert.Raw) {
		t.Fatalf("register-cert printed %q", id)
	}
	mustCLI(t, "emulator", "create-template", "--state", state, "--account", "dev", "--name", "fleet", "--thing-name-param", "Serial", "--thing-name-prefix", "s-")
	mustCLI(t, "emulator", "create-job", "--state", state, "--account", "dev", "--job-id", "j1", "--thing", "dev-1", "--document-json", `{"op":"rotate"}`)
	var certs []emulator.Certificate
	if err := json.Unmarshal([]byte(mustCLI(t, "emulator", "list", "certs", "--state", state, "--json")), &certs); err != nil || len(certs) != 1 || certs[0].Mode != emulator.ModeSNIOnly || certs[0].Things[0] != "dev-1" {
		t.Fatalf("list certs: %+v %v", certs, err)
	}
	if out := mustCLI(t, "emulator", "job", "--state", state, "--account", "dev", "--thing", "dev-1", "--job-id", "j1"); !strings.Contains(out, "QUEUED") {
		t.Fatalf("job: %q", out)
	}
	// A file key and its CSR (thingcert's own key store), a certificate
	// issued by the emulator.
	keys := filepath.Join(dir, "keys")
	if err := os.Mkdir(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	store, err := keystore.Open(context.Background(), "file:"+keys+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	key, err := store.Generate(context.Background(), "file:"+filepath.Join(keys, "dev-2.pem"), keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	spkiKey, _ := x509.MarshalPKIXPublicKey(key.Public())
	pub := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spkiKey}))
	csr, err := keystore.CreateCSR(key, "CN=dev-2", keystore.CSROptions{})
	if err != nil {
		t.Fatal(err)
	}
	csrPath := filepath.Join(dir, "dev-2.csr")
	if err := os.WriteFile(csrPath, keystore.EncodeCSR(csr), 0o600); err != nil {
		t.Fatal(err)
	}
	issued := mustCLI(t, "emulator", "issue", "--state", state, "--account", "dev", "--csr", csrPath, "--thing", "dev-2", "--lifetime", "1h")
	b, _ := pem.Decode([]byte(issued))
	if b == nil {
		t.Fatalf("issue printed %q", issued)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if got := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})); got != pub {
		t.Fatalf("issued certificate's key %q, generated key %q", got, pub)
	}

	// Online: serve, then the same commands go through the admin socket.
	ctx, cancel := context.WithCancel(context.Background())
	var serveOut, serveErr testpeers.Buffer
	done := make(chan error, 1)
	go func() {
		root := newRootCmd(&serveOut, &serveErr)
		root.SetArgs([]string{"emulator", "serve", "--state", state, "--listen", "127.0.0.1:0"})
		done <- root.ExecuteContext(ctx)
	}()
	stop := sync.OnceValue(func() error { cancel(); return <-done })
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v\n%s", err, serveErr.String())
		}
	}()
	var addr string
	for deadline := time.Now().Add(20 * time.Second); addr == ""; {
		for _, line := range strings.Split(serveOut.String(), "\n") {
			if a, ok := strings.CutPrefix(line, "mqtt "); ok && strings.Contains(serveOut.String(), "endpoint dev ") {
				addr = a
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve printed no address: %q %s", serveOut.String(), serveErr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	mustCLI(t, "emulator", "set-status", "--state", state, "--account", "dev", "--cert-id", id, "--status", "REVOKED")

	rootPEM, err := os.ReadFile(filepath.Join(state, emulator.RootCAFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	conn, err := tls.Dial("tcp", addr, &tls.Config{
		RootCAs: pool, ServerName: "abc123-ats.iot.us-east-1.amazonaws.com",
		Certificates: []tls.Certificate{{Certificate: [][]byte{devCert.Raw}, PrivateKey: devKey}},
	})
	if err == nil {
		// TLS 1.3: the client learns of the refusal on its first read.
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil {
		t.Fatal("a REVOKED certificate completed the handshake")
	}
	var evs []emulator.ConnectionEvent
	for deadline := time.Now().Add(20 * time.Second); len(evs) == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if err := json.Unmarshal([]byte(mustCLI(t, "emulator", "history", "--state", state, "--outcome", "refused", "--json")), &evs); err != nil {
			t.Fatal(err)
		}
	}
	if len(evs) != 1 || evs[0].Rule != emulator.RuleStatus || evs[0].CertificateID != id {
		t.Fatalf("history: %+v", evs)
	}
	if !strings.Contains(serveErr.String(), "rule=status") {
		t.Errorf("the serve log does not explain the refusal:\n%s", serveErr.String())
	}

	if err := stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	// Offline again: the folder was released.
	if out := mustCLI(t, "emulator", "list", "certs", "--state", state); !strings.Contains(out, "REVOKED") {
		t.Fatalf("list certs after serve: %q", out)
	}
}
