package iot_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thingcert/thingcert/iot"

	"github.com/thingcert/thingcert/internal/faultproxy"
	"github.com/thingcert/thingcert/internal/testpki"
	"github.com/thingcert/thingcert/keystore"
)

// The endpoint name every test presents, whatever address it dials: a real
// AWS IoT ATS name, so SNI and name checks are exercised as in the field.
const endpointName = "abc123-ats.iot.eu-west-1.amazonaws.com"

func newIdentity(t *testing.T, ca *testpki.CA, key keystore.Key, cn string) *iot.Identity {
	t.Helper()
	id, err := iot.NewIdentity(key, []*x509.Certificate{ca.NewClient(t, cn, key.Public())})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// states collects state changes without blocking the client.
type states struct{ ch chan iot.StateChange }

func newStates() *states { return &states{ch: make(chan iot.StateChange, 256)} }

func (s *states) record(c iot.StateChange) { s.ch <- c }

// next waits for the next change in state want, returning the ones skipped.
func (s *states) next(t *testing.T, want iot.ConnState) iot.StateChange {
	t.Helper()
	for {
		select {
		case c := <-s.ch:
			if c.State == want {
				return c
			}
		case <-time.After(30 * time.Second): // a hang guard, not a timing assertion
			t.Fatalf("no %s state", want)
		}
	}
}

func newClient(t *testing.T, cfg iot.Config) *iot.Client {
	t.Helper()
	c, err := iot.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(context.Background()) })
	return c
}

func TestConnectPresentsEndpointNameALPNAndIdentity(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	server := ca.NewServer(t, endpointName)
	cases := []struct {
		port       int
		maxVersion uint16
		wantALPN   []string
		wantTLS    uint16
	}{
		{8883, 0, nil, tls.VersionTLS13},
		{8883, tls.VersionTLS12, nil, tls.VersionTLS12},
		{443, 0, []string{iot.ALPNMQTT}, tls.VersionTLS13},
		{443, tls.VersionTLS12, []string{iot.ALPNMQTT}, tls.VersionTLS12},
	}
	for _, ks := range keySources() {
		for _, tc := range cases {
			name := fmt.Sprintf("%s/port-%d/%s", ks.name, tc.port, tls.VersionName(tc.wantTLS))
			t.Run(name, func(t *testing.T) {
				key := ks.keys(t)("device")
				id := newIdentity(t, ca, key, "device-1")
				b := startBroker(t, brokerOptions{server: server, clientCA: ca, alpn: []string{iot.ALPNMQTT}, maxVersion: tc.maxVersion})
				c := newClient(t, iot.Config{
					Endpoint:  iot.Endpoint{Host: endpointName, Port: tc.port, Address: b.Addr},
					Identity:  iot.NewIdentitySource(id),
					Roots:     ca.Pool(),
					ThingName: "device-1",
				})
				ctx := context.Background()
				info, err := c.Connect(ctx)
				if err != nil {
					t.Fatal(err)
				}
				got := b.last(t)
				if got.SNI != endpointName {
					t.Errorf("broker saw SNI %q, want %q", got.SNI, endpointName)
				}
				if !slices.Equal(got.ALPNOffered, tc.wantALPN) {
					t.Errorf("broker saw ALPN offered %q, want %q", got.ALPNOffered, tc.wantALPN)
				}
				if got.Version != tc.wantTLS {
					t.Errorf("broker saw %s, want %s", tls.VersionName(got.Version), tls.VersionName(tc.wantTLS))
				}
				if got.ClientCert == nil || !got.ClientCert.Equal(id.Leaf()) {
					t.Errorf("broker saw client certificate %v, want the identity's", got.ClientCert)
				}
				if got.ClientID != "device-1" {
					t.Errorf("client ID %q, want the thing name", got.ClientID)
				}
				// What the client reports must match what the server saw.
				if info.TLS.ServerName != endpointName || info.TLS.Address != b.Addr || info.TLS.ALPN != got.ALPN ||
					info.TLS.Version != tls.VersionName(tc.wantTLS) || info.TLS.CipherSuite == "" {
					t.Errorf("ConnectInfo.TLS = %+v", info.TLS)
				}
				if len(info.TLS.ServerChain) == 0 || info.TLS.ServerChain[0].Subject != server.Cert.Subject.String() {
					t.Errorf("server chain %+v", info.TLS.ServerChain)
				}
				if info.TLS.ClientCertificate == nil || info.TLS.ClientCertificate.ID != id.CertificateID() {
					t.Errorf("client certificate %+v, want ID %s", info.TLS.ClientCertificate, id.CertificateID())
				}

				// A round trip through the broker: subscribe, publish QoS 1 and 0.
				msgs := make(chan iot.Message, 2)
				if err := c.Subscribe(ctx, "dt/device-1/#", iot.AtLeastOnce, func(m iot.Message) { msgs <- m }); err != nil {
					t.Fatal(err)
				}
				for _, q := range []iot.QoS{iot.AtLeastOnce, iot.AtMostOnce} {
					want := fmt.Sprintf("hello qos %d", q)
					if err := c.Publish(ctx, "dt/device-1/hello", q, []byte(want)); err != nil {
						t.Fatal(err)
					}
					select {
					case m := <-msgs:
						if string(m.Payload) != want || m.Topic != "dt/device-1/hello" {
							t.Errorf("received %q on %q, want %q", m.Payload, m.Topic, want)
						}
					case <-time.After(30 * time.Second):
						t.Fatal("message not received")
					}
				}
				if err := c.Disconnect(ctx); err != nil {
					t.Fatal(err)
				}
				if err := c.Publish(ctx, "dt/device-1/hello", iot.AtLeastOnce, nil); !errors.Is(err, iot.ErrNotConnected) {
					t.Errorf("Publish after Disconnect: %v, want ErrNotConnected", err)
				}
			})
		}
	}
}

