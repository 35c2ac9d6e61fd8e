package rotation

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/thingcert/thingcert/internal/crashfs"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/filestore"
)

// testCA signs device certificates for the fake cloud.
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: t0.Add(-10 * year), NotAfter: t0.Add(50 * year),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{key: k, cert: c}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

var serial = struct {
	sync.Mutex
	n int64
}{n: 100}

func (ca *testCA) issue(t testing.TB, pub crypto.PublicKey, nb, na time.Time, sig x509.SignatureAlgorithm) *x509.Certificate {
	t.Helper()
	serial.Lock()
	serial.n++
	sn := serial.n
	serial.Unlock()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(sn), Subject: pkix.Name{CommonName: fmt.Sprintf("device %d", sn)},
		NotBefore: nb, NotAfter: na, SignatureAlgorithm: sig}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// clock is a settable clock; its Sleep advances it instead of waiting.
type clock struct {
	mu     sync.Mutex
	t      time.Time
	sleeps int
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
func (c *clock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	c.sleeps++
	n := c.sleeps
	c.mu.Unlock()
	if n > 500 {
		// A runner that never stops retrying would spin a test forever.
		return errors.New("test clock: more than 500 retries")
	}
	c.Add(d)
	return nil
}

// fakeCloud is a stand-in for AWS IoT with just what rotation needs: it issues
// certificates from a CSR, accepts a connection only from an ACTIVE
// certificate whose key proves itself, and records job reports. Hooks inject
// faults. (The emulator-backed tests in agent/ use the real emulator.)
type fakeCloud struct {
	t        testing.TB
	ca       *testCA
	clock    *clock
	lifetime time.Duration

	mu          sync.Mutex
	status      map[string]string // certificate ID → ACTIVE, INACTIVE
	connected   string            // certificate ID of the live connection
	connects    []string
	issued      int
	csrs        []string // every CSR received (DER as a string), in order
	reports     []Report
	issueHook   func(csr *x509.CertificateRequest) (*Issued, error) // overrides issuing when it returns non-nil
	issueFails  []error                                             // errors returned by the next Issue calls, in order
	refuseNew   bool                                                // refuse connections of certificates issued here
	retireOld   bool                                                // deactivate the old certificate on a SUCCEEDED report, as the fleet side does
	networkDown bool
	confirmErr  error
	reportErrs  []error
}

func newFakeCloud(t testing.TB, clk *clock) *fakeCloud {
	return &fakeCloud{t: t, ca: newTestCA(t, "fake AWS IoT CA"), clock: clk, lifetime: year, status: map[string]string{}}
}

// register makes a certificate the cloud knows and accepts (a claim, or a
// hand-made identity).
func (c *fakeCloud) register(pub crypto.PublicKey, nb, na time.Time) *x509.Certificate {
	cert := c.ca.issue(c.t, pub, nb, na, x509.ECDSAWithSHA256)
	c.mu.Lock()
	c.status[certificateID(cert)] = "ACTIVE"
	c.mu.Unlock()
	return cert
}

func (c *fakeCloud) Issue(ctx context.Context, der []byte) (*Issued, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, NewFatal("CreateCertificateFromCsr", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, NewFatal("CreateCertificateFromCsr", err)
	}
	c.mu.Lock()
	c.issued++
	c.csrs = append(c.csrs, string(der))
	var injected error
	if len(c.issueFails) > 0 {
		injected, c.issueFails = c.issueFails[0], c.issueFails[1:]
	}
	hook := c.issueHook
	c.mu.Unlock()
	if injected != nil {
		return nil, injected
	}
	if hook != nil {
		if iss, err := hook(csr); iss != nil || err != nil {
			return iss, err
		}
	}
	now := c.clock.Now()
	cert := c.ca.issue(c.t, csr.PublicKey, now.Add(-time.Minute), now.Add(c.lifetime), x509.ECDSAWithSHA256)
	id := certificateID(cert)
	c.mu.Lock()
	if !c.refuseNew {
		c.status[id] = "ACTIVE"
	}
	c.mu.Unlock()
	return &Issued{Chain: []*x509.Certificate{cert}, CertificateID: id, ThingName: "thing-1"}, nil
}

// check is the cloud's acceptance of an identity: chain, validity, status and
// proof of the private key.
func (c *fakeCloud) check(id Identity) error {
	if len(id.Chain) == 0 {
		return errors.New("no certificate")
	}
	leaf := id.Chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.ca.pool(), CurrentTime: c.clock.Now()}); err != nil {
		return fmt.Errorf("TLS handshake refused: %w", err)
	}
	c.mu.Lock()
	st := c.status[certificateID(leaf)]
	c.mu.Unlock()
	if st != "ACTIVE" {
		return fmt.Errorf("certificate %s is %q: connection closed after CONNECT", short(certificateID(leaf)), st)
	}
	digest := sha256.Sum256([]byte("handshake"))
	sig, err := id.Key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return fmt.Errorf("key cannot sign: %w", err)
	}
	if !ecdsa.VerifyASN1(leaf.PublicKey.(*ecdsa.PublicKey), digest[:], sig) {
		return errors.New("the key does not match the certificate")
	}
	return nil
}

