package rotation

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/thingcert/thingcert/keystore"
)

// Machine holds the settings of the state machine. Its Next is pure: the
// same state, event and clock always give the same new state. The zero value
// is ready to use.
type Machine struct {
	// Backoff spaces retries of a failed step, and new rotations after one
	// rolled back.
	Backoff Backoff
	// GracePeriod is how long a replaced key and certificate are kept after the
	// cloud was told of the new one, before they are deleted (a way back if the
	// new identity turns out bad in a way the confirmation did not catch).
	// Zero means 24 h (DefaultGracePeriod); negative deletes them at once.
	GracePeriod time.Duration
	// KeyPrefix starts the name of every new key; zero means "device".
	KeyPrefix string
	// JournalLimit is how many journal entries are kept; zero means 100.
	JournalLimit int
}

// Defaults of the zero Machine.
const (
	DefaultGracePeriod  = 24 * time.Hour
	DefaultKeyPrefix    = "device"
	defaultJournalLimit = 100
)

func (m Machine) grace() time.Duration {
	switch {
	case m.GracePeriod < 0:
		return 0
	case m.GracePeriod == 0:
		return DefaultGracePeriod
	}
	return m.GracePeriod
}

// KeyName is the name of the key a rotation with this serial makes, started
// at now: device-20260301T120000Z-7-3f9a1c. A new name for every key means a
// new key never replaces an old one in its store: the serial keeps two
// rotations of one device apart, and the nonce (random, chosen once and saved
// with the name) two devices or configurations that share a store, such as
// one PKCS#11 token.
func (m Machine) KeyName(serial int, now time.Time, nonce string) string {
	p := m.KeyPrefix
	if p == "" {
		p = DefaultKeyPrefix
	}
	n := p + "-" + now.UTC().Format("20060102T150405Z") + "-" + strconv.Itoa(serial)
	if nonce != "" {
		n += "-" + nonce
	}
	return n
}

// EventKind names what happened.
type EventKind string

// The events. Each phase but Idle expects the one its action produces, or
// EventFailed.
const (
	EventStart     EventKind = "start"      // Idle → Started (Trigger, KeyURI)
	EventKeyReady  EventKind = "key-ready"  // Started → KeyGenerated
	EventCSRMade   EventKind = "csr-made"   // KeyGenerated → CSRSubmitted (CSR)
	EventIssued    EventKind = "issued"     // CSRSubmitted → Issued (Cert)
	EventVerified  EventKind = "verified"   // Issued → Verified
	EventSwitched  EventKind = "switched"   // Verified → Committed
	EventReported  EventKind = "reported"   // Committed → Idle (Note)
	EventCleanedUp EventKind = "cleaned-up" // RolledBack → Idle (Note)
	EventRetired   EventKind = "retired"    // Idle → Idle, one fewer Previous (CertificateID)
	EventRecover   EventKind = "recover"    // Idle → Idle, the claim (Cert) current again; the refused identity retires
	EventFailed    EventKind = "failed"     // an action failed (Err; CertificateID for a retirement)
)

// Event is the outcome of an action, or a request to start.
type Event struct {
	Kind EventKind
	// Trigger and KeyURI start a rotation: why, and the new key's URI (from the
	// store's KeyURI of Machine.KeyName).
	Trigger Trigger
	KeyURI  string
	// CSR is the PEM request, for EventCSRMade.
	CSR string
	// Cert describes the issued certificate, for EventIssued.
	Cert *IdentityRecord
	// CertificateID names the retired (or failed to retire) previous identity.
	CertificateID string
	// Err is the failure, for EventFailed; Classify decides what follows.
	Err error
	// Note is added to the journal and the result.
	Note string
}

// Errors of Next.
var (
	// ErrInProgress: a rotation was asked for while one runs; it is resumed
	// rather than restarted.
	ErrInProgress = errors.New("a rotation is already in progress")
	// ErrNoIdentity: there is nothing to rotate; provision first.
	ErrNoIdentity = errors.New("no current identity")
	// ErrUnexpectedEvent: the event does not belong to the phase (a bug).
	ErrUnexpectedEvent = errors.New("unexpected event")
)

