package emulator

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// session is what the emulator learned of one connection in its TLS handshake
// and at CONNECT. mochi hands it back in the hooks through deviceConn.
type session struct {
	listener    string
	remote      string
	requireALPN bool

	mu         sync.Mutex
	sni        string
	alpn       string
	tlsVersion uint16
	verdict    verdict
	decided    bool
	clientID   string
	endRule    Rule
	endReason  string
	// pendingSub holds the iot:Subscribe decisions of the SUBSCRIBE being
	// processed, by broker filter, for OnACLCheck (hooks.go).
	pendingSub map[string]bool
	// pubQoS is the QoS of the PUBLISH being processed; aliases are the
	// client's MQTT 5 topic aliases (device topic names).
	pubQoS  byte
	aliases map[uint16]string
}

func (s *session) event(outcome Outcome, now time.Time) ConnectionEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := ConnectionEvent{
		Time: now, Outcome: outcome, Listener: s.listener, Remote: s.remote, SNI: s.sni, ALPN: s.alpn,
		Account: s.verdict.Account, CertificateID: s.verdict.CertID, ClientID: s.clientID,
	}
	if s.tlsVersion != 0 {
		e.TLS = tls.VersionName(s.tlsVersion)
	}
	return e
}

// deviceConn is the TLS connection of a device with what the handshake decided.
type deviceConn struct {
	*tls.Conn
	sess *session
}

// tlsListener is a mochi listener that completes each TLS handshake itself,
// applying the connection rules in it, before the MQTT server sees the
// connection, so every refusal is logged with its rule, certificate ID and SNI.
type tlsListener struct {
	id          string
	addr        string
	requireALPN bool
	emu         *Emulator

	ln  net.Listener
	log *slog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // every open connection, so Close can end them
	closed bool
	wg     sync.WaitGroup
}

var _ listeners.Listener = (*tlsListener)(nil)

func (l *tlsListener) ID() string       { return l.id }
func (l *tlsListener) Protocol() string { return "tcp+tls" }

func (l *tlsListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

func (l *tlsListener) Init(log *slog.Logger) error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return fmt.Errorf("emulator: listening on %s: %w", l.addr, err)
	}
	l.ln, l.log, l.conns = ln, log, map[net.Conn]struct{}{}
	return nil
}

func (l *tlsListener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			conn.Close()
			return
		}
		l.conns[conn] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.handle(conn, establish)
	}
}

func (l *tlsListener) handle(raw net.Conn, establish listeners.EstablishFn) {
	defer l.wg.Done()
	defer func() {
		l.mu.Lock()
		delete(l.conns, raw)
		l.mu.Unlock()
		_ = raw.Close()
	}()
	if tcp, ok := raw.(*net.TCPConn); ok {
		_ = tcp.SetNoDelay(true)
	}
	sess := &session{listener: l.id, remote: raw.RemoteAddr().String(), requireALPN: l.requireALPN}
	_ = raw.SetDeadline(time.Now().Add(handshakeTimeout))
	read, hello, err := readClientHello(raw)
	if err != nil {
		l.emu.handshakeFailed(sess, fmt.Errorf("reading the ClientHello: %w", err))
		return
	}
	if hello != nil {
		sess.mu.Lock()
		sess.sni, sess.alpn = hello.ServerName, strings.Join(hello.ALPN, ",")
		sess.mu.Unlock()
		if v, alert := checkHello(hello, l.requireALPN); alert != 0 {
			_ = writeAlert(raw, alert)
			sess.mu.Lock()
			sess.verdict, sess.decided = v, true
			sess.mu.Unlock()
			l.emu.handshakeFailed(sess, errors.New(v.Reason))
			return
		}
		sess.mu.Lock()
		sess.alpn = ""
		sess.mu.Unlock()
	}
	// Bytes that are no ClientHello this parser reads go to crypto/tls as
	// they came, and it refuses them in its own words.
	tc := tls.Server(&replayConn{Conn: raw, pending: read}, l.emu.tlsConfig(sess))
	err = tc.Handshake()
	if err != nil {
		l.emu.handshakeFailed(sess, err)
		return
	}
	// The CONNECT must follow soon; mochi then sets the keep-alive deadline.
	_ = raw.SetDeadline(time.Now().Add(connectTimeout))
	// establish runs the MQTT session and returns when the connection ends.
	if err := establish(l.id, &deviceConn{Conn: tc, sess: sess}); err != nil {
		l.log.Debug("emulator: connection ended", "remote", sess.remote, "error", err)
	}
}

