package device

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/jobs"
	"github.com/thingcert/thingcert/iot/jobs/certreport"
	"github.com/thingcert/thingcert/rotation"
)

// Multi-account registration. A device whose certificate is signed by a CA
// that is not registered with AWS IoT belongs to each of its accounts through
// RegisterCertificateWithoutCA (SNI_ONLY): AWS picks the account by the SNI,
// and a certificate registered in one account only is refused by the others'
// endpoints. So a rotation must not commit until the new certificate is
// registered in every account, and nobody in the cloud knows the new
// certificate until the device says what it is. Before moving its connection
// (rotation.Preparer), the device:
//
//  1. reports the new certificate through the rotation job's statusDetails
//     while the execution is IN_PROGRESS (package certreport: base64 DER in
//     parts within AWS's limits), for the owner's fleet tool, which checks it
//     against the owner's CA and the thing's current certificate and
//     registers it in each account;
//  2. connects with the new identity to the endpoint of every account but
//     the primary (the SNI picks the account): until each accepts it, the
//     attempt fails as transient and the rotation waits in phase Verified,
//     retried with the state machine's backoff, on the old certificate.
//
// Then the primary connection moves as in any rotation; a refusal by the
// primary of a certificate every other account accepted is taken as "not
// registered there yet" and waited out the same way. The device never
// commits a certificate some account would refuse.

// AccountsError: the new certificate is not accepted yet by some of the
// device's accounts.
type AccountsError struct {
	// Refused maps each refusing endpoint host to why.
	Refused map[string]error
}

func (e *AccountsError) Error() string {
	var parts []string
	for host, err := range e.Refused {
		parts = append(parts, host+": "+err.Error())
	}
	return fmt.Sprintf("device: the new certificate is not accepted yet by %d of the device's accounts (%s); it waits until the owner registers it there", len(e.Refused), strings.Join(parts, "; "))
}

// prepareAccounts reports the new certificate to the job and checks every
// other account accepts it (see above).
func (m *Manager) prepareAccounts(ctx context.Context, o Options, t rotation.Trigger, next rotation.Identity) error {
	const op = "registering the new certificate in every account"
	if t.JobID == "" {
		return rotation.NewFatal(op, fmt.Errorf("device: the device belongs to %d accounts and a rotation no job asked for (%s) has no way to report its new certificate for registration; a multi-account device rotates when a rotation job asks", len(o.Accounts)+1, t))
	}
	if len(next.Chain) == 0 {
		return rotation.NewFatal(op, errors.New("device: the new identity has no certificate"))
	}
	current := ""
	if st, err := m.Runner().Load(); err == nil && st.Current != nil {
		current = st.Current.CertificateID
	}
	details, err := certreport.Encode(next.Chain[0].Raw, current)
	if err != nil {
		return rotation.NewFatal(op, err)
	}
	if err := m.Session().Jobs().Update(ctx, t.JobID, jobs.StatusInProgress, details); err != nil {
		return fmt.Errorf("device: reporting the new certificate %s to job %s: %w", shortID(next.Record.CertificateID), t.JobID, err)
	}
	refused := map[string]error{}
	for _, ep := range o.Accounts {
		if err := m.tryAccount(ctx, o, ep, next); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			refused[ep.Host] = err
		}
	}
	if len(refused) > 0 {
		return rotation.NewTransient(op, &AccountsError{Refused: refused}, 0)
	}
	m.mu.Lock()
	m.prepared = next.Record.CertificateID
	m.mu.Unlock()
	m.log.Info("device: every account accepts the new certificate", "certificate", shortID(next.Record.CertificateID), "accounts", len(o.Accounts)+1)
	return nil
}

// tryAccount connects once to an account's endpoint presenting id, and
// disconnects.
func (m *Manager) tryAccount(ctx context.Context, o Options, ep iot.Endpoint, id rotation.Identity) error {
	aid, err := iot.NewIdentity(id.Key, id.Chain)
	if err != nil {
		return err
	}
	c, err := iot.New(iot.Config{Endpoint: ep, Roots: o.Roots, ThingName: o.ThingName, ClientID: o.clientID(),
		Identity: iot.NewIdentitySource(aid), Logger: m.log})
	if err != nil {
		return err
	}
	if _, err := c.Connect(ctx); err != nil {
		return err
	}
	return c.Disconnect(ctx)
}