func TestConnectDiagnostics(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	otherCA := testpki.NewCA(t, "someone else's root")
	server := ca.NewServer(t, endpointName)
	for _, ks := range keySources() {
		t.Run(ks.name, func(t *testing.T) {
			key := ks.keys(t)("device")
			good := newIdentity(t, ca, key, "device-1")
			foreign := newIdentity(t, otherCA, key, "device-1")
			cases := []struct {
				name      string
				server    *testpki.Pair
				roots     *testpki.CA
				id        *iot.Identity
				tlsMax    uint16
				setup     func(*broker)
				fault     *faultproxy.Fault // between the client and the broker
				wantKind  error
				wantStage iot.Stage
				// wantRefused: IdentityRefused, only for what the verified
				// server said.
				wantRefused bool
				wantMsg     []string
			}{
				{
					name: "untrusted server", server: server, roots: otherCA, id: good,
					wantKind: iot.ErrServerUntrusted, wantStage: iot.StageTLS,
					wantMsg: []string{"server certificate not trusted", "test root", "give its CA in Roots"},
				},
				{
					name: "wrong endpoint name", server: ca.NewServer(t, "other.example.com"), roots: ca, id: good,
					wantKind: iot.ErrServerName, wantStage: iot.StageTLS,
					wantMsg: []string{"does not match the endpoint name", "other.example.com", `not "` + endpointName + `"`, "in Endpoint.Address"},
				},
				{
					name: "client certificate refused, TLS 1.2", server: server, roots: ca, id: foreign, tlsMax: tls.VersionTLS12,
					wantKind: iot.ErrClientCertRefused, wantStage: iot.StageTLS,
					wantMsg: []string{"client certificate refused by the server", "registered and ACTIVE"},
				},
				{
					// In TLS 1.3 the server judges the client certificate after
					// the client's handshake is done: the refusal arrives as the
					// answer to CONNECT.
					name: "client certificate refused, TLS 1.3", server: server, roots: ca, id: foreign,
					wantKind: iot.ErrClientCertRefused, wantStage: iot.StageMQTT, wantRefused: true,
					wantMsg: []string{"client certificate refused by the server", "registered and ACTIVE"},
				},
				{
					name: "broker closes right after CONNECT", server: server, roots: ca, id: good,
					setup:    func(b *broker) { b.closeAfterConnect.Store(true) },
					wantKind: iot.ErrClosedAfterConnect, wantStage: iot.StageMQTT,
					wantMsg: []string{"the broker accepted TLS then closed: on AWS IoT this usually means the policy denies iot:Connect for this client ID", `"device-1"`},
				},
				{
					name: "CONNACK refused", server: server, roots: ca, id: good,
					setup:    func(b *broker) { b.refuse.Store(true) },
					wantKind: iot.ErrConnectRefused, wantStage: iot.StageMQTT, wantRefused: true,
					wantMsg: []string{"CONNECT refused (CONNACK return code 5, not authorized)", "iot:Connect"},
				},
				{
					// 15 03 03 00 02 02 2a before ServerHello: anyone on the path.
					name: "forged alert before ServerHello", server: server, roots: ca, id: good,
					fault:    &faultproxy.Fault{Kind: faultproxy.ForgedAlert},
					wantKind: iot.ErrClientCertRefused, wantStage: iot.StageTLS,
				},
				{
					name: "reset right after CONNECT", server: server, roots: ca, id: good,
					fault:    &faultproxy.Fault{Kind: faultproxy.Reset, Records: 4},
					wantKind: iot.ErrClosedAfterConnect, wantStage: iot.StageMQTT,
				},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					b := startBroker(t, brokerOptions{server: tc.server, clientCA: ca, maxVersion: tc.tlsMax})
					if tc.setup != nil {
						tc.setup(b)
					}
					addr := b.Addr
					if tc.fault != nil {
						p, err := faultproxy.Start(b.Addr)
						if err != nil {
							t.Fatal(err)
						}
						defer p.Close()
						p.SetDefault(*tc.fault)
						addr = p.Addr()
					}
					c := newClient(t, iot.Config{
						Endpoint:  iot.Endpoint{Host: endpointName, Address: addr},
						Identity:  iot.NewIdentitySource(tc.id),
						Roots:     tc.roots.Pool(),
						ThingName: "device-1",
					})
					_, err := c.Connect(context.Background())
					checkConnectError(t, err, tc.wantKind, tc.wantStage, tc.wantMsg...)
					if got := iot.IdentityRefused(err); got != tc.wantRefused {
						t.Errorf("IdentityRefused = %v, want %v", got, tc.wantRefused)
					}
				})
			}
		})
	}
}

