package keystoretest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/thingcert/thingcert/keystore"
)

// CheckTLSClientAuth proves that key can authenticate a TLS 1.2 and a TLS 1.3
// client to a Go server on 127.0.0.1 that requires and verifies client
// certificates: crypto/tls asks an RSA key for PSS with salt = hash length and
// an ECDSA key for ASN.1 signatures, and the server checks them. As a control,
// the same certificate presented with a software key must fail, so a passing
// handshake shows that the store's key signed.
func CheckTLSClientAuth(t *testing.T, key keystore.Key) {
	t.Helper()
	ca := newCA(t)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	server := tls.Certificate{Certificate: [][]byte{ca.issue(t, "server", &serverKey.PublicKey, true)}, PrivateKey: serverKey}
	leaf := ca.issue(t, "device", key.Public(), false)
	impostor, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			client := tls.Certificate{Certificate: [][]byte{leaf}, PrivateKey: key}
			peer, err := handshake(server, client, pool, v)
			if err != nil {
				t.Fatalf("handshake with %s: %v", key.URI(), err)
			}
			if !publicEqual(peer.PublicKey, key.Public()) {
				t.Fatalf("the server saw another client key")
			}
			if _, err := handshake(server, tls.Certificate{Certificate: [][]byte{leaf}, PrivateKey: impostor}, pool, v); err == nil {
				t.Fatalf("control: a handshake signed by a key that does not match the certificate succeeded")
			}
		})
	}
}

// handshake runs one TLS handshake over loopback and returns the client
// certificate the server verified.
func handshake(server, client tls.Certificate, pool *x509.CertPool, version uint16) (*x509.Certificate, error) {
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   version, MaxVersion: version,
	})
	if err != nil {
		return nil, err
	}
	defer l.Close()
	type result struct {
		peer *x509.Certificate
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		_, err = tc.Write([]byte("ok"))
		done <- result{peer: tc.ConnectionState().PeerCertificates[0], err: err}
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{
		Certificates: []tls.Certificate{client},
		RootCAs:      pool,
		ServerName:   "127.0.0.1",
		MinVersion:   version, MaxVersion: version,
	})
	if err != nil {
		l.Close()
		<-done
		return nil, err
	}
	defer c.Close()
	// In TLS 1.3 the server judges the client's signature after the client's
	// handshake has returned: read its reply to learn the verdict.
	_, rerr := io.ReadFull(c, make([]byte, 2))
	r := <-done
	if r.err != nil {
		return nil, r.err
	}
	return r.peer, rerr
}

type ca struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newCA(t *testing.T) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "thingcert conformance CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &ca{key: key, cert: cert}
}

func (c *ca) issue(t *testing.T, cn string, pub crypto.PublicKey, server bool) []byte {
	t.Helper()
	usage := x509.ExtKeyUsageClientAuth
	if server {
		usage = x509.ExtKeyUsageServerAuth
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
