package emulator

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"
)

// rawDial makes one TLS handshake with the emulator, as a device would, and
// returns crypto/tls's error: the alert the emulator sent is in its text.
func rawDial(t *testing.T, e *testEmu, addr string, d *device, serverName string, alpn []string) error {
	t.Helper()
	cert := d.tls()
	cfg := &tls.Config{RootCAs: e.RootCAs(), ServerName: serverName, NextProtos: alpn, MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }}
	conn, err := net.DialTimeout("tcp", addr, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	return tls.Client(conn, cfg).Handshake()
}

func TestNoSNIIsRefusedWithMissingExtension(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	d := issue(t, ca, "dev-1", certOpts{})
	register(t, e, "A", d, CertificateOptions{})
	// The server certificate covers 127.0.0.1, and crypto/tls sends no SNI
	// for an address: the handshake fails only because SNI is missing.
	cfg := e.ClientTLS("A")
	cfg.ServerName = "127.0.0.1"
	cert := d.tls()
	cfg.Certificates = []tls.Certificate{cert}
	conn, err := tls.Dial("tcp", e.Addr(), cfg)
	if err == nil {
		// TLS 1.3 clients learn of a refusal of their certificate on their
		// first read; a refusal on the ClientHello comes before that.
		conn.Close()
		t.Fatal("a ClientHello without SNI completed the handshake")
	}
	if !strings.Contains(err.Error(), "missing extension") {
		t.Errorf("handshake error %q; want TLS alert 109 (missing_extension)", err)
	}
	ev := waitEvent(t, e, HistoryQuery{Outcome: Refused}, func(ev ConnectionEvent) bool { return ev.Rule == RuleSNIRequired })
	if ev.SNI != "" || !strings.Contains(ev.Reason, "no SNI") {
		t.Errorf("refusal recorded as %+v", ev)
	}
	// With the endpoint as SNI the same certificate connects.
	mustDial(t, e, d, "dev-1", dialOpts{account: "A"})
}

func TestALPNMissingGetsNoApplicationProtocol(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{ALPNListen: "127.0.0.1:0"})
	d := issue(t, ca, "dev", certOpts{})
	register(t, e, "A", d, CertificateOptions{})
	for _, alpn := range [][]string{nil, {"mqtt"}, {"h2", "http/1.1"}} {
		err := rawDial(t, e, e.ALPNAddr(), d, e.Endpoint("A"), alpn)
		if err == nil || !strings.Contains(err.Error(), "no application protocol") {
			t.Errorf("ALPN %q on the 443-style listener: handshake error %v; want TLS alert 120 (no_application_protocol)", alpn, err)
		}
	}
	// The client reads the alert before the emulator records the refusal:
	// wait for the three records.
	var evs []ConnectionEvent
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		all, err := e.History(ctx, HistoryQuery{Outcome: Refused})
		if err != nil {
			t.Fatal(err)
		}
		evs = evs[:0]
		for _, ev := range all {
			if ev.Rule == RuleALPN && ev.Listener == "mqtt-443-alpn" && ev.SNI == e.Endpoint("A") {
				evs = append(evs, ev)
			}
		}
		if len(evs) >= 3 {
			break
		}
	}
	if len(evs) != 3 {
		t.Errorf("%d ALPN refusals recorded, want 3: %+v", len(evs), evs)
	}
	if err := rawDial(t, e, e.ALPNAddr(), d, e.Endpoint("A"), []string{"mqtt", alpnMQTT}); err != nil {
		t.Errorf("with %s offered: %v", alpnMQTT, err)
	}
}

func TestClientHelloParserAgreesWithGoClients(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		sni  string
		alpn []string
	}{
		{"endpoint and ALPN", &tls.Config{ServerName: "abc-ats.iot.us-east-1.amazonaws.com", NextProtos: []string{alpnMQTT}}, "abc-ats.iot.us-east-1.amazonaws.com", []string{alpnMQTT}},
		{"address: no SNI", &tls.Config{ServerName: "127.0.0.1"}, "", nil},
		{"TLS 1.2 only", &tls.Config{ServerName: "x.example", MaxVersion: tls.VersionTLS12, NextProtos: []string{"a", "b"}}, "x.example", []string{"a", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := clientHelloBytes(t, tc.cfg)
			got, h, err := readClientHello(strings.NewReader(string(raw)))
			if err != nil || h == nil {
				t.Fatalf("readClientHello: %v, %v", h, err)
			}
			if string(got) != string(raw) {
				t.Errorf("read %d bytes, want %d", len(got), len(raw))
			}
			if h.ServerName != tc.sni || strings.Join(h.ALPN, ",") != strings.Join(tc.alpn, ",") {
				t.Errorf("parsed %+v; want SNI %q ALPN %q", h, tc.sni, tc.alpn)
			}
		})
	}
}

// clientHelloBytes is the first flight crypto/tls sends for cfg.
func clientHelloBytes(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = tls.Client(client, cfg).Handshake()
	}()
	// A ClientHello fits in two records at most (post-quantum key shares).
	var out []byte
	buf := make([]byte, 1<<17)
	_ = server.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		n, err := server.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil || isWholeHello(out) {
			break
		}
	}
	server.Close()
	client.Close()
	<-done
	return out
}

func isWholeHello(b []byte) bool {
	_, h, err := readClientHello(strings.NewReader(string(b)))
	return err == nil && h != nil
}

// TestClientHelloSplitAcrossRecords: TLS lets a client split its ClientHello
// over several records; the reader reassembles it as crypto/tls does, so the
// SNI rule cannot be dodged by fragmenting.
func TestClientHelloSplitAcrossRecords(t *testing.T) {
	whole := clientHelloBytes(t, &tls.Config{ServerName: "abc-ats.iot.us-east-1.amazonaws.com", NextProtos: []string{alpnMQTT}})
	body := whole[5 : 5+(int(whole[3])<<8|int(whole[4]))]
	var split []byte
	for _, part := range [][]byte{body[:3], body[3:40], body[40:]} {
		split = append(split, 22, 3, 1, byte(len(part)>>8), byte(len(part)))
		split = append(split, part...)
	}
	_, h, err := readClientHello(strings.NewReader(string(split)))
	if err != nil || h == nil || h.ServerName != "abc-ats.iot.us-east-1.amazonaws.com" || len(h.ALPN) != 1 {
		t.Fatalf("split ClientHello: %+v, %v", h, err)
	}
	if g := goClientHello(split); g == nil || g.ServerName != h.ServerName {
		t.Fatalf("crypto/tls read the split ClientHello as %+v", g)
	}
}
