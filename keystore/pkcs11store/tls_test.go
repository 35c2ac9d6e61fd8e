//go:build cgo

package pkcs11store

import (
	"context"
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

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
)

// testCA issues certificates for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "thingcert test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue makes a certificate for pub: a client certificate, or a server
// certificate for 127.0.0.1.
func (ca *testCA) issue(t *testing.T, cn string, pub crypto.PublicKey, server bool) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// handshake connects a client using clientCert and the token key to a Go
// server on 127.0.0.1 that requires and verifies client certificates, and
// returns the client certificate the server saw, or the handshake error.
func handshake(t *testing.T, ca *testCA, version uint16, clientCert []byte, key crypto.Signer) (*x509.Certificate, error) {
	t.Helper()
	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serverCert := tls.Certificate{Certificate: [][]byte{ca.issue(t, "127.0.0.1", &serverKey.PublicKey, true)}, PrivateKey: serverKey}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool,
		MinVersion:   version,
		MaxVersion:   version,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		peer *x509.Certificate
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
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
		if _, err := tc.Write([]byte("hello device")); err != nil {
			done <- result{err: err}
			return
		}
		done <- result{peer: tc.ConnectionState().PeerCertificates[0]}
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
		RootCAs:      ca.pool,
		ServerName:   "127.0.0.1",
		Certificates: []tls.Certificate{{Certificate: [][]byte{clientCert}, PrivateKey: key}},
		MinVersion:   version,
		MaxVersion:   version,
	})
	if err == nil {
		if got := conn.ConnectionState().Version; got != version {
			t.Errorf("negotiated %s, want %s", tls.VersionName(got), tls.VersionName(version))
		}
		// In TLS 1.3 the server checks the client's certificate after the
		// client's handshake is done: read, so a refusal shows up here.
		_, err = io.ReadAll(conn)
		conn.Close()
	}
	r := <-done
	if r.err != nil {
		return nil, r.err
	}
	return r.peer, err
}

// TLS 1.2 and 1.3 client authentication with RSA and ECDSA keys in the token:
// crypto/tls signs CertificateVerify through the key (PSS for RSA on both
// versions, as Go prefers it), and the server verifies it.
func TestTLSClientAuth(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	st := openStore(t, h.StoreURI())
	ca := newTestCA(t)
	keys := map[keystore.Algorithm]keystore.Key{}
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		uri, _ := st.KeyURI("tls-" + string(alg))
		k, err := st.Generate(context.Background(), uri, alg)
		if err != nil {
			t.Fatal(err)
		}
		keys[alg] = k
	}
	for alg, k := range keys {
		cert := ca.issue(t, "device-"+string(alg), k.Public(), false)
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(string(alg)+"/"+tls.VersionName(v), func(t *testing.T) {
				peer, err := handshake(t, ca, v, cert, k)
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				if peer.Subject.CommonName != "device-"+string(alg) || !publicEqual(peer.PublicKey, k.Public()) {
					t.Fatalf("the server saw %s", peer.Subject)
				}
			})
		}
	}
	// The control: a certificate for one token key, signed for by another,
	// must fail, so the handshakes above prove the token key signed.
	wrong := ca.issue(t, "device-mismatch", keys[keystore.ECDSAP256].Public(), false)
	other, err := st.Generate(context.Background(), must(st.KeyURI("tls-other")), keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		if _, err := handshake(t, ca, v, wrong, other); err == nil {
			t.Errorf("%s: a handshake whose key does not match the certificate succeeded", tls.VersionName(v))
		}
	}
}

func must(s string, err error) string {
	if err != nil {
		panic(err)
	}
	return s
}
