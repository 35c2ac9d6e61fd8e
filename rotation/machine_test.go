package rotation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func idleState() *State {
	return &State{Version: StateVersion, Phase: PhaseIdle, Current: &IdentityRecord{
		KeyURI: "file:/k/device-old.pem", CertFile: "/s/certs/old.pem", CertificateID: "old",
		NotBefore: t0, NotAfter: t0.Add(year),
	}}
}

func mustNext(t *testing.T, m Machine, s *State, ev Event, now time.Time) *State {
	t.Helper()
	n, err := m.Next(s, ev, now)
	if err != nil {
		t.Fatalf("Next(%s, %s): %v", s.Phase, ev.Kind, err)
	}
	return n
}

// happy walks one rotation to Committed and returns every state on the way.
func happy(t *testing.T, m Machine, s *State, now time.Time) []*State {
	t.Helper()
	evs := []Event{
		{Kind: EventStart, Trigger: Trigger{Kind: TriggerJob, JobID: "job-1"}, KeyURI: "file:/k/device-new.pem"},
		{Kind: EventKeyReady},
		{Kind: EventCSRMade, CSR: "-----BEGIN CERTIFICATE REQUEST-----"},
		{Kind: EventIssued, Cert: &IdentityRecord{CertFile: "/s/certs/new.pem", CertificateID: "new", NotBefore: now, NotAfter: now.Add(year)}},
		{Kind: EventVerified},
		{Kind: EventSwitched},
	}
	states := []*State{s}
	for _, ev := range evs {
		s = mustNext(t, m, s, ev, now)
		states = append(states, s)
	}
	return states
}

func TestNextHappyPath(t *testing.T) {
	m := Machine{GracePeriod: time.Hour}
	now := t0.Add(300 * day)
	states := happy(t, m, idleState(), now)
	var phases []Phase
	for _, s := range states {
		phases = append(phases, s.Phase)
	}
	want := []Phase{PhaseIdle, PhaseStarted, PhaseKeyGenerated, PhaseCSRSubmitted, PhaseIssued, PhaseVerified, PhaseCommitted}
	if !reflect.DeepEqual(phases, want) {
		t.Fatalf("phases %v, want %v", phases, want)
	}
	started := states[1]
	if started.Serial != 1 || started.Pending.KeyURI != "file:/k/device-new.pem" || started.Trigger.JobID != "job-1" || !started.Trigger.At.Equal(now) {
		t.Errorf("started: %+v %+v %+v", started, started.Pending, started.Trigger)
	}
	issued := states[4]
	if issued.Pending.KeyURI != "file:/k/device-new.pem" || issued.Pending.CertificateID != "new" {
		t.Errorf("issued pending %+v: the key URI must survive the certificate's arrival", issued.Pending)
	}
	c := states[6]
	if c.Current.CertificateID != "new" || c.Pending != nil {
		t.Errorf("committed: current %+v pending %+v", c.Current, c.Pending)
	}
	if len(c.Previous) != 1 || c.Previous[0].CertificateID != "old" || !c.Previous[0].RetireAt.IsZero() {
		t.Errorf("committed: previous %+v; the old identity must wait, undated, until the cloud is told", c.Previous)
	}
	if r := c.LastResult; r == nil || r.Outcome != Succeeded || r.OldCertificateID != "old" || r.NewCertificateID != "new" {
		t.Errorf("committed result %+v", c.LastResult)
	}

	later := now.Add(time.Minute)
	idle := mustNext(t, m, c, Event{Kind: EventReported}, later)
	if idle.Phase != PhaseIdle || idle.Trigger != nil || idle.CSR != "" || idle.Failures != 0 {
		t.Errorf("after report: %+v", idle)
	}
	if !idle.Previous[0].RetireAt.Equal(later.Add(time.Hour)) {
		t.Errorf("retire at %s, want report time + grace", idle.Previous[0].RetireAt)
	}
	if a := ActionFor(idle, later.Add(59*time.Minute)); a != ActNone {
		t.Errorf("within grace: %s", a)
	}
	if a := ActionFor(idle, later.Add(time.Hour)); a != ActRetire {
		t.Errorf("after grace: %s", a)
	}
	done := mustNext(t, m, idle, Event{Kind: EventRetired, CertificateID: "old"}, later.Add(time.Hour))
	if len(done.Previous) != 0 {
		t.Errorf("previous after retire: %+v", done.Previous)
	}
	if len(done.Journal) != 8 {
		t.Errorf("journal has %d entries, want 8: %+v", len(done.Journal), done.Journal)
	}
}

