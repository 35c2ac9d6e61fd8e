package iot_test

import (
	"crypto/tls"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/iot"

	"github.com/thingcert/thingcert/internal/testpki"
	"github.com/thingcert/thingcert/keystore"
)

func TestEndpoint(t *testing.T) {
	cases := []struct {
		ep      iot.Endpoint
		wantErr string
		dial    string
		alpn    []string
	}{
		{ep: iot.Endpoint{Host: endpointName}, dial: endpointName + ":8883"},
		{ep: iot.Endpoint{Host: endpointName, Port: 8883}, dial: endpointName + ":8883"},
		{ep: iot.Endpoint{Host: endpointName, Port: 443}, dial: endpointName + ":443", alpn: []string{"x-amzn-mqtt-ca"}},
		// ALPN follows the endpoint's port, not the port dialed.
		{ep: iot.Endpoint{Host: endpointName, Port: 443, Address: "127.0.0.1:18883"}, dial: "127.0.0.1:18883", alpn: []string{"x-amzn-mqtt-ca"}},
		{ep: iot.Endpoint{Host: endpointName, Port: 8883, Address: "[::1]:443"}, dial: "[::1]:443"},
		{ep: iot.Endpoint{}, wantErr: "describe-endpoint"},
		{ep: iot.Endpoint{Host: "192.0.2.1"}, wantErr: "is an IP address"},
		{ep: iot.Endpoint{Host: "::1"}, wantErr: "is an IP address"},
		{ep: iot.Endpoint{Host: "mqtts://" + endpointName}, wantErr: "bare host name"},
		{ep: iot.Endpoint{Host: endpointName + ":8883"}, wantErr: "bare host name"},
		{ep: iot.Endpoint{Host: endpointName, Port: 1883}, wantErr: "8883 or 443"},
		{ep: iot.Endpoint{Host: endpointName, Address: "127.0.0.1"}, wantErr: "HOST:PORT"},
		{ep: iot.Endpoint{Host: endpointName, Address: "127.0.0.1:99999"}, wantErr: "bad port"},
	}
	for _, tc := range cases {
		err := tc.ep.Validate()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%+v: error %v, want one mentioning %q", tc.ep, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%+v: %v", tc.ep, err)
			continue
		}
		if got := tc.ep.DialAddress(); got != tc.dial {
			t.Errorf("%+v: dials %s, want %s", tc.ep, got, tc.dial)
		}
		if got := tc.ep.ALPN(); !slices.Equal(got, tc.alpn) {
			t.Errorf("%+v: ALPN %q, want %q", tc.ep, got, tc.alpn)
		}
	}
}

func TestNewTLSConfig(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	src := iot.NewIdentitySource(newIdentity(t, ca, newMemKey(t, keystore.ECDSAP256), "d"))
	cfg, err := iot.NewTLSConfig(iot.Endpoint{Host: endpointName, Port: 443, Address: "127.0.0.1:1"}, ca.Pool(), src)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != endpointName || cfg.InsecureSkipVerify || cfg.MinVersion != tls.VersionTLS12 ||
		!slices.Equal(cfg.NextProtos, []string{iot.ALPNMQTT}) || cfg.GetClientCertificate == nil || !cfg.RootCAs.Equal(ca.Pool()) {
		t.Errorf("config %+v", cfg)
	}
	// Without a pool the Amazon roots are used, not the system's.
	cfg, err = iot.NewTLSConfig(iot.Endpoint{Host: endpointName}, nil, src)
	if err != nil {
		t.Fatal(err)
	}
	amazon, _ := iot.AmazonRoots()
	if cfg.RootCAs == nil || !cfg.RootCAs.Equal(amazon) || cfg.NextProtos != nil {
		t.Error("default roots are not the Amazon roots, or ALPN set on 8883")
	}
}

func TestAmazonRoots(t *testing.T) {
	certs, err := iot.AmazonRootCertificates()
	if err != nil {
		t.Fatal(err)
	}
	want := iot.AmazonRootSubjects()
	if len(certs) != len(want) {
		t.Fatalf("%d roots, want %d", len(certs), len(want))
	}
	for i, c := range certs {
		if c.Subject.String() != want[i] || !c.IsCA || c.CheckSignatureFrom(c) != nil {
			t.Errorf("root %d: %s (CA %v), want self-signed %s", i, c.Subject, c.IsCA, want[i])
		}
	}
	// The two in use today: RSA 2048 and ECC P-256.
	if certs[0].PublicKeyAlgorithm.String() != "RSA" || certs[2].PublicKeyAlgorithm.String() != "ECDSA" {
		t.Errorf("Amazon Root CA 1 is %s, 3 is %s", certs[0].PublicKeyAlgorithm, certs[2].PublicKeyAlgorithm)
	}
}