// Next is the new state after ev at now. It never changes s. An event a phase
// does not expect is an error and leaves the state as it was.
func (m Machine) Next(s *State, ev Event, now time.Time) (*State, error) {
	n := s.Clone()
	if n.Version == 0 {
		n.Version = StateVersion
	}
	if n.Phase == "" {
		n.Phase = PhaseIdle
	}
	from := n.Phase
	unexpected := func() (*State, error) {
		return s, fmt.Errorf("rotation: %w %q in phase %s", ErrUnexpectedEvent, ev.Kind, from)
	}

	if ev.Kind == EventFailed {
		return m.failed(n, ev, now)
	}
	switch from {
	case PhaseIdle:
		switch ev.Kind {
		case EventStart:
			if n.Current == nil {
				return s, fmt.Errorf("rotation: cannot rotate: %w; provision the device first", ErrNoIdentity)
			}
			if ev.KeyURI == "" {
				return s, errors.New("rotation: start without a key URI for the new key")
			}
			t := ev.Trigger
			if t.At.IsZero() {
				t.At = now
			}
			n.Serial++
			n.Trigger = &t
			n.Pending = &IdentityRecord{KeyURI: ev.KeyURI}
			n.CSR = ""
			m.enter(n, PhaseStarted, ev, now, t.String())
			return n, nil
		case EventRecover:
			if ev.Cert == nil || !ev.Cert.Claim {
				return s, errors.New("rotation: recovery needs the claim identity")
			}
			if n.Current != nil && !n.Current.Claim {
				// Kept for the grace period, in case the refusal was a passing
				// misconfiguration in the cloud rather than a revocation.
				n.Previous = append(n.Previous, Retiring{IdentityRecord: *n.Current, RetireAt: now.Add(m.grace())})
			}
			c := *ev.Cert
			n.Current = &c
			m.log(n, from, from, ev, now, "the device's identity was refused; back to the claim to provision again: "+ev.Note)
			return n, nil
		case EventRetired:
			i := n.previousIndex(ev.CertificateID)
			if i < 0 {
				return unexpected()
			}
			n.Previous = slices.Delete(n.Previous, i, i+1)
			m.log(n, from, from, ev, now, "deleted key and certificate "+short(ev.CertificateID))
			return n, nil
		}
		return unexpected()
	case PhaseStarted:
		if ev.Kind == EventKeyReady {
			m.enter(n, PhaseKeyGenerated, ev, now, "")
			return n, nil
		}
	case PhaseKeyGenerated:
		if ev.Kind == EventCSRMade && ev.CSR != "" {
			n.CSR = ev.CSR
			m.enter(n, PhaseCSRSubmitted, ev, now, "")
			return n, nil
		}
	case PhaseCSRSubmitted:
		if ev.Kind == EventIssued && ev.Cert != nil && ev.Cert.CertFile != "" {
			c := *ev.Cert
			c.KeyURI = n.Pending.KeyURI
			n.Pending = &c
			m.enter(n, PhaseIssued, ev, now, "certificate "+short(c.CertificateID))
			return n, nil
		}
	case PhaseIssued:
		if ev.Kind == EventVerified {
			m.enter(n, PhaseVerified, ev, now, "")
			return n, nil
		}
	case PhaseVerified:
		if ev.Kind == EventSwitched {
			old := n.Current
			n.Current = n.Pending
			n.Pending = nil
			if !old.Claim {
				n.Previous = append(n.Previous, Retiring{IdentityRecord: *old})
			}
			n.LastResult = &Result{At: now, Outcome: Succeeded, Trigger: *n.Trigger, Phase: PhaseCommitted, Serial: n.Serial,
				OldCertificateID: old.CertificateID, NewCertificateID: n.Current.CertificateID}
			m.enter(n, PhaseCommitted, ev, now, "now using certificate "+short(n.Current.CertificateID))
			return n, nil
		}
	case PhaseCommitted:
		if ev.Kind == EventReported {
			for i := range n.Previous {
				if n.Previous[i].RetireAt.IsZero() {
					n.Previous[i].RetireAt = now.Add(m.grace())
				}
			}
			if ev.Note != "" && n.LastResult != nil {
				n.LastResult.Note = ev.Note
			}
			m.finish(n, ev, now)
			n.Failures = 0
			n.NextRetry = time.Time{}
			return n, nil
		}
	case PhaseRolledBack:
		if ev.Kind == EventCleanedUp {
			if ev.Note != "" && n.LastResult != nil {
				n.LastResult.Note = ev.Note
			}
			m.finish(n, ev, now)
			n.NextRetry = now.Add(m.Backoff.Delay(Retry{Failures: n.Failures, Remaining: n.remaining(now), Random: m.random(n)}))
			return n, nil
		}
	}
	if ev.Kind == EventStart {
		if ev.Trigger.Kind == TriggerJob && ev.Trigger.JobID != "" && n.Trigger != nil && n.Trigger.JobID == "" {
			// A job asked for what is already under way: report to it when it ends.
			n.Trigger.JobID = ev.Trigger.JobID
			m.log(n, from, from, ev, now, "job "+ev.Trigger.JobID+" joined the rotation in progress")
			return n, nil
		}
		return s, fmt.Errorf("rotation: %w (phase %s, started %s by %s); it resumes where it stopped", ErrInProgress, from, n.Trigger.At.UTC().Format(time.RFC3339), n.Trigger.Kind)
	}
	return unexpected()
}

