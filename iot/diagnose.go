package iot

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strings"
	"syscall"
	"time"
)

// What can go wrong when connecting. Every error Connect returns is a
// *ConnectError whose Kind is one of these, so callers test with errors.Is and
// people read the message, which names the endpoint and what to do.
var (
	// ErrUnreachable: the TCP connection could not be made.
	ErrUnreachable = errors.New("endpoint unreachable")
	// ErrServerUntrusted: the server's certificate does not lead to a trusted
	// root, or is not valid now (a device clock far off shows as this).
	ErrServerUntrusted = errors.New("server certificate not trusted")
	// ErrServerName: the server's certificate is valid but for another name.
	ErrServerName = errors.New("server certificate does not match the endpoint name")
	// ErrClientCertRefused: the server refused the device's certificate.
	ErrClientCertRefused = errors.New("client certificate refused by the server")
	// ErrKey: the device key could not be opened or failed to sign the handshake.
	ErrKey = errors.New("device key failed")
	// ErrTLS: the TLS handshake failed for another reason.
	ErrTLS = errors.New("TLS handshake failed")
	// ErrConnectRefused: the broker answered CONNECT with a refusing CONNACK
	// (ConnectError.Code says which).
	ErrConnectRefused = errors.New("CONNECT refused")
	// ErrClosedAfterConnect: the broker accepted TLS, read CONNECT and closed
	// without a CONNACK. This is how AWS IoT refuses a policy that does not allow
	// iot:Connect.
	ErrClosedAfterConnect = errors.New("connection closed right after CONNECT")
	// ErrTimeout: no answer in time.
	ErrTimeout = errors.New("timed out")
	// ErrConnectionLost: an established connection ended.
	ErrConnectionLost = errors.New("connection lost")
)

// Stage is how far an attempt got.
type Stage string

const (
	StageDial      Stage = "dial"
	StageTLS       Stage = "tls"
	StageMQTT      Stage = "mqtt"
	StageConnected Stage = "connected"
)

// ConnectError explains why a connection failed or ended.
type ConnectError struct {
	// Endpoint is the endpoint as configured, with the dial address if any.
	Endpoint string
	Stage    Stage
	// Kind is one of the sentinels above.
	Kind error
	// Code is the CONNACK return code for ErrConnectRefused.
	Code byte
	// Err is the underlying error.
	Err error
	// Hint says what to do, naming settings by their Config field names
	// (Endpoint.Address, Roots, ClientID, Endpoint.Port, Identity).
	Hint string
	// Settings are the Config fields the hint asks to change, so that a
	// program can word them its own way (a CLI names its flags).
	Settings []string
}

// HintSettings are the Config fields the hint names.
func (e *ConnectError) HintSettings() []string { return e.Settings }

// SettingError is a Config value that cannot work; Setting is the field.
type SettingError struct {
	Setting string
	Msg     string
}

func (e *SettingError) Error() string { return e.Msg }

// HintSettings is the field the error names.
func (e *SettingError) HintSettings() []string { return []string{e.Setting} }