func TestNextDoesNotChangeItsInput(t *testing.T) {
	m := Machine{}
	s := idleState()
	before, _ := json.Marshal(s)
	states := happy(t, m, s, t0)
	for i, st := range states[:len(states)-1] {
		if st == states[i+1] {
			t.Fatalf("Next returned its input at step %d", i)
		}
	}
	after, _ := json.Marshal(s)
	if string(before) != string(after) {
		t.Errorf("input changed:\n%s\n%s", before, after)
	}
}

func TestNextFailures(t *testing.T) {
	m := Machine{}
	now := t0.Add(300 * day)
	states := happy(t, m, idleState(), now)
	for _, s := range states[1:6] { // Started .. Verified
		t.Run(string(s.Phase), func(t *testing.T) {
			// Transient: same phase, one more attempt, a retry time.
			n := mustNext(t, m, s, Event{Kind: EventFailed, Err: NewTransient("op", errors.New("timeout"), 0)}, now)
			if n.Phase != s.Phase || n.Attempt != 1 || !n.NextRetry.After(now) || n.LastError == "" {
				t.Errorf("transient: phase %s attempt %d retry %s", n.Phase, n.Attempt, n.NextRetry)
			}
			if ActionFor(n, now) != ActWait || ActionFor(n, n.NextRetry) == ActWait {
				t.Errorf("actions around the retry: %s, %s", ActionFor(n, now), ActionFor(n, n.NextRetry))
			}
			// A throttling hint is honoured.
			h := mustNext(t, m, s, Event{Kind: EventFailed, Err: NewTransient("op", errors.New("throttled"), time.Hour)}, now)
			if h.NextRetry.Before(now.Add(time.Hour)) {
				t.Errorf("throttled: retry at %s, before the hint", h.NextRetry)
			}
			// Fatal: rolled back, result recorded, the current identity kept.
			f := mustNext(t, m, s, Event{Kind: EventFailed, Err: NewFatal("op", errors.New("rejected"))}, now)
			if f.Phase != PhaseRolledBack || f.Failures != 1 || f.Current.CertificateID != "old" {
				t.Errorf("fatal: %+v", f)
			}
			if r := f.LastResult; r == nil || r.Outcome != RolledBack || r.Phase != s.Phase || !strings.Contains(r.Error, "rejected") {
				t.Errorf("fatal result: %+v", f.LastResult)
			}
			if ActionFor(f, now) != ActCleanup {
				t.Errorf("after rollback: %s", ActionFor(f, now))
			}
			i := mustNext(t, m, f, Event{Kind: EventCleanedUp}, now)
			if i.Phase != PhaseIdle || i.Pending != nil || i.Current.CertificateID != "old" || !i.NextRetry.After(now) {
				t.Errorf("after cleanup: %+v", i)
			}
			// Cancellation is nothing: the state stays.
			c := mustNext(t, m, s, Event{Kind: EventFailed, Err: context.Canceled}, now)
			if c.Phase != s.Phase || c.Attempt != 0 {
				t.Errorf("cancelled: %+v", c)
			}
		})
	}
	committed := states[6]
	f := mustNext(t, m, committed, Event{Kind: EventFailed, Err: NewFatal("job update", errors.New("TerminalStateReached"))}, now)
	if f.Phase != PhaseIdle || f.Current.CertificateID != "new" || !strings.Contains(f.LastResult.Note, "TerminalStateReached") || f.Previous[0].RetireAt.IsZero() {
		t.Errorf("a fatal report failure must not undo a committed rotation: %+v %+v", f, f.LastResult)
	}
	tr := mustNext(t, m, committed, Event{Kind: EventFailed, Err: errors.New("connection lost")}, now)
	if tr.Phase != PhaseCommitted || tr.Attempt != 1 {
		t.Errorf("a transient report failure retries: %+v", tr)
	}
}

func TestNextStartRules(t *testing.T) {
	m := Machine{}
	if _, err := m.Next(&State{}, Event{Kind: EventStart, KeyURI: "file:/k/x.pem"}, t0); !errors.Is(err, ErrNoIdentity) {
		t.Errorf("start without identity: %v", err)
	}
	s := mustNext(t, m, idleState(), Event{Kind: EventStart, Trigger: Trigger{Kind: TriggerTime}, KeyURI: "file:/k/a.pem"}, t0)
	if _, err := m.Next(s, Event{Kind: EventStart, Trigger: Trigger{Kind: TriggerOperator}, KeyURI: "file:/k/b.pem"}, t0); !errors.Is(err, ErrInProgress) {
		t.Errorf("second start: %v", err)
	}
	j := mustNext(t, m, s, Event{Kind: EventStart, Trigger: Trigger{Kind: TriggerJob, JobID: "j9"}, KeyURI: "file:/k/b.pem"}, t0)
	if j.Phase != PhaseStarted || j.Trigger.JobID != "j9" || j.Pending.KeyURI != "file:/k/a.pem" || j.Serial != 1 {
		t.Errorf("a job joining a rotation: %+v %+v", j, j.Trigger)
	}
	if _, err := m.Next(s, Event{Kind: EventVerified}, t0); !errors.Is(err, ErrUnexpectedEvent) {
		t.Errorf("out-of-order event: %v", err)
	}
}