func checkConnectError(t *testing.T, err error, kind error, stage iot.Stage, msg ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("connected; want %v", kind)
	}
	t.Logf("error: %v", err)
	if !errors.Is(err, kind) {
		t.Errorf("error is not %v", kind)
	}
	var ce *iot.ConnectError
	if !errors.As(err, &ce) {
		t.Fatalf("error %T is not a *ConnectError", err)
	}
	if ce.Stage != stage {
		t.Errorf("stage %s, want %s", ce.Stage, stage)
	}
	if !strings.Contains(err.Error(), endpointName) {
		t.Errorf("message does not name the endpoint %s", endpointName)
	}
	for _, m := range msg {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("message lacks %q", m)
		}
	}
}

func TestConnectDiagnosticsWithoutBroker(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	id := newIdentity(t, ca, newMemKey(t, keystore.ECDSAP256), "device-1")
	cfg := func(addr string) iot.Config {
		return iot.Config{Endpoint: iot.Endpoint{Host: endpointName, Address: addr}, Identity: iot.NewIdentitySource(id), Roots: ca.Pool(), ThingName: "device-1"}
	}

	t.Run("nothing listening", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		_, err = newClient(t, cfg(addr)).Connect(context.Background())
		checkConnectError(t, err, iot.ErrUnreachable, iot.StageDial, "nothing listens on "+addr)
	})

	t.Run("not TLS", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			c, err := l.Accept()
			if err == nil {
				c.Write([]byte("HTTP/1.0 400 Bad Request\r\n\r\n"))
				c.Close()
			}
		}()
		_, err = newClient(t, cfg(l.Addr().String())).Connect(context.Background())
		checkConnectError(t, err, iot.ErrTLS, iot.StageTLS, "does not speak TLS")
	})

	t.Run("cancelled while the server is silent", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ctx, cancel := context.WithCancel(context.Background())
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := l.Accept()
			if err == nil {
				accepted <- c
				cancel()
			}
		}()
		_, err = newClient(t, cfg(l.Addr().String())).Connect(ctx)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Connect: %v, want context.Canceled", err)
		}
		(<-accepted).Close()
	})
}