func (e *ConnectError) Error() string {
	var b strings.Builder
	b.WriteString("iot: ")
	b.WriteString(e.Endpoint)
	b.WriteString(": ")
	b.WriteString(e.Kind.Error())
	if e.Kind == ErrConnectRefused {
		fmt.Fprintf(&b, " (CONNACK return code %d, %s)", e.Code, connackText(e.Code))
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if e.Hint != "" {
		b.WriteString(": ")
		b.WriteString(e.Hint)
	}
	return b.String()
}

// Unwrap gives both the kind and the cause to errors.Is and errors.As.
func (e *ConnectError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// MQTT 3.1.1 CONNACK return codes.
const (
	ConnackAccepted          byte = 0
	ConnackBadProtocol       byte = 1
	ConnackIDRejected        byte = 2
	ConnackServerUnavailable byte = 3
	ConnackBadUserOrPassword byte = 4
	ConnackNotAuthorized     byte = 5
	connackNetworkError      byte = 0xFE // paho's code for "no CONNACK"
	connackProtocolViolation byte = 0xFF
)

func connackText(code byte) string {
	switch code {
	case ConnackBadProtocol:
		return "unacceptable protocol version"
	case ConnackIDRejected:
		return "identifier rejected"
	case ConnackServerUnavailable:
		return "server unavailable"
	case ConnackBadUserOrPassword:
		return "bad user name or password"
	case ConnackNotAuthorized:
		return "not authorized"
	}
	return "unknown code"
}

func connackHint(code byte, clientID string) string {
	switch code {
	case ConnackBadProtocol:
		return "the broker does not speak MQTT 3.1.1"
	case ConnackIDRejected:
		return fmt.Sprintf("the broker rejects client ID %q: choose another (ClientID)", clientID)
	case ConnackServerUnavailable:
		return "the broker is unavailable: retry later"
	case ConnackBadUserOrPassword:
		return "the broker wants a user name and password, which AWS IoT does not use with certificates: check the endpoint"
	case ConnackNotAuthorized:
		return fmt.Sprintf("the broker does not authorize this certificate or client ID %q: on AWS IoT check that the certificate is ACTIVE and its policy allows iot:Connect for this client ID", clientID)
	}
	return ""
}

// TLS alerts (RFC 8446 section 6) a server sends about the client's certificate.
const (
	alertHandshakeFailure      = 40
	alertBadCertificate        = 42
	alertUnsupportedCert       = 43
	alertCertificateRevoked    = 44
	alertCertificateExpired    = 45
	alertCertificateUnknown    = 46
	alertUnknownCA             = 48
	alertAccessDenied          = 49
	alertDecryptError          = 51
	alertProtocolVersion       = 70
	alertUnrecognizedName      = 112
	alertCertificateRequired   = 116
	alertNoApplicationProtocol = 120
)

// remoteAlert finds a TLS alert the server sent. crypto/tls reports one as a
// *net.OpError with Op "remote error" around an unexported uint8 type.
func remoteAlert(err error) (code int, text string, ok bool) {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "remote error" || op.Err == nil {
		return 0, "", false
	}
	v := reflect.ValueOf(op.Err)
	if v.Kind() != reflect.Uint8 {
		return -1, op.Err.Error(), true
	}
	return int(v.Uint()), op.Err.Error(), true
}

func isClientCertAlert(code int) bool {
	switch code {
	case alertBadCertificate, alertUnsupportedCert, alertCertificateRevoked, alertCertificateExpired,
		alertCertificateUnknown, alertUnknownCA, alertAccessDenied, alertCertificateRequired, alertDecryptError:
		return true
	}
	return false
}

func newErr(ep Endpoint, stage Stage, kind, err error, hint string) *ConnectError {
	return &ConnectError{Endpoint: ep.String(), Stage: stage, Kind: kind, Err: err, Hint: hint, Settings: settingsIn(hint)}
}

// settingsIn lists the Config fields a hint names.
func settingsIn(hint string) []string {
	var out []string
	for _, s := range []string{"Endpoint.Address", "Endpoint.Port", "Roots", "ClientID", "Identity"} {
		if strings.Contains(hint, s) {
			out = append(out, s)
		}
	}
	return out
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// classifyDial explains a failed TCP connection.
func classifyDial(ctx context.Context, ep Endpoint, err error) error {
	if ctx.Err() != nil && !errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		return newErr(ep, StageDial, context.Cause(ctx), err, "")
	}
	hint := fmt.Sprintf("check the device's network, DNS and firewall (outbound TCP to %s)", ep.DialAddress())
	if isTimeout(err) {
		return newErr(ep, StageDial, ErrUnreachable, err, "no answer in time: "+hint)
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		hint = fmt.Sprintf("the name %q does not resolve: check the endpoint (`aws iot describe-endpoint --endpoint-type iot:Data-ATS`) and the device's DNS", dns.Name)
	} else if errors.Is(err, syscall.ECONNREFUSED) {
		hint = fmt.Sprintf("nothing listens on %s: check the port (8883, or 443 where 8883 is blocked)", ep.DialAddress())
	}
	return newErr(ep, StageDial, ErrUnreachable, err, hint)
}

// classifyTLS explains a failed handshake.
func classifyTLS(ctx context.Context, ep Endpoint, err, signErr error) error {
	if ctx.Err() != nil && !errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		return newErr(ep, StageTLS, context.Cause(ctx), err, "")
	}
	var idErr *identityError
	if errors.As(err, &idErr) {
		return newErr(ep, StageTLS, ErrKey, idErr.err, "the device key could not be opened: check its URI, its PIN or auth file, and that its token or TPM is present and ask its store how it is protected")
	}
	if signErr != nil {
		return newErr(ep, StageTLS, ErrKey, signErr, "the device key could not sign the TLS handshake: check that its token or TPM is present and reachable")
	}
	var host x509.HostnameError
	if errors.As(err, &host) {
		names := host.Certificate.DNSNames
		if len(names) == 0 && host.Certificate.Subject.CommonName != "" {
			names = []string{host.Certificate.Subject.CommonName}
		}
		return newErr(ep, StageTLS, ErrServerName, err, fmt.Sprintf(
			"the server's certificate is for %s, not %q: check the endpoint name; it is sent as SNI and checked against the certificate (to reach the endpoint through another host or port, keep the name and give the address to dial in Endpoint.Address)",
			strings.Join(names, ", "), ep.Host))
	}
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		issuer := ""
		if ua.Cert != nil {
			issuer = ua.Cert.Issuer.String()
		}
		return newErr(ep, StageTLS, ErrServerUntrusted, err, fmt.Sprintf(
			"the server's chain (issuer %q) does not lead to a trusted root: for AWS IoT use the ATS endpoint (<prefix>-ats.iot.<region>.amazonaws.com), which the built-in Amazon roots trust; for another broker give its CA in Roots", issuer))
	}
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) {
		hint := "the server's certificate is not acceptable"
		if inv.Reason == x509.Expired && inv.Cert != nil {
			hint = fmt.Sprintf("the server's certificate is valid from %s to %s, which does not include the device's current time: check the device clock (NTP, RTC battery)",
				inv.Cert.NotBefore.UTC().Format(time.RFC3339), inv.Cert.NotAfter.UTC().Format(time.RFC3339))
		}
		return newErr(ep, StageTLS, ErrServerUntrusted, err, hint)
	}
	if code, _, ok := remoteAlert(err); ok {
		return classifyAlert(ep, StageTLS, code, err)
	}
	if isTimeout(err) {
		return newErr(ep, StageTLS, ErrTimeout, err, fmt.Sprintf("no TLS answer from %s in time: is this a TLS port?", ep.DialAddress()))
	}
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) {
		return newErr(ep, StageTLS, ErrTLS, err, fmt.Sprintf("%s does not speak TLS: check the port", ep.DialAddress()))
	}
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		return newErr(ep, StageTLS, ErrTLS, err, "the server closed the connection during the handshake: it may refuse the device certificate without saying so, or not serve TLS on this port")
	}
	return newErr(ep, StageTLS, ErrTLS, err, "")
}

