package rotation

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/thingcert/thingcert/internal/crashfs"
)

var errStop = errors.New("process stopped here")

// restart is a new process on the same folders: a new key store handle, a new
// runner, and the agent's first connect with the persisted current identity.
func (d *device) restart(t testing.TB) {
	t.Helper()
	d.openStore()
	d.newRunner()
	if err := d.connectCurrent(); err != nil {
		t.Fatalf("after restart the device cannot connect with its current identity: %v", err)
	}
}

// TestStopAfterEveryPhase stops the runner right after each persisted
// transition (as a kill would; the CLI tests do it with SIGKILL on a real
// process), then restarts: the rotation completes, or rolls back, and the
// device has a working identity.
func TestStopAfterEveryPhase(t *testing.T) {
	for _, p := range []Phase{PhaseStarted, PhaseKeyGenerated, PhaseCSRSubmitted, PhaseIssued, PhaseVerified, PhaseCommitted, PhaseIdle} {
		t.Run(string(p), func(t *testing.T) {
			d := osDevice(t)
			old := d.assertWorking(t).Current
			d.runner.AfterSave = func(_ context.Context, s *State) error {
				if s.Phase == p && s.Serial == 1 {
					return errStop
				}
				return nil
			}
			if _, err := d.runner.Rotate(context.Background(), Trigger{Kind: TriggerJob, JobID: "j1"}); !errors.Is(err, errStop) {
				t.Fatalf("Rotate: %v", err)
			}
			// A run that stops writes where it stands, also a state it kept in
			// memory (Needs): status and the next start see it.
			if got := d.mustLoad(t).Phase; got != p {
				t.Errorf("the state file after the stop is in phase %s, want %s", got, p)
			}
			d.restart(t)
			s, err := d.runner.Resume(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if s.Phase != PhaseIdle || s.Current.CertificateID == old.CertificateID {
				t.Fatalf("after resume: phase %s current %s", s.Phase, short(s.Current.CertificateID))
			}
			d.assertWorking(t)
			if ks := d.keys(t); len(ks) != 2 || !slices.Contains(ks, old.KeyURI) || !slices.Contains(ks, s.Current.KeyURI) {
				t.Errorf("keys %v: want the old (in its grace period) and the new, nothing else", ks)
			}
			if len(d.cloud.reports) != 1 || d.cloud.reports[0].Outcome != Succeeded {
				t.Errorf("job reports %+v: want exactly one SUCCEEDED", d.cloud.reports)
			}
		})
	}
	// The connection already moved to the new identity when the process died,
	// before Committed was saved: the restart connects with the old one (still
	// active: the cloud has not been told) and moves again.
	t.Run("verified, connection moved", func(t *testing.T) {
		d := osDevice(t)
		old := d.assertWorking(t).Current
		d.runner.Connector = stopAfterSwitch{d.cloud}
		if _, err := d.runner.Rotate(context.Background(), Trigger{Kind: TriggerTime}); !errors.Is(err, context.Canceled) {
			t.Fatalf("Rotate: %v", err)
		}
		if s := d.mustLoad(t); s.Phase != PhaseVerified || d.cloud.connected == old.CertificateID {
			t.Fatalf("setup: phase %s, connected %s", s.Phase, short(d.cloud.connected))
		}
		d.restart(t)
		if d.cloud.connected != old.CertificateID {
			t.Fatal("restart did not connect with the current (old) identity")
		}
		s, err := d.runner.Resume(context.Background())
		if err != nil || s.Current.CertificateID == old.CertificateID {
			t.Fatalf("resume: %v", err)
		}
		d.assertWorking(t)
	})
	t.Run("rolled-back", func(t *testing.T) {
		d := osDevice(t)
		old := d.assertWorking(t).Current
		d.cloud.refuseNew = true
		d.runner.AfterSave = func(_ context.Context, s *State) error {
			if s.Phase == PhaseRolledBack {
				return errStop
			}
			return nil
		}
		if _, err := d.runner.Rotate(context.Background(), Trigger{Kind: TriggerTime}); !errors.Is(err, errStop) {
			t.Fatalf("Rotate: %v", err)
		}
		d.restart(t)
		s, err := d.runner.Resume(context.Background())
		if !errors.Is(err, ErrRolledBack) || s.Current.CertificateID != old.CertificateID || s.Phase != PhaseIdle {
			t.Fatalf("resume: %v, phase %s", err, s.Phase)
		}
		if ks := d.keys(t); len(ks) != 1 || ks[0] != old.KeyURI {
			t.Errorf("keys %v: the new key must be gone", ks)
		}
		d.assertWorking(t)
	})
}

// stopAfterSwitch dies (a cancelled context) right after the connection moved.
type stopAfterSwitch struct{ *fakeCloud }

func (c stopAfterSwitch) Confirm(context.Context, Trigger) error { return context.Canceled }

// noSync is a file system whose files never reach the disk: fsync does
// nothing. The power-cut test must catch it.
type noSync struct{ crashFS }

type noSyncFile struct{ *crashfs.File }

func (noSyncFile) Sync() error { return nil }

func (n noSync) CreateTemp(dir, pattern string) (tempFile, error) {
	f, err := n.crashFS.FS.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return noSyncFile{f}, nil
}

// powerCutRun rotates a fresh device with the power cut after n file
// operations, restarts from what survived, and reports whether the device
// then has a working identity and can still rotate. done is set when the
// rotation finished before the cut.
func powerCutRun(t *testing.T, n int, wrap func(*crashfs.FS) fileSystem) (done bool, problem error) {
	t.Helper()
	ctx := context.Background()
	cfs := crashfs.New()
	const dir = "/var/lib/thingcert"
	d := newDevice(t, wrap(cfs), dir)
	cfs.SyncAll() // the device was set up and shut down cleanly
	old := d.mustLoad(t).Current
	d.cloud.retireOld = true // a device that comes back on its old certificate after the report is locked out
	d.clock.Add(250 * day)
	cfs.CutPowerAfter(n)
	_, err := d.runner.Rotate(ctx, Trigger{Kind: TriggerTime})
	if !cfs.PowerCut() {
		if err != nil {
			t.Fatalf("rotation without a power cut: %v", err)
		}
		return true, nil
	}
	d.fs = wrap(cfs.Restart())
	d.openStore()
	d.newRunner()
	if err := d.connectCurrent(); err != nil {
		return false, fmt.Errorf("no working identity after the restart: %w", err)
	}
	if _, err := d.runner.Resume(ctx); err != nil {
		return false, fmt.Errorf("resume: %w", err)
	}
	s, err := d.runner.Load()
	if err != nil {
		return false, err
	}
	id, err := d.runner.Identity(ctx, *s.Current)
	if err != nil {
		return false, err
	}
	if err := d.cloud.check(id); err != nil {
		return false, err
	}
	if err := recoveredAsTheRuleSays(ctx, d, old, s); err != nil {
		return false, err
	}
	if _, err := d.runner.Rotate(ctx, Trigger{Kind: TriggerOperator}); err != nil {
		return false, fmt.Errorf("the next rotation: %w", err)
	}
	return false, nil
}

// recoveredAsTheRuleSays checks, after a power cut and the resumed
// rotation, what each durable write is for (see Needs): no key left that no
// state names (the key's name was durable before it was made); one CSR sent,
// however often (it was durable before it was sent); no certificate used that
// the device then forgot (the checked certificate was durable before the
// switch); and success reported only for the certificate the device uses
// (the commit was durable before the report).
func recoveredAsTheRuleSays(ctx context.Context, d *device, old *IdentityRecord, s *State) error {
	keys, err := d.store.List(ctx)
	if err != nil {
		return err
	}
	named := []string{s.Current.KeyURI}
	for _, p := range s.Previous {
		named = append(named, p.KeyURI)
	}
	for _, k := range keys {
		if !slices.Contains(named, k) {
			return fmt.Errorf("key %s is in the store but no state names it", k)
		}
	}
	d.cloud.mu.Lock()
	defer d.cloud.mu.Unlock()
	for _, c := range d.cloud.csrs {
		if c != d.cloud.csrs[0] {
			return fmt.Errorf("%d different CSRs sent for one rotation", len(d.cloud.csrs))
		}
	}
	for _, id := range d.cloud.connects {
		if id != old.CertificateID && id != s.Current.CertificateID {
			return fmt.Errorf("the device connected with certificate %s, which it no longer knows", short(id))
		}
	}
	for _, r := range d.cloud.reports {
		if r.Outcome == Succeeded && r.NewCertificateID != s.Current.CertificateID {
			return fmt.Errorf("the cloud was told of certificate %s but the device uses %s", short(r.NewCertificateID), short(s.Current.CertificateID))
		}
	}
	return nil
}

// TestPowerCutAtEveryWrite cuts the power after every single file operation
// of a rotation (state and certificate writes: create, write, sync, close,
// rename, folder sync) and restarts from what was synced.
func TestPowerCutAtEveryWrite(t *testing.T) {
	wrap := func(f *crashfs.FS) fileSystem { return crashFS{f} }
	n := 0
	for ; ; n++ {
		done, problem := powerCutRun(t, n, wrap)
		if problem != nil {
			t.Errorf("power cut after file operation %d: %v", n, problem)
		}
		if done {
			break
		}
	}
	if n < 40 {
		t.Errorf("a rotation took only %d file operations; the test is not reaching every write", n)
	}
	t.Logf("power cut after each of the %d file operations of a rotation: a working identity every time", n)
}

// TestPowerCutCatchesMissingSync is the control: without fsync the same test
// finds a device left with no usable state.
func TestPowerCutCatchesMissingSync(t *testing.T) {
	wrap := func(f *crashfs.FS) fileSystem { return noSync{crashFS{f}} }
	for n := 0; ; n++ {
		done, problem := powerCutRun(t, n, wrap)
		if problem != nil {
			t.Logf("caught at operation %d: %v", n, problem)
			return
		}
		if done {
			t.Fatal("a writer that never syncs survived every power cut: the test cannot see lost writes")
		}
	}
}