// immediate is a Config.After that fires at once and records the delays asked for.
type immediate struct {
	mu     sync.Mutex
	delays []time.Duration
	hook   func(n int)
}

func (im *immediate) After(d time.Duration) <-chan time.Time {
	im.mu.Lock()
	im.delays = append(im.delays, d)
	n := len(im.delays)
	im.mu.Unlock()
	if im.hook != nil {
		im.hook(n)
	}
	ch := make(chan time.Time, 1)
	ch <- time.Time{}
	return ch
}

func (im *immediate) Delays() []time.Duration {
	im.mu.Lock()
	defer im.mu.Unlock()
	return append([]time.Duration(nil), im.delays...)
}

func TestReconnectResubscribesAfterBrokerDisconnect(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	b := startBroker(t, brokerOptions{server: ca.NewServer(t, endpointName), clientCA: ca})
	id := newIdentity(t, ca, newMemKey(t, keystore.ECDSAP256), "device-1")
	st := newStates()
	clock := &immediate{}
	bo := iot.Backoff{Min: 2 * time.Second, Max: time.Minute, StableAfter: time.Hour}
	c := newClient(t, iot.Config{
		Endpoint: iot.Endpoint{Host: endpointName, Address: b.Addr}, Identity: iot.NewIdentitySource(id),
		Roots: ca.Pool(), ClientID: "device-1", Backoff: bo,
		OnStateChange: st.record, After: clock.After, Rand: func() float64 { return 0.5 },
	})
	ctx := context.Background()
	if _, err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	st.next(t, iot.StateConnected)
	msgs := make(chan iot.Message, 4)
	if err := c.Subscribe(ctx, "cmd/device-1", iot.AtLeastOnce, func(m iot.Message) { msgs <- m }); err != nil {
		t.Fatal(err)
	}

	for round := 1; round <= 2; round++ {
		b.kick(t, "device-1")
		w := st.next(t, iot.StateWaiting)
		if !errors.Is(w.Err, iot.ErrConnectionLost) || !strings.Contains(w.Err.Error(), endpointName) {
			t.Errorf("loss reported as %v", w.Err)
		}
		// The connection was short-lived (StableAfter is an hour), so each loss
		// counts as a failure and the delay grows: 2 s then 4 s bases, drawn
		// at r = 0.5 from [base/2, base).
		if want := bo.Delay(round, 0.5); w.Retry != want || w.Failures != round {
			t.Errorf("round %d: retry after %s with %d failures, want %s and %d", round, w.Retry, w.Failures, want, round)
		}
		st.next(t, iot.StateConnected)
		if got := b.subscribes(); got != round+1 {
			t.Errorf("broker saw %d SUBSCRIBEs after %d reconnects, want %d", got, round, round+1)
		}
		if err := b.srv.Publish("cmd/device-1", []byte(fmt.Sprint("after reconnect ", round)), false, 1); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-msgs:
			if want := fmt.Sprint("after reconnect ", round); string(m.Payload) != want {
				t.Errorf("got %q, want %q", m.Payload, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: no message after reconnect: not re-subscribed", round)
		}
	}
	if got := clock.Delays(); len(got) != 2 {
		t.Errorf("waited %v, want two waits", got)
	}
}

func TestSwapIdentityAndReconnect(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	otherCA := testpki.NewCA(t, "someone else's root")
	for _, ks := range keySources() {
		t.Run(ks.name, func(t *testing.T) {
			b := startBroker(t, brokerOptions{server: ca.NewServer(t, endpointName), clientCA: ca})
			// Two keys: rotation holds the old and the new one at once. The
			// refused identity is the old key with a certificate from a CA the
			// broker does not trust.
			key := ks.keys(t)
			oldKey := key("old")
			oldID := newIdentity(t, ca, oldKey, "device-1")
			newID := newIdentity(t, ca, key("new"), "device-1")
			badID := newIdentity(t, otherCA, oldKey, "device-1")
			src := iot.NewIdentitySource(oldID)
			c := newClient(t, iot.Config{
				Endpoint: iot.Endpoint{Host: endpointName, Address: b.Addr}, Identity: src,
				Roots: ca.Pool(), ThingName: "device-1",
				// Never fire: the test drives every reconnect itself.
				After: func(time.Duration) <-chan time.Time { return nil },
			})
			ctx := context.Background()
			if _, err := c.Connect(ctx); err != nil {
				t.Fatal(err)
			}
			if !b.last(t).ClientCert.Equal(oldID.Leaf()) {
				t.Fatal("first connection did not present the first identity")
			}

			// Rotation: swap in the new identity and reconnect with it.
			if prev := src.Swap(newID); prev != oldID {
				t.Errorf("Swap returned %v, want the old identity", prev)
			}
			info, err := c.Reconnect(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !b.last(t).ClientCert.Equal(newID.Leaf()) || info.TLS.ClientCertificate.ID != newID.CertificateID() {
				t.Error("reconnect did not present the swapped-in identity")
			}
			if err := c.Publish(ctx, "dt/device-1", iot.AtLeastOnce, []byte("on the new identity")); err != nil {
				t.Fatal(err)
			}

			// A new identity the server refuses: Reconnect says so, and swapping
			// back restores the connection.
			src.Swap(badID)
			_, err = c.Reconnect(ctx)
			checkConnectError(t, err, iot.ErrClientCertRefused, iot.StageMQTT)
			src.Swap(newID)
			if _, err := c.Reconnect(ctx); err != nil {
				t.Fatal(err)
			}
			if err := c.Publish(ctx, "dt/device-1", iot.AtLeastOnce, []byte("back")); err != nil {
				t.Fatal(err)
			}
			// The refused handshake never reaches MQTT, so the broker records three.
			if n := len(b.connections()); n != 3 {
				t.Errorf("broker saw %d MQTT connections, want 3", n)
			}
		})
	}
}

func TestPersistentSessionIsNotResubscribed(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	b := startBroker(t, brokerOptions{server: ca.NewServer(t, endpointName), clientCA: ca})
	id := newIdentity(t, ca, newMemKey(t, keystore.ECDSAP256), "device-1")
	st := newStates()
	c := newClient(t, iot.Config{
		Endpoint: iot.Endpoint{Host: endpointName, Address: b.Addr}, Identity: iot.NewIdentitySource(id),
		Roots: ca.Pool(), ThingName: "device-1", PersistentSession: true,
		OnStateChange: st.record, After: (&immediate{}).After,
	})
	ctx := context.Background()
	info, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.SessionPresent {
		t.Error("a first connection has no session")
	}
	msgs := make(chan iot.Message, 4)
	if err := c.Subscribe(ctx, "cmd/device-1", iot.AtLeastOnce, func(m iot.Message) { msgs <- m }); err != nil {
		t.Fatal(err)
	}
	b.kick(t, "device-1")
	st.next(t, iot.StateWaiting)
	up := st.next(t, iot.StateConnected)
	for up.Info == nil || !up.Info.SessionPresent {
		// The Connect above reported one StateConnected too; skip to the reconnect's.
		up = st.next(t, iot.StateConnected)
	}
	// The broker kept the subscription, so the client did not send it again,
	// and messages still arrive.
	if got := b.subscribes(); got != 1 {
		t.Errorf("broker saw %d SUBSCRIBEs, want 1 (session present)", got)
	}
	if err := b.srv.Publish("cmd/device-1", []byte("kept"), false, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-msgs:
		if string(m.Payload) != "kept" {
			t.Errorf("got %q", m.Payload)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no message on the kept subscription")
	}
	if err := c.Unsubscribe(ctx, "cmd/device-1"); err != nil {
		t.Fatal(err)
	}
}

// A custom dialer (a proxy, a tunnel) gets the dial address; SNI and the name
// checked stay the endpoint's.
func TestDialThroughCustomDialer(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	b := startBroker(t, brokerOptions{server: ca.NewServer(t, endpointName), clientCA: ca, alpn: []string{iot.ALPNMQTT}})
	id := newIdentity(t, ca, newMemKey(t, keystore.ECDSAP256), "device-1")
	var asked []string
	c := newClient(t, iot.Config{
		Endpoint: iot.Endpoint{Host: endpointName, Port: 443}, Identity: iot.NewIdentitySource(id),
		Roots: ca.Pool(), ThingName: "device-1",
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			asked = append(asked, network+" "+addr)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", b.Addr) // the "proxy" reaches the broker
		},
	})
	if _, err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := []string{"tcp " + endpointName + ":443"}; !slices.Equal(asked, want) {
		t.Errorf("dialer asked for %q, want %q", asked, want)
	}
	if got := b.last(t); got.SNI != endpointName || got.ALPN != iot.ALPNMQTT {
		t.Errorf("broker saw SNI %q ALPN %q", got.SNI, got.ALPN)
	}
}

// A pending identity lets the key open while the connection is set up: the
// handshake waits for it, and a key that cannot be opened is ErrKey.
func TestPendingIdentity(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	b := startBroker(t, brokerOptions{server: ca.NewServer(t, endpointName), clientCA: ca})
	id := newIdentity(t, ca, newMemKey(t, keystore.ECDSAP256), "device-1")
	cfg := func(src *iot.IdentitySource) iot.Config {
		return iot.Config{Endpoint: iot.Endpoint{Host: endpointName, Address: b.Addr}, Identity: src, Roots: ca.Pool(), ThingName: "device-1"}
	}

	src := iot.NewPendingIdentitySource()
	if src.Current() != nil {
		t.Fatal("a pending source has an identity")
	}
	c := newClient(t, cfg(src))
	go src.Swap(id) // the key opens while Connect dials
	info, err := c.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.TLS.ClientCertificate == nil || info.TLS.ClientCertificate.ID != id.CertificateID() {
		t.Errorf("presented %+v", info.TLS.ClientCertificate)
	}

	failed := iot.NewPendingIdentitySource()
	failed.Fail(fmt.Errorf("keystore: file:/k.pem: %w", keystore.ErrNotFound))
	failed.Fail(errors.New("a second Fail is ignored"))
	_, err = newClient(t, cfg(failed)).Connect(context.Background())
	checkConnectError(t, err, iot.ErrKey, iot.StageTLS, "file:/k.pem", "could not be opened")
	if !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("%v does not wrap the key's error", err)
	}

	// Waiting is bounded by the caller's context.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := iot.NewPendingIdentitySource().Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait on a cancelled context: %v", err)
	}
}