type netErr struct{}

func (netErr) Error() string   { return "dial tcp 127.0.0.1:8883: connect: connection refused" }
func (netErr) Timeout() bool   { return false }
func (netErr) Temporary() bool { return true }

func (c *fakeCloud) Switch(ctx context.Context, id Identity) error {
	c.mu.Lock()
	down := c.networkDown
	c.connected = ""
	c.mu.Unlock()
	if down {
		return netErr{}
	}
	if err := c.check(id); err != nil {
		return err
	}
	c.mu.Lock()
	c.connected = certificateID(id.Chain[0])
	c.connects = append(c.connects, c.connected)
	c.mu.Unlock()
	return nil
}

func (c *fakeCloud) Confirm(ctx context.Context, t Trigger) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.confirmErr
}

func (c *fakeCloud) Report(ctx context.Context, r Report) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.reportErrs) > 0 {
		err := c.reportErrs[0]
		c.reportErrs = c.reportErrs[1:]
		return err
	}
	c.reports = append(c.reports, r)
	if c.retireOld && r.Outcome == Succeeded && r.OldCertificateID != "" {
		c.status[r.OldCertificateID] = "INACTIVE"
	}
	return nil
}

func (c *fakeCloud) deactivate(id string) {
	c.mu.Lock()
	c.status[id] = "INACTIVE"
	c.mu.Unlock()
}

// crashFS adapts crashfs to fileSystem.
type crashFS struct{ *crashfs.FS }

func (c crashFS) CreateTemp(dir, pattern string) (tempFile, error) {
	f, err := c.FS.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// device is one device's folders and runner parts.
type device struct {
	t        testing.TB
	keyDir   string
	stateDir string
	fs       fileSystem
	store    keystore.Store
	cloud    *fakeCloud
	clock    *clock
	runner   *Runner
	current  string // certificate ID the device connects with at start
}

// newDevice is a device with a file key store and a first identity the cloud
// accepts, adopted into its state folder.
func newDevice(t testing.TB, fsys fileSystem, stateDir string) *device {
	t.Helper()
	clk := &clock{t: t0}
	d := &device{t: t, keyDir: filepath.Join(t.TempDir(), "keys"), stateDir: stateDir, fs: fsys, cloud: newFakeCloud(t, clk), clock: clk}
	d.openStore()
	ctx := context.Background()
	uri, _ := d.store.KeyURI("device-first")
	k, err := d.store.Generate(ctx, uri, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	cert := d.cloud.register(k.Public(), t0.Add(-time.Hour), t0.Add(year))
	ss := StateStore{Dir: stateDir, fsys: fsys}
	if err := ss.Init(); err != nil {
		t.Fatal(err)
	}
	path, err := ss.WriteChain(certificateID(cert), []*x509.Certificate{cert})
	if err != nil {
		t.Fatal(err)
	}
	d.newRunner()
	if _, err := d.runner.Adopt(ctx, IdentityRecord{KeyURI: uri, CertFile: path}); err != nil {
		t.Fatal(err)
	}
	d.connectCurrent()
	return d
}

func (d *device) openStore() {
	s, err := filestore.Open(context.Background(), "file:"+d.keyDir+"/", keystore.Options{})
	if err != nil {
		d.t.Fatal(err)
	}
	d.store = s
}

// newRunner is what a (re)started process builds.
func (d *device) newRunner() *Runner {
	d.runner = &Runner{
		Machine:   Machine{GracePeriod: time.Hour, Backoff: Backoff{Min: time.Second, Max: time.Minute}},
		DeviceID:  "thing-1",
		State:     StateStore{Dir: d.stateDir, fsys: d.fs},
		Store:     d.store,
		Issuer:    d.cloud,
		Connector: d.cloud,
		Reporter:  d.cloud,
		Roots:     d.cloud.ca.pool(),
		Now:       d.clock.Now,
		Sleep:     d.clock.Sleep,
		Log:       dbgLog,
	}
	return d.runner
}

// connectCurrent is a process start: connect with the persisted current
// identity, as the agent does.
func (d *device) connectCurrent() error {
	s, err := d.runner.Load()
	if err != nil {
		return err
	}
	id, err := d.runner.Identity(context.Background(), *s.Current)
	if err != nil {
		return err
	}
	return d.cloud.Switch(context.Background(), id)
}

// assertWorking checks that the persisted current identity opens and that the
// cloud accepts it: what "a working identity" means.
func (d *device) assertWorking(t testing.TB) *State {
	t.Helper()
	s, err := d.runner.Load()
	if err != nil {
		t.Fatalf("state after restart: %v", err)
	}
	id, err := d.runner.Identity(context.Background(), *s.Current)
	if err != nil {
		t.Fatalf("current identity does not open: %v", err)
	}
	if err := d.cloud.check(id); err != nil {
		t.Fatalf("the cloud refuses the current identity %s: %v", short(s.Current.CertificateID), err)
	}
	return s
}

func (d *device) keys(t testing.TB) []string {
	t.Helper()
	l, err := d.store.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return l
}
