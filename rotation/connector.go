package rotation

import (
	"context"
	"crypto/x509"
	"errors"

	"github.com/thingcert/thingcert/keystore"
)

// ErrNoFallback: the current identity cannot connect to the cloud at all (a
// claim that proves the device to its issuer only), so going back to it
// cannot tell a network failure from a refused new identity. A Connector
// returns it, wrapped, from Switch to such an identity; the runner then
// retries the new identity later instead of rolling it back.
var ErrNoFallback = errors.New("the current identity does not connect to the cloud")

// Identity is an identity ready to present: its key opened in its store and
// its certificate chain, leaf first.
type Identity struct {
	Record IdentityRecord
	Key    keystore.Key
	Chain  []*x509.Certificate
}

// Connector is what rotation needs from the device's connection. The agent
// implements it over its MQTT client; rotation never imports the client.
type Connector interface {
	// Switch moves the connection to id: it ends the current connection (AWS
	// IoT refuses one client ID twice) and connects presenting id, returning
	// once the broker accepted it, or why it did not. The runner calls it with
	// the new identity, and with the current one to go back.
	Switch(ctx context.Context, id Identity) error
	// Confirm asks the cloud, over the connection now up, to show that it
	// accepts the identity: a request answered on /accepted (for a job, that
	// the job is still IN_PROGRESS). An authorization failure shows as a
	// disconnect or a /rejected answer.
	Confirm(ctx context.Context, t Trigger) error
}

// Preparer is an optional capability of a Connector. Prepare runs before
// each attempt to move to a new identity, with the connection still on the
// current one: a device whose certificate must be registered in several
// accounts (multi-account registration) reports the new certificate there
// and checks that every account accepts it before the primary connection
// moves. A transient error leaves the rotation in phase Verified, to try
// again after a backoff (the new certificate waits, the device keeps working
// on the old one); a fatal one rolls it back.
type Preparer interface {
	Prepare(ctx context.Context, t Trigger, next Identity) error
}

// Reporter tells the cloud how a rotation ended. For a job it updates the job
// execution: SUCCEEDED with the old and new certificate IDs in statusDetails
// (so the cloud side can deactivate the old one), or FAILED with the reason.
// A Reporter ignores triggers it has nothing to report to.
type Reporter interface {
	Report(ctx context.Context, r Report) error
}

// Report is the end of a rotation as the cloud is told it.
type Report struct {
	Trigger          Trigger
	Outcome          Outcome
	OldCertificateID string
	NewCertificateID string
	// Reason is the failure, for a rollback.
	Reason string
	// Phase is where it failed, for a rollback.
	Phase Phase
}
