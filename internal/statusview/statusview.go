// Package statusview is the health of a device's identity as `thingcert status`
// shows it, read from the configuration, the state folder and the clock.
package statusview

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/thingcert/thingcert/agent"
	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/internal/humanize"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

// Status is the health of a device's identity, as `thingcert status` shows
// it. It is made from the configuration, the state folder and the clock only.
type Status struct {
	Now       time.Time `json:"now"`
	ThingName string    `json:"thing_name"`
	Endpoint  string    `json:"endpoint"`
	ClientID  string    `json:"client_id"`
	StateDir  string    `json:"state_dir"`
	// Config is the configuration file; ConfigError why it does not load
	// (the status then comes from the state folder and the agent's record
	// alone, and has no renewal: the policy is in the file).
	Config      string `json:"config,omitempty"`
	ConfigError string `json:"config_error,omitempty"`
	// StateDirFrom says how the state folder was found when the
	// configuration does not load.
	StateDirFrom string `json:"state_dir_from,omitempty"`
	// Provisioned is false until the device has an identity of its own (it
	// may have a claim identity).
	Provisioned bool            `json:"provisioned"`
	Identity    *IdentityStatus `json:"identity,omitempty"`
	Renewal     *RenewalStatus  `json:"renewal,omitempty"`
	Rotation    RotationStatus  `json:"rotation"`
	// LastRotation is how the last rotation ended.
	LastRotation *rotation.Result `json:"last_rotation,omitempty"`
	// Retiring are replaced identities kept for their grace period.
	Retiring []RetiringStatus `json:"retiring,omitempty"`
	Agent    AgentStatus      `json:"agent"`
	// Problems is what needs attention, in words; empty when healthy.
	Problems []string `json:"problems,omitempty"`
}

// IdentityStatus is the current identity.
type IdentityStatus struct {
	// KeyURI is redacted (no PIN).
	KeyURI string `json:"key_uri"`
	// Backend is the key's store: file, pkcs11 or tpm.
	Backend string `json:"backend"`
	// Protection is as the daemon recorded it when it opened the key; nil if
	// no daemon has opened this key yet.
	Protection    *keystore.Protection `json:"protection,omitempty"`
	Claim         bool                 `json:"claim,omitempty"`
	CertificateID string               `json:"certificate_id"`
	CertFile      string               `json:"cert_file"`
	Subject       string               `json:"subject"`
	NotBefore     time.Time            `json:"not_before"`
	NotAfter      time.Time            `json:"not_after"`
	AgeSeconds    int64                `json:"age_seconds"`
	// ExpiresInSeconds is negative once expired.
	ExpiresInSeconds int64 `json:"expires_in_seconds"`
}

// RenewalStatus is the renewal policy's decision for the current identity.
type RenewalStatus struct {
	At        time.Time `json:"at"`
	Deadline  time.Time `json:"deadline"`
	Reason    string    `json:"reason"`
	Emergency bool      `json:"emergency,omitempty"`
	// Due is set when the time has come (the daemon starts a rotation).
	Due bool `json:"due"`
	// AfterFailure is set when the time was pushed back by the backoff after
	// a rotation rolled back.
	AfterFailure bool   `json:"after_failure,omitempty"`
	Description  string `json:"description"`
}

// RotationStatus is the rotation in progress, if any.
type RotationStatus struct {
	InProgress bool              `json:"in_progress"`
	Phase      rotation.Phase    `json:"phase"`
	Trigger    *rotation.Trigger `json:"trigger,omitempty"`
	// Attempt counts failed attempts at the current step; NextRetry is when
	// it is tried again and LastError why it failed.
	Attempt   int       `json:"attempt,omitempty"`
	NextRetry time.Time `json:"next_retry,omitzero"`
	LastError string    `json:"last_error,omitempty"`
	// PendingKeyURI (redacted) and PendingCertificateID are the new identity
	// as far as it is made.
	PendingKeyURI        string `json:"pending_key_uri,omitempty"`
	PendingCertificateID string `json:"pending_certificate_id,omitempty"`
	// LastStep is the latest journal entry.
	LastStep *rotation.Entry `json:"last_step,omitempty"`
}

// RetiringStatus is a replaced identity awaiting deletion.
type RetiringStatus struct {
	CertificateID string    `json:"certificate_id"`
	KeyURI        string    `json:"key_uri"`
	RetireAt      time.Time `json:"retire_at,omitzero"`
}

// AgentStatus is what the daemon recorded.
type AgentStatus struct {
	Running    bool                    `json:"running"`
	PID        int                     `json:"pid,omitempty"`
	Started    time.Time               `json:"started,omitzero"`
	Stopped    time.Time               `json:"stopped,omitzero"`
	Connection *agent.ConnectionRecord `json:"connection,omitempty"`
	// ReloadError is why the last configuration reload was refused.
	ReloadError string `json:"reload_error,omitempty"`
	// Recovered is the last return to the claim after the cloud refused the
	// device's identity (claim.recover).
	Recovered *agent.RecoveryRecord `json:"recovered,omitempty"`
}