func TestClaimIsNeverRetired(t *testing.T) {
	m := Machine{}
	s := idleState()
	s.Current.Claim = true
	states := happy(t, m, s, t0)
	c := states[len(states)-1]
	if len(c.Previous) != 0 {
		t.Errorf("the claim identity was queued for deletion: %+v", c.Previous)
	}
}

func TestRetireFailure(t *testing.T) {
	m := Machine{}
	s := idleState()
	s.Previous = []Retiring{{IdentityRecord: IdentityRecord{KeyURI: "pkcs11:object=old", CertificateID: "p"}, RetireAt: t0}}
	n := mustNext(t, m, s, Event{Kind: EventFailed, CertificateID: "p", Err: errors.New("token busy")}, t0)
	if len(n.Previous) != 1 || !n.Previous[0].RetireAt.After(t0) || n.Previous[0].Attempts != 1 {
		t.Errorf("transient retire failure: %+v", n.Previous)
	}
	g := mustNext(t, m, s, Event{Kind: EventFailed, CertificateID: "p", Err: NewFatal("delete", errors.New("not in this store"))}, t0)
	if len(g.Previous) != 0 || !strings.Contains(g.Journal[len(g.Journal)-1].Note, "gave up") {
		t.Errorf("fatal retire failure: %+v %+v", g.Previous, g.Journal)
	}
}

func TestActionForEveryPhase(t *testing.T) {
	want := map[Phase]Action{
		PhaseStarted: ActGenerateKey, PhaseKeyGenerated: ActMakeCSR, PhaseCSRSubmitted: ActSubmit,
		PhaseIssued: ActVerify, PhaseVerified: ActSwitch, PhaseCommitted: ActReport, PhaseRolledBack: ActCleanup, PhaseIdle: ActNone,
	}
	for _, p := range Phases() {
		if got := ActionFor(&State{Phase: p}, t0); got != want[p] {
			t.Errorf("%s: %s, want %s", p, got, want[p])
		}
	}
}

func TestJournalIsBounded(t *testing.T) {
	m := Machine{JournalLimit: 5}
	s := idleState()
	for range 4 {
		states := happy(t, m, s, t0)
		s = mustNext(t, m, states[len(states)-1], Event{Kind: EventReported}, t0)
	}
	if len(s.Journal) != 5 || s.Journal[4].Event != EventReported {
		t.Errorf("journal: %+v", s.Journal)
	}
}

func TestKeyName(t *testing.T) {
	if got := (Machine{}).KeyName(7, time.Date(2026, 3, 1, 12, 0, 5, 0, time.FixedZone("x", 3600)), "3f9a1c"); got != "device-20260301T110005Z-7-3f9a1c" {
		t.Errorf("KeyName = %s", got)
	}
}

// A key URI with a PIN never reaches the journal or the last result: the
// note of a key retirement given up, and a failure's message, go through
// keystore.RedactURI.
func TestMachineNotesCarryNoPIN(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	const uri = "pkcs11:token=T;object=device-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=s3cr3t#42"
	cur := &IdentityRecord{KeyURI: "pkcs11:token=T;object=device-2?module-path=/m.so", CertFile: "certs/b.pem", CertificateID: "bb"}
	s := &State{Version: 1, Phase: PhaseIdle, Current: cur, Previous: []Retiring{{IdentityRecord: IdentityRecord{KeyURI: uri, CertificateID: "aa"}, RetireAt: now}}}
	m := Machine{GracePeriod: time.Hour}
	n, err := m.Next(s, Event{Kind: EventFailed, CertificateID: "aa", Err: fmt.Errorf("deleting %s: %w", uri, ErrFatal)}, now)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(n.Journal)
	if strings.Contains(string(b), "s3cr3t") || strings.Contains(string(b), "#42") || !strings.Contains(string(b), "pin-value=REDACTED") {
		t.Fatalf("journal: %s", b)
	}
	// A rotation failing with the PIN in its error.
	s = &State{Version: 1, Phase: PhaseCSRSubmitted, Current: cur, Pending: &IdentityRecord{KeyURI: "pkcs11:token=T;object=device-3?module-path=/m.so"},
		Trigger: &Trigger{Kind: TriggerOperator, At: now}, CSR: "x", Serial: 3}
	n, err = m.Next(s, Event{Kind: EventFailed, Err: fmt.Errorf("opening %s: %w", uri, ErrFatal)}, now)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = json.Marshal(n)
	if strings.Contains(string(b), "s3cr3t") {
		t.Fatalf("state after a failure: %s", b)
	}
}
