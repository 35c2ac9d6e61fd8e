package emulator

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"
)

var ctx = context.Background()

// twoAccounts starts an emulator with accounts A and B and a device CA
// registered in both with mode.
func twoAccounts(t *testing.T, mode CertificateMode, cfg Config) (*testEmu, *testCA) {
	t.Helper()
	cfg.Accounts = []Account{{Name: "A", Prefix: "aaaa1111", Region: "eu-west-1"}, {Name: "B", Prefix: "bbbb2222", Region: "us-east-1"}}
	e := startEmu(t, cfg)
	ca := newTestCA(t, "devices CA")
	for _, acct := range []string{"A", "B"} {
		if _, err := e.RegisterCA(ctx, acct, ca.pem, CAOptions{Mode: mode}); err != nil {
			t.Fatal(err)
		}
	}
	return e, ca
}

func register(t *testing.T, e *testEmu, account string, d *device, o CertificateOptions) {
	t.Helper()
	if _, err := e.RegisterCertificate(ctx, account, d.pem, o); err != nil {
		t.Fatalf("registering %s in %s: %v", d.id, account, err)
	}
	// These tests are about the connection rules, not policies.
	if err := e.AttachAllowAllPolicy(ctx, account, d.id); err != nil {
		t.Fatal(err)
	}
}

// expectRefused checks that a connection failed, and that the history and the
// log name the rule, the certificate and the SNI.
func expectRefused(t *testing.T, e *testEmu, d *device, err error, rule Rule, sni string) ConnectionEvent {
	t.Helper()
	if err == nil {
		t.Fatalf("certificate %s connected; want refusal by rule %s", d.id, rule)
	}
	ev := waitEvent(t, e, HistoryQuery{CertificateID: d.id, Outcome: Refused}, func(ev ConnectionEvent) bool { return ev.Rule == rule })
	if ev.SNI != sni {
		t.Errorf("refusal recorded SNI %q, want %q", ev.SNI, sni)
	}
	if ev.Reason == "" {
		t.Errorf("refusal by %s has no reason", rule)
	}
	line := e.log.refusalLogged(rule, d.id)
	if line == "" {
		t.Fatalf("no log line for refusal rule=%s cert_id=%s in:\n%s", rule, d.id, e.log.String())
	}
	if sni != "" && !strings.Contains(line, "sni="+sni) {
		t.Errorf("log line does not name SNI %s: %s", sni, line)
	}
	return ev
}

func TestSNIChoosesTheAccount(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	d := issue(t, ca, "dev-1", certOpts{})
	register(t, e, "A", d, CertificateOptions{})

	c := mustDial(t, e, d, "dev-1", dialOpts{account: "A"})
	ev := lastEvent(t, e, d.id)
	if ev.Outcome != Accepted || ev.Account != "A" || ev.SNI != e.Endpoint("A") {
		t.Fatalf("history after connecting with A's SNI: %+v", ev)
	}
	c.Disconnect(0)

	e.clock.Advance(2 * time.Second)
	_, err := dial(t, e, d, "dev-1", dialOpts{account: "B"})
	ev = expectRefused(t, e, d, err, RuleNotRegistered, e.Endpoint("B"))
	if ev.Account != "B" {
		t.Errorf("refusal recorded account %q, want B", ev.Account)
	}
}

func TestCertificateInTwoAccountsConnectsToEachBySNI(t *testing.T) {
	e, ca := twoAccounts(t, ModeSNIOnly, Config{})
	d := issue(t, ca, "dev-1", certOpts{})
	register(t, e, "A", d, CertificateOptions{})
	register(t, e, "B", d, CertificateOptions{})

	for _, acct := range []string{"A", "B"} {
		e.clock.Advance(2 * time.Second)
		c := mustDial(t, e, d, "dev-1", dialOpts{account: acct})
		// Not the newest event: the previous connection's "disconnected"
		// may be recorded after this one's acceptance.
		waitEvent(t, e, HistoryQuery{CertificateID: d.id}, func(ev ConnectionEvent) bool {
			return ev.Outcome == Accepted && ev.Account == acct
		})
		c.Disconnect(0)
	}
	// With an SNI that names no endpoint the emulator cannot tell the accounts apart.
	e.clock.Advance(2 * time.Second)
	_, err := dial(t, e, d, "dev-1", dialOpts{serverSNI: "localhost"})
	ev := expectRefused(t, e, d, err, RuleSNIRequired, "localhost")
	if !strings.Contains(ev.Reason, "2 accounts") {
		t.Errorf("reason does not say why SNI is needed: %s", ev.Reason)
	}
}

