package emulator

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/thingcert/thingcert/internal/pemcert"

	"github.com/thingcert/thingcert/internal/atomicfile"
)

// Files in the state folder that hold the emulator's own authorities.
const (
	// RootCAFile is the root that signs the emulator's server certificate:
	// clients trust it instead of Amazon Root CA 1/3.
	RootCAFile     = "root-ca.pem"
	rootKeyFile    = "root-ca.key"
	issuingCAFile  = "issuing-ca.pem"
	issuingKeyFile = "issuing-ca.key"
)

// The emulator's authorities do not depend on any clock, injected or not: the
// server certificate must be valid for real clients at real time, and a test
// clock far in the future or past must not break the handshake.
var (
	authorityNotBefore = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	authorityNotAfter  = time.Date(2099, 12, 31, 23, 59, 59, 0, time.UTC)
)

// AWSCertificateNotAfter is the expiry of every certificate AWS IoT issues
// (CreateKeysAndCertificate, CreateCertificateFromCsr), and of the emulator's
// unless Config.CertificateLifetime says otherwise.
var AWSCertificateNotAfter = time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC)

// authority is a CA certificate and its key.
type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
	pem  []byte
	id   string
}

// CertificateID is AWS IoT's certificate ID: the SHA-256 of the DER, as 64
// lowercase hex digits.
func CertificateID(der []byte) string { return pemcert.ID(der) }

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// newAuthority makes a self-signed CA with a fresh P-256 key.
func newAuthority(subject pkix.Name) (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             authorityNotBefore,
		NotAfter:              authorityNotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &authority{cert: cert, key: key, pem: encodeCert(der), id: CertificateID(der)}, nil
}

// loadOrCreateAuthority reads a CA from dir, or makes and saves one. With dir
// empty the CA lives in memory only.
func loadOrCreateAuthority(dir, certFile, keyFile string, subject pkix.Name) (*authority, error) {
	if dir == "" {
		return newAuthority(subject)
	}
	certPath, keyPath := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	certPEM, err := os.ReadFile(certPath)
	if err == nil {
		keyPEM, err := os.ReadFile(keyPath)
		if err != nil {
			return nil, fmt.Errorf("emulator: %s exists but its key cannot be read: %w (remove both files to make a new CA)", certPath, err)
		}
		return parseAuthority(certPEM, keyPEM, certPath)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("emulator: reading %s: %w", certPath, err)
	}
	a, err := newAuthority(subject)
	if err != nil {
		return nil, fmt.Errorf("emulator: making CA %s: %w", certPath, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(a.key)
	if err != nil {
		return nil, err
	}
	// The key first: a certificate without its key would be unusable.
	if err := atomicfile.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, fmt.Errorf("emulator: %w", err)
	}
	if err := atomicfile.WriteFile(certPath, a.pem, 0o644); err != nil {
		return nil, fmt.Errorf("emulator: %w", err)
	}
	return a, nil
}

func parseAuthority(certPEM, keyPEM []byte, where string) (*authority, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("emulator: %s holds no PEM certificate", where)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("emulator: %s: %w", where, err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("emulator: the key beside %s holds no PEM key", where)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("emulator: the key beside %s: %w", where, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("emulator: the key beside %s cannot sign", where)
	}
	return &authority{cert: cert, key: signer, pem: encodeCert(cert.Raw), id: CertificateID(cert.Raw)}, nil
}

func rootSubject() pkix.Name {
	return pkix.Name{CommonName: "thingcert emulator root CA", Organization: []string{"thingcert emulator"}}
}

// issuingSubject resembles the issuer of AWS-issued device certificates
// (OU=Amazon Web Services O=Amazon.com Inc. L=Seattle ST=Washington C=US); the
// common name says where it really comes from.
func issuingSubject() pkix.Name {
	return pkix.Name{
		CommonName:         "thingcert emulator (Amazon-like issuing CA)",
		OrganizationalUnit: []string{"Amazon Web Services"},
		Organization:       []string{"Amazon.com Inc."},
		Locality:           []string{"Seattle"},
		Province:           []string{"Washington"},
		Country:            []string{"US"},
	}
}

// serverCertificate issues the TLS server certificate for the endpoints, plus
// localhost and the loopback addresses so clients that connect by IP (such as
// mosquitto_pub -h 127.0.0.1, which then sends no SNI) can still verify it.
func (a *authority) serverCertificate(key crypto.Signer, names []string) (*tls.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "*.iot.amazonaws.com (thingcert emulator)"},
		NotBefore:    authorityNotBefore,
		NotAfter:     authorityNotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     append([]string{"localhost"}, names...),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return nil, fmt.Errorf("emulator: issuing the server certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// issue signs a device certificate for pub, as AWS IoT does for
// CreateCertificateFromCsr and CreateKeysAndCertificate.
func (a *authority) issue(pub crypto.PublicKey, subject pkix.Name, notBefore, notAfter time.Time) ([]byte, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.key)
	if err != nil {
		return nil, fmt.Errorf("emulator: issuing a device certificate: %w", err)
	}
	return der, nil
}