// classifyAlert explains a TLS alert from the server, in the handshake (TLS
// 1.2) or on the first read after it (TLS 1.3, where the server judges the
// client certificate after the client has finished).
func classifyAlert(ep Endpoint, stage Stage, code int, err error) error {
	switch {
	case isClientCertAlert(code):
		return newErr(ep, stage, ErrClientCertRefused, err,
			"the server does not accept the device certificate: check that the certificate (Identity) is the one of the device key and is signed by a CA the server trusts; on AWS IoT check that the certificate is registered and ACTIVE (and, if signed by your own CA, that the CA is registered)")
	case code == alertUnrecognizedName:
		return newErr(ep, stage, ErrTLS, err, fmt.Sprintf("the server does not serve the name %q (SNI): check the endpoint name", ep.Host))
	case code == alertNoApplicationProtocol:
		return newErr(ep, stage, ErrTLS, err, fmt.Sprintf("the server refused the ALPN protocol %q: on port 443 AWS IoT needs it for MQTT; a broker that does not know it needs port 8883 (Endpoint.Port)", ALPNMQTT))
	case code == alertProtocolVersion:
		return newErr(ep, stage, ErrTLS, err, "the server offers no TLS version this client accepts (1.2 or 1.3)")
	case code == alertHandshakeFailure:
		return newErr(ep, stage, ErrTLS, err, "the server and the device share no cipher suite or signature algorithm, or the server refused the client certificate")
	}
	return newErr(ep, stage, ErrTLS, err, "")
}

