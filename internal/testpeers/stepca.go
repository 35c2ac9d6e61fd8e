package testpeers

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// StepCAVersion is the step-ca the tests run: the Makefile installs it with
// `CGO_ENABLED=0 GOBIN=$(PeersBinDir) go install
// github.com/smallstep/certificates/cmd/step-ca@<version>`, outside the
// project's go.mod (its dependency tree is the CA's, not the device's).
const StepCAVersion = "v0.30.2"

// PeersBinDir is where the Makefile installs peers that are Go programs:
// $THINGCERT_PEERS_BIN, else ~/.cache/thingcert-peers/bin.
func PeersBinDir() string {
	if d := os.Getenv("THINGCERT_PEERS_BIN"); d != "" {
		return d
	}
	home, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, "thingcert-peers", "bin")
}

// NeedStepCA returns the path of step-ca (on PATH or in PeersBinDir), or
// stops the test as Missing says.
func NeedStepCA(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("step-ca"); err == nil {
		return p
	}
	p := filepath.Join(PeersBinDir(), "step-ca")
	if _, err := os.Stat(p); err != nil {
		Missing(t, "step-ca is not installed in "+PeersBinDir()+" or on PATH (run `make peers`, which installs step-ca "+StepCAVersion+" with go install)")
	}
	return p
}

// StepCAOptions configure a test CA.
type StepCAOptions struct {
	// X5CRootsPEM are the CAs the X5C provisioner trusts (the factory CA
	// that signs claim certificates). Required.
	X5CRootsPEM []byte
	// Provisioner is the X5C provisioner's name; empty is "factory".
	Provisioner string
	// CertDuration is the default lifetime of issued certificates; zero is
	// 24h (step-ca's default).
	CertDuration time.Duration
}

// StepCA is a running step-ca on 127.0.0.1.
type StepCA struct {
	// URL is https://127.0.0.1:<port>.
	URL string
	// Dir holds ca.json, the certificates, the encrypted key and its
	// password file.
	Dir string
	// RootFile is the root certificate's PEM file; Root is the root.
	RootFile string
	Root     *x509.Certificate
	// Intermediate signs the issued certificates: the CA registered with AWS
	// IoT. IntermediatePEM is its PEM.
	Intermediate    *x509.Certificate
	IntermediatePEM []byte
	// IntermediateKey is its key (a test can make a verification
	// certificate with it).
	IntermediateKey *ecdsa.PrivateKey
	Provisioner     string
	// Started is when the CA was up (step-ca refuses tokens issued before
	// it started, to the second).
	Started time.Time

	cmd  *exec.Cmd
	log  *Buffer
	done chan struct{}
}