func TestUnknownSNIWorksOnlyForOneDefaultModeAccount(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	d := issue(t, ca, "dev-1", certOpts{})
	register(t, e, "A", d, CertificateOptions{})
	// An SNI that names no endpoint (what mosquitto_pub -h localhost sends):
	// the certificate's single account is found by its CA.
	c := mustDial(t, e, d, "dev-1", dialOpts{serverSNI: "localhost"})
	if ev := lastEvent(t, e, d.id); ev.Outcome != Accepted || ev.Account != "A" || ev.SNI != "localhost" {
		t.Fatalf("history: %+v", ev)
	}
	c.Disconnect(0)

	// Registered without a CA: SNI_ONLY, so an unknown SNI is refused.
	w := issue(t, nil, "self-signed", certOpts{})
	register(t, e, "B", w, CertificateOptions{WithoutCA: true})
	_, err := dial(t, e, w, "dev-2", dialOpts{serverSNI: "localhost"})
	expectRefused(t, e, w, err, RuleSNIRequired, "localhost")
	e.clock.Advance(2 * time.Second)
	mustDial(t, e, w, "dev-2", dialOpts{account: "B"})
}

func TestRefusedCertificates(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	type tc struct {
		name  string
		make  func() *device
		rule  Rule
		check func(t *testing.T, ev ConnectionEvent)
	}
	cases := []tc{
		{"unregistered", func() *device { return issue(t, ca, "nobody", certOpts{}) }, RuleNotRegistered, nil},
		{"inactive", func() *device {
			d := issue(t, ca, "inactive", certOpts{})
			register(t, e, "A", d, CertificateOptions{Status: StatusInactive})
			return d
		}, RuleStatus, func(t *testing.T, ev ConnectionEvent) {
			if !strings.Contains(ev.Reason, "INACTIVE") {
				t.Errorf("reason: %s", ev.Reason)
			}
		}},
		{"revoked", func() *device {
			d := issue(t, ca, "revoked", certOpts{})
			register(t, e, "A", d, CertificateOptions{})
			if err := e.SetCertificateStatus(ctx, "A", d.id, StatusRevoked); err != nil {
				t.Fatal(err)
			}
			return d
		}, RuleStatus, func(t *testing.T, ev ConnectionEvent) {
			if !strings.Contains(ev.Reason, "REVOKED") {
				t.Errorf("reason: %s", ev.Reason)
			}
		}},
		{"pending activation", func() *device {
			d := issue(t, ca, "pending", certOpts{})
			register(t, e, "A", d, CertificateOptions{Status: StatusPendingActivation})
			return d
		}, RuleStatus, nil},
		{"expired", func() *device {
			// Valid when registered, expired by the emulator's clock at connect.
			d := issue(t, ca, "expired", certOpts{notAfter: e.clock.Now().Add(time.Hour)})
			register(t, e, "A", d, CertificateOptions{})
			return d
		}, RuleExpired, nil},
		{"not yet valid", func() *device {
			d := issue(t, ca, "future", certOpts{notBefore: e.clock.Now().Add(24 * time.Hour)})
			register(t, e, "A", d, CertificateOptions{})
			return d
		}, RuleNotYetValid, nil},
		{"p-224", func() *device {
			// Go's TLS client cannot sign with P-224, so the certificate is
			// sent with a P-256 key: the emulator judges the certificate
			// before the proof of possession, as AWS IoT does.
			p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
			d := issue(t, ca, "p224", certOpts{key: p224})
			d.key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			return d
		}, RuleAlgorithm, func(t *testing.T, ev ConnectionEvent) {
			if !strings.Contains(ev.Reason, "P-224") {
				t.Errorf("reason does not name the curve: %s", ev.Reason)
			}
		}},
		{"rsa-1024", func() *device { return issue(t, ca, "weak", certOpts{key: rsaKey(t, 1024)}) }, RuleAlgorithm, func(t *testing.T, ev ConnectionEvent) {
			if !strings.Contains(ev.Reason, "2048") {
				t.Errorf("reason does not give the rule: %s", ev.Reason)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := c.make()
			if c.rule == RuleExpired {
				e.clock.Advance(2 * time.Hour)
			}
			_, err := dial(t, e, d, "dev", dialOpts{account: "A"})
			ev := expectRefused(t, e, d, err, c.rule, e.Endpoint("A"))
			if c.check != nil {
				c.check(t, ev)
			}
		})
	}
}

func TestRegistrationRefusesWhatAWSRefuses(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	weak := issue(t, ca, "weak", certOpts{key: rsaKey(t, 1024)})
	if _, err := e.RegisterCertificate(ctx, "A", weak.pem, CertificateOptions{}); err == nil {
		t.Fatal("an RSA-1024 certificate was registered")
	}
	other := newTestCA(t, "unregistered CA")
	d := issue(t, other, "dev", certOpts{})
	if _, err := e.RegisterCertificate(ctx, "A", d.pem, CertificateOptions{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("registering a certificate whose CA is not registered: %v, want ErrInvalid", err)
	}
	if _, err := e.RegisterCertificate(ctx, "A", d.pem, CertificateOptions{WithoutCA: true}); err != nil {
		t.Fatalf("registering without a CA: %v", err)
	}
	if _, err := e.RegisterCertificate(ctx, "A", d.pem, CertificateOptions{WithoutCA: true}); !errors.Is(err, ErrExists) {
		t.Fatalf("registering twice: %v, want ErrExists", err)
	}
}

func TestInactiveCARefusesItsCertificates(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	d := issue(t, ca, "dev", certOpts{})
	register(t, e, "A", d, CertificateOptions{})
	if err := e.SetCAStatus(ctx, "A", CertificateID(ca.cert.Raw), StatusInactive); err != nil {
		t.Fatal(err)
	}
	_, err := dial(t, e, d, "dev", dialOpts{account: "A"})
	expectRefused(t, e, d, err, RuleCA, e.Endpoint("A"))
}

func TestClientIDMustBeTheThingName(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	d := issue(t, ca, "dev", certOpts{})
	register(t, e, "A", d, CertificateOptions{Thing: "sensor-7"})
	_, err := dial(t, e, d, "someone-else", dialOpts{account: "A"})
	ev := expectRefused(t, e, d, err, RuleClientID, e.Endpoint("A"))
	if ev.ClientID != "someone-else" {
		t.Errorf("history client ID %q", ev.ClientID)
	}
	mustDial(t, e, d, "sensor-7", dialOpts{account: "A"})
}

func TestSecondConnectionTakesTheClientIDOver(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	d := issue(t, ca, "dev", certOpts{})
	register(t, e, "A", d, CertificateOptions{Thing: "sensor-7"})
	first := mustDial(t, e, d, "sensor-7", dialOpts{account: "A"})
	e.clock.Advance(2 * time.Second)
	second := mustDial(t, e, d, "sensor-7", dialOpts{account: "A"})
	select {
	case <-first.lost:
	case <-time.After(20 * time.Second):
		t.Fatal("the first connection was not disconnected")
	}
	waitEvent(t, e, HistoryQuery{ClientID: "sensor-7", Outcome: Disconnected}, func(ev ConnectionEvent) bool { return ev.Rule == RuleSessionTakeover })
	if !second.IsConnectionOpen() {
		t.Fatal("the second connection is not open")
	}
}

func TestOneConnectPerSecondPerClientID(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	d := issue(t, ca, "dev", certOpts{})
	register(t, e, "A", d, CertificateOptions{})
	mustDial(t, e, d, "dev", dialOpts{account: "A"}).Disconnect(0)
	_, err := dial(t, e, d, "dev", dialOpts{account: "A"})
	expectRefused(t, e, d, err, RuleConnectRate, e.Endpoint("A"))
	// Another client ID is not limited, and a second later this one is not either.
	mustDial(t, e, d, "dev-other", dialOpts{account: "A"}).Disconnect(0)
	e.clock.Advance(time.Second)
	mustDial(t, e, d, "dev", dialOpts{account: "A"})
}

func TestALPNListener(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{ALPNListen: "127.0.0.1:0"})
	d := issue(t, ca, "dev", certOpts{})
	register(t, e, "A", d, CertificateOptions{})
	mustDial(t, e, d, "dev", dialOpts{account: "A", alpn: true})
	e.clock.Advance(2 * time.Second)
	_, err := dial(t, e, d, "dev", dialOpts{account: "A", noALPN: true})
	if err == nil {
		t.Fatal("connected to the 443-style listener without ALPN")
	}
	ev := waitEvent(t, e, HistoryQuery{Outcome: Refused}, func(ev ConnectionEvent) bool { return ev.Rule == RuleALPN })
	if ev.SNI != e.Endpoint("A") || ev.Listener != "mqtt-443-alpn" {
		t.Errorf("ALPN refusal recorded %+v", ev)
	}
}

func TestDeactivationDisconnects(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	d := issue(t, ca, "dev", certOpts{})
	register(t, e, "A", d, CertificateOptions{})
	c := mustDial(t, e, d, "dev", dialOpts{account: "A"})
	if err := e.SetCertificateStatus(ctx, "A", d.id, StatusInactive); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.lost:
	case <-time.After(20 * time.Second):
		t.Fatal("the connection of a deactivated certificate stayed open")
	}
	waitEvent(t, e, HistoryQuery{CertificateID: d.id, Outcome: Disconnected}, func(ev ConnectionEvent) bool { return ev.Rule == RuleStatusChanged })
}