// SubscribeMultiple sends its filters in one SUBSCRIBE, routes each filter's
// messages to its own handler, and restores them together after a reconnect.
// UnsubscribeNoWait stops delivery at once and does not take away a
// subscription made again right after it.
func TestSubscribeMultipleOnePacket(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	b := startBroker(t, brokerOptions{server: ca.NewServer(t, endpointName), clientCA: ca})
	id := newIdentity(t, ca, newMemKey(t, keystore.ECDSAP256), "device-1")
	st := newStates()
	c := newClient(t, iot.Config{
		Endpoint: iot.Endpoint{Host: endpointName, Address: b.Addr}, Identity: iot.NewIdentitySource(id),
		Roots: ca.Pool(), ClientID: "device-1",
		OnStateChange: st.record, After: (&immediate{}).After, Rand: func() float64 { return 0.5 },
	})
	ctx := context.Background()
	if _, err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	st.next(t, iot.StateConnected)
	acc, rej := make(chan string, 4), make(chan string, 4)
	into := func(ch chan string) iot.MessageHandler { return func(m iot.Message) { ch <- string(m.Payload) } }
	if err := c.SubscribeMultiple(ctx,
		iot.Subscription{Filter: "req/accepted", QoS: iot.AtLeastOnce, Handler: into(acc)},
		iot.Subscription{Filter: "req/rejected", QoS: iot.AtLeastOnce, Handler: into(rej)},
	); err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"req/accepted", "req/rejected"}}
	if got := b.subscribePackets(); !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("SUBSCRIBE packets %q, want %q", got, want)
	}
	expect := func(ch chan string, topic, payload string) {
		t.Helper()
		if err := b.srv.Publish(topic, []byte(payload), false, 1); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-ch:
			if got != payload {
				t.Errorf("%s: got %q, want %q", topic, got, payload)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("nothing on %s", topic)
		}
	}
	expect(acc, "req/accepted", "yes")
	expect(rej, "req/rejected", "no")

	b.kick(t, "device-1")
	st.next(t, iot.StateWaiting)
	st.next(t, iot.StateConnected)
	want = append(want, want[0])
	if got := b.subscribePackets(); !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("after a reconnect, SUBSCRIBE packets %q, want %q", got, want)
	}
	expect(acc, "req/accepted", "again")

	// Gone at once, and a new subscription to one of them right after is not
	// undone by the UNSUBACK arriving later.
	c.UnsubscribeNoWait("req/accepted", "req/rejected")
	if err := c.Subscribe(ctx, "req/accepted", iot.AtLeastOnce, into(acc)); err != nil {
		t.Fatal(err)
	}
	expect(acc, "req/accepted", "after")
	// The broker handles one connection's packets in order: by the SUBACK
	// above it had the UNSUBSCRIBE.
	if got := b.filters(t, "device-1"); !slices.Equal(got, []string{"req/accepted"}) {
		t.Errorf("the broker holds %q, want only req/accepted", got)
	}
}