// classifyMQTT explains a CONNECT that did not end in an accepting CONNACK.
// rc is the CONNACK code (connackNetworkError when none came), pahoErr what
// paho said, readErr the first read error on the connection, wrote whether
// CONNECT went out.
func classifyMQTT(ctx context.Context, ep Endpoint, clientID string, rc byte, pahoErr, readErr error, wrote bool) error {
	if rc >= ConnackBadProtocol && rc <= ConnackNotAuthorized || rc > ConnackNotAuthorized && rc < connackNetworkError {
		e := newErr(ep, StageMQTT, ErrConnectRefused, nil, connackHint(rc, clientID))
		e.Code = rc
		return e
	}
	if ctx.Err() != nil && !errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		return newErr(ep, StageMQTT, context.Cause(ctx), pahoErr, "")
	}
	cause := readErr
	if cause == nil {
		cause = pahoErr
	}
	if code, _, ok := remoteAlert(cause); ok {
		return classifyAlert(ep, StageMQTT, code, cause)
	}
	if rc == connackProtocolViolation {
		return newErr(ep, StageMQTT, ErrTLS, cause, "the server did not answer CONNECT with a CONNACK: is this an MQTT broker?")
	}
	if isTimeout(cause) || ctx.Err() != nil {
		return newErr(ep, StageMQTT, ErrTimeout, cause, "the broker accepted TLS but sent no CONNACK in time")
	}
	if wrote && (errors.Is(cause, io.EOF) || errors.Is(cause, io.ErrUnexpectedEOF) || errors.Is(cause, syscall.ECONNRESET) || errors.Is(cause, net.ErrClosed)) {
		return newErr(ep, StageMQTT, ErrClosedAfterConnect, nil, fmt.Sprintf(
			"the broker accepted TLS then closed: on AWS IoT this usually means the policy denies iot:Connect for this client ID (%q); check the policy attached to the certificate, and that the certificate is ACTIVE", clientID))
	}
	return newErr(ep, StageMQTT, ErrTLS, cause, "")
}

// lostError explains the end of an established connection.
func lostError(ep Endpoint, clientID string, upFor time.Duration, err error) error {
	if code, _, ok := remoteAlert(err); ok && isClientCertAlert(code) {
		return classifyAlert(ep, StageConnected, code, err)
	}
	return newErr(ep, StageConnected, ErrConnectionLost, err, fmt.Sprintf(
		"up for %s; AWS IoT closes a connection when another client connects with the same client ID (%q), when the policy denies a publish or subscribe, or when keep-alive pings stop",
		upFor.Round(time.Millisecond), clientID))
}

// Authenticated reports whether the failure was told by a server the client
// had verified: the TLS handshake had completed (the server's certificate
// chain, its signature over the handshake and its Finished all checked), so
// what came next arrived inside the session's encryption. Anything read
// before that (a TLS 1.2 alert, any alert before ServerHello) can be forged by
// whoever sits on the path, and a TCP reset or close carries no proof of who
// sent it.
func (e *ConnectError) Authenticated() bool {
	return e.Stage == StageMQTT || e.Stage == StageConnected
}

// IdentityRefused reports whether err is the cloud refusing the identity a
// connection presented, as told by the verified server: the device
// certificate refused by an alert after the handshake (TLS 1.3, where the
// server judges the client certificate after its own Finished), or CONNECT
// refused as not authorized. A certificate revoked, deactivated or deleted in
// AWS IoT shows as one of these.
//
// What anyone on the path can fake never counts: an alert read during the
// handshake (plaintext before ServerHello, or before the server's Finished),
// and a connection reset or closed right after CONNECT (which is also how a
// NAT timeout or a cellular drop looks, and how AWS IoT refuses a policy that
// denies iot:Connect, which a new certificate would not fix).
func IdentityRefused(err error) bool {
	var ce *ConnectError
	if !errors.As(err, &ce) || !ce.Authenticated() {
		return false
	}
	switch ce.Kind {
	case ErrClientCertRefused:
		return true
	case ErrConnectRefused:
		// Not "server unavailable" or a protocol mismatch: those pass.
		return ce.Code == ConnackNotAuthorized || ce.Code == ConnackBadUserOrPassword
	}
	return false
}
