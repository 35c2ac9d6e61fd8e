package emulator

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// testClock is an injected clock that moves only when told.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *testClock {
	return &testClock{t: time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// logBuffer collects the emulator's log for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// refusalLogged finds the log line of a refusal by rule and certificate ID.
func (b *logBuffer) refusalLogged(rule Rule, certID string) string {
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.Contains(line, "connection refused") && strings.Contains(line, "rule="+string(rule)) && strings.Contains(line, "cert_id="+certID) {
			return line
		}
	}
	return ""
}

type testEmu struct {
	*Emulator
	clock *testClock
	log   *logBuffer
}

// startEmu runs an emulator in memory (or in cfg.StateDir) with a test clock and
// a captured log, closed when the test ends.
func startEmu(t *testing.T, cfg Config) *testEmu {
	t.Helper()
	clock := newClock()
	logs := &logBuffer{}
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg = storeChecked(t, cfg)
	e, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("starting the emulator: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("closing the emulator: %v", err)
		}
		if t.Failed() {
			t.Logf("emulator log:\n%s", logs.String())
		}
	})
	return &testEmu{Emulator: e, clock: clock, log: logs}
}

// testCA is a CA made for a test.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
	pem  []byte
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2090, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: encodeCert(der)}
}

// device is a device certificate and key made for a test.
type device struct {
	cert   *x509.Certificate
	pem    []byte
	key    crypto.Signer
	keyPEM []byte
	id     string
	chain  [][]byte // intermediates the device sends after its certificate
}

func (d *device) tls() tls.Certificate {
	return tls.Certificate{Certificate: append([][]byte{d.cert.Raw}, d.chain...), PrivateKey: d.key, Leaf: d.cert}
}

type certOpts struct {
	key       crypto.Signer // default: a new P-256 key
	org       string        // the subject's Organization, if set
	notBefore time.Time
	notAfter  time.Time
}

// issue makes a device certificate signed by ca (or self-signed when ca is
// nil) with raw crypto/x509, so keys keystore refuses (RSA-1024, P-224) work.
func issue(t testing.TB, ca *testCA, cn string, o certOpts) *device {
	t.Helper()
	key := o.key
	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	}
	if o.notBefore.IsZero() {
		o.notBefore = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn, Organization: nonEmpty(o.org)},
		NotBefore: o.notBefore, NotAfter: o.notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &device{cert: cert, pem: encodeCert(der), key: key, keyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), id: CertificateID(der)}
}

func rsaKey(t testing.TB, bits int) crypto.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// writeFiles writes a device's PEMs into dir for command-line clients.
func (d *device) writeFiles(t testing.TB, dir, name string) (certPath, keyPath string) {
	t.Helper()
	certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certPath, d.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, d.keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// mqttClient is a paho client with the messages it received.
type mqttClient struct {
	paho.Client
	mu   sync.Mutex
	msgs []paho.Message
	got  chan struct{}
	lost chan error
}

type dialOpts struct {
	account   string // SNI of this account; "" sends no SNI
	alpn      bool   // use the ALPN listener with x-amzn-mqtt-ca
	noALPN    bool   // use the ALPN listener without ALPN
	tlsMax    uint16
	serverSNI string // raw SNI, overriding account
}

// dial connects a paho client to the emulator.
func dial(t *testing.T, e *testEmu, d *device, clientID string, o dialOpts) (*mqttClient, error) {
	t.Helper()
	cfg := e.ClientTLS(o.account)
	// GetClientCertificate sends the certificate whatever the server asks
	// for, as a device does.
	cert := d.tls()
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	cfg.MaxVersion = o.tlsMax
	if o.serverSNI != "" {
		cfg.ServerName = o.serverSNI
	}
	addr := e.Addr()
	if o.alpn || o.noALPN {
		addr = e.ALPNAddr()
		if o.alpn {
			cfg.NextProtos = []string{alpnMQTT}
		}
	}
	c := &mqttClient{got: make(chan struct{}, 1000), lost: make(chan error, 1)}
	opts := paho.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(clientID).SetTLSConfig(cfg).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(true).
		SetConnectTimeout(20 * time.Second).SetKeepAlive(60 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { c.add(m) }).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case c.lost <- err:
			default:
			}
		})
	c.Client = paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(30 * time.Second) {
		t.Fatalf("paho connect did not finish")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, nil
}

func mustDial(t *testing.T, e *testEmu, d *device, clientID string, o dialOpts) *mqttClient {
	t.Helper()
	c, err := dial(t, e, d, clientID, o)
	if err != nil {
		t.Fatalf("connecting %s as %q: %v", d.id[:12], clientID, err)
	}
	return c
}

func (c *mqttClient) add(m paho.Message) {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
	c.got <- struct{}{}
}

func (c *mqttClient) subscribe(t *testing.T, filters ...string) {
	t.Helper()
	for _, f := range filters {
		tok := c.Subscribe(f, 1, func(_ paho.Client, m paho.Message) { c.add(m) })
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribing to %s: %v", f, tok.Error())
		}
		if codes := tok.(*paho.SubscribeToken).Result(); codes[f] > 1 {
			t.Fatalf("subscription to %s refused (code %#x)", f, codes[f])
		}
	}
}

func (c *mqttClient) publish(t *testing.T, topic string, payload any) {
	t.Helper()
	var b []byte
	switch p := payload.(type) {
	case []byte:
		b = p
	case string:
		b = []byte(p)
	default:
		b, _ = json.Marshal(p)
	}
	tok := c.Publish(topic, 1, false, b)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publishing to %s: %v", topic, tok.Error())
	}
}

// await waits for the next message on topic (received after skip earlier
// ones) and decodes its JSON payload into out.
func (c *mqttClient) await(t *testing.T, topic string, out any) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		c.mu.Lock()
		for i, m := range c.msgs {
			if m.Topic() == topic {
				c.msgs = append(c.msgs[:i:i], c.msgs[i+1:]...)
				c.mu.Unlock()
				if out != nil {
					if err := json.Unmarshal(m.Payload(), out); err != nil {
						t.Fatalf("payload on %s is not JSON: %v: %s", topic, err, m.Payload())
					}
				}
				return
			}
		}
		c.mu.Unlock()
		select {
		case <-c.got:
		case <-deadline:
			t.Fatalf("no message on %s", topic)
		}
	}
}

// topics lists the topics of messages received and not yet awaited.
func (c *mqttClient) topics() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.msgs {
		out = append(out, m.Topic())
	}
	return out
}

// lastEvent is the newest history event for a certificate.
func lastEvent(t *testing.T, e *testEmu, certID string) ConnectionEvent {
	t.Helper()
	evs, err := e.History(context.Background(), HistoryQuery{CertificateID: certID})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) == 0 {
		t.Fatalf("no history for certificate %s", certID)
	}
	return evs[len(evs)-1]
}

// waitEvent waits until the history holds an event matching q and ok.
func waitEvent(t *testing.T, e *testEmu, q HistoryQuery, ok func(ConnectionEvent) bool) ConnectionEvent {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		evs, _ := e.History(context.Background(), q)
		for _, ev := range evs {
			if ok(ev) {
				return ev
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	evs, _ := e.History(context.Background(), q)
	t.Fatalf("no matching event in history: %v", evs)
	return ConnectionEvent{}
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}
