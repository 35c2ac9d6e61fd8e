package emulator

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/internal/testpeers"
)

// mosq runs a mosquitto client (mosquitto_pub, mosquitto_sub, mosquitto_rr)
// against the emulator's listener with a device's files. It sends no SNI
// (-h 127.0.0.1), so the device must be registered in one account under a
// DEFAULT-mode CA.
type mosq struct {
	e    *testEmu
	dir  string
	root string
}

func newMosq(t *testing.T, e *testEmu) *mosq {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root-ca.pem")
	if err := os.WriteFile(root, e.RootCAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return &mosq{e: e, dir: dir, root: root}
}

func (m *mosq) args(t *testing.T, d *device, clientID string, extra ...string) []string {
	host, port, _ := strings.Cut(m.e.Addr(), ":")
	certPath, keyPath := d.writeFiles(t, m.dir, d.id[:16])
	return append([]string{"-h", host, "-p", port, "--cafile", m.root, "--cert", certPath, "--key", keyPath, "-i", clientID, "-V", "mqttv311"}, extra...)
}

func (m *mosq) run(t *testing.T, program string, args ...string) (string, error) {
	t.Helper()
	path := testpeers.Need(t, program)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		t.Logf("%s: %v\nstderr: %s\nstdout: %s", program, err, errb.String(), out.String())
	}
	return out.String(), err
}