// StartStepCA writes a ca.json with a Go-made root and intermediate (the
// intermediate's key encrypted by openssl, with a password file) and an X5C
// provisioner, starts step-ca on a free port, waits for /health, and stops it
// by its PID when the test ends.
func StartStepCA(t testing.TB, o StepCAOptions) *StepCA {
	t.Helper()
	bin := NeedStepCA(t)
	openssl := Need(t, "openssl")[0]
	if o.Provisioner == "" {
		o.Provisioner = "factory"
	}
	if o.CertDuration == 0 {
		o.CertDuration = 24 * time.Hour
	}
	dir := t.TempDir()
	s := &StepCA{Dir: dir, Provisioner: o.Provisioner, log: &Buffer{}, done: make(chan struct{})}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "thingcert test step-ca root", Organization: []string{"thingcert tests"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	s.Root, _ = x509.ParseCertificate(rootDER)
	intKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	intTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "thingcert test step-ca intermediate", Organization: []string{"thingcert tests"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(5 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true, MaxPathLen: 0, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	intDER, err := x509.CreateCertificate(rand.Reader, intTmpl, s.Root, &intKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	s.Intermediate, _ = x509.ParseCertificate(intDER)
	s.IntermediateKey = intKey
	s.IntermediatePEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: intDER})
	s.RootFile = write("root_ca.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}))
	intFile := write("intermediate_ca.crt", s.IntermediatePEM)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(intKey)
	if err != nil {
		t.Fatal(err)
	}
	plain := write("intermediate_ca_key.plain", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))
	pwFile := write("password", []byte("thingcert-test-ca-password\n"))
	keyFile := filepath.Join(dir, "intermediate_ca_key")
	if out, err := exec.Command(openssl, "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", plain, "-out", keyFile, "-passout", "file:"+pwFile).CombinedOutput(); err != nil {
		t.Fatalf("openssl pkcs8 (encrypting the CA key): %v\n%s", err, out)
	}
	os.Remove(plain)
	port := FreePort(t)
	s.URL = "https://127.0.0.1:" + strconv.Itoa(port)
	cfg := map[string]any{
		"root":     s.RootFile,
		"crt":      intFile,
		"key":      keyFile,
		"address":  "127.0.0.1:" + strconv.Itoa(port),
		"dnsNames": []string{"127.0.0.1"},
		"logger":   map[string]any{"format": "text"},
		"authority": map[string]any{
			"provisioners": []any{map[string]any{
				"type":  "X5C",
				"name":  o.Provisioner,
				"roots": base64.StdEncoding.EncodeToString(o.X5CRootsPEM),
				"claims": map[string]any{
					"defaultTLSCertDuration": o.CertDuration.String(),
					"maxTLSCertDuration":     (o.CertDuration * 2).String(),
					"minTLSCertDuration":     "1m",
				},
			}},
		},
		"tls": map[string]any{"minVersion": 1.2, "maxVersion": 1.3},
	}
	data, _ := json.MarshalIndent(cfg, "", "  ")
	caJSON := write("ca.json", data)
	s.cmd = exec.Command(bin, caJSON, "--password-file", pwFile)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting step-ca: %v", err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.Stop)
	pool := x509.NewCertPool()
	pool.AddCert(s.Root)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-s.done:
			t.Fatalf("step-ca exited at start:\n%s", s.log.String())
		default:
		}
		resp, err := hc.Get(s.URL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("step-ca did not answer /health on %s in 60 s (%v):\n%s", s.URL, err, s.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.Started = time.Now()
	// A token's iat is in whole seconds and step-ca refuses one issued before
	// it started: let the second it started in pass.
	time.Sleep(time.Until(s.Started.Truncate(time.Second).Add(1100 * time.Millisecond)))
	return s
}

// Stop stops step-ca by its PID (SIGTERM, then SIGKILL after 5 s).
func (s *StepCA) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Log is what step-ca printed so far.
func (s *StepCA) Log() string { return s.log.String() }

// Addr is the CA's HOST:PORT.
func (s *StepCA) Addr() string {
	u := s.URL[len("https://"):]
	if _, _, err := net.SplitHostPort(u); err != nil {
		return fmt.Sprintf("%s:443", u)
	}
	return u
}

// FactoryCA is the CA a factory signs claim certificates with: what an X5C
// provisioner trusts.
type FactoryCA struct {
	Cert *x509.Certificate
	PEM  []byte
	key  *ecdsa.PrivateKey
}

// NewFactoryCA makes a factory CA.
func NewFactoryCA(t testing.TB) *FactoryCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "thingcert test factory CA", Organization: []string{"thingcert tests"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &FactoryCA{Cert: c, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}
}

// Claim signs a claim certificate for pub (the device's factory key, in any
// store) with the usages an X5C token needs: digital signature, client
// authentication. It returns the PEM of the certificate.
func (f *FactoryCA) Claim(t testing.TB, pub any, cn string) []byte {
	t.Helper()
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn, Organization: []string{"thingcert tests factory"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.Cert, pub, f.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// KeyPEM is the factory CA's key, PKCS#8 PEM (a test's factory signs claim
// certificates with openssl).
func (f *FactoryCA) KeyPEM(t testing.TB) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(f.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