// failed applies EventFailed: a retry after a backoff, a rollback, or (where
// rolling back is not possible any more) a note.
func (m Machine) failed(n *State, ev Event, now time.Time) (*State, error) {
	from := n.Phase
	class, hint := Classify(ev.Err)
	msg := "unknown error"
	if ev.Err != nil {
		// The message goes into the journal, the last result and the
		// failure reported to a job: a key URI in it loses its PIN.
		msg = keystore.RedactURI(ev.Err.Error())
	}
	if class == Stopped {
		return n, nil
	}
	if from == PhaseIdle {
		// Only retirement acts in Idle.
		i := n.previousIndex(ev.CertificateID)
		if i < 0 {
			return n, fmt.Errorf("rotation: %w: failure in phase idle names no previous identity", ErrUnexpectedEvent)
		}
		if class == Fatal {
			m.log(n, from, from, ev, now, "gave up deleting key "+keystore.RedactURI(n.Previous[i].KeyURI)+": "+msg)
			n.Previous = slices.Delete(n.Previous, i, i+1)
			return n, nil
		}
		n.Previous[i].Attempts++
		n.Previous[i].RetireAt = now.Add(m.Backoff.Delay(Retry{Failures: n.Previous[i].Attempts, Hint: hint, Remaining: -1, Random: m.random(n)}))
		m.log(n, from, from, ev, now, "deleting old key failed, retrying: "+msg)
		return n, nil
	}
	if class == Transient || from == PhaseCommitted || from == PhaseRolledBack {
		if class == Fatal {
			// Committed: the new identity is in use and cannot be undone by a
			// failed report. RolledBack: the cleanup cannot be completed. Either
			// way the device is fine; say so and go back to Idle.
			note := "could not report to the cloud: " + msg
			if from == PhaseRolledBack {
				note = "could not clean up after the rollback: " + msg
			}
			if from == PhaseCommitted {
				for i := range n.Previous {
					if n.Previous[i].RetireAt.IsZero() {
						n.Previous[i].RetireAt = now.Add(m.grace())
					}
				}
				n.Failures = 0
				n.NextRetry = time.Time{}
			}
			if n.LastResult != nil {
				n.LastResult.Note = note
			}
			m.finish(n, ev, now)
			return n, nil
		}
		n.Attempt++
		n.LastError = msg
		n.NextRetry = now.Add(m.Backoff.Delay(Retry{Failures: n.Attempt, Hint: hint, Remaining: n.remaining(now), Random: m.random(n)}))
		m.log(n, from, from, ev, now, fmt.Sprintf("attempt %d failed (%s), retry at %s: %s", n.Attempt, class, n.NextRetry.UTC().Format(time.RFC3339), msg))
		return n, nil
	}
	n.Failures++
	n.LastResult = &Result{At: now, Outcome: RolledBack, Trigger: *n.Trigger, Phase: from, Error: msg, Serial: n.Serial}
	if n.Current != nil {
		n.LastResult.OldCertificateID = n.Current.CertificateID
	}
	n.LastError = msg
	m.enter(n, PhaseRolledBack, ev, now, msg)
	return n, nil
}

