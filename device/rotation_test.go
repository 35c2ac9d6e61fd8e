package device_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/fleetprov"
	jobsapi "github.com/thingcert/thingcert/iot/jobs"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/filestore"
	"github.com/thingcert/thingcert/rotation"
)

const (
	account  = "acct"
	template = "fleet"
	thing    = "dev-0042"
)

// rig is one device against an in-process emulator: a claim identity
// registered in the emulator, a key store, a state folder, and the runner
// that provisions and rotates.
type rig struct {
	t        *testing.T
	emu      *emulator.Emulator
	dir      string
	store    keystore.Store
	claim    rotation.IdentityRecord
	claimKey keystore.Key
	session  *device.Session
	runner   *rotation.Runner
	thing    string
	stores   storeFactory
	claimSt  keystore.Store
}

// storeFactory makes the device's key store (file, SoftHSM, swtpm) and says
// where the claim key goes.
type storeFactory func(t *testing.T, dir string) (store keystore.Store, claimStore keystore.Store)

func fileStores(t *testing.T, dir string) (keystore.Store, keystore.Store) {
	s, err := filestore.Open(context.Background(), "file:"+filepath.Join(dir, "keys")+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := filestore.Open(context.Background(), "file:"+filepath.Join(dir, "claim")+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

func startEmulator(t *testing.T, cfg emulator.Config) *emulator.Emulator {
	t.Helper()
	cfg.Accounts = []emulator.Account{{Name: account}}
	cfg.Templates = []emulator.Template{{Name: template, Body: emulator.SimpleTemplate("dev-", "SerialNumber")}}
	if cfg.ClientConnectInterval == 0 {
		cfg.ClientConnectInterval = -1 // the session paces itself; tests need not wait
	}
	emu, err := emulator.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	return emu
}

func newRig(t *testing.T, emu *emulator.Emulator, stores storeFactory) *rig {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	store, claimStore := stores(t, dir)
	t.Cleanup(func() { store.Close() })
	if claimStore != store {
		t.Cleanup(func() { claimStore.Close() })
	}
	// The claim: a key made in its store, a self-signed certificate registered
	// without a CA (SNI_ONLY, as a claim shared by a batch may be).
	claimURI, err := claimStore.KeyURI("claim")
	if err != nil {
		t.Fatal(err)
	}
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
	r := &rig{t: t, emu: emu, dir: dir, store: store, claimKey: ck, thing: thing, stores: stores, claimSt: claimStore,
		claim: rotation.IdentityRecord{KeyURI: claimURI, CertFile: claimFile, Claim: true}}
	r.session = &device.Session{
		Config: iot.Config{
			Endpoint:  iot.Endpoint{Host: emu.Endpoint(account), Address: emu.Addr()},
			Roots:     emu.RootCAs(),
			ThingName: thing,
		},
		ClaimClientID:      "claim-" + thing,
		MinConnectInterval: -1,
	}
	t.Cleanup(func() { r.session.Close(context.Background()) })
	r.runner = r.newRunner(claimStore)
	return r
}

func (r *rig) newRunner(claimStore keystore.Store) *rotation.Runner {
	return &rotation.Runner{
		Machine:  rotation.Machine{GracePeriod: time.Hour, Backoff: rotation.Backoff{Min: time.Second, Max: 2 * time.Second}},
		DeviceID: thing,
		State:    rotation.StateStore{Dir: filepath.Join(r.dir, "state")},
		Store:    r.store,
		OpenKey: func(ctx context.Context, uri string) (keystore.Key, error) {
			if uri == r.claim.KeyURI {
				return claimStore.Open(ctx, uri)
			}
			return r.store.Open(ctx, uri)
		},
		Subject:   "CN=" + thing,
		Issuer:    &fleetprov.Issuer{Conn: r.session, Template: template, Parameters: map[string]string{"SerialNumber": "0042"}, ThingName: thing, Timeout: 10 * time.Second},
		Connector: r.session,
		Reporter:  jobsapi.Reporter{Client: r.session.Jobs()},
	}
}

// connectCurrent is what a device does at start: connect with the identity
// the state folder names.
func (r *rig) connectCurrent() *rotation.State {
	r.t.Helper()
	s, err := r.runner.Load()
	if err != nil {
		r.t.Fatal(err)
	}
	id, err := r.runner.Identity(context.Background(), *s.Current)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := r.session.Switch(context.Background(), id); err != nil {
		r.t.Fatalf("connecting with the current identity %s: %v", s.Current.CertificateID[:12], err)
	}
	return s
}

func (r *rig) provision() *rotation.State {
	r.t.Helper()
	ctx := context.Background()
	if _, err := r.runner.Adopt(ctx, r.claim); err != nil {
		r.t.Fatal(err)
	}
	r.connectCurrent()
	s, err := r.runner.Provision(ctx, r.claim)
	if err != nil {
		r.t.Fatalf("provisioning: %v", err)
	}
	return s
}

// publishes proves the identity works end to end: a QoS 1 publish is
// acknowledged and the Jobs API answers on the connection.
func (r *rig) publishes() {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.session.Publish(ctx, "dt/"+r.thing+"/hello", iot.AtLeastOnce, []byte("hi")); err != nil {
		r.t.Fatalf("publish: %v", err)
	}
	if err := r.session.Jobs().List(ctx); err != nil {
		r.t.Fatalf("jobs round trip: %v", err)
	}
}

func (r *rig) certStatus(id string) emulator.CertificateStatus {
	r.t.Helper()
	c, err := r.emu.Certificate(context.Background(), account, id)
	if err != nil {
		r.t.Fatal(err)
	}
	return c.Status
}

// TestProvisionRotateRotateAgain is the main line: a device with only a claim
// provisions its own identity, rotates, rotates again; each old certificate,
// once deactivated by the cloud, is refused, and the device is unaffected.
func TestProvisionRotateRotateAgain(t *testing.T) {
	mainLine(t, fileStores, false)
}

func mainLine(t *testing.T, stores storeFactory, restart bool) {
	emu := startEmulator(t, emulator.Config{})
	r := newRig(t, emu, stores)
	ctx := context.Background()

	s := r.provision()
	if s.Current.Claim || s.Current.ThingName != thing || s.LastResult.Trigger.Kind != rotation.TriggerProvision {
		t.Fatalf("after provisioning: %+v", s.Current)
	}
	if got := r.certStatus(s.Current.CertificateID); got != emulator.StatusActive {
		t.Fatalf("provisioned certificate is %s", got)
	}
	th, err := emu.Thing(ctx, account, thing)
	if err != nil || len(th.Certificates) != 1 || th.Certificates[0] != s.Current.CertificateID {
		t.Fatalf("thing %+v, %v", th, err)
	}
	if r.session.Client().ClientID() != thing {
		t.Errorf("client ID %q after provisioning, want the thing name", r.session.Client().ClientID())
	}
	r.publishes()
	ids := []string{s.Current.CertificateID}

	for i := range 2 {
		if restart {
			r.restart()
		}
		s, err = r.runner.Rotate(ctx, rotation.Trigger{Kind: rotation.TriggerOperator, Reason: "test"})
		if err != nil {
			t.Fatalf("rotation %d: %v", i+1, err)
		}
		old := ids[len(ids)-1]
		if s.Current.CertificateID == old {
			t.Fatalf("rotation %d kept the certificate", i+1)
		}
		ids = append(ids, s.Current.CertificateID)
		r.publishes()
		// The cloud deactivates the old certificate; the device does not notice.
		if err := emu.SetCertificateStatus(ctx, account, old, emulator.StatusInactive); err != nil {
			t.Fatal(err)
		}
		r.publishes()
		ev := refusedWith(t, r, old)
		if ev.Rule != emulator.RuleStatus {
			t.Errorf("old certificate refused by rule %s, want %s", ev.Rule, emulator.RuleStatus)
		}
	}
	// The claim was used once, to provision.
	evs, _ := emu.History(ctx, emulator.HistoryQuery{ClientID: "claim-" + thing, Outcome: emulator.Accepted})
	if len(evs) != 1 {
		t.Errorf("the claim connected %d times, want once", len(evs))
	}
	if got := len(r.keys()); got != 3+btoi(r.claimSt == r.store) {
		t.Errorf("%d keys in the store, want 3 (two in their grace period and the current)", got)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// restart is a new process: the stores are closed and opened again, a new
// session connects with the current identity, a new runner takes over.
func (r *rig) restart() {
	r.t.Helper()
	r.session.Close(context.Background())
	if r.claimSt != r.store {
		r.claimSt.Close()
	}
	r.store.Close()
	r.store, r.claimSt = r.stores(r.t, r.dir)
	st, cs := r.store, r.claimSt
	r.t.Cleanup(func() {
		st.Close()
		if cs != st {
			cs.Close()
		}
	})
	old := r.session
	r.session = &device.Session{Config: old.Config, ClaimClientID: old.ClaimClientID, MinConnectInterval: -1}
	r.t.Cleanup(func() { r.session.Close(context.Background()) })
	fp := *r.runner.Issuer.(*fleetprov.Issuer)
	fp.Conn = r.session
	r.runner = r.newRunner(r.claimSt)
	r.runner.Issuer = &fp
	r.connectCurrent()
}

// refusedWith connects once with an old identity and returns the emulator's
// refusal.
func refusedWith(t *testing.T, r *rig, certID string) emulator.ConnectionEvent {
	t.Helper()
	s, _ := r.runner.Load()
	var rec *rotation.IdentityRecord
	for _, p := range s.Previous {
		if p.CertificateID == certID {
			rec = &p.IdentityRecord
		}
	}
	if rec == nil {
		t.Fatalf("certificate %s is not among the previous identities", certID[:12])
	}
	id, err := r.runner.Identity(context.Background(), *rec)
	if err != nil {
		t.Fatal(err)
	}
	aid, err := iot.NewIdentity(id.Key, id.Chain)
	if err != nil {
		t.Fatal(err)
	}
	c, err := iot.New(iot.Config{Endpoint: r.session.Config.Endpoint, Roots: r.emu.RootCAs(), ThingName: "intruder", Identity: iot.NewIdentitySource(aid)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connect(context.Background()); err == nil {
		c.Disconnect(context.Background())
		t.Fatalf("the deactivated certificate %s still connects", certID[:12])
	}
	return waitEvent(t, r.emu, emulator.HistoryQuery{CertificateID: certID, Outcome: emulator.Refused})
}

// waitEvent waits for the emulator to record a matching event: it records a
// refusal after the client has already seen the connection fail.
func waitEvent(t *testing.T, emu *emulator.Emulator, q emulator.HistoryQuery) emulator.ConnectionEvent {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if evs, _ := emu.History(context.Background(), q); len(evs) > 0 {
			return evs[len(evs)-1]
		}
	}
	t.Fatalf("the emulator recorded no event matching %+v", q)
	return emulator.ConnectionEvent{}
}

func TestProvisionTwiceSaysSo(t *testing.T) {
	emu := startEmulator(t, emulator.Config{})
	r := newRig(t, emu, fileStores)
	r.provision()
	if _, err := r.runner.Provision(context.Background(), r.claim); !errors.Is(err, rotation.ErrAlreadyProvisioned) || !strings.Contains(err.Error(), "renew it with a rotation") {
		t.Errorf("second provisioning: %v", err)
	}
}

// TestJobRotation: a job asking for a rotation, noticed on notify-next, goes
// QUEUED → IN_PROGRESS → SUCCEEDED with the old and new certificate IDs; the
// cloud then deactivates the old certificate as the job's completion says.
func TestJobRotation(t *testing.T) {
	emu := startEmulator(t, emulator.Config{})
	r := newRig(t, emu, fileStores)
	ctx := context.Background()
	old := r.provision().Current
	jobs := r.session.Jobs()
	notified := make(chan *jobsapi.Execution, 4)
	if err := jobs.OnNext(ctx, func(e *jobsapi.Execution) { notified <- e }); err != nil {
		t.Fatal(err)
	}
	// A job for something else first: it must be left alone.
	if _, err := emu.CreateJob(ctx, account, emulator.Job{ID: "firmware-1", Document: json.RawMessage(`{"operation":"install"}`), Things: []string{thing}}); err != nil {
		t.Fatal(err)
	}
	if e := <-notified; e == nil || e.JobID != "firmware-1" {
		t.Fatalf("notify-next: %+v", e)
	}
	if tr, err := jobs.StartRotationJob(ctx); err != nil || tr != nil {
		t.Fatalf("a firmware job started a rotation: %+v, %v", tr, err)
	}
	if err := jobs.Update(ctx, "firmware-1", jobsapi.StatusSucceeded, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := emu.CreateJob(ctx, account, emulator.Job{ID: "rotate-1", Document: json.RawMessage(`{"operation":"rotate-certificate"}`), Things: []string{thing}}); err != nil {
		t.Fatal(err)
	}
	for e := range notified {
		if e != nil && e.JobID == "rotate-1" {
			break
		}
	}
	if ex := jobExecution(t, r, "rotate-1"); ex.Status != emulator.JobQueued {
		t.Fatalf("before the device acts: %s", ex.Status)
	}
	tr, err := jobs.StartRotationJob(ctx)
	if err != nil || tr == nil || tr.JobID != "rotate-1" {
		t.Fatalf("StartRotationJob: %+v, %v", tr, err)
	}
	if ex := jobExecution(t, r, "rotate-1"); ex.Status != emulator.JobInProgress {
		t.Fatalf("after start: %s", ex.Status)
	}
	s, err := r.runner.Rotate(ctx, *tr)
	if err != nil {
		t.Fatal(err)
	}
	ex := jobExecution(t, r, "rotate-1")
	if ex.Status != emulator.JobSucceeded || ex.StatusDetails["oldCertificateId"] != old.CertificateID || ex.StatusDetails["newCertificateId"] != s.Current.CertificateID {
		t.Fatalf("job execution %s %+v", ex.Status, ex.StatusDetails)
	}
	// The cloud side acts on the job's status details.
	if err := emu.SetCertificateStatus(ctx, account, ex.StatusDetails["oldCertificateId"], emulator.StatusInactive); err != nil {
		t.Fatal(err)
	}
	r.publishes()
	if ev := refusedWith(t, r, old.CertificateID); ev.Rule != emulator.RuleStatus {
		t.Errorf("old certificate refused by %s", ev.Rule)
	}
}

// TestJobCancelledDuringRotation: the cloud cancels the job while the device
// rotates; the confirmation on the new connection sees it and the device
// goes back to its identity.
func TestJobCancelledDuringRotation(t *testing.T) {
	emu := startEmulator(t, emulator.Config{})
	r := newRig(t, emu, fileStores)
	ctx := context.Background()
	old := r.provision().Current
	jobID := createRotationJob(t, r)
	r.runner.AfterSave = func(_ context.Context, s *rotation.State) error {
		if s.Phase == rotation.PhaseVerified {
			return emu.CancelJob(ctx, account, jobID, true)
		}
		return nil
	}
	s, err := r.runner.Rotate(ctx, rotation.Trigger{Kind: rotation.TriggerJob, JobID: jobID})
	if !errors.Is(err, rotation.ErrRolledBack) || !strings.Contains(err.Error(), "no longer IN_PROGRESS") {
		t.Fatalf("Rotate: %v", err)
	}
	if s.Current.CertificateID != old.CertificateID {
		t.Fatal("kept the new identity of a cancelled job")
	}
	if ex := jobExecution(t, r, jobID); ex.Status != emulator.JobCanceled {
		t.Errorf("job %s", ex.Status)
	}
	r.publishes()
}
