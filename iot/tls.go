package iot

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Ports AWS IoT Core serves MQTT with X.509 client certificates on.
const (
	PortMQTT  = 8883 // plain MQTT over TLS, no ALPN
	PortHTTPS = 443  // MQTT over TLS on the HTTPS port, selected by ALPN
)

// ALPNMQTT is the ALPN protocol ID that tells AWS IoT, on port 443, that the
// client speaks MQTT with a client certificate.
const ALPNMQTT = "x-amzn-mqtt-ca"

// Endpoint is where a device connects. The zero Port means 8883.
type Endpoint struct {
	// Host is the endpoint's DNS name, such as
	// abc123-ats.iot.eu-west-1.amazonaws.com or a custom domain. It is always
	// sent as SNI, which is how AWS IoT picks the account (and the certificate
	// it serves), and the server certificate is checked against it.
	Host string
	// Port is 8883 (the default) or 443. It decides ALPN: 443 offers
	// x-amzn-mqtt-ca, 8883 offers none. It is the port of the endpoint, which
	// is not necessarily the port dialed (see Address).
	Port int
	// Address, when set, is the HOST:PORT actually dialed: a test broker, a
	// local relay or a port forward. SNI, the name checked and ALPN still
	// follow Host and Port.
	Address string
}

// Validate reports a mistake in the endpoint in words a user can act on.
func (e Endpoint) Validate() error {
	h := e.Host
	switch {
	case h == "":
		return errors.New("iot: no endpoint host name (find it with `aws iot describe-endpoint --endpoint-type iot:Data-ATS`)")
	case net.ParseIP(strings.Trim(h, "[]")) != nil:
		return &SettingError{Setting: "Endpoint.Address", Msg: fmt.Sprintf("iot: endpoint %q is an IP address: give the endpoint's host name, which is sent as SNI and checked against the server certificate, and put the address to dial in Endpoint.Address", h)}
	case strings.ContainsAny(h, ":/ "):
		return fmt.Errorf("iot: endpoint %q: want a bare host name such as abc123-ats.iot.eu-west-1.amazonaws.com (no scheme, port or path; the port goes in Port)", h)
	}
	if p := e.port(); p != PortMQTT && p != PortHTTPS {
		return &SettingError{Setting: "Endpoint.Address", Msg: fmt.Sprintf("iot: endpoint port %d: AWS IoT serves MQTT with client certificates on 8883 or 443; to dial another port give it in Endpoint.Address", p)}
	}
	if e.Address != "" {
		host, port, err := net.SplitHostPort(e.Address)
		if err != nil || host == "" || port == "" {
			return fmt.Errorf("iot: dial address %q: want HOST:PORT", e.Address)
		}
		if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
			return fmt.Errorf("iot: dial address %q: bad port", e.Address)
		}
	}
	return nil
}

func (e Endpoint) port() int {
	if e.Port == 0 {
		return PortMQTT
	}
	return e.Port
}

// String is HOST:PORT of the endpoint, with the dial address when there is one.
func (e Endpoint) String() string {
	s := net.JoinHostPort(e.Host, strconv.Itoa(e.port()))
	if e.Address != "" && e.Address != s {
		s += " via " + e.Address
	}
	return s
}

// DialAddress is the HOST:PORT that is dialed.
func (e Endpoint) DialAddress() string {
	if e.Address != "" {
		return e.Address
	}
	return net.JoinHostPort(e.Host, strconv.Itoa(e.port()))
}

// ALPN is the protocol list offered: x-amzn-mqtt-ca on port 443, none on 8883.
func (e Endpoint) ALPN() []string {
	if e.port() == PortHTTPS {
		return []string{ALPNMQTT}
	}
	return nil
}

// NewTLSConfig is the client TLS configuration for a device identity: SNI and
// server name check are the endpoint host name, roots are the given pool (nil
// means AmazonRoots), TLS 1.2 or later, ALPN by port, and the client
// certificate is read from ids at each handshake so a swap takes effect on the
// next connection.
func NewTLSConfig(ep Endpoint, roots *x509.CertPool, ids *IdentitySource) (*tls.Config, error) {
	if err := ep.Validate(); err != nil {
		return nil, err
	}
	if ids == nil {
		return nil, errors.New("iot: no identity source")
	}
	if roots == nil {
		var err error
		if roots, err = AmazonRoots(); err != nil {
			return nil, err
		}
	}
	return &tls.Config{
		ServerName:           ep.Host,
		RootCAs:              roots,
		MinVersion:           tls.VersionTLS12,
		NextProtos:           ep.ALPN(),
		GetClientCertificate: ids.GetClientCertificate,
	}, nil
}

// DialFunc opens the TCP connection to a HOST:PORT, directly or through a proxy.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// TLSInfo is what a connection negotiated.
type TLSInfo struct {
	// Address is what was dialed; RemoteAddr what it resolved to.
	Address    string `json:"address"`
	RemoteAddr string `json:"remote_addr"`
	// ServerName is the SNI sent.
	ServerName string `json:"server_name"`
	// ALPNOffered is the list offered; ALPN is what the server chose ("" for none).
	ALPNOffered []string `json:"alpn_offered"`
	ALPN        string   `json:"alpn"`
	Version     string   `json:"version"`
	CipherSuite string   `json:"cipher_suite"`
	// ServerChain is the chain the server sent, leaf first.
	ServerChain []CertSummary `json:"server_chain"`
	// ClientCertificate is the certificate presented, if the server asked.
	ClientCertificate *CertSummary `json:"client_certificate,omitempty"`
}

