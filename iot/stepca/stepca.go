// Package stepca issues the device's certificates from the owner's own CA
// run as step-ca (smallstep's CA server), with no cloud code for the owner to
// write: AWS IoT then takes the certificates by just-in-time provisioning, as
// the CA is registered there with auto-registration and a template; or, the
// CA registered with no account, each certificate is registered in every
// account the device belongs to (RegisterCertificateWithoutCA) by the fleet
// tool, from the report the device makes through its rotation job.
//
// The first certificate comes from an X5C provisioner: the factory claim
// certificate (signed by a CA the provisioner trusts) signs a one-time token,
// the new key signs the CSR, and POST /1.0/sign returns the certificate. A
// renewal makes a new key too: POST /1.0/rekey over mutual TLS with the
// current certificate, which step-ca takes as the proof. Only these two
// endpoints are used, over net/http: the step-ca client library would bring
// its whole dependency tree into the device binary for two requests.
//
// The CA's TLS certificate must chain to the step-ca root the device is
// given (a file, optionally pinned by its SHA-256 fingerprint); nothing else
// is trusted.
package stepca

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/thingcert/thingcert/internal/pemcert"
	"github.com/thingcert/thingcert/rotation"
)

// DefaultTimeout bounds one request to the CA.
const DefaultTimeout = 30 * time.Second

// Issuer is a rotation.IdentityIssuer over step-ca's API.
type Issuer struct {
	// URL is the CA's base URL (https://ca.example.com:9000).
	URL string
	// Roots are the CAs the CA server's TLS certificate must chain to: the
	// step-ca root (LoadRoot reads it).
	Roots *x509.CertPool
	// Provisioner is the name of the X5C provisioner that trusts the claim
	// certificate's CA.
	Provisioner string
	// Timeout bounds one request; zero is DefaultTimeout.
	Timeout time.Duration
	// TokenLifetime is how long a one-time token is valid; zero is 5 minutes
	// (step's own). step-ca allows one minute of clock skew around it.
	TokenLifetime time.Duration
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Log receives one line per request; nil discards.
	Log *slog.Logger
	// Transport, if set, is the base of the HTTP transport (a proxy, say);
	// its TLS settings are replaced.
	Transport *http.Transport
}

var _ rotation.IdentityIssuer = (*Issuer)(nil)

// ErrNoIdentity: Issue was called without an identity; step-ca needs one.
var ErrNoIdentity = errors.New("step-ca needs the device's claim or current certificate to prove who it is")

// Issue cannot prove the device without an identity: the runner calls
// IssueWith.
func (i *Issuer) Issue(context.Context, []byte) (*rotation.Issued, error) {
	return nil, rotation.NewFatal("requesting a certificate from step-ca at "+i.URL, ErrNoIdentity)
}

// IssueWith asks step-ca for a certificate for csrDER: by the X5C
// provisioner, signed with the claim, when current is the claim; else by a
// rekey over mutual TLS with the current certificate.
func (i *Issuer) IssueWith(ctx context.Context, current rotation.Identity, csrDER []byte) (*rotation.Issued, error) {
	if current.Key == nil || len(current.Chain) == 0 {
		return nil, rotation.NewFatal("requesting a certificate from step-ca at "+i.URL, ErrNoIdentity)
	}
	if current.Record.Claim {
		return i.Sign(ctx, current, csrDER)
	}
	return i.Rekey(ctx, current, csrDER)
}

