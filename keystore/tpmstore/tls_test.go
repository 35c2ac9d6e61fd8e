package tpmstore_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
)

// testCA issues certificates for the TLS test, in software.
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "thingcert test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{key: key, cert: cert}
}

func (ca *testCA) issue(t *testing.T, cn string, pub crypto.PublicKey, usage x509.ExtKeyUsage) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestTLSClientAuth: a TPM key authenticates a TLS 1.2 and 1.3 client to a Go
// server that requires and verifies client certificates.
func TestTLSClientAuth(t *testing.T) {
	sw := testpeers.StartSWTPM(t)
	s := openStore(t, "tpm:blob-dir="+t.TempDir()+"?device="+sw.Device())
	ca := newTestCA(t)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)

	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serverCert := tls.Certificate{Certificate: [][]byte{ca.issue(t, "server", &serverKey.PublicKey, x509.ExtKeyUsageServerAuth)}, PrivateKey: serverKey}

	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		u, _ := s.KeyURI("tls-" + string(alg))
		key, err := s.Generate(ctx, u, alg)
		if err != nil {
			t.Fatal(err)
		}
		clientCert := tls.Certificate{Certificate: [][]byte{ca.issue(t, "device-"+string(alg), key.Public(), x509.ExtKeyUsageClientAuth)}, PrivateKey: key}
		for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(fmt.Sprintf("%s/%s", alg, tls.VersionName(version)), func(t *testing.T) {
				handshake(t, serverCert, clientCert, pool, version)
			})
		}
	}
}

func handshake(t *testing.T, serverCert, clientCert tls.Certificate, pool *x509.CertPool, version uint16) {
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   version, MaxVersion: version,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type result struct {
		cn  string
		err error
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
		st := tc.ConnectionState()
		_, err = tc.Write([]byte("ok"))
		done <- result{cn: st.PeerCertificates[0].Subject.CommonName, err: err}
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{
		Certificates: []tls.Certificate{clientCert},
		RootCAs:      pool,
		MinVersion:   version, MaxVersion: version,
	})
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	defer c.Close()
	b := make([]byte, 2)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("server: %v", r.err)
	}
	want, _ := x509.ParseCertificate(clientCert.Certificate[0])
	if r.cn != want.Subject.CommonName {
		t.Fatalf("server saw client %q, want %q", r.cn, want.Subject.CommonName)
	}
	if got := c.ConnectionState().Version; got != version {
		t.Fatalf("negotiated %s, want %s", tls.VersionName(got), tls.VersionName(version))
	}
}