func (l *tlsListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	if l.ln != nil {
		_ = l.ln.Close()
	}
	// MQTT clients get a DISCONNECT first; the rest (in the handshake, or
	// before CONNECT) are simply closed.
	closeClients(l.id)
	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
}

// tlsConfig is the per-connection TLS configuration: the decision is made in
// the handshake, where the SNI, ALPN and client certificate are all known.
func (e *Emulator) tlsConfig(sess *session) *tls.Config {
	return &tls.Config{
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			sess.mu.Lock()
			sess.sni = hello.ServerName
			sess.mu.Unlock()
			// The listener has already refused these with their own alerts;
			// this is the backstop for a ClientHello its parser could not read
			// but crypto/tls could (internal_error then).
			if hello.ServerName == "" {
				v := verdict{}.refuse(RuleSNIRequired, "the ClientHello has no SNI (server_name): AWS IoT Core requires it; send the endpoint host name as SNI")
				sess.mu.Lock()
				sess.verdict, sess.decided = v, true
				sess.mu.Unlock()
				return nil, errors.New(v.Reason)
			}
			if sess.requireALPN && !slices.Contains(hello.SupportedProtos, alpnMQTT) {
				v := verdict{}.refuse(RuleALPN, "MQTT on port 443 needs ALPN %q (offered: %v); send it, or use port 8883", alpnMQTT, hello.SupportedProtos)
				sess.mu.Lock()
				sess.verdict, sess.decided = v, true
				sess.mu.Unlock()
				return nil, errors.New(v.Reason)
			}
			c := e.baseTLS.Clone()
			if sess.requireALPN {
				c.NextProtos = []string{alpnMQTT}
			}
			version := negotiatedVersion(hello.SupportedVersions)
			// The callbacks below live as long as the connection (crypto/tls
			// keeps this config): they capture the SNI, not the ClientHelloInfo,
			// which holds the whole parsed ClientHello and the outer config.
			sni := hello.ServerName
			// The certificate is judged as soon as it arrives, before the
			// client proves it holds the key, as AWS IoT does: a certificate
			// that may not connect is refused whatever key signs for it.
			c.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
				chain := make([]*x509.Certificate, 0, len(raw))
				for _, der := range raw {
					cert, err := x509.ParseCertificate(der)
					if err != nil {
						return err
					}
					chain = append(chain, cert)
				}
				v := e.decideTLS(attempt{SNI: sni, Chain: chain, TLSVersion: version, Now: e.cfg.now()})
				sess.mu.Lock()
				sess.verdict, sess.decided, sess.tlsVersion = v, true, version
				sess.mu.Unlock()
				if v.AutoRegisterCA != "" {
					// Registered only once the client has proved it holds
					// the key (VerifyConnection runs after CertificateVerify):
					// a copy of a certificate must not register it.
					return nil
				}
				if v.refused() {
					return fmt.Errorf("thingcert emulator: %s: %s", v.Rule, v.Reason)
				}
				return nil
			}
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				sess.mu.Lock()
				defer sess.mu.Unlock()
				sess.tlsVersion, sess.alpn = cs.Version, cs.NegotiatedProtocol
				if v := sess.verdict; v.AutoRegisterCA != "" {
					note := e.autoRegister(v.Account, v.AutoRegisterCA, cs.PeerCertificates)
					sess.verdict.Reason += "; " + note
					return errors.New(sess.verdict.Reason)
				}
				if sess.requireALPN && cs.NegotiatedProtocol != alpnMQTT {
					sess.verdict = sess.verdict.refuse(RuleALPN, "MQTT on port 443 needs ALPN %q; send it, or use port 8883", alpnMQTT)
					return errors.New(sess.verdict.Reason)
				}
				return nil
			}
			return c, nil
		},
	}
}

// negotiatedVersion is the TLS version crypto/tls will choose: the client's
// most preferred one among 1.3 and 1.2.
func negotiatedVersion(client []uint16) uint16 {
	for _, v := range client {
		if v == tls.VersionTLS13 || v == tls.VersionTLS12 {
			return v
		}
	}
	return 0
}

// handshakeFailed records a refusal in the handshake: the rule's verdict when a
// rule refused, else crypto/tls's own error.
func (e *Emulator) handshakeFailed(sess *session, err error) {
	sess.mu.Lock()
	if !sess.decided || !sess.verdict.refused() {
		sess.verdict.Rule, sess.verdict.Reason = RuleHandshake, err.Error()
	}
	sess.mu.Unlock()
	e.record(sess.event(Refused, e.cfg.now()), sess.verdict)
}