func TestLoadFiles(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "test root")
	key := newMemKey(t, keystore.ECDSAP256)
	leaf := ca.NewClient(t, "device-1", key.Public())
	chainPath := testpki.WriteFile(t, dir, "chain.pem", testpki.CertPEM(leaf, ca.Cert), 0o644)
	caPath := testpki.WriteFile(t, dir, "ca.pem", ca.PEM(), 0o644)
	empty := testpki.WriteFile(t, dir, "empty.pem", []byte("not PEM"), 0o644)
	keyFile := testpki.WriteFile(t, dir, "key.pem", ca.NewServer(t, "x").KeyPEM(), 0o600)

	chain, err := iot.LoadCertificateChain(chainPath)
	if err != nil || len(chain) != 2 || !chain[0].Equal(leaf) {
		t.Fatalf("chain %v, %v", chain, err)
	}
	id, err := iot.NewIdentity(key, chain)
	if err != nil {
		t.Fatal(err)
	}
	if tc := id.TLSCertificate(); !tc.Leaf.Equal(leaf) || len(tc.Certificate) != 2 || len(id.CertificateID()) != 64 {
		t.Errorf("identity: leaf %v, %d certificates, ID %q", tc.Leaf.Subject, len(tc.Certificate), id.CertificateID())
	}
	if pool, err := iot.LoadCAFile(caPath); err != nil || !pool.Equal(ca.Pool()) {
		t.Errorf("LoadCAFile: %v", err)
	}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"CA file without certificates", func() error { _, err := iot.LoadCAFile(empty); return err }(), empty},
		{"missing CA file", func() error { _, err := iot.LoadCAFile(filepath.Join(dir, "nope")); return err }(), "nope"},
		{"certificate file without certificates", func() error { _, err := iot.LoadCertificateChain(empty); return err }(), "no PEM CERTIFICATE"},
		{"key given as certificate", func() error { _, err := iot.LoadCertificateChain(keyFile); return err }(), "holds a private key"},
		{"certificate of another key", func() error {
			_, err := iot.NewIdentity(newMemKey(t, keystore.ECDSAP256), chain)
			return err
		}(), "was not issued for key"},
	} {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error mentioning %q", tc.name, tc.err, tc.want)
		}
	}
}

func TestIdentitySourceSwap(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	a := newIdentity(t, ca, newMemKey(t, keystore.ECDSAP256), "a")
	b := newIdentity(t, ca, newMemKey(t, keystore.ECDSAP256), "b")
	s := iot.NewIdentitySource(a)
	c, _ := s.GetClientCertificate(nil)
	if c.Leaf != a.Leaf() {
		t.Error("serves the wrong identity")
	}
	if old := s.Swap(b); old != a || s.Current() != b {
		t.Error("Swap did not replace the identity")
	}
	c, _ = s.GetClientCertificate(nil)
	if c.Leaf != b.Leaf() {
		t.Error("serves the old identity after Swap")
	}
}

func TestConfigValidation(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	src := iot.NewIdentitySource(newIdentity(t, ca, newMemKey(t, keystore.ECDSAP256), "d"))
	ok := iot.Config{Endpoint: iot.Endpoint{Host: endpointName}, Identity: src, Roots: ca.Pool(), ThingName: "d"}
	c, err := iot.New(ok)
	if err != nil || c.ClientID() != "d" {
		t.Fatalf("New: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*iot.Config)
		want string
	}{
		{"no client ID", func(c *iot.Config) { c.ThingName = "" }, "no client ID"},
		{"reserved client ID", func(c *iot.Config) { c.ClientID = "$aws" }, "reserves"},
		{"long client ID", func(c *iot.Config) { c.ClientID = strings.Repeat("x", 129) }, "at most 128"},
		{"keep-alive too short", func(c *iot.Config) { c.KeepAlive = 29 * time.Second }, "30s to 20m0s"},
		{"keep-alive too long", func(c *iot.Config) { c.KeepAlive = 1201 * time.Second }, "30s to 20m0s"},
		{"keep-alive fraction", func(c *iot.Config) { c.KeepAlive = 90500 * time.Millisecond }, "whole seconds"},
		{"no identity", func(c *iot.Config) { c.Identity = nil }, "no device identity"},
		{"bad endpoint", func(c *iot.Config) { c.Endpoint.Port = 1883 }, "8883 or 443"},
		{"bad backoff", func(c *iot.Config) { c.Backoff.Min = -time.Second }, "negative"},
	} {
		cfg := ok
		tc.edit(&cfg)
		if _, err := iot.New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error mentioning %q", tc.name, err, tc.want)
		}
	}
	for _, ka := range []time.Duration{30 * time.Second, 1200 * time.Second} {
		cfg := ok
		cfg.KeepAlive = ka
		if _, err := iot.New(cfg); err != nil {
			t.Errorf("keep-alive %s refused: %v", ka, err)
		}
	}
}
