package iot_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/thingcert/thingcert/internal/testpki"
)

// seen is what the embedded broker observed of one connection.
type seen struct {
	SNI         string
	ALPNOffered []string
	ALPN        string
	Version     uint16
	ClientCert  *x509.Certificate
	ClientID    string
}

// broker is an embedded mochi-mqtt broker with a mutual-TLS listener on
// 127.0.0.1, recording what each client presented.
type broker struct {
	srv  *mqtt.Server
	Addr string

	mu      sync.Mutex
	offered map[string][]string // remote address -> ALPN offered
	seen    []seen
	subs    int
	packets [][]string // the filters of each SUBSCRIBE, in order

	// denyFilter, if set, is a topic filter the broker refuses to subscribe.
	denyFilter atomic.Value

	// closeAfterConnect makes the broker read CONNECT and close without a
	// CONNACK, as AWS IoT does when the policy denies iot:Connect.
	closeAfterConnect atomic.Bool
	// refuse makes the broker answer CONNECT with "not authorized".
	refuse atomic.Bool
}

type brokerOptions struct {
	server   *testpki.Pair
	clientCA *testpki.CA
	// alpn is the list the server accepts (nil: ALPN ignored).
	alpn       []string
	maxVersion uint16
}

func startBroker(t *testing.T, o brokerOptions) *broker {
	t.Helper()
	b := &broker{offered: map[string][]string{}}
	tc := &tls.Config{
		Certificates: []tls.Certificate{o.server.TLS()},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    o.clientCA.Pool(),
		NextProtos:   o.alpn,
		MinVersion:   tls.VersionTLS12,
		MaxVersion:   o.maxVersion,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			b.mu.Lock()
			b.offered[hello.Conn.RemoteAddr().String()] = append([]string{}, hello.SupportedProtos...)
			b.mu.Unlock()
			return nil, nil
		},
	}
	b.srv = mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := b.srv.AddHook(&recordHook{b: b}, nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "tls", Address: "127.0.0.1:0", TLSConfig: tc})
	if err := b.srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	b.Addr = l.Address()
	if err := b.srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.srv.Close() })
	return b
}

func (b *broker) connections() []seen {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]seen(nil), b.seen...)
}

func (b *broker) last(t *testing.T) seen {
	t.Helper()
	s := b.connections()
	if len(s) == 0 {
		t.Fatal("the broker saw no connection")
	}
	return s[len(s)-1]
}

func (b *broker) subscribes() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subs
}

// filters returns the topic filters the broker holds for a client, sorted.
func (b *broker) filters(t *testing.T, clientID string) []string {
	t.Helper()
	cl, ok := b.srv.Clients.Get(clientID)
	if !ok {
		t.Fatalf("broker has no client %q", clientID)
	}
	return slices.Sorted(maps.Keys(cl.State.Subscriptions.GetAll()))
}

// kick closes a client's connection from the broker's side.
func (b *broker) kick(t *testing.T, clientID string) {
	t.Helper()
	cl, ok := b.srv.Clients.Get(clientID)
	if !ok {
		t.Fatalf("broker has no client %q", clientID)
	}
	cl.Stop(errors.New("kicked by the test"))
}

type recordHook struct {
	mqtt.HookBase
	b *broker
}

func (h *recordHook) ID() string { return "record" }

func (h *recordHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSubscribed:
		return true
	}
	return false
}

// OnConnect runs after the TLS handshake and the CONNECT packet.
func (h *recordHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	s := seen{ClientID: cl.ID}
	if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
		st := tc.ConnectionState()
		s.SNI, s.ALPN, s.Version = st.ServerName, st.NegotiatedProtocol, st.Version
		if len(st.PeerCertificates) > 0 {
			s.ClientCert = st.PeerCertificates[0]
		}
	}
	h.b.mu.Lock()
	s.ALPNOffered = h.b.offered[cl.Net.Conn.RemoteAddr().String()]
	h.b.seen = append(h.b.seen, s)
	h.b.mu.Unlock()
	if h.b.closeAfterConnect.Load() {
		return errors.New("policy denies iot:Connect")
	}
	return nil
}

func (h *recordHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	return !h.b.refuse.Load()
}

func (h *recordHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	deny, _ := h.b.denyFilter.Load().(string)
	return write || deny == "" || topic != deny
}

func (h *recordHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	h.b.mu.Lock()
	h.b.subs++
	var fs []string
	for _, f := range pk.Filters {
		fs = append(fs, f.Filter)
	}
	h.b.packets = append(h.b.packets, fs)
	h.b.mu.Unlock()
}

// subscribePackets returns the filters of each SUBSCRIBE seen, sorted within
// each packet.
func (b *broker) subscribePackets() [][]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([][]string, len(b.packets))
	for i, p := range b.packets {
		out[i] = slices.Sorted(slices.Values(p))
	}
	return out
}