func TestMosquittoClientsConnectAndAreRefused(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	m := newMosq(t, e)
	good := issue(t, ca, "good", certOpts{})
	register(t, e, "A", good, CertificateOptions{Thing: "dev-1"})
	if _, err := m.run(t, "mosquitto_pub", m.args(t, good, "dev-1", "-t", "hello", "-m", "hi", "-q", "1")...); err != nil {
		t.Fatalf("mosquitto_pub with a registered certificate: %v", err)
	}
	if ev := lastEvent(t, e, good.id); ev.Account != "A" {
		t.Fatalf("history: %+v", ev)
	}
	waitEvent(t, e, HistoryQuery{CertificateID: good.id}, func(ev ConnectionEvent) bool { return ev.Outcome == Accepted })

	unregistered := issue(t, ca, "stranger", certOpts{})
	_, err := m.run(t, "mosquitto_pub", m.args(t, unregistered, "dev-2", "-t", "hello", "-m", "hi")...)
	// libmosquitto sends the -h host as SNI even when it is an address: it
	// names no endpoint, so it counts as no SNI.
	expectRefused(t, e, unregistered, err, RuleNotRegistered, "127.0.0.1")

	// OpenSSL itself refuses RSA-1024 at its default security level: lower
	// it, so the emulator is the one refusing.
	weak := issue(t, ca, "weak", certOpts{key: rsaKey(t, 1024)})
	_, err = m.run(t, "mosquitto_pub", m.args(t, weak, "dev-3", "-t", "hello", "-m", "hi", "--tls-version", "tlsv1.2", "--ciphers", "DEFAULT:@SECLEVEL=0")...)
	expectRefused(t, e, weak, err, RuleAlgorithm, "127.0.0.1")

	// mosquitto_sub receives a job notification published by the emulator.
	e.clock.Advance(2 * time.Second)
	sub := exec.Command(testpeers.Need(t, "mosquitto_sub")[0], m.args(t, good, "dev-1", "-t", "$aws/things/dev-1/jobs/notify-next", "-C", "1", "-q", "1")...)
	var out bytes.Buffer
	sub.Stdout, sub.Stderr = &out, &out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sub.Wait() }()
	t.Cleanup(func() { _ = sub.Process.Kill() })
	waitSubscribed(t, e, "dev-1")
	if _, err := e.CreateJob(ctx, "A", Job{ID: "j1", Document: json.RawMessage(`{"op":"x"}`), Things: []string{"dev-1"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("mosquitto_sub: %v: %s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("mosquitto_sub received nothing")
	}
	var note jobsReply
	if err := json.Unmarshal(out.Bytes(), &note); err != nil || note.Execution == nil || note.Execution.JobID != "j1" {
		t.Fatalf("mosquitto_sub got %q (%v)", out.String(), err)
	}
}

// waitSubscribed waits until a client has a subscription on the broker.
func waitSubscribed(t *testing.T, e *testEmu, clientID string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, cl := range e.server.Clients.GetAll() {
			if sess := sessionOf(cl); sess != nil && !cl.Closed() && cl.State.Subscriptions.Len() > 0 {
				if _, _, id, _ := sess.connInfo(); id == clientID {
					return
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never subscribed", clientID)
}

// CreateCertificateFromCsr with a CSR made by `openssl req` and the mosquitto
// clients: the reply comes back on the requesting connection, so mosquitto_rr
// (publish and subscribe on one connection) carries the request.
func TestMosquittoCreateCertificateFromCSR(t *testing.T) {
	e, claim := claimSetup(t, Config{})
	m := newMosq(t, e)
	openssl := testpeers.Need(t, "openssl")[0]
	keyPath, csrPath := filepath.Join(m.dir, "dev.key"), filepath.Join(m.dir, "dev.csr")
	if out, err := exec.Command(openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
		"-keyout", keyPath, "-out", csrPath, "-subj", "/CN=sensor-77").CombinedOutput(); err != nil {
		t.Fatalf("openssl req: %v: %s", err, out)
	}
	csrPEM, err := os.ReadFile(csrPath)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{"certificateSigningRequest": string(csrPEM)})
	out, err := m.run(t, "mosquitto_rr", m.args(t, claim, "provisioner", "-t", topicCreateFromCSR, "-e", topicCreateFromCSR+"/accepted", "-m", string(body), "-W", "30", "-q", "1")...)
	if err != nil {
		t.Fatalf("mosquitto_rr CreateCertificateFromCsr: %v", err)
	}
	var acc csrAccepted
	if err := json.Unmarshal([]byte(out), &acc); err != nil {
		t.Fatalf("reply %q: %v", out, err)
	}
	cert, err := parseOneCert([]byte(acc.CertificatePEM))
	if err != nil {
		t.Fatal(err)
	}
	csr, err := parseCSR(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !csr.PublicKey.(*ecdsa.PublicKey).Equal(cert.PublicKey) {
		t.Fatal("the certificate does not carry the CSR's public key")
	}
	// openssl agrees: the certificate's public key is the one in the key file.
	certPath := filepath.Join(m.dir, "dev.pem")
	if err := os.WriteFile(certPath, []byte(acc.CertificatePEM), 0o600); err != nil {
		t.Fatal(err)
	}
	fromCert, err1 := exec.Command(openssl, "x509", "-in", certPath, "-noout", "-pubkey").Output()
	fromKey, err2 := exec.Command(openssl, "pkey", "-in", keyPath, "-pubout").Output()
	if err1 != nil || err2 != nil || !bytes.Equal(fromCert, fromKey) {
		t.Fatalf("openssl: certificate key %s, private key's %s (%v %v)", fromCert, fromKey, err1, err2)
	}

	// RegisterThing the same way, then connect with the new identity.
	body, _ = json.Marshal(map[string]any{"certificateOwnershipToken": acc.CertificateOwnershipToken, "parameters": map[string]string{"SerialNumber": "77"}})
	e.clock.Advance(2 * time.Second)
	const provision = "$aws/provisioning-templates/sensors/provision/json"
	out, err = m.run(t, "mosquitto_rr", m.args(t, claim, "provisioner", "-t", provision, "-e", provision+"/accepted", "-m", string(body), "-W", "30", "-q", "1")...)
	if err != nil {
		t.Fatalf("mosquitto_rr RegisterThing: %v", err)
	}
	var reg registerAccepted
	if err := json.Unmarshal([]byte(out), &reg); err != nil || reg.ThingName != "sensor-77" {
		t.Fatalf("RegisterThing reply %q: %v", out, err)
	}
	keyPEM, _ := os.ReadFile(keyPath)
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		t.Fatal("openssl wrote no PEM key")
	}
	dev := &device{cert: cert, pem: []byte(acc.CertificatePEM), keyPEM: keyPEM, id: acc.CertificateID}
	if _, err := m.run(t, "mosquitto_pub", m.args(t, dev, "sensor-77", "-t", "dt/sensor-77/hello", "-m", strconv.Itoa(77), "-q", "1")...); err != nil {
		t.Fatalf("connecting with the provisioned certificate: %v", err)
	}
}