// CertSummary names a certificate.
type CertSummary struct {
	Subject  string    `json:"subject"`
	Issuer   string    `json:"issuer"`
	NotAfter time.Time `json:"not_after"`
	// ID is the SHA-256 of the DER (AWS IoT's certificate ID).
	ID string `json:"id"`
}

func summarize(c *x509.Certificate) CertSummary {
	return CertSummary{Subject: c.Subject.String(), Issuer: c.Issuer.String(), NotAfter: c.NotAfter, ID: CertificateID(c)}
}

// attempt records one connection attempt as it happens, for the timings and
// for telling apart the ways it can fail.
type attempt struct {
	start, dialed, handshaken time.Time

	mu        sync.Mutex
	conn      net.Conn // the raw or TLS connection, closed to abort
	signErr   error    // the device key failed to sign
	presented *x509.Certificate
	readErr   error // first error reading after the handshake
	wrote     atomic.Bool
	// established is set once CONNACK accepted the connection: from then on
	// paho reads and writes concurrently and failures are losses.
	established atomic.Bool
	aborted     bool
}

func (a *attempt) setConn(c net.Conn) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.aborted {
		return false
	}
	a.conn = c
	return true
}

// abort closes the connection the attempt is using, so a caller's context
// cancels a CONNECT waiting for its CONNACK as well as a dial.
func (a *attempt) abort() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.aborted = true
	if a.conn != nil {
		a.conn.Close()
	}
}

func (a *attempt) firstReadErr() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.readErr
}

// tracedConn notes the first read error and whether anything was written after
// the handshake: an EOF before any CONNECT means something else than an EOF
// after one.
type tracedConn struct {
	*tls.Conn
	a *attempt
}

func (c tracedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil {
		c.a.mu.Lock()
		if c.a.readErr == nil {
			c.a.readErr = err
		}
		c.a.mu.Unlock()
	}
	return n, err
}

func (c tracedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.a.wrote.Store(true)
	}
	if err != nil && !c.a.established.Load() {
		c.probeAlert()
	}
	return n, err
}

// probeAlert reads what the server sent before a failed write. In TLS 1.3 a
// server refuses the client certificate after the client's handshake is done,
// with an alert and a close; CONNECT can then meet a reset, and paho, seeing
// the write fail, never reads. The alert is still in the receive buffer and
// says why. The deadline only bounds a server that sent nothing.
func (c tracedConn) probeAlert() {
	c.Conn.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
	var b [1]byte
	_, err := c.Conn.Read(b[:])
	if err != nil {
		c.a.mu.Lock()
		if c.a.readErr == nil {
			c.a.readErr = err
		}
		c.a.mu.Unlock()
	}
}

// tracedSigner notes a failure of the device key, which crypto/tls reports
// only as a string.
type tracedSigner struct {
	crypto.Signer
	a *attempt
}

func (s tracedSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := s.Signer.Sign(rand, digest, opts)
	if err != nil {
		s.a.mu.Lock()
		s.a.signErr = err
		s.a.mu.Unlock()
	}
	return sig, err
}

// dialTLS opens the TCP connection and runs the TLS handshake for one attempt.
// Errors are *ConnectError.
func dialTLS(ctx context.Context, ep Endpoint, base *tls.Config, dial DialFunc, now func() time.Time, a *attempt) (*tls.Conn, *TLSInfo, error) {
	addr := ep.DialAddress()
	a.start = now()
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, classifyDial(ctx, ep, err)
	}
	a.dialed = now()
	cfg := base.Clone()
	getCert := base.GetClientCertificate
	cfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if getCert == nil {
			return &tls.Certificate{}, nil
		}
		c, err := getCert(cri)
		if err != nil || c == nil || c.PrivateKey == nil {
			return c, err
		}
		signer, ok := c.PrivateKey.(crypto.Signer)
		if !ok {
			return c, nil
		}
		traced := *c
		traced.PrivateKey = tracedSigner{Signer: signer, a: a}
		a.mu.Lock()
		a.presented = c.Leaf
		a.mu.Unlock()
		return &traced, nil
	}
	conn := tls.Client(raw, cfg)
	if !a.setConn(conn) {
		conn.Close()
		return nil, nil, classifyDial(ctx, ep, context.Cause(ctx))
	}
	if err := conn.HandshakeContext(ctx); err != nil {
		conn.Close()
		a.mu.Lock()
		signErr := a.signErr
		a.mu.Unlock()
		return nil, nil, classifyTLS(ctx, ep, err, signErr)
	}
	a.handshaken = now()
	st := conn.ConnectionState()
	info := &TLSInfo{
		Address:     addr,
		RemoteAddr:  raw.RemoteAddr().String(),
		ServerName:  cfg.ServerName,
		ALPNOffered: append([]string{}, cfg.NextProtos...),
		ALPN:        st.NegotiatedProtocol,
		Version:     tls.VersionName(st.Version),
		CipherSuite: tls.CipherSuiteName(st.CipherSuite),
	}
	for _, c := range st.PeerCertificates {
		info.ServerChain = append(info.ServerChain, summarize(c))
	}
	a.mu.Lock()
	if a.presented != nil {
		s := summarize(a.presented)
		info.ClientCertificate = &s
	}
	a.mu.Unlock()
	return conn, info, nil
}