// enter moves to phase p: a fresh phase has no failed attempts yet.
func (m Machine) enter(n *State, p Phase, ev Event, now time.Time, note string) {
	from := n.Phase
	n.Phase = p
	n.Attempt = 0
	n.NextRetry = time.Time{}
	n.LastError = ""
	m.log(n, from, p, ev, now, note)
}

// finish ends a rotation: back to Idle with nothing pending.
func (m Machine) finish(n *State, ev Event, now time.Time) {
	note := ev.Note
	m.enter(n, PhaseIdle, ev, now, note)
	n.Pending = nil
	n.Trigger = nil
	n.CSR = ""
}

func (m Machine) log(n *State, from, to Phase, ev Event, now time.Time, note string) {
	limit := m.JournalLimit
	if limit <= 0 {
		limit = defaultJournalLimit
	}
	n.Journal = append(n.Journal, Entry{At: now, From: from, To: to, Event: ev.Kind, Note: trimSpace(keystore.RedactURI(note))})
	if len(n.Journal) > limit {
		n.Journal = slices.Clone(n.Journal[len(n.Journal)-limit:])
	}
}

// random is this device's jitter for the next backoff: derived from its
// certificate, the rotation and the attempt, so it differs across a fleet and
// keeps Next pure.
func (m Machine) random(n *State) float64 {
	id := ""
	if n.Current != nil {
		id = n.Current.CertificateID + n.Current.KeyURI
	}
	return seedFraction(fmt.Sprintf("%s/%d/%d/%d/%s", id, n.Serial, n.Attempt, n.Failures, n.Phase))
}

// remaining is how long the current certificate stays valid.
func (s *State) remaining(now time.Time) time.Duration {
	if s.Current == nil || s.Current.NotAfter.IsZero() {
		return 0
	}
	return s.Current.NotAfter.Sub(now)
}

func (s *State) previousIndex(certID string) int {
	for i, p := range s.Previous {
		if p.CertificateID == certID {
			return i
		}
	}
	return -1
}

// Action is what the runner does next.
type Action string

// The actions.
const (
	ActNone        Action = "none"         // nothing to do
	ActWait        Action = "wait"         // wait until State.NextRetry
	ActGenerateKey Action = "generate-key" // Started: make (or reopen) the pending key
	ActMakeCSR     Action = "make-csr"     // KeyGenerated: sign the CSR
	ActSubmit      Action = "submit-csr"   // CSRSubmitted: ask the issuer, save the certificate
	ActVerify      Action = "verify"       // Issued: check the certificate
	ActSwitch      Action = "switch"       // Verified: connect with the new identity and confirm
	ActReport      Action = "report"       // Committed: tell the cloud
	ActCleanup     Action = "clean-up"     // RolledBack: delete the pending key and certificate, report
	ActRetire      Action = "retire"       // Idle: delete a previous identity whose grace period is over
)

