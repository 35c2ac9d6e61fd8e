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

// recoverable reports whether a connection failing with err for state st is
// one to recover from with the claim, under the running configuration: the
// device's own identity (not the claim, not mid-rotation: the runner deals
// with the identity it moves to) refused by the cloud, with claim.recover.
func (d *Daemon) recoverable(st *rotation.State, err error) bool {
	set := d.settings()
	return iot.IdentityRefused(err) && st != nil && st.Current != nil && !st.Current.Claim && !st.InProgress() &&
		set.canRecover()
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
