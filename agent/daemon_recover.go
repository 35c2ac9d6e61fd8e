package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/thingcert/thingcert/internal/humanize"

	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/rotation"
)

// When the cloud refuses the device's own identity (its certificate revoked,
// deactivated or deleted), the agent does what `thingcert rotate` does: with
// claim.recover it makes the claim the current identity again
// (rotation.Runner.Recover), connects with it and provisions anew, the same
// path as a first provisioning; without, it keeps retrying with backoff and
// says what to do. The refusal is seen either by the connect task (at start,
// or after a reload) or by the client reconnecting on its own after the cloud
// dropped the connection (onStateChange); both end in a recover task.

// refusalError ends a connect task when the device's own identity was
// refused and claim.recover allows recovering: the loop then queues the
// recovery instead of retrying.
type refusalError struct{ err error }

func (e *refusalError) Error() string {
	return "agent: the device's identity was refused; recovering with the claim (claim.recover): " + e.err.Error()
}

func (e *refusalError) Unwrap() error { return e.err }

// RecoveryRecord is the agent's last return to the claim after the cloud
// refused the device's identity, in DaemonRecord.
type RecoveryRecord struct {
	At time.Time `json:"at"`
	// CertificateID is the refused certificate's.
	CertificateID string `json:"certificate_id"`
	// Reason is the refusal, as the connection reported it.
	Reason string `json:"reason"`
}

// refusedAdvice says what to do about a refused identity without claim.recover.
const refusedAdvice = "the cloud refuses the device's identity: check the certificate's status in AWS IoT " +
	"(aws iot describe-certificate --certificate-id ID); if it was revoked or deleted, set claim.recover: true " +
	"(with the claim) and reload the agent to provision again, or install a new identity (key, cert)"

// RefusalRecord counts the refusals of the device's identity since it last
// connected, in DaemonRecord, so that a restart goes on counting: a recovery
// by claim needs several refusals over a minimum span (RecoveryRule), never
// one event a flaky link or someone on the path can produce.
type RefusalRecord struct {
	// CertificateID is the refused certificate's.
	CertificateID string `json:"certificate_id"`
	Count         int    `json:"count"`
	// First and Last are when the first and the latest refusal came.
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
	// Reason is the latest refusal, as the connection reported it.
	Reason string `json:"reason"`
}

// RecoveryRule is how much refusal a recovery by claim needs: at least
// Refusals refusals of the same certificate, the first and the latest at
// least Span apart, with no successful connection between.
type RecoveryRule struct {
	Refusals int
	Span     time.Duration
}

// The default RecoveryRule: three refusals over ten minutes. A certificate
// revoked or deactivated in the cloud stays refused; ten minutes of retries
// with backoff see it several times.
const (
	DefaultRecoverRefusals = 3
	DefaultRecoverSpan     = 10 * time.Minute
)

func (r RecoveryRule) withDefaults() RecoveryRule {
	if r.Refusals <= 0 {
		r.Refusals = DefaultRecoverRefusals
	}
	if r.Span < 0 {
		r.Span = 0
	}
	return r
}

// countRefusal adds a refusal of certID at now to prev (nil: none yet). A
// refusal of another certificate starts the count again.
func countRefusal(prev *RefusalRecord, certID, reason string, now time.Time) *RefusalRecord {
	if prev == nil || prev.CertificateID != certID {
		return &RefusalRecord{CertificateID: certID, Count: 1, First: now, Last: now, Reason: reason}
	}
	n := *prev
	n.Count++
	n.Reason = reason
	if now.After(n.Last) {
		n.Last = now
	}
	if now.Before(n.First) {
		// The clock went back: count the span from now on.
		n.First, n.Last = now, now
	}
	return &n
}

// enough reports whether the refusals recorded meet the rule.
func (r *RefusalRecord) enough(rule RecoveryRule) bool {
	rule = rule.withDefaults()
	return r != nil && r.Count >= rule.Refusals && r.Last.Sub(r.First) >= rule.Span
}

// recoverable reports whether a connection failing with err for state st is
// one to recover from with the claim, under the running configuration: the
// device's own identity (not the claim, not mid-rotation: the runner deals
// with the identity it moves to) refused by the verified cloud
// (iot.IdentityRefused), with claim.recover.
func (d *Daemon) recoverable(st *rotation.State, err error) bool {
	set := d.settings()
	return iot.IdentityRefused(err) && st != nil && st.Current != nil && !st.Current.Claim && !st.InProgress() &&
		set.canRecover()
}

