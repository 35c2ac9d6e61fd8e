package rotation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/keystore"
)

func osDevice(t *testing.T) *device {
	return newDevice(t, osFS{}, filepath.Join(t.TempDir(), "state"))
}

func TestRotateThenRotateAgain(t *testing.T) {
	d := osDevice(t)
	ctx := context.Background()
	first := d.assertWorking(t).Current

	d.clock.Add(250 * day)
	if _, due := d.runner.Due(d.mustLoad(t), d.clock.Now()); !due {
		t.Fatal("a 1-year certificate is not due after 250 days")
	}
	s, err := d.runner.Rotate(ctx, Trigger{Kind: TriggerTime, Reason: "lifetime"})
	if err != nil {
		t.Fatal(err)
	}
	second := s.Current
	if second.CertificateID == first.CertificateID || second.KeyURI == first.KeyURI {
		t.Fatalf("not rotated: %+v", second)
	}
	if d.cloud.connected != second.CertificateID {
		t.Errorf("connection is on %s, want the new %s", short(d.cloud.connected), short(second.CertificateID))
	}
	if second.ThingName != "thing-1" || second.NotAfter.IsZero() || second.Subject == "" {
		t.Errorf("new record lacks details: %+v", second)
	}
	if s.LastResult.Outcome != Succeeded || s.LastResult.OldCertificateID != first.CertificateID {
		t.Errorf("result %+v", s.LastResult)
	}
	if len(d.cloud.reports) != 1 || d.cloud.reports[0].NewCertificateID != second.CertificateID || d.cloud.reports[0].OldCertificateID != first.CertificateID {
		t.Errorf("reports %+v", d.cloud.reports)
	}
	// The old key is kept through the grace period.
	if ks := d.keys(t); len(ks) != 2 || !slices.Contains(ks, first.KeyURI) {
		t.Errorf("keys during grace: %v", ks)
	}
	if _, due := d.runner.Due(s, d.clock.Now()); due {
		t.Error("a fresh certificate is due")
	}
	d.cloud.deactivate(first.CertificateID) // the cloud acts on the report
	d.assertWorking(t)

	d.clock.Add(2 * time.Hour)
	s, err = d.runner.Resume(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ks := d.keys(t); len(ks) != 1 || ks[0] != second.KeyURI {
		t.Errorf("keys after grace: %v", ks)
	}
	if _, err := os.Stat(first.CertFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old certificate file after grace: %v", err)
	}
	if len(s.Previous) != 0 {
		t.Errorf("previous after grace: %+v", s.Previous)
	}

	s, err = d.runner.Rotate(ctx, Trigger{Kind: TriggerOperator, Reason: "forced"})
	if err != nil {
		t.Fatal(err)
	}
	third := s.Current
	if third.CertificateID == second.CertificateID || third.KeyURI == second.KeyURI || s.Serial != 2 {
		t.Fatalf("second rotation: %+v serial %d", third, s.Serial)
	}
	d.assertWorking(t)
	files, _ := os.ReadDir(filepath.Join(d.stateDir, CertsDir))
	if len(files) != 2 {
		t.Errorf("certs/ holds %d files, want 2 (current and previous)", len(files))
	}
}

func (d *device) mustLoad(t testing.TB) *State {
	t.Helper()
	s, err := d.runner.Load()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestProvisionByClaim(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	cloud := newFakeCloud(t, clk)
	claimDir := t.TempDir()
	d := &device{t: t, keyDir: filepath.Join(t.TempDir(), "keys"), stateDir: filepath.Join(t.TempDir(), "state"), fs: osFS{}, cloud: cloud, clock: clk}
	d.openStore()
	// The claim key lives in its own folder, outside the device's store.
	claimStore := openFileStore(t, claimDir)
	claimURI, _ := claimStore.KeyURI("claim")
	ck, err := claimStore.Generate(ctx, claimURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	claimCert := cloud.register(ck.Public(), t0.Add(-time.Hour), t0.Add(10*year))
	claimPEM := filepath.Join(claimDir, "claim-cert.crt")
	writePEM(t, claimPEM, claimCert)

	r := d.newRunner()
	r.OpenKey = func(ctx context.Context, uri string) (keystore.Key, error) {
		if uri == claimURI {
			return claimStore.Open(ctx, uri)
		}
		return d.store.Open(ctx, uri)
	}
	if err := cloud.Switch(ctx, Identity{Key: ck, Chain: []*x509.Certificate{claimCert}}); err != nil {
		t.Fatal(err)
	}
	s, err := r.Provision(ctx, IdentityRecord{KeyURI: claimURI, CertFile: claimPEM})
	if err != nil {
		t.Fatal(err)
	}
	if s.Current.Claim || s.Current.KeyURI == claimURI || len(s.Previous) != 0 {
		t.Fatalf("after provisioning: current %+v previous %+v", s.Current, s.Previous)
	}
	if s.LastResult.Trigger.Kind != TriggerProvision {
		t.Errorf("trigger %+v", s.LastResult.Trigger)
	}
	d.assertWorking(t)
	if _, err := r.Provision(ctx, IdentityRecord{KeyURI: claimURI, CertFile: claimPEM}); !errors.Is(err, ErrAlreadyProvisioned) {
		t.Errorf("second provisioning: %v", err)
	}
	// Much later, after rotations, the claim is still there and untouched.
	clk.Add(2 * year)
	if _, err := r.Rotate(ctx, Trigger{Kind: TriggerTime}); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Hour)
	if _, err := r.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := claimStore.Open(ctx, claimURI); err != nil {
		t.Errorf("claim key: %v", err)
	}
	if _, err := os.Stat(claimPEM); err != nil {
		t.Errorf("claim certificate: %v", err)
	}
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func openFileStore(t *testing.T, dir string) keystore.Store {
	t.Helper()
	d := &device{t: t, keyDir: dir}
	d.openStore()
	return d.store
}

func writePEM(t *testing.T, path string, c *x509.Certificate) {
	t.Helper()
	if err := writeAtomic(osFS{}, path, pemCert(c), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBadAnswers: every bad answer leaves the old identity in use, deletes the
// new key, and says what happened.
func TestBadAnswers(t *testing.T) {
	otherCA := newTestCA(t, "someone else's CA")
	tests := []struct {
		name  string
		setup func(d *device)
		want  string // in the error
		class string // "fatal" (rolled back at once) or "transient" (retried first)
	}{
		{"certificate for another key", func(d *device) {
			d.cloud.issueHook = func(csr *x509.CertificateRequest) (*Issued, error) {
				k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				c := d.cloud.ca.issue(t, k.Public(), d.clock.Now().Add(-time.Minute), d.clock.Now().Add(year), x509.ECDSAWithSHA256)
				return &Issued{Chain: []*x509.Certificate{c}}, nil
			}
		}, "for another key", "fatal"},
		{"expired", func(d *device) {
			d.cloud.issueHook = func(csr *x509.CertificateRequest) (*Issued, error) {
				c := d.cloud.ca.issue(t, csr.PublicKey, d.clock.Now().Add(-2*time.Hour), d.clock.Now().Add(-time.Hour), x509.ECDSAWithSHA256)
				return &Issued{Chain: []*x509.Certificate{c}}, nil
			}
		}, "expired at", "fatal"},
		{"not yet valid", func(d *device) {
			d.cloud.issueHook = func(csr *x509.CertificateRequest) (*Issued, error) {
				c := d.cloud.ca.issue(t, csr.PublicKey, d.clock.Now().Add(time.Hour), d.clock.Now().Add(year), x509.ECDSAWithSHA256)
				return &Issued{Chain: []*x509.Certificate{c}}, nil
			}
		}, "not valid before", "fatal"},
		{"wrong chain", func(d *device) {
			d.cloud.issueHook = func(csr *x509.CertificateRequest) (*Issued, error) {
				c := otherCA.issue(t, csr.PublicKey, d.clock.Now().Add(-time.Minute), d.clock.Now().Add(year), x509.ECDSAWithSHA256)
				return &Issued{Chain: []*x509.Certificate{c}}, nil
			}
		}, "does not chain to the configured trust", "fatal"},
		{"disallowed signature algorithm", func(d *device) {
			d.cloud.issueHook = func(csr *x509.CertificateRequest) (*Issued, error) {
				c := d.cloud.ca.issue(t, csr.PublicKey, d.clock.Now().Add(-time.Minute), d.clock.Now().Add(year), x509.ECDSAWithSHA1)
				return &Issued{Chain: []*x509.Certificate{c}}, nil
			}
		}, "refused by AWS IoT certificate policy", "fatal"},
		{"wrong certificate ID", func(d *device) {
			d.cloud.issueHook = func(csr *x509.CertificateRequest) (*Issued, error) {
				c := d.cloud.ca.issue(t, csr.PublicKey, d.clock.Now().Add(-time.Minute), d.clock.Now().Add(year), x509.ECDSAWithSHA256)
				return &Issued{Chain: []*x509.Certificate{c}, CertificateID: strings.Repeat("ab", 32)}, nil
			}
		}, "the issuer named the certificate", "fatal"},
		{"no certificate", func(d *device) {
			d.cloud.issueHook = func(csr *x509.CertificateRequest) (*Issued, error) { return &Issued{}, nil }
		}, "returned no certificate", "fatal"},
		{"rejected", func(d *device) {
			d.cloud.issueFails = []error{&Error{Op: "CreateCertificateFromCsr", StatusCode: 400, Code: "InvalidRequest", Err: errors.New("the CSR is invalid")}}
		}, "(400 InvalidRequest)", "fatal"},
		{"new identity refused by the cloud", func(d *device) { d.cloud.refuseNew = true }, "the current identity still connects", "fatal"},
		{"no confirmation on the new connection", func(d *device) {
			d.cloud.confirmErr = errors.New("disconnected after SUBSCRIBE: not authorized")
		}, "confirming the new identity", "fatal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := osDevice(t)
			before := d.assertWorking(t).Current
			keysBefore := d.keys(t)
			tt.setup(d)
			s, err := d.runner.Rotate(context.Background(), Trigger{Kind: TriggerJob, JobID: "job-7"})
			if !errors.Is(err, ErrRolledBack) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Rotate: %v; want a rollback saying %q", err, tt.want)
			}
			if s.Current.CertificateID != before.CertificateID || s.Phase != PhaseIdle || s.Pending != nil {
				t.Errorf("state after rollback: phase %s current %s pending %+v", s.Phase, short(s.Current.CertificateID), s.Pending)
			}
			if d.cloud.connected != before.CertificateID {
				t.Errorf("connected with %q, want the old identity", short(d.cloud.connected))
			}
			if got := d.keys(t); !slices.Equal(got, keysBefore) {
				t.Errorf("keys %v, want %v (the new key deleted)", got, keysBefore)
			}
			if files, _ := os.ReadDir(filepath.Join(d.stateDir, CertsDir)); len(files) != 1 {
				t.Errorf("certs/ holds %d files, want only the current one", len(files))
			}
			if len(d.cloud.reports) != 1 || d.cloud.reports[0].Outcome != RolledBack || !strings.Contains(d.cloud.reports[0].Reason, tt.want) || d.cloud.reports[0].Trigger.JobID != "job-7" {
				t.Errorf("job report %+v", d.cloud.reports)
			}
			if s.LastResult == nil || !strings.Contains(s.LastResult.Error, tt.want) {
				t.Errorf("last result %+v", s.LastResult)
			}
			d.assertWorking(t)
		})
	}
}

// TestTransientFailuresAreRetried: throttling, no answer, a dropped
// connection and a network that is down during the switch are retried (with
// the server's hint honoured) and the rotation completes.
func TestTransientFailuresAreRetried(t *testing.T) {
	tests := []struct {
		name  string
		setup func(d *device)
		wait  time.Duration // at least this much (simulated) time passes
	}{
		{"throttled", func(d *device) {
			d.cloud.issueFails = []error{NewTransient("CreateCertificateFromCsr", errors.New("ThrottlingException: rate exceeded"), 10*time.Minute)}
		}, 10 * time.Minute},
		{"no answer", func(d *device) {
			d.cloud.issueFails = []error{context.DeadlineExceeded, context.DeadlineExceeded}
		}, 2 * time.Second},
		{"connection dropped mid-exchange", func(d *device) {
			d.cloud.issueFails = []error{NewTransient("CreateCertificateFromCsr", errors.New("connection lost before the answer"), 0)}
		}, time.Second / 2},
		{"network down at the switch", func(d *device) {
			d.cloud.issueHook = func(*x509.CertificateRequest) (*Issued, error) {
				d.cloud.networkDown = true
				d.cloud.issueHook = nil
				return nil, nil
			}
			d.runner.Sleep = func(ctx context.Context, dur time.Duration) error {
				d.cloud.networkDown = false // the network comes back while waiting
				return d.clock.Sleep(ctx, dur)
			}
		}, time.Second / 2},
		{"report failed once", func(d *device) {
			d.cloud.reportErrs = []error{errors.New("publish: connection lost")}
		}, time.Second / 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := osDevice(t)
			old := d.assertWorking(t).Current.CertificateID
			tt.setup(d)
			start := d.clock.Now()
			s, err := d.runner.Rotate(context.Background(), Trigger{Kind: TriggerTime})
			if err != nil {
				t.Fatal(err)
			}
			if s.Current.CertificateID == old {
				t.Fatal("not rotated")
			}
			if waited := d.clock.Now().Sub(start); waited < tt.wait {
				t.Errorf("waited %s, want at least %s", waited, tt.wait)
			}
			var retried bool
			for _, e := range s.Journal {
				retried = retried || e.Event == EventFailed && strings.Contains(e.Note, "transient")
			}
			if !retried {
				t.Errorf("no retry in the journal: %+v", s.Journal)
			}
			d.assertWorking(t)
		})
	}
}

func TestRotateWithoutIdentity(t *testing.T) {
	r := &Runner{State: StateStore{Dir: t.TempDir()}, Store: openFileStore(t, t.TempDir())}
	if _, err := r.Rotate(context.Background(), Trigger{Kind: TriggerOperator}); !errors.Is(err, ErrNoState) {
		t.Errorf("rotate on an empty state folder: %v", err)
	}
}

func TestLockKeepsOthersOut(t *testing.T) {
	d := osDevice(t)
	c, err := d.runner.State.Lock()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := d.runner.Rotate(context.Background(), Trigger{Kind: TriggerOperator}); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid") {
		t.Errorf("rotate while locked: %v", err)
	}
}

// TestDevicesSharingAStore: two identities whose keys live in one store (one
// token for two configurations) rotate in the same second without touching
// each other's keys, even when one rolls back.
func TestDevicesSharingAStore(t *testing.T) {
	a := osDevice(t)
	b := newDevice(t, osFS{}, filepath.Join(t.TempDir(), "state-b"))
	b.keyDir, b.clock = a.keyDir, a.clock
	b.openStore()
	b.newRunner()
	// b's first identity moves into the shared store.
	bs := b.mustLoad(t)
	k, err := b.store.Generate(context.Background(), must(b.store.KeyURI("device-b-first")), "ecdsa-p256")
	if err != nil {
		t.Fatal(err)
	}
	cert := b.cloud.register(k.Public(), t0.Add(-time.Hour), t0.Add(year))
	path, _ := b.runner.State.WriteChain(certificateID(cert), []*x509.Certificate{cert})
	bs.Current = &IdentityRecord{KeyURI: k.URI(), CertFile: path, CertificateID: certificateID(cert), NotBefore: cert.NotBefore, NotAfter: cert.NotAfter}
	if err := b.runner.State.Save(bs); err != nil {
		t.Fatal(err)
	}
	if err := b.connectCurrent(); err != nil {
		t.Fatal(err)
	}
	sa, err := a.runner.Rotate(context.Background(), Trigger{Kind: TriggerOperator})
	if err != nil {
		t.Fatal(err)
	}
	b.cloud.refuseNew = true // b's rotation rolls back and deletes its new key
	if _, err := b.runner.Rotate(context.Background(), Trigger{Kind: TriggerOperator}); !errors.Is(err, ErrRolledBack) {
		t.Fatalf("b: %v", err)
	}
	if sa.Serial != 1 {
		t.Fatalf("serial %d", sa.Serial)
	}
	a.assertWorking(t)
	b.assertWorking(t)
}

func must(s string, err error) string {
	if err != nil {
		panic(err)
	}
	return s
}

// TestRecoverByClaim: the device's identity is revoked; with recovery allowed
// the claim provisions it again, and the refused identity waits out the grace
// period before its key is deleted.
func TestRecoverByClaim(t *testing.T) {
	ctx := context.Background()
	d := osDevice(t)
	old := d.assertWorking(t).Current
	// A claim the cloud accepts.
	claimStore := openFileStore(t, t.TempDir())
	curi, _ := claimStore.KeyURI("claim")
	ck, err := claimStore.Generate(ctx, curi, "ecdsa-p256")
	if err != nil {
		t.Fatal(err)
	}
	claimCert := d.cloud.register(ck.Public(), t0.Add(-time.Hour), t0.Add(10*year))
	claimPEM := filepath.Join(t.TempDir(), "claim.crt")
	writePEM(t, claimPEM, claimCert)
	d.runner.OpenKey = func(ctx context.Context, uri string) (keystore.Key, error) {
		if uri == curi {
			return claimStore.Open(ctx, uri)
		}
		return d.store.Open(ctx, uri)
	}
	d.cloud.deactivate(old.CertificateID) // revoked
	if err := d.connectCurrent(); err == nil {
		t.Fatal("a revoked identity connected")
	}
	s, err := d.runner.Recover(ctx, IdentityRecord{KeyURI: curi, CertFile: claimPEM}, "certificate refused at connect")
	if err != nil || !s.Current.Claim || len(s.Previous) != 1 || s.Previous[0].RetireAt.IsZero() {
		t.Fatalf("Recover: %v; state %+v", err, s)
	}
	if err := d.connectCurrent(); err != nil {
		t.Fatalf("connecting with the claim: %v", err)
	}
	s, err = d.runner.Provision(ctx, IdentityRecord{KeyURI: curi, CertFile: claimPEM})
	if err != nil {
		t.Fatal(err)
	}
	if s.Current.Claim || s.Current.CertificateID == old.CertificateID {
		t.Fatalf("after recovery: %+v", s.Current)
	}
	d.assertWorking(t)
	// After the grace period the refused key is deleted; the claim's is not.
	d.clock.Add(2 * time.Hour)
	if _, err := d.runner.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if ks := d.keys(t); len(ks) != 1 || ks[0] != s.Current.KeyURI {
		t.Errorf("keys after the grace period: %v", ks)
	}
	if _, err := claimStore.Open(ctx, curi); err != nil {
		t.Errorf("the claim key was touched: %v", err)
	}
}
