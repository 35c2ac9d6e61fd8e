package iot

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/thingcert/thingcert/internal/pemcert"
	"github.com/thingcert/thingcert/keystore"
)

// Identity is what a device proves itself with: a key in secure storage and the
// certificate chain issued for it, leaf first. An Identity is immutable once
// made; rotation makes a new one and swaps it into an IdentitySource.
type Identity struct {
	Key   keystore.Key
	Chain []*x509.Certificate

	cert tls.Certificate
}

// NewIdentity pairs a key with its certificate chain (leaf first). It refuses a
// leaf whose public key is not the key's, since such a pair can only fail at
// the server with a message far less clear than this one.
func NewIdentity(key keystore.Key, chain []*x509.Certificate) (*Identity, error) {
	if key == nil {
		return nil, errors.New("iot: identity without a key")
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("iot: identity for key %s has no certificate", keystore.RedactURI(key.URI()))
	}
	leaf := chain[0]
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := key.Public().(equaler)
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("iot: certificate %q (ID %s) was not issued for key %s: its public key differs; give the certificate made from this key's CSR",
			leaf.Subject.String(), CertificateID(leaf), keystore.RedactURI(key.URI()))
	}
	id := &Identity{Key: key, Chain: append([]*x509.Certificate(nil), chain...)}
	id.cert = tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		id.cert.Certificate = append(id.cert.Certificate, c.Raw)
	}
	return id, nil
}

// Leaf is the identity's own certificate.
func (id *Identity) Leaf() *x509.Certificate { return id.Chain[0] }

// CertificateID is AWS IoT's name for the leaf certificate.
func (id *Identity) CertificateID() string { return CertificateID(id.Leaf()) }

// TLSCertificate is the identity in the form crypto/tls serves. The key signs
// through keystore.Key, so it never leaves its store.
func (id *Identity) TLSCertificate() *tls.Certificate { return &id.cert }

// CertificateID is how AWS IoT names a certificate: the SHA-256 of its DER as
// 64 lowercase hex digits.
func CertificateID(c *x509.Certificate) string { return pemcert.ID(c.Raw) }

// LoadCertificateChain reads a PEM file holding the device certificate,
// optionally followed by intermediates.
func LoadCertificateChain(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("iot: certificate file: %w", err)
	}
	// A key in the certificate file is a mistake worth naming: it means the key
	// exists outside its store.
	if pemcert.HasPrivateKey(data) {
		return nil, fmt.Errorf("iot: certificate file %s holds a private key; keep keys in a key store and give only the certificate here", path)
	}
	chain, err := pemcert.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("iot: certificate file %s: %w", path, err)
	}
	return chain, nil
}

// IdentitySource holds the identity a connection presents. It is read at every
// TLS handshake, so swapping it changes what the next connection presents
// without touching the current one: rotation swaps in the new identity and asks
// the client to reconnect (Client.Reconnect), and swaps back if that fails.
// Safe for concurrent use.
type IdentitySource struct {
	cur   atomic.Pointer[Identity]
	once  sync.Once
	ready chan struct{} // closed by the first Swap or Fail
	err   error         // why there is no identity, set before ready closes
}

// NewIdentitySource starts with id.
func NewIdentitySource(id *Identity) *IdentitySource {
	s := NewPendingIdentitySource()
	s.Swap(id)
	return s
}

// NewPendingIdentitySource starts without an identity: a handshake that asks
// for the client certificate waits until Swap provides one or Fail says why
// there is none. It lets a program open its key (a token login, a TPM load)
// while the TCP and TLS round trips to the endpoint are already under way.
func NewPendingIdentitySource() *IdentitySource {
	return &IdentitySource{ready: make(chan struct{})}
}

// Current is the identity the next handshake will present (nil while pending).
func (s *IdentitySource) Current() *Identity { return s.cur.Load() }

// Swap makes id current and returns the identity it replaced (nil if none).
func (s *IdentitySource) Swap(id *Identity) (old *Identity) {
	if id == nil {
		panic("iot: IdentitySource.Swap(nil)")
	}
	old = s.cur.Swap(id)
	s.once.Do(func() { close(s.ready) })
	return old
}

// Fail ends the wait of a pending source: handshakes fail with err. It does
// nothing once the source has had an identity.
func (s *IdentitySource) Fail(err error) {
	s.once.Do(func() {
		s.err = err
		close(s.ready)
	})
}

// Wait returns the current identity, waiting while the source is pending.
func (s *IdentitySource) Wait(ctx context.Context) (*Identity, error) {
	select {
	case <-s.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("iot: waiting for the device identity: %w", context.Cause(ctx))
	}
	if id := s.cur.Load(); id != nil {
		return id, nil
	}
	return nil, &identityError{err: s.err}
}

// identityError is a handshake's failure to get the device identity; it is
// classified as ErrKey.
type identityError struct{ err error }

func (e *identityError) Error() string { return "iot: no device identity: " + e.err.Error() }
func (e *identityError) Unwrap() error { return e.err }

// GetClientCertificate serves the current identity; it is the
// tls.Config.GetClientCertificate of every connection.
func (s *IdentitySource) GetClientCertificate(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
	ctx := context.Context(nil)
	if cri != nil {
		ctx = cri.Context()
	}
	if ctx == nil {
		// Called outside a handshake (tests, tools): do not wait.
		if id := s.cur.Load(); id != nil {
			return id.TLSCertificate(), nil
		}
		return nil, errors.New("iot: no device identity to present")
	}
	id, err := s.Wait(ctx)
	if err != nil {
		return nil, err
	}
	return id.TLSCertificate(), nil
}