// Sign requests the first certificate: POST /1.0/sign with a one-time token
// the claim signed.
func (i *Issuer) Sign(ctx context.Context, claim rotation.Identity, csrDER []byte) (*rotation.Issued, error) {
	op := "step-ca sign at " + i.URL
	base, err := i.base()
	if err != nil {
		return nil, rotation.NewFatal(op, err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, rotation.NewFatal(op, fmt.Errorf("reading the CSR: %w", err))
	}
	if i.Provisioner == "" {
		return nil, rotation.NewFatal(op, errors.New("no X5C provisioner named: give the name of the provisioner that trusts the claim certificate's CA"))
	}
	tok, err := Token(claim.Key, claim.Chain, TokenClaims{
		Provisioner: i.Provisioner,
		Audience:    base.ResolveReference(&url.URL{Path: "/1.0/sign", Fragment: "x5c/" + i.Provisioner}).String(),
		Subject:     csr.Subject.CommonName,
		SANs:        sans(csr),
		Now:         i.now(),
		Lifetime:    i.TokenLifetime,
	})
	if err != nil {
		return nil, rotation.NewFatal(op, fmt.Errorf("signing the one-time token with the claim key: %w", err))
	}
	body := map[string]string{"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})), "ott": tok}
	return i.post(ctx, op, base, "/1.0/sign", body, nil)
}

// Rekey requests a certificate for a new key: POST /1.0/rekey over mutual
// TLS with the current certificate.
func (i *Issuer) Rekey(ctx context.Context, current rotation.Identity, csrDER []byte) (*rotation.Issued, error) {
	op := "step-ca rekey at " + i.URL
	base, err := i.base()
	if err != nil {
		return nil, rotation.NewFatal(op, err)
	}
	cert := &tls.Certificate{PrivateKey: current.Key, Leaf: current.Chain[0]}
	for _, c := range current.Chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	body := map[string]string{"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))}
	return i.post(ctx, op, base, "/1.0/rekey", body, cert)
}

func (i *Issuer) now() time.Time {
	if i.Now != nil {
		return i.Now()
	}
	return time.Now()
}

func (i *Issuer) log() *slog.Logger {
	if i.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return i.Log
}

func (i *Issuer) base() (*url.URL, error) {
	u, err := url.Parse(i.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("the CA URL %q is not an https:// URL with a host", i.URL)
	}
	if i.Roots == nil {
		return nil, fmt.Errorf("no root to check the CA at %s against: give the step-ca root certificate", i.URL)
	}
	return u, nil
}

// sans are the CSR's subject alternative names, as the token must list them
// (step-ca checks the CSR's names against the token's one for one).
func sans(csr *x509.CertificateRequest) []string {
	var out []string
	out = append(out, csr.DNSNames...)
	for _, ip := range csr.IPAddresses {
		out = append(out, ip.String())
	}
	out = append(out, csr.EmailAddresses...)
	for _, u := range csr.URIs {
		out = append(out, u.String())
	}
	return out
}

// signResponse is step-ca's answer to sign and rekey (api.SignResponse).
type signResponse struct {
	Crt       string   `json:"crt"`
	CA        string   `json:"ca"`
	CertChain []string `json:"certChain"`
}

// errorResponse is step-ca's error body.
type errorResponse struct {
	Status  int    `json:"status"`
	Message string `json:"message"`
}

func (i *Issuer) client(cert *tls.Certificate) *http.Client {
	var t *http.Transport
	if i.Transport != nil {
		t = i.Transport.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second}
	}
	t.TLSClientConfig = &tls.Config{RootCAs: i.Roots, MinVersion: tls.VersionTLS12}
	if cert != nil {
		// Presented only when the CA asks (it always does, optionally).
		t.TLSClientConfig.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: t}
}

func (i *Issuer) post(ctx context.Context, op string, base *url.URL, path string, body any, cert *tls.Certificate) (*rotation.Issued, error) {
	timeout := i.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	data, err := json.Marshal(body)
	if err != nil {
		return nil, rotation.NewFatal(op, err)
	}
	u := base.ResolveReference(&url.URL{Path: path}).String()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(data))
	if err != nil {
		return nil, rotation.NewFatal(op, err)
	}
	req.Header.Set("Content-Type", "application/json")
	hc := i.client(cert)
	defer hc.CloseIdleConnections()
	start := i.now()
	resp, err := hc.Do(req)
	if err != nil {
		return nil, classifyTransport(ctx, op, u, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, rotation.NewTransient(op, fmt.Errorf("reading the answer from %s: %w", u, err), 0)
	}
	i.log().Info("step-ca: request answered", "url", u, "status", resp.StatusCode, "took", i.now().Sub(start).Round(time.Millisecond).String())
	if resp.StatusCode/100 != 2 {
		return nil, statusError(op, u, resp, raw, cert != nil)
	}
	var sr signResponse
	if err := json.Unmarshal(raw, &sr); err != nil {
		return nil, rotation.NewFatal(op, fmt.Errorf("%w: the answer from %s is not step-ca's JSON: %v", rotation.ErrBadCertificate, u, err))
	}
	pems := sr.CertChain
	if len(pems) == 0 && sr.Crt != "" {
		pems = []string{sr.Crt, sr.CA}
	}
	var chain []*x509.Certificate
	for _, p := range pems {
		if p == "" {
			continue
		}
		c, err := parsePEMCert(p)
		if err != nil {
			return nil, rotation.NewFatal(op, fmt.Errorf("%w: %s returned an unreadable certificate: %v", rotation.ErrBadCertificate, u, err))
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, rotation.NewFatal(op, fmt.Errorf("%w: %s returned no certificate", rotation.ErrBadCertificate, u))
	}
	return &rotation.Issued{Chain: chain}, nil
}

func parsePEMCert(s string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// classifyTransport: the network and a CA that is down are transient; a CA
// whose certificate does not chain to the root given is fatal (a retry meets
// the same certificate).
func classifyTransport(ctx context.Context, op, u string, err error) error {
	var ua x509.UnknownAuthorityError
	var host x509.HostnameError
	var inv x509.CertificateInvalidError
	switch {
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return err
	case errors.As(err, &ua):
		return rotation.NewFatal(op, fmt.Errorf("%s: the CA's TLS certificate does not chain to the step-ca root the device was given: give the root of this CA (step ca root), or check the URL: %w", u, err))
	case errors.As(err, &host):
		return rotation.NewFatal(op, fmt.Errorf("%s: the CA's TLS certificate is not for this host name: use a name the CA serves (its dnsNames in ca.json): %w", u, err))
	case errors.As(err, &inv):
		return rotation.NewTransient(op, fmt.Errorf("%s: the CA's TLS certificate is not valid now (check the device clock): %w", u, err), 0)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		return rotation.NewTransient(op, fmt.Errorf("%s: no answer in time; the request is tried again: %w", u, err), 0)
	}
	return rotation.NewTransient(op, fmt.Errorf("%s: cannot reach the CA (network, DNS, or the CA is down); the request is tried again: %w", u, err), 0)
}

// statusError classifies an HTTP error: 5xx and 429 may pass; a refusal of
// the token, the certificate or the CSR will not.
func statusError(op, u string, resp *http.Response, raw []byte, mtls bool) error {
	var er errorResponse
	msg := strings.TrimSpace(string(raw))
	if json.Unmarshal(raw, &er) == nil && er.Message != "" {
		msg = er.Message
	}
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	e := &rotation.Error{Op: op, StatusCode: resp.StatusCode}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		e.Transient = true
		e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"))
		e.Err = fmt.Errorf("%s: %s; the request is tried again", u, msg)
	case resp.StatusCode == http.StatusUnauthorized && mtls:
		e.Err = fmt.Errorf("%s refused the current certificate for a rekey: %s; check that the certificate is still valid, not revoked, issued by this CA, and that renewal is allowed for its provisioner (claims.disableRenewal); the step-ca log says more", u, msg)
	case resp.StatusCode == http.StatusUnauthorized:
		e.Err = fmt.Errorf("%s refused the one-time token signed by the claim: %s; check that the provisioner exists and is X5C, that its roots hold the claim certificate's CA, that the claim certificate is valid with client authentication and digital signature usages, and the device clock; the step-ca log says more", u, msg)
	case resp.StatusCode == http.StatusForbidden:
		e.Err = fmt.Errorf("%s refused the CSR by policy: %s; check the provisioner's policy and that the CSR's subject is the token's", u, msg)
	default:
		e.Err = fmt.Errorf("%s: %s", u, msg)
	}
	return e
}

func retryAfter(v string) time.Duration {
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	return 0
}

// Fingerprint is step's fingerprint of a certificate: the SHA-256 of its DER,
// in hex.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// LoadRoot reads the step-ca root from a PEM file. With a fingerprint (hex
// SHA-256, as `step certificate fingerprint` prints it; colons allowed) the
// file must hold a certificate with that fingerprint, and only that one is
// trusted.
func LoadRoot(path, fingerprint string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("step-ca root %s: %w", path, err)
	}
	want := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(fingerprint), ":", ""))
	certs, err := pemcert.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("step-ca root %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	n := 0
	var seen []string
	for _, c := range certs {
		fp := Fingerprint(c)
		seen = append(seen, fp)
		if want != "" && fp != want {
			continue
		}
		pool.AddCert(c)
		n++
	}
	switch {
	case len(seen) == 0:
		return nil, fmt.Errorf("step-ca root %s holds no PEM certificate: give the CA's root (step ca root root_ca.crt)", path)
	case n == 0:
		return nil, fmt.Errorf("step-ca root %s: no certificate has the fingerprint %s (found %s): the file is not the root of the CA you meant", path, want, strings.Join(seen, ", "))
	}
	return pool, nil
}