// ReadStatus reads the state folder named by cfg and describes it at now. It
// opens no key store and makes no connection, so it is safe at any time,
// also while the daemon rotates. A state folder with no state yet is not an
// error: the status says the device is not provisioned.
func ReadStatus(cfg *config.Config, now time.Time) (*Status, error) {
	st, err := rotation.StateStore{Dir: cfg.StateDir}.Load()
	if errors.Is(err, rotation.ErrNoState) {
		st = nil
	} else if err != nil {
		return nil, err
	}
	rec, err := agent.ReadDaemonRecord(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	s := StatusOf(cfg, st, rec, rec.Running(), now)
	s.Config = cfg.Path
	return s, nil
}

// ReadStatusBroken is the status when the configuration at path does not
// load (cfgErr): what the state folder dir (found as how says) and the
// agent's record tell, with the configuration's error as the first problem.
// A running agent keeps the configuration it loaded before, so its state is
// what matters most then.
func ReadStatusBroken(path string, cfgErr error, dir, how string, now time.Time) (*Status, error) {
	st, err := rotation.StateStore{Dir: dir}.Load()
	if errors.Is(err, rotation.ErrNoState) {
		st = nil
	} else if err != nil {
		return nil, err
	}
	rec, err := agent.ReadDaemonRecord(dir)
	if err != nil {
		return nil, err
	}
	return StatusBroken(path, cfgErr, dir, how, st, rec, rec.Running(), now), nil
}

// StatusBroken is StatusOf without a configuration: names come from the
// state and the record, and there is no renewal decision. A pure function.
func StatusBroken(path string, cfgErr error, dir, how string, st *rotation.State, rec *agent.DaemonRecord, running bool, now time.Time) *Status {
	cfg := &config.Config{StateDir: dir}
	if st != nil && st.Current != nil {
		cfg.ThingName = st.Current.ThingName
	}
	if rec != nil {
		cfg.ClientID = rec.Connection.ClientID
	}
	s := StatusOf(cfg, st, rec, running, now)
	s.Endpoint = ""
	if rec != nil {
		s.Endpoint = rec.Connection.Endpoint
	}
	s.Renewal = nil
	s.Config, s.ConfigError, s.StateDirFrom = path, oneLine(cfgErr.Error()), how
	msg := fmt.Sprintf("the configuration %s does not load: %s", path, s.ConfigError)
	switch {
	case running && rec.Config == path:
		msg += "; the agent keeps running with the configuration it loaded before: fix the file, then reload the agent (systemctl reload thingcert)"
	case running:
		msg += fmt.Sprintf("; the agent runs with %s", rec.Config)
	}
	rest := s.Problems[:0:0]
	for _, p := range s.Problems {
		// The refused reload is this same error, said once.
		if rec == nil || rec.ReloadError != cfgErr.Error() || !strings.HasPrefix(p, "the last configuration reload was refused") {
			rest = append(rest, p)
		}
	}
	s.Problems = append([]string{msg}, rest...)
	return s
}

// StatusOf is the status of state st (nil: none yet) under cfg at now, with
// the daemon's record rec (nil: never ran) and whether it runs. It is a pure
// function.
func StatusOf(cfg *config.Config, st *rotation.State, rec *agent.DaemonRecord, running bool, now time.Time) *Status {
	s := &Status{
		Now:       now,
		ThingName: cfg.ThingName,
		Endpoint:  iot.Endpoint{Host: cfg.Endpoint, Port: cfg.Port, Address: cfg.Address}.String(),
		ClientID:  cfg.ClientID,
		StateDir:  cfg.StateDir,
		Rotation:  RotationStatus{Phase: rotation.PhaseIdle},
	}
	problem := func(format string, args ...any) { s.Problems = append(s.Problems, fmt.Sprintf(format, args...)) }
	if rec != nil {
		s.Agent = AgentStatus{Running: running, PID: rec.PID, Started: rec.Started, Stopped: rec.Stopped, ReloadError: rec.ReloadError,
			Recovered: rec.Recovered}
		if running {
			c := rec.Connection
			s.Agent.Connection = &c
		}
		if running && rec.ReloadError != "" {
			problem("the last configuration reload was refused: %s", rec.ReloadError)
		}
	}
	if st == nil || st.Current == nil {
		problem("no identity yet: run `thingcert run` (or `thingcert provision`) with a claim, or give key and cert in the configuration")
		return s
	}
	cur := st.Current
	s.Provisioned = !cur.Claim
	id := &IdentityStatus{
		KeyURI:           keystore.RedactURI(cur.KeyURI),
		Backend:          backendOf(cur.KeyURI),
		Claim:            cur.Claim,
		CertificateID:    cur.CertificateID,
		CertFile:         cur.CertFile,
		Subject:          cur.Subject,
		NotBefore:        cur.NotBefore,
		NotAfter:         cur.NotAfter,
		AgeSeconds:       int64(now.Sub(cur.NotBefore) / time.Second),
		ExpiresInSeconds: int64(cur.NotAfter.Sub(now) / time.Second),
	}
	if rec != nil && rec.KeyURI == keystore.RedactURI(cur.KeyURI) {
		id.Protection = rec.Protection
	}
	s.Identity = id
	if cur.Claim {
		problem("the device has only its claim identity: provisioning has not finished")
	}
	if c := s.Agent.Connection; c != nil && c.Refused && c.State != iot.StateConnected.String() && !cur.Claim {
		if cfg.Claim != nil && cfg.Claim.Recover {
			problem("the cloud refuses the device's certificate %s (%s): claim.recover is set, so the agent provisions again with the claim", short(cur.CertificateID), c.Kind)
		} else {
			problem("the cloud refuses the device's certificate %s (%s); the agent keeps retrying: check the certificate's status in AWS IoT (aws iot describe-certificate --certificate-id %s); if it was revoked or deleted, set claim.recover: true (with the claim) and reload the agent to provision again, or install a new identity (key, cert)",
				short(cur.CertificateID), c.Kind, cur.CertificateID)
		}
	}
	if !now.Before(cur.NotAfter) {
		problem("the certificate expired at %s: the device cannot connect with it; provision again with the claim (claim.recover) or install a new certificate", cur.NotAfter.UTC().Format(time.RFC3339))
	}

	runner := rotation.Runner{Policy: cfg.Policy(), DeviceID: cfg.ClientID}
	if !cur.Claim {
		plain := cfg.Policy().Decide(rotation.Input{NotBefore: cur.NotBefore, NotAfter: cur.NotAfter, Now: now,
			Seed: rotation.JitterSeed(cfg.ClientID, cur.CertificateID)})
		d, due := runner.Due(st, now)
		s.Renewal = &RenewalStatus{At: d.At, Deadline: d.Deadline, Reason: string(d.Reason), Emergency: d.Emergency,
			Due: due, AfterFailure: d.At.After(plain.At), Description: d.String()}
		if d.Emergency && now.Before(cur.NotAfter) {
			problem("the certificate expires at %s, inside the emergency window: renewal is urgent", cur.NotAfter.UTC().Format(time.RFC3339))
		}
	}

	r := &s.Rotation
	r.Phase = st.Phase
	r.InProgress = st.InProgress()
	if r.InProgress {
		r.Trigger = st.Trigger
		r.Attempt = st.Attempt
		r.NextRetry = st.NextRetry
		r.LastError = st.LastError
		if p := st.Pending; p != nil {
			r.PendingKeyURI = keystore.RedactURI(p.KeyURI)
			r.PendingCertificateID = p.CertificateID
		}
		if st.Attempt > 0 && st.LastError != "" {
			problem("rotation step %s failed %d time(s), retrying: %s", st.Phase, st.Attempt, st.LastError)
		}
	}
	if n := len(st.Journal); n > 0 {
		e := st.Journal[n-1]
		r.LastStep = &e
	}
	s.LastRotation = st.LastResult
	if lr := st.LastResult; lr != nil && lr.Outcome == rotation.RolledBack && !r.InProgress {
		problem("the last rotation (%s) rolled back in phase %s: %s", lr.Trigger, lr.Phase, lr.Error)
	}
	for _, p := range st.Previous {
		s.Retiring = append(s.Retiring, RetiringStatus{CertificateID: p.CertificateID, KeyURI: keystore.RedactURI(p.KeyURI), RetireAt: p.RetireAt})
	}
	return s
}

// WriteText prints the status for a person.
func (s *Status) WriteText(w io.Writer) error {
	var b strings.Builder
	line := func(k, format string, args ...any) { fmt.Fprintf(&b, "%-15s %s\n", k, fmt.Sprintf(format, args...)) }
	at := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(time.RFC3339) + " (" + humanize.Relative(t, s.Now) + ")"
	}
	if s.ConfigError != "" {
		line("config", "%s does not load (state folder from %s)", s.Config, s.StateDirFrom)
	}
	line("thing", "%s", s.ThingName)
	line("endpoint", "%s", s.Endpoint)
	line("client ID", "%s", s.ClientID)
	line("state", "%s", s.StateDir)
	if id := s.Identity; id != nil {
		kind := "device identity"
		if id.Claim {
			kind = "claim identity (provisioning not finished)"
		}
		line("identity", "%s", kind)
		line("  key", "%s", id.KeyURI)
		line("  protection", "%s", protectionText(id.Backend, id.Protection))
		line("  certificate", "%s", id.CertificateID)
		line("  subject", "%s", id.Subject)
		line("  not before", "%s", at(id.NotBefore))
		line("  not after", "%s", at(id.NotAfter))
		line("  age", "%s", humanize.Duration(time.Duration(id.AgeSeconds)*time.Second))
	} else {
		line("identity", "none (not provisioned)")
	}
	if rn := s.Renewal; rn != nil {
		why := rn.Reason
		if !rn.At.Equal(rn.Deadline) {
			why += ", jittered from " + rn.Deadline.UTC().Format(time.RFC3339)
		}
		if rn.AfterFailure {
			why += ", pushed back after a failed rotation"
		}
		if rn.Emergency {
			why += ", emergency"
		}
		due := ""
		if rn.Due {
			due = "due now; "
		}
		line("next renewal", "%s%s: %s", due, at(rn.At), why)
	}
	r := s.Rotation
	if r.InProgress {
		trig := ""
		if r.Trigger != nil {
			trig = " for " + r.Trigger.String() + " since " + at(r.Trigger.At)
		}
		line("rotation", "in progress: phase %s%s", r.Phase, trig)
		if r.PendingKeyURI != "" {
			line("  new key", "%s", r.PendingKeyURI)
		}
		if r.PendingCertificateID != "" {
			line("  new cert", "%s", r.PendingCertificateID)
		}
		if r.Attempt > 0 {
			line("  retry", "attempt %d failed, next at %s: %s", r.Attempt, at(r.NextRetry), r.LastError)
		}
	} else {
		line("rotation", "none in progress")
	}
	if lr := s.LastRotation; lr != nil {
		txt := fmt.Sprintf("%s %s by %s", lr.Outcome, at(lr.At), lr.Trigger)
		if lr.OldCertificateID != "" || lr.NewCertificateID != "" {
			txt += fmt.Sprintf(": %s → %s", short(lr.OldCertificateID), short(lr.NewCertificateID))
		}
		if lr.Error != "" {
			txt += ": " + lr.Error
		}
		line("last rotation", "%s", txt)
	} else {
		line("last rotation", "never")
	}
	for _, p := range s.Retiring {
		when := "after the cloud is told"
		if !p.RetireAt.IsZero() {
			when = "deleted from " + at(p.RetireAt)
		}
		line("retiring", "%s %s, %s", short(p.CertificateID), p.KeyURI, when)
	}
	a := s.Agent
	switch {
	case a.Running && a.Connection != nil:
		c := a.Connection
		txt := fmt.Sprintf("running (pid %d, since %s), %s", a.PID, at(a.Started), c.State)
		if !c.Since.IsZero() {
			txt += " since " + at(c.Since)
		}
		if c.Error != "" && c.State != iot.StateConnected.String() {
			txt += ": " + c.Error
		}
		line("agent", "%s", txt)
	case a.PID != 0 && !a.Stopped.IsZero():
		line("agent", "not running (stopped %s)", at(a.Stopped))
	case a.PID != 0:
		line("agent", "not running (pid %d ended without stopping cleanly)", a.PID)
	default:
		line("agent", "not running")
	}
	if rc := a.Recovered; rc != nil {
		line("recovered", "%s: certificate %s was refused, provisioned again with the claim (claim.recover): %s", at(rc.At), short(rc.CertificateID), rc.Reason)
	}
	if len(s.Problems) == 0 {
		line("health", "ok")
	}
	for _, p := range s.Problems {
		line("problem", "%s", p)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func protectionText(backend string, p *keystore.Protection) string {
	if p == nil {
		switch backend {
		case keystore.SchemeFile:
			return "file (software key; not recorded yet)"
		case keystore.SchemeTPM:
			return "TPM 2.0 (not recorded yet)"
		case keystore.SchemePKCS11:
			return "PKCS#11 token (not recorded yet)"
		}
		return backend
	}
	kind := "software"
	if p.Hardware {
		kind = "hardware, not exportable"
	}
	var attrs []string
	for _, a := range p.Attributes {
		if a.Value == "" || a.Value == "true" {
			attrs = append(attrs, a.Name)
		} else {
			attrs = append(attrs, a.Name+"="+a.Value)
		}
	}
	s := p.Backend + " (" + kind + ")"
	if len(attrs) > 0 {
		s += ": " + strings.Join(attrs, ", ")
	}
	return s
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12] + "…"
	}
	if id == "" {
		return "-"
	}
	return id
}

func backendOf(uri string) string {
	u, err := keystore.ParseURI(uri)
	if err != nil {
		return "unknown"
	}
	return u.Scheme
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