// refusedEnough counts a refusal of st's current identity (recoverable
// already said it is one) and reports whether the refusals now meet the
// recovery rule. Each refusal is logged with the count, so that the reason a
// device did or did not go back to its claim is in the log.
func (d *Daemon) refusedEnough(st *rotation.State, err error) bool {
	rule := d.settings().RecoveryRule.withDefaults()
	now := d.now()
	d.mu.Lock()
	r := countRefusal(d.record.Refusals, st.Current.CertificateID, oneLine(err.Error()), now)
	d.record.Refusals = r
	d.mu.Unlock()
	d.pokeRecord()
	ok := r.enough(rule)
	if ok {
		d.log.Warn("the cloud refused the device's identity often enough to recover with the claim",
			"certificate", r.CertificateID, "refusals", r.Count, "since", r.First.UTC().Format(time.RFC3339), "error", err)
	} else {
		d.log.Warn("the cloud refused the device's identity; the claim recovers it only after repeated refusals",
			"certificate", r.CertificateID, "refusals", r.Count, "needed", rule.Refusals,
			"over", humanize.Duration(rule.Span), "since", r.First.UTC().Format(time.RFC3339), "error", err)
	}
	return ok
}

// adviseRefused logs, for a refused identity the agent may not recover, what
// the operator should do. The connection keeps being retried with backoff.
func (d *Daemon) adviseRefused(st *rotation.State, err error) {
	d.log.Error(refusedAdvice+"; retrying with backoff meanwhile", "certificate", st.Current.CertificateID, "error", err)
	d.emit(DaemonEvent{Kind: EventIdentityRefused, Message: refusedAdvice, Err: err})
}

// recoverIdentity is the recover task: after a refusal of the device's
// identity (why), it makes the claim current again if claim.recover allows it
// and the refusal still stands. It reports whether it did; the loop then
// connects with the claim and provisions.
func (d *Daemon) recoverIdentity(ctx context.Context, r *rotation.Runner, why string) (*rotation.State, bool, error) {
	st, err := r.Load()
	if err != nil {
		return nil, false, err
	}
	if st.Current == nil || st.Current.Claim || st.InProgress() {
		return st, false, nil // provisioning or the rotation in progress deals with it
	}
	d.mu.Lock()
	up := d.connState == iot.StateConnected
	d.mu.Unlock()
	if up {
		// The refusal was of an identity a rotation tried and rolled back
		// from, or it passed: the device's identity works.
		d.log.Debug("identity refusal no longer stands; nothing to recover", "refusal", why)
		return st, false, nil
	}
	set := d.settings()
	if !set.canRecover() {
		d.adviseRefused(st, errors.New(why))
		return st, false, nil
	}
	d.mu.Lock()
	refusals := d.record.Refusals
	d.mu.Unlock()
	if refusals == nil || refusals.CertificateID != st.Current.CertificateID || !refusals.enough(set.RecoveryRule) {
		// The count was cleared (the device connected since) or is of
		// another identity: nothing to recover.
		d.log.Info("not recovering with the claim: the refusals counted do not meet the rule", "refusal", why)
		return st, false, nil
	}
	old := st.Current.CertificateID
	d.log.Warn("the device's identity was refused; going back to the claim to provision again (claim.recover)",
		"certificate", old, "error", why)
	d.emit(DaemonEvent{Kind: EventIdentityRefused, Message: "the device's identity was refused; recovering with the claim (claim.recover): " + why})
	c := set.Device.Claim
	claim := rotation.IdentityRecord{KeyURI: c.KeyURI, CertFile: c.CertFile, Claim: true}
	n, err := r.Recover(ctx, claim, oneLine(why))
	if err != nil {
		return st, false, fmt.Errorf("agent: recovering with the claim after the device's identity was refused: %w", err)
	}
	d.mu.Lock()
	d.record.Recovered = &RecoveryRecord{At: d.now(), CertificateID: old, Reason: oneLine(why)}
	d.record.Refusals = nil
	d.mu.Unlock()
	d.pokeRecord()
	d.emit(DaemonEvent{Kind: EventRecovered, Message: "certificate " + short(old) + " refused: back to the claim to provision again", State: n})
	return n, true, nil
}

// nextRecovery spaces recoveries by claim: each issues a certificate, so a
// device whose every new identity is refused at once (a policy that denies
// it, a cloud-side rule revoking it) must not recover in a loop. After a
// recovery at now, following count recent ones (the last at last, zero if
// none), it returns the new count and the earliest time of the next: 30 s to
// 1 min after the first, doubling to an hour; an hour without one starts
// again.
func nextRecovery(count int, last, now time.Time, r float64) (int, time.Time) {
	b := iot.Backoff{Min: time.Minute, Max: time.Hour, StableAfter: time.Hour}
	if last.IsZero() {
		count = 0
	} else {
		count = b.AfterLoss(count, now.Sub(last))
	}
	return count, now.Add(b.Delay(count, r))
}

// refusedStatus is the systemd status line while the identity is refused.
func refusedStatus(err error, retry time.Duration, recover bool) string {
	s := "identity refused by the cloud (" + FailureKind(err) + "); retrying in " + humanize.Duration(retry)
	if recover {
		return s + "; recovering with the claim"
	}
	return s + ": check the certificate in AWS IoT, or set claim.recover"
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
