package rotation

import (
	"time"
)

// Phase is where a rotation stands. Each phase names what is already true on
// disk and in the cloud, so a restart knows what is left to do.
type Phase string

// The phases, in order. RolledBack can follow any phase from Started to
// Verified.
const (
	// Idle: the current identity is in use; nothing is pending.
	PhaseIdle Phase = "idle"
	// Started: a rotation was asked for and the new key's URI chosen; the key
	// may or may not exist yet.
	PhaseStarted Phase = "started"
	// KeyGenerated: the new key exists in the store.
	PhaseKeyGenerated Phase = "key-generated"
	// CSRSubmitted: the CSR is made and saved; it may have reached the issuer.
	PhaseCSRSubmitted Phase = "csr-submitted"
	// Issued: the issuer's certificate is saved in the state folder.
	PhaseIssued Phase = "issued"
	// Verified: the certificate passed every check; the connection is about to
	// move to the new identity (or has, if the process stopped during the move).
	PhaseVerified Phase = "verified"
	// Committed: the new identity connected and the cloud confirmed it; it is
	// the current identity. The cloud is about to be told (a job's SUCCEEDED).
	PhaseCommitted Phase = "committed"
	// RolledBack: the rotation failed; the pending key and certificate are
	// about to be deleted and the failure reported. The current identity never
	// changed.
	PhaseRolledBack Phase = "rolled-back"
)

// Phases lists every phase in order, RolledBack last.
func Phases() []Phase {
	return []Phase{PhaseIdle, PhaseStarted, PhaseKeyGenerated, PhaseCSRSubmitted, PhaseIssued, PhaseVerified, PhaseCommitted, PhaseRolledBack}
}

// IdentityRecord names an identity on disk: where its key and certificate are.
type IdentityRecord struct {
	// KeyURI opens the private key (keystore URI).
	KeyURI string `json:"key_uri"`
	// CertFile is the PEM certificate chain, leaf first; empty until issued.
	CertFile string `json:"cert_file,omitempty"`
	// CertificateID is AWS IoT's name for the certificate.
	CertificateID string `json:"certificate_id,omitempty"`
	// Subject, NotBefore and NotAfter are the certificate's, kept here so that
	// status and the renewal policy need neither the file nor the key.
	Subject   string    `json:"subject,omitempty"`
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	// ThingName is the thing the certificate is registered to, if known.
	ThingName string `json:"thing_name,omitempty"`
	// Claim marks a claim identity: it is used only to provision, is never
	// renewed, and its key and certificate are never deleted by rotation.
	Claim bool `json:"claim,omitempty"`
}

// Retiring is a replaced identity kept for a grace period before its key and
// certificate file are deleted.
type Retiring struct {
	IdentityRecord
	// RetireAt is when it may be deleted; zero until the cloud has been told
	// of its replacement.
	RetireAt time.Time `json:"retire_at,omitzero"`
	// Attempts counts failed deletions.
	Attempts int `json:"attempts,omitempty"`
}

// TriggerKind says who asked for a rotation.
type TriggerKind string

// The triggers.
const (
	TriggerTime      TriggerKind = "time"      // the renewal policy
	TriggerJob       TriggerKind = "job"       // an AWS IoT job
	TriggerOperator  TriggerKind = "operator"  // `thingcert rotate`
	TriggerProvision TriggerKind = "provision" // provisioning by claim
)

// Trigger is why a rotation runs.
type Trigger struct {
	Kind TriggerKind `json:"kind"`
	// JobID is the job to report to, for TriggerJob (and for any rotation a
	// job joined while it ran).
	JobID string `json:"job_id,omitempty"`
	// Reason is the policy's reason or the operator's words.
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// String is the trigger in words: "job 7f3a (rotate-certificate)".
func (t Trigger) String() string {
	s := string(t.Kind)
	if t.JobID != "" {
		s += " " + t.JobID
	}
	if t.Reason != "" {
		s += " (" + t.Reason + ")"
	}
	return s
}

// Outcome is how a rotation ended.
type Outcome string

// The outcomes.
const (
	Succeeded  Outcome = "succeeded"
	RolledBack Outcome = "rolled-back"
)

// Result is the end of the last rotation.
type Result struct {
	At      time.Time `json:"at"`
	Outcome Outcome   `json:"outcome"`
	Trigger Trigger   `json:"trigger"`
	// Serial is the rotation's number (State.Serial when it ran).
	Serial int `json:"serial"`
	// Phase is where it ended (for a rollback: the phase that failed).
	Phase            Phase  `json:"phase"`
	OldCertificateID string `json:"old_certificate_id,omitempty"`
	NewCertificateID string `json:"new_certificate_id,omitempty"`
	// Error is what went wrong, for a rollback.
	Error string `json:"error,omitempty"`
	// Note is anything else worth knowing (a report that could not be sent).
	Note string `json:"note,omitempty"`
}

// Entry is one line of the journal: a transition, or a failed attempt that
// stayed in its phase.
type Entry struct {
	At    time.Time `json:"at"`
	From  Phase     `json:"from"`
	To    Phase     `json:"to"`
	Event EventKind `json:"event"`
	Note  string    `json:"note,omitempty"`
}

// StateVersion is the format of the state file this code writes.
const StateVersion = 1

// State is everything the device knows about its identity, persisted as JSON
// in the state folder before every action.
type State struct {
	Version int   `json:"version"`
	Phase   Phase `json:"phase"`
	// Current is the identity the device connects with.
	Current *IdentityRecord `json:"current,omitempty"`
	// Pending is the identity being made, from Started to Verified.
	Pending *IdentityRecord `json:"pending,omitempty"`
	// Previous are replaced identities awaiting deletion.
	Previous []Retiring `json:"previous,omitempty"`
	// Trigger is why the rotation in progress runs.
	Trigger *Trigger `json:"trigger,omitempty"`
	// CSR is the request (PEM) from CSRSubmitted on: a restart re-sends the same
	// one rather than signing again.
	CSR string `json:"csr,omitempty"`
	// Serial counts rotations started; it names new keys.
	Serial int `json:"serial"`
	// Attempt counts failed attempts at the current phase's action.
	Attempt int `json:"attempt,omitempty"`
	// Failures counts rotations that rolled back in a row; it spaces the next
	// time-triggered rotation.
	Failures int `json:"failures,omitempty"`
	// NextRetry is the earliest time to act again: a retry of the current
	// phase, or in Idle the next rotation after a rollback.
	NextRetry time.Time `json:"next_retry,omitzero"`
	// LastError is the last failed attempt's error, while it is being retried.
	LastError string `json:"last_error,omitempty"`
	// LastResult is how the last rotation ended.
	LastResult *Result `json:"last_result,omitempty"`
	// Journal is the recent history, oldest first.
	Journal []Entry `json:"journal,omitempty"`
}

// InProgress reports whether a rotation is under way.
func (s *State) InProgress() bool { return s.Phase != PhaseIdle && s.Phase != "" }

// Clone is a deep copy, so Next never changes its input.
func (s *State) Clone() *State {
	c := *s
	c.Current = cloneRecord(s.Current)
	c.Pending = cloneRecord(s.Pending)
	c.Previous = append([]Retiring(nil), s.Previous...)
	if s.Trigger != nil {
		t := *s.Trigger
		c.Trigger = &t
	}
	if s.LastResult != nil {
		r := *s.LastResult
		c.LastResult = &r
	}
	c.Journal = append([]Entry(nil), s.Journal...)
	return &c
}

func cloneRecord(r *IdentityRecord) *IdentityRecord {
	if r == nil {
		return nil
	}
	c := *r
	return &c
}