// A SUBSCRIBE with a filter the broker refuses fails with ErrSubscribeRefused
// naming that filter, and leaves none of its filters subscribed or restored.
func TestSubscribeMultipleRefused(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	b := startBroker(t, brokerOptions{server: ca.NewServer(t, endpointName), clientCA: ca})
	b.denyFilter.Store("req/rejected")
	id := newIdentity(t, ca, newMemKey(t, keystore.ECDSAP256), "device-1")
	st := newStates()
	c := newClient(t, iot.Config{
		Endpoint: iot.Endpoint{Host: endpointName, Address: b.Addr}, Identity: iot.NewIdentitySource(id),
		Roots: ca.Pool(), ClientID: "device-1",
		OnStateChange: st.record, After: (&immediate{}).After, Rand: func() float64 { return 0.5 },
	})
	ctx := context.Background()
	if _, err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	st.next(t, iot.StateConnected)
	h := func(iot.Message) {}
	err := c.SubscribeMultiple(ctx,
		iot.Subscription{Filter: "req/accepted", QoS: iot.AtLeastOnce, Handler: h},
		iot.Subscription{Filter: "req/rejected", QoS: iot.AtLeastOnce, Handler: h},
	)
	if !errors.Is(err, iot.ErrSubscribeRefused) || !strings.Contains(err.Error(), `"req/rejected"`) {
		t.Fatalf("got %v, want ErrSubscribeRefused naming req/rejected", err)
	}
	if err := c.Subscribe(ctx, "marker", iot.AtLeastOnce, h); err != nil {
		t.Fatal(err)
	}
	// By marker's SUBACK the broker had every packet sent before it.
	if got := b.filters(t, "device-1"); !slices.Equal(got, []string{"marker"}) {
		t.Errorf("the broker holds %q, want only marker: the granted filter of a refused SUBSCRIBE stayed", got)
	}
	b.kick(t, "device-1")
	st.next(t, iot.StateWaiting)
	st.next(t, iot.StateConnected)
	p := b.subscribePackets()
	if last := p[len(p)-1]; !slices.Equal(last, []string{"marker"}) {
		t.Errorf("restored %q after a reconnect, want only marker", last)
	}
}
