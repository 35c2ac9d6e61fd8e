package emulator

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"testing"
	"time"
)

// pssLeaf is a certificate whose key is id-RSASSA-PSS: crypto/x509 parses it
// with no usable key and crypto/tls refuses it before the emulator sees it, so
// the rule is tested on the decision alone.
func pssLeaf(t *testing.T) *x509.Certificate {
	t.Helper()
	d := issue(t, nil, "pss", certOpts{key: rsaKey(t, 2048)})
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(d.cert.RawSubjectPublicKeyInfo, &spki); err != nil {
		t.Fatal(err)
	}
	spki.Algorithm = pkix.AlgorithmIdentifier{Algorithm: oidRSASSAPSS}
	raw, err := asn1.Marshal(spki)
	if err != nil {
		t.Fatal(err)
	}
	c := *d.cert
	c.RawSubjectPublicKeyInfo = raw
	return &c
}

func TestDecideTLS(t *testing.T) {
	clock := newClock()
	r, err := Open(ctx, storeChecked(t, Config{Now: clock.Now, Accounts: []Account{{Name: "A", Prefix: "aaa"}, {Name: "B", Prefix: "bbb"}}}))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ca := newTestCA(t, "ca")
	if _, err := r.RegisterCA(ctx, "A", ca.pem, CAOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RegisterCA(ctx, "B", ca.pem, CAOptions{Mode: ModeSNIOnly}); err != nil {
		t.Fatal(err)
	}
	inA := issue(t, ca, "a", certOpts{})
	inB := issue(t, ca, "b", certOpts{})
	for _, reg := range []struct {
		acct string
		d    *device
	}{{"A", inA}, {"B", inB}} {
		if _, err := r.RegisterCertificate(ctx, reg.acct, reg.d.pem, CertificateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	epA, epB := "aaa-ats.iot.us-east-1.amazonaws.com", "bbb-ats.iot.us-east-1.amazonaws.com"
	pss := pssLeaf(t)
	cases := []struct {
		name    string
		a       attempt
		rule    Rule
		account string
	}{
		{"A by SNI", attempt{SNI: epA, Chain: []*x509.Certificate{inA.cert}}, "", "A"},
		{"SNI is case-insensitive", attempt{SNI: "AAA-ats.iot.US-EAST-1.amazonaws.com.", Chain: []*x509.Certificate{inA.cert}}, "", "A"},
		{"A without SNI (DEFAULT CA)", attempt{Chain: []*x509.Certificate{inA.cert}}, "", "A"},
		{"A's certificate at B", attempt{SNI: epB, Chain: []*x509.Certificate{inA.cert}}, RuleNotRegistered, "B"},
		{"B without SNI (SNI_ONLY CA)", attempt{Chain: []*x509.Certificate{inB.cert}}, RuleSNIRequired, "B"},
		{"B by SNI", attempt{SNI: epB, Chain: []*x509.Certificate{inB.cert}}, "", "B"},
		{"no certificate", attempt{SNI: epA}, RuleHandshake, ""},
		{"ALPN missing on 443", attempt{SNI: epA, Chain: []*x509.Certificate{inA.cert}, RequireALPN: true}, RuleALPN, ""},
		{"ALPN present on 443", attempt{SNI: epA, Chain: []*x509.Certificate{inA.cert}, RequireALPN: true, ALPN: alpnMQTT}, "", "A"},
		{"RSA-PSS key on TLS 1.2", attempt{SNI: epA, Chain: []*x509.Certificate{pss}, TLSVersion: tls.VersionTLS12}, RulePSSNeedsTLS13, ""},
		{"RSA-PSS key on TLS 1.3 passes the algorithm rule", attempt{SNI: epA, Chain: []*x509.Certificate{pss}, TLSVersion: tls.VersionTLS13}, RuleNotRegistered, "A"},
		{"expired", attempt{SNI: epA, Chain: []*x509.Certificate{inA.cert}, Now: time.Date(2041, 1, 1, 0, 0, 0, 0, time.UTC)}, RuleExpired, "A"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.a.Now.IsZero() {
				c.a.Now = clock.Now()
			}
			v := r.decideTLS(c.a)
			if v.Rule != c.rule || v.Account != c.account {
				t.Fatalf("verdict %+v, want rule %q account %q", v, c.rule, c.account)
			}
			if v.refused() && v.Reason == "" {
				t.Fatal("refusal without a reason")
			}
		})
	}
}

func TestReservedTopicsAndNamespaces(t *testing.T) {
	for _, c := range []struct {
		topic string
		ok    bool
	}{
		{"sensors/temp", true},
		{"$aws/things/me/jobs/j1/update", true},
		{"$aws/things/me/jobs/get", true},
		{"$aws/certificates/create-from-csr/json", true},
		{"$aws/provisioning-templates/t/provision/json", true},
		{"$aws/things/me/shadow/update", true},
		{"$aws/things/me/jobs/notify-next", false},
		{"$aws/things/me/jobs/notify", false},
		{"$aws/things/me/jobs/j1/update/accepted", false},
		{"$aws/certificates/create-from-csr/json/accepted", false},
		{"$aws/provisioning-templates/t/provision/json/rejected", false},
		{"$aws/things/me/shadow/update/delta", false},
		{"$aws/events/presence/connected/me", false},
		{"$aws/events/jobExecution/j1/succeeded", false},
		{"$SYS/broker/uptime", false},
		{"$share/g/x", false},
	} {
		if why := reservedPublish(c.topic); (why == "") != c.ok {
			t.Errorf("reservedPublish(%q) = %q, want allowed=%v", c.topic, why, c.ok)
		}
	}
	for _, c := range []struct{ account, topic, broker string }{
		{"A", "a/b", "$acct/A/a/b"},
		{"A", "$aws/things/t/jobs/notify", "$acct/A/$aws/things/t/jobs/notify"},
		{"B", "$share/g/x/#", "$share/g/$acct/B/x/#"},
		{"B", "", ""},
	} {
		got := toBroker(c.account, c.topic)
		if got != c.broker {
			t.Errorf("toBroker(%s, %q) = %q, want %q", c.account, c.topic, got, c.broker)
		}
		if back, ok := fromBroker(c.account, got); c.topic != "" && (!ok || back != c.topic) {
			t.Errorf("fromBroker(%s, %q) = %q, %v", c.account, got, back, ok)
		}
		if _, ok := fromBroker("other", got); c.topic != "" && ok {
			t.Errorf("fromBroker(other, %q) accepted another account's topic", got)
		}
	}
	for _, c := range []struct {
		filter, topic string
		ok            bool
	}{
		{"a/+/c", "a/b/c", true}, {"a/#", "a", true}, {"a/#", "a/b/c", true}, {"a/+", "a/b/c", false},
		{"#", "$aws/x", false}, {"+/x", "$aws/x", false}, {"$aws/+", "$aws/x", true}, {"a/b", "a/b/c", false},
	} {
		if got := topicMatches(c.filter, c.topic); got != c.ok {
			t.Errorf("topicMatches(%q, %q) = %v", c.filter, c.topic, got)
		}
	}
}

func TestLimiter(t *testing.T) {
	clock := newClock()
	l := newLimiter(15, 15)
	n := 0
	for l.allow("acct", clock.Now()) {
		n++
	}
	if n != 15 {
		t.Fatalf("burst allowed %d, want 15", n)
	}
	clock.Advance(200 * time.Millisecond)
	if !l.allow("acct", clock.Now()) || !l.allow("acct", clock.Now()) || !l.allow("acct", clock.Now()) || l.allow("acct", clock.Now()) {
		t.Fatal("after 200 ms at 15/s, 3 more requests should pass and the 4th not")
	}
	if !l.allow("other", clock.Now()) {
		t.Fatal("keys share a bucket")
	}
	if !intervalLimiter(0).allow("x", clock.Now()) {
		t.Fatal("a zero interval limits")
	}
}
