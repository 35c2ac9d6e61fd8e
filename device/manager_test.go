package device_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/fleetprov"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/filestore"
	"github.com/thingcert/thingcert/rotation"
)

// managerOptions are a device's options on the emulator, with a claim in its
// own folder: what an embedder writes.
func managerOptions(t *testing.T, emu *emulator.Emulator) device.Options {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	claimStore, err := filestore.Open(ctx, "file:"+filepath.Join(dir, "claim")+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer claimStore.Close()
	claimURI, _ := claimStore.KeyURI("claim")
	ck, err := claimStore.Generate(ctx, claimURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	claimPEM, _, err := emu.RegisterClaim(ctx, account, ck, "claim")
	if err != nil {
		t.Fatal(err)
	}
	claimFile := filepath.Join(dir, "claim.crt")
	if err := os.WriteFile(claimFile, claimPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return device.Options{
		Endpoint:  iot.Endpoint{Host: emu.Endpoint(account), Address: emu.Addr()},
		Roots:     emu.RootCAs(),
		ThingName: thing,
		StateDir:  filepath.Join(dir, "state"),
		Store:     "file:" + filepath.Join(dir, "keys") + "/",
		Claim:     &device.Claim{Credentials: device.Credentials{KeyURI: claimURI, CertFile: claimFile}, ClientID: "claim-" + thing},
		Issuer: func(c iot.MQTT) rotation.Issuer {
			return &fleetprov.Issuer{Conn: c, Template: template, Parameters: map[string]string{"SerialNumber": "0042"}, ThingName: thing}
		},
		Machine:            rotation.Machine{GracePeriod: time.Hour, Backoff: rotation.Backoff{Min: time.Second, Max: 2 * time.Second}},
		MinConnectInterval: -1,
	}
}

// TestManagerRunProvisionsAndFollowsAJob: Run alone provisions a new device
// by claim, then carries out a rotation job queued for it, which ends
// SUCCEEDED with the old and new certificate IDs.
func TestManagerRunProvisionsAndFollowsAJob(t *testing.T) {
	emu := startEmulator(t, emulator.Config{})
	ctx, m := runManager(t, emu)

	provisioned := waitState(t, ctx, m, func(s *rotation.State) bool { return !s.Current.Claim && !s.InProgress() })
	first := provisioned.Current.CertificateID
	if c, err := emu.Certificate(ctx, account, first); err != nil || c.Status != emulator.StatusActive {
		t.Fatalf("provisioned certificate %s: %+v, %v", first, c, err)
	}
	job, err := emu.CreateJob(ctx, account, emulator.Job{ID: "rotate-1", Document: json.RawMessage(`{"operation":"rotate-certificate"}`), Things: []string{thing}})
	if err != nil {
		t.Fatal(err)
	}
	rotated := waitState(t, ctx, m, func(s *rotation.State) bool {
		return s.LastResult != nil && s.LastResult.Trigger.JobID == job.ID && !s.InProgress()
	})
	if rotated.LastResult.Outcome != rotation.Succeeded || rotated.Current.CertificateID == first {
		t.Fatalf("job rotation: %+v", rotated.LastResult)
	}
	var ex emulator.JobExecution
	for ctx.Err() == nil {
		if ex, err = emu.JobExecution(ctx, account, thing, job.ID); err == nil && ex.Status == emulator.JobSucceeded {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ex.StatusDetails["oldCertificateId"] != first || ex.StatusDetails["newCertificateId"] != rotated.Current.CertificateID {
		t.Fatalf("job execution: %+v", ex)
	}
	if err := m.Publish(ctx, "dt/"+thing+"/after", iot.AtLeastOnce, []byte("1")); err != nil {
		t.Fatalf("publishing on the rotated identity: %v", err)
	}
}

// TestManagerWithoutIdentity: a state folder with no identity and options
// that give none is an error that says so, not a retry loop.
func TestManagerWithoutIdentity(t *testing.T) {
	emu := startEmulator(t, emulator.Config{})
	o := managerOptions(t, emu)
	o.Claim = nil
	m, err := device.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	if err := m.Run(context.Background()); !errors.Is(err, device.ErrNoIdentity) {
		t.Fatalf("Run without an identity: %v, want ErrNoIdentity", err)
	}
}

func waitState(t *testing.T, ctx context.Context, m *device.Manager, ok func(*rotation.State) bool) *rotation.State {
	t.Helper()
	for {
		if s, err := m.Runner().Load(); err == nil && s.Current != nil && ok(s) {
			return s
		}
		select {
		case <-ctx.Done():
			s, err := m.Runner().Load()
			t.Fatalf("state not reached: %+v, %v", s, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestNextStep: what an idle device does, decided from its state and the
// time alone.
func TestNextStep(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	r := &rotation.Runner{Policy: rotation.Policy{LifetimeRatio: 0.5, Jitter: -1}}
	id := func(claim bool, nb, na time.Time) *rotation.IdentityRecord {
		return &rotation.IdentityRecord{CertificateID: "c", Claim: claim, NotBefore: nb, NotAfter: na}
	}
	for _, c := range []struct {
		name string
		st   *rotation.State
		want device.Step
	}{
		{"claim", &rotation.State{Phase: rotation.PhaseIdle, Current: id(true, now.Add(-time.Hour), now.Add(time.Hour))}, device.StepProvision},
		{"claim after a rollback", &rotation.State{Phase: rotation.PhaseIdle, Current: id(true, now.Add(-time.Hour), now.Add(time.Hour)), NextRetry: now.Add(time.Minute)}, device.StepWait},
		{"young certificate", &rotation.State{Phase: rotation.PhaseIdle, Current: id(false, now.Add(-time.Hour), now.Add(100*time.Hour))}, device.StepWait},
		{"past half its life", &rotation.State{Phase: rotation.PhaseIdle, Current: id(false, now.Add(-60*time.Hour), now.Add(40*time.Hour))}, device.StepRotate},
		{"in progress", &rotation.State{Phase: rotation.PhaseKeyGenerated, Current: id(false, now.Add(-time.Hour), now.Add(100*time.Hour))}, device.StepResume},
	} {
		got := device.NextStep(r, c.st, now)
		if got.Step != c.want {
			t.Errorf("%s: %+v, want %s", c.name, got, c.want)
		}
		if got.Step == device.StepWait && (!got.At.After(now) || got.At.After(now.Add(time.Hour))) {
			t.Errorf("%s: wait until %v: not within the next hour", c.name, got.At)
		}
	}
}

// TestConnectRetryBacksOff: a device that cannot connect retries with the
// connection backoff, told to the caller before each wait, until the caller
// stops it.
func TestConnectRetryBacksOff(t *testing.T) {
	emu := startEmulator(t, emulator.Config{})
	o := managerOptions(t, emu)
	o.Endpoint.Address = "127.0.0.1:1" // nothing listens
	o.Rand = func() float64 { return 0 }
	m, err := device.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	stop := errors.New("enough")
	var waits []time.Duration
	err = m.ConnectRetry(context.Background(), func(st *rotation.State, err error, retryIn time.Duration) error {
		if !errors.Is(err, iot.ErrUnreachable) || st == nil || !st.Current.Claim {
			t.Errorf("attempt %d: state %+v, error %v", len(waits)+1, st, err)
		}
		waits = append(waits, retryIn)
		if len(waits) == 2 {
			return stop
		}
		return nil
	})
	var bo iot.Backoff
	if !errors.Is(err, stop) || len(waits) != 2 || waits[0] != bo.Delay(0, 0) || waits[1] != bo.Delay(1, 0) {
		t.Fatalf("ConnectRetry: %v after waits %v; want %v, %v", err, waits, bo.Delay(0, 0), bo.Delay(1, 0))
	}
}

// TestManagerFindsARotationJobBehindAnotherJob: a firmware-update job queued
// first, then a rotation job: the device looks past the firmware job (which
// is not its to do, and stays QUEUED) and carries out the rotation.
func TestManagerFindsARotationJobBehindAnotherJob(t *testing.T) {
	emu := startEmulator(t, emulator.Config{})
	ctx, m := runManager(t, emu)
	provisioned := waitState(t, ctx, m, func(s *rotation.State) bool { return !s.Current.Claim && !s.InProgress() })
	fw, err := emu.CreateJob(ctx, account, emulator.Job{ID: "firmware-7", Document: json.RawMessage(`{"operation":"firmware-update","version":"7"}`), Things: []string{thing}})
	if err != nil {
		t.Fatal(err)
	}
	rot, err := emu.CreateJob(ctx, account, emulator.Job{ID: "rotate-behind", Document: json.RawMessage(`{"operation":"rotate-certificate"}`), Things: []string{thing}})
	if err != nil {
		t.Fatal(err)
	}
	rotated := waitState(t, ctx, m, func(s *rotation.State) bool {
		return s.LastResult != nil && s.LastResult.Trigger.JobID == rot.ID && !s.InProgress()
	})
	if rotated.LastResult.Outcome != rotation.Succeeded || rotated.Current.CertificateID == provisioned.Current.CertificateID {
		t.Fatalf("rotation: %+v", rotated.LastResult)
	}
	var ex emulator.JobExecution
	for ctx.Err() == nil {
		if ex, err = emu.JobExecution(ctx, account, thing, rot.ID); err == nil && ex.Status == emulator.JobSucceeded {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ex.Status != emulator.JobSucceeded {
		t.Fatalf("rotation job: %+v, %v", ex, err)
	}
	if fwx, err := emu.JobExecution(ctx, account, thing, fw.ID); err != nil || fwx.Status != emulator.JobQueued {
		t.Fatalf("firmware job: %+v, %v; want it untouched, QUEUED", fwx, err)
	}
}

// TestThrottledRegisterThingKeepsItsCertificate: devices provisioning at once
// under a RegisterThing quota of 1/s are throttled, retry RegisterThing with
// the ownership token they hold, and all provision, each with the one
// certificate it asked for: no CreateCertificateFromCsr is spent on a retry.
func TestThrottledRegisterThingKeepsItsCertificate(t *testing.T) {
	emu := startEmulator(t, emulator.Config{RegisterThingRate: 1, CreateCertificateRate: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const n = 4
	var ms []*device.Manager
	done := make(chan error, n)
	for i := range n {
		o := managerOptions(t, emu)
		name := fmt.Sprintf("dev-%04d", 100+i)
		o.ThingName = name
		o.Claim.ClientID = "claim-" + name
		serial := fmt.Sprintf("%04d", 100+i)
		o.Issuer = func(c iot.MQTT) rotation.Issuer {
			return &fleetprov.Issuer{Conn: c, Template: template, Parameters: map[string]string{"SerialNumber": serial}, ThingName: name}
		}
		m, err := device.New(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
		go func() { done <- m.Run(ctx) }()
	}
	defer func() {
		cancel()
		for _, m := range ms {
			<-done
			m.Close(context.Background())
		}
	}()
	for _, m := range ms {
		waitState(t, ctx, m, func(s *rotation.State) bool { return !s.Current.Claim && !s.InProgress() })
	}
	st := emu.RateStats()
	if st["RegisterThing"].Throttled == 0 {
		t.Fatalf("no RegisterThing was throttled (%+v): the test proves nothing", st)
	}
	if c := st["CreateCertificateFromCsr"]; c.Allowed != n {
		t.Fatalf("CreateCertificateFromCsr %+v for %d devices: throttled registrations spent new certificates", c, n)
	}
}

// runManager starts Run on a Manager for a new device of emu; the test's end
// stops it, and Run must then return context.Canceled.
func runManager(t *testing.T, emu *emulator.Emulator) (context.Context, *device.Manager) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	m, err := device.New(ctx, managerOptions(t, emu))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
		m.Close(context.Background())
		cancel()
	})
	return ctx, m
}

func TestValidateAccounts(t *testing.T) {
	base := device.Options{Endpoint: iot.Endpoint{Host: "a-ats.iot.eu-west-1.amazonaws.com"}, ThingName: "gw", StateDir: t.TempDir(), Store: "file:/tmp/k/"}
	for _, tc := range []struct {
		name     string
		accounts []iot.Endpoint
		want     string
	}{
		{"no host", []iot.Endpoint{{}}, "Accounts[0]"},
		{"the primary again", []iot.Endpoint{{Host: "A-ats.iot.eu-west-1.amazonaws.com"}}, "is the primary Endpoint"},
		{"twice", []iot.Endpoint{{Host: "b-ats.iot.eu-west-1.amazonaws.com"}, {Host: "b-ats.iot.eu-west-1.amazonaws.com"}}, "Accounts[1]: b-ats.iot.eu-west-1.amazonaws.com is listed twice"},
	} {
		o := base
		o.Accounts = tc.accounts
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	o := base
	o.Accounts = []iot.Endpoint{{Host: "b-ats.iot.eu-west-1.amazonaws.com"}}
	if err := o.Validate(); err != nil {
		t.Errorf("a second account: %v", err)
	}
	o.JustInTime = true
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "JustInTime with Accounts") {
		t.Errorf("just in time with accounts: %v", err)
	}
	o.JustInTime = false
	claim := filepath.Join(t.TempDir(), "claim.crt")
	if err := os.WriteFile(claim, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	o.Claim = &device.Claim{Credentials: device.Credentials{KeyURI: "file:/tmp/k/claim.pem", CertFile: claim}, IssuerOnly: true}
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "Claim.IssuerOnly with Accounts") {
		t.Errorf("an issuer-only claim with accounts: %v", err)
	}
}