func TestTLS12AndTLS13(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	d := issue(t, ca, "dev", certOpts{key: rsaKey(t, 2048)})
	register(t, e, "A", d, CertificateOptions{})
	for i, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		e.clock.Advance(2 * time.Second)
		mustDial(t, e, d, "dev", dialOpts{account: "A", tlsMax: v}).Disconnect(0)
		// The newest acceptance: the previous connection's end may be
		// recorded after it.
		evs, _ := e.History(ctx, HistoryQuery{CertificateID: d.id, Outcome: Accepted})
		if ev := evs[len(evs)-1]; ev.TLS != tls.VersionName(v) {
			t.Errorf("attempt %d: history says %s, want %s", i, ev.TLS, tls.VersionName(v))
		}
	}
}

func TestChainThroughAnIntermediate(t *testing.T) {
	e, root := twoAccounts(t, ModeDefault, Config{})
	// An intermediate CA signed by the registered root; the device sends it.
	inter := issue(t, root, "intermediate", certOpts{})
	tmpl := *inter.cert
	tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
	tmpl.ExtKeyUsage = nil
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, root.cert, inter.key.Public(), root.key)
	if err != nil {
		t.Fatal(err)
	}
	interCert, _ := x509.ParseCertificate(der)
	interCA := &testCA{cert: interCert, key: inter.key, pem: encodeCert(der)}
	d := issue(t, interCA, "dev", certOpts{})
	bundle := append(append([]byte{}, d.pem...), interCA.pem...)
	if _, err := e.RegisterCertificate(ctx, "A", bundle, CertificateOptions{}); err != nil {
		t.Fatalf("registering with the intermediate: %v", err)
	}
	if err := e.AttachAllowAllPolicy(ctx, "A", d.id); err != nil {
		t.Fatal(err)
	}
	// Without the intermediate the chain does not reach the root.
	_, err = dial(t, e, d, "dev", dialOpts{account: "A"})
	expectRefused(t, e, d, err, RuleCA, e.Endpoint("A"))
	e.clock.Advance(2 * time.Second)
	withChain := *d
	withChain.chain = [][]byte{interCert.Raw}
	mustDial(t, e, &withChain, "dev", dialOpts{account: "A"})
}