// ActionFor is what to do in state s at now. It is how a restart resumes:
// the action of the persisted phase is simply done (again).
func ActionFor(s *State, now time.Time) Action {
	if !s.InProgress() {
		for _, p := range s.Previous {
			if !p.RetireAt.IsZero() && !now.Before(p.RetireAt) {
				return ActRetire
			}
		}
		return ActNone
	}
	if now.Before(s.NextRetry) {
		return ActWait
	}
	switch s.Phase {
	case PhaseStarted:
		return ActGenerateKey
	case PhaseKeyGenerated:
		return ActMakeCSR
	case PhaseCSRSubmitted:
		return ActSubmit
	case PhaseIssued:
		return ActVerify
	case PhaseVerified:
		return ActSwitch
	case PhaseCommitted:
		return ActReport
	case PhaseRolledBack:
		return ActCleanup
	}
	return ActNone
}

// WakeAt is the next time something is due in s without an outside event: a
// retry or a retirement (now, if one is due already). Zero if nothing is
// scheduled. A daemon sleeps until the earlier of this and the policy's
// renewal time.
func (s *State) WakeAt(now time.Time) time.Time {
	if s.InProgress() && !now.Before(s.NextRetry) {
		return now
	}
	var t time.Time
	earlier := func(u time.Time) {
		if !u.IsZero() && (t.IsZero() || u.Before(t)) {
			t = u
		}
	}
	if s.InProgress() {
		earlier(s.NextRetry)
	}
	for _, p := range s.Previous {
		earlier(p.RetireAt)
	}
	if !t.IsZero() && t.Before(now) {
		return now
	}
	return t
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func trimSpace(s string) string {
	for len(s) > 0 && s[len(s)-1] == ' ' {
		s = s[:len(s)-1]
	}
	return s
}

// Durability is how a new state is recorded before the runner goes on.
type Durability int

// The ways of recording a state, cheapest first.
const (
	// InMemory: not written. The next action is local (signing a CSR,
	// checking a certificate) or one whose repetition is harmless (deleting a
	// replaced key), so a process that dies here restarts from the last
	// written state and does the same work again.
	InMemory Durability = iota
	// Written: state.json is replaced (the new content synced first, so a
	// power cut never leaves a torn file) but the folder is not synced, so a
	// power cut may bring back the state saved before it. For a run that ends
	// or waits here: other processes (status, a restart after a kill) read it,
	// and losing it only repeats work (see Needs).
	Written
	// Durable: synced, then renamed, then the folder synced: a power cut
	// leaves this state or a later one.
	Durable
)

func (d Durability) String() string {
	switch d {
	case InMemory:
		return "in memory"
	case Written:
		return "written"
	}
	return "durable"
}

// Needs is how the state must be recorded before act is done. The rule: a
// state must be durable before an action whose effect outside the process a
// restart from the previous durable state would get wrong —
//
//   - generating the key (a store keeps it; without the durable name a power
//     cut would leave a key nobody owns),
//   - sending the CSR (the same request is sent again after a restart, never
//     one signed anew),
//   - using the new certificate (the switch; after a power cut the device
//     knows which certificate it tried, rather than asking for another one),
//   - telling the cloud the rotation succeeded (the cloud then deactivates
//     the old certificate: the device must never come back on it), and
//   - cleaning up after a rollback (deleting the new key, reporting FAILED).
//
// Every other action is local (a CSR signed, a certificate checked) or
// harmless to repeat from the previous durable state (deleting a replaced key:
// it is in Previous only once a durable Committed or a durable recovery put it
// there, and deleting a missing key is success). Ending or waiting needs the
// state written, not durable: a power cut brings back the previous durable
// state, whose action is then done again — a report the cloud already has, a
// cleanup already done, a deletion already done, a retry counted once less.
func Needs(act Action) Durability {
	switch act {
	case ActGenerateKey, ActSubmit, ActSwitch, ActReport, ActCleanup:
		return Durable
	case ActMakeCSR, ActVerify, ActRetire:
		return InMemory
	}
	return Written
}
