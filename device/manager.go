// Package device gives a program an AWS IoT identity that provisions itself,
// stays connected and renews its certificate: a Manager built from plain Go
// options, in the spirit of autocert.Manager. The thingcert agent is one user
// of it; firmware that embeds the SDK is another, with no daemon, YAML or
// metrics linked in.
//
// A Manager links only the key stores the program imports: import
// keystore/filestore, keystore/tpmstore or keystore/pkcs11store (or
// keystore/all) for the URIs the options name.
package device

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/jobs"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

// Credentials name an identity: a key in a store and its certificate chain.
type Credentials struct {
	// KeyURI is the key's URI (file:, pkcs11:, tpm:).
	KeyURI string
	// CertFile is the PEM file of the certificate, optionally followed by its
	// chain.
	CertFile string
}

// Claim is the identity a device provisions itself with (fleet provisioning
// by claim): typically one certificate shared by a batch of devices, whose
// policy allows nothing but provisioning.
type Claim struct {
	Credentials
	// ClientID is the client ID the claim connects with; empty is the
	// device's own.
	ClientID string
	// IssuerOnly says the claim proves the device to the issuer alone and
	// never connects to AWS IoT: a factory certificate that an owner's CA
	// trusts (step-ca's X5C provisioner), unknown to AWS IoT. The device
	// then stays offline until its first certificate is issued, and a
	// provisioning whose new certificate cannot connect is retried rather
	// than rolled back, since there is no identity to fall back on that
	// would tell a network failure from a refused certificate.
	IssuerOnly bool
}

// ErrClaimOffline: the claim does not connect to AWS IoT (Claim.IssuerOnly).
// It wraps rotation.ErrNoFallback.
var ErrClaimOffline = fmt.Errorf("the claim proves the device to the issuer only: %w", rotation.ErrNoFallback)

// IssuerFunc makes the Issuer that turns the device's CSRs into certificates,
// over the connection the Manager keeps (the claim's while provisioning, the
// device's own afterwards). fleetprov.Issuer and fleetprov.TopicIssuer are
// the usual ones. An issuer that proves the device with its own identity
// rather than over the connection (stepca.Issuer) implements
// rotation.IdentityIssuer and ignores conn: the runner hands it the claim
// while provisioning and the current identity afterwards; set
// Claim.IssuerOnly and JustInTime beside it when AWS IoT registers its
// certificates just in time, and neither with Accounts.
type IssuerFunc func(conn iot.MQTT) rotation.Issuer

// Options configure a Manager. Endpoint, ThingName, StateDir, Store and Issuer
// are required; every other field has a documented zero value.
type Options struct {
	// Endpoint is the AWS IoT data endpoint; its host name is always the TLS
	// server name (SNI).
	Endpoint iot.Endpoint
	// Accounts are the endpoints of the device's other accounts, for a
	// certificate registered in several (multi-account registration, a CA
	// not registered with AWS IoT): the device connects to Endpoint (the
	// primary) and, before it moves to a new certificate, reports it to the
	// rotation job and waits until each of these endpoints accepts it (see
	// prepareAccounts). Empty: one account.
	Accounts []iot.Endpoint
	// Roots are the CAs the server must chain to; nil is Amazon's roots.
	Roots *x509.CertPool
	// ThingName is the device's thing.
	ThingName string
	// ClientID is the MQTT client ID; empty is ThingName.
	ClientID string
	// StateDir is the state folder: which identity is current, the rotation
	// in progress and the last result, each write atomic and synced.
	StateDir string
	// Store is the store URI new keys are made in (file:/var/lib/thingcert/keys/,
	// pkcs11:token=...?module-path=..., tpm:?device=/dev/tpmrm0).
	Store string
	// Identity, if set, is an identity made elsewhere, adopted as the current
	// one while the state folder has none.
	Identity *Credentials
	// Claim, if set, provisions the device while it has no identity of its
	// own (and when Recover asks, again).
	Claim *Claim
	// Issuer makes the issuer of the device's certificates (required to
	// provision or rotate).
	Issuer IssuerFunc
	// Machine is the rotation state machine's settings (retry backoff, grace
	// period before old keys are deleted); the zero value is the default.
	Machine rotation.Machine
	// Policy says when a renewal is due; the zero value is the default
	// (two thirds of the lifetime).
	Policy rotation.Policy
	// Algorithm is new keys' algorithm; zero is keystore.DefaultAlgorithm.
	Algorithm keystore.Algorithm
	// Subject is the CSRs' subject; empty is CN=<ThingName>.
	Subject string
	// Trust, if set, are the CAs a new certificate must chain to before it
	// is used; nil skips the chain check (AWS-issued certificates).
	Trust *x509.CertPool
	// NoJobs stops the Manager from acting on rotation jobs
	// ({"operation": "rotate-certificate"}); the zero value acts on them.
	NoJobs bool
	// JustInTime says the device's certificates are registered by AWS IoT on
	// their first connection (just-in-time registration or provisioning
	// with the owner's CA), which AWS IoT then closes: a connection with a
	// new certificate that is refused is tried again, a few times, before
	// it counts as a failure. The zero value counts the first refusal.
	JustInTime bool
	// MinConnectInterval spaces two CONNECTs with one client ID; zero is 1 s
	// (AWS IoT's limit), negative none (an emulator with the limit off).
	MinConnectInterval time.Duration
	// ConnectBackoff spaces connection attempts, the client's own reconnects
	// and the manager's retries alike; the zero value is iot.Backoff's
	// defaults.
	ConnectBackoff iot.Backoff
	// Log receives what happens; nil discards.
	Log *slog.Logger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Rand draws the jitter of retries, uniformly from [0, 1); nil is
	// math/rand/v2.
	Rand func() float64

	// OnStateChange, if set, is told every change of the connection's state.
	// It must return quickly.
	OnStateChange func(iot.StateChange)
	// OnSwitch, if set, is called each time the connection moves to an
	// identity (after it connected): a program re-subscribes there.
	OnSwitch func(ctx context.Context, id rotation.Identity)
	// AfterSave, if set, is called after each rotation state is persisted,
	// before the next action.
	AfterSave func(ctx context.Context, s *rotation.State) error
	// WrapKey, if set, wraps every key the Manager opens (to count signing
	// errors, say).
	WrapKey func(keystore.Key) keystore.Key
}

// Validate reports options a Manager cannot work with.
func (o *Options) Validate() error {
	var errs []error
	if err := o.Endpoint.Validate(); err != nil {
		errs = append(errs, err)
	}
	for i, ep := range o.Accounts {
		if err := ep.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("device: Accounts[%d]: %w", i, err))
		} else if strings.EqualFold(ep.Host, o.Endpoint.Host) {
			errs = append(errs, fmt.Errorf("device: Accounts[%d]: %s is the primary Endpoint; list only the other accounts", i, ep.Host))
		}
		for j := range i {
			if strings.EqualFold(o.Accounts[j].Host, ep.Host) {
				errs = append(errs, fmt.Errorf("device: Accounts[%d]: %s is listed twice (Accounts[%d])", i, ep.Host, j))
			}
		}
	}
	if len(o.Accounts) > 0 {
		// A CA registered with no account (SNI_ONLY): nothing registers a
		// certificate on its first connection, and a certificate no
		// account knows has no connection to report itself over.
		if o.JustInTime {
			errs = append(errs, errors.New("device: JustInTime with Accounts: a certificate registered in several accounts without its CA is never registered just in time; turn JustInTime off"))
		}
		if o.claimIssuerOnly() {
			errs = append(errs, errors.New("device: Claim.IssuerOnly with Accounts: a first certificate the claim obtains is registered in no account and cannot connect to report itself; register the first certificate in every account at the factory and give it as Identity"))
		}
	}
	if o.ThingName == "" {
		errs = append(errs, errors.New("device: no thing name"))
	}
	if o.StateDir == "" {
		errs = append(errs, errors.New("device: no state folder"))
	}
	if o.Store == "" {
		errs = append(errs, errors.New("device: no key store URI (where new keys are made)"))
	} else if _, err := keystore.ParseURI(o.Store); err != nil {
		errs = append(errs, fmt.Errorf("device: key store: %w", err))
	}
	if o.Claim != nil {
		if _, err := os.Stat(o.Claim.CertFile); err != nil {
			errs = append(errs, fmt.Errorf("device: claim certificate: %w", err))
		}
	}
	if err := o.Machine.Backoff.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ClaimConnects reports whether the claim connects to AWS IoT (to provision
// over MQTT), as opposed to proving the device to the issuer only.
func (o Options) ClaimConnects() bool { return o.Claim != nil && !o.Claim.IssuerOnly }

func (o *Options) clientID() string {
	if o.ClientID != "" {
		return o.ClientID
	}
	return o.ThingName
}

// SameConnection reports whether a and b connect the same way (endpoint,
// roots, names): when they do not, a running Manager must reconnect.
func SameConnection(a, b *Options) bool {
	claimID := func(o *Options) string {
		if o.Claim == nil {
			return ""
		}
		return o.Claim.ClientID
	}
	rootsEqual := a.Roots == b.Roots || a.Roots != nil && b.Roots != nil && a.Roots.Equal(b.Roots)
	return a.Endpoint == b.Endpoint && rootsEqual && a.ThingName == b.ThingName &&
		a.clientID() == b.clientID() && claimID(a) == claimID(b)
}

// Manager keeps one device's identity: it adopts or provisions it, connects
// with it, and renews it before it ages out, moving the connection with each
// rotation. Its methods are safe for concurrent use, but one rotation runs at
// a time (the state folder's runner serialises them).
type Manager struct {
	log  *slog.Logger
	now  func() time.Time
	rand func() float64

	mu      sync.Mutex // guards the fields below
	opts    Options
	stores  *keyStores
	session *Session
	runner  *rotation.Runner
	jobSink func(*jobs.Execution) // Run's job listener; nil outside Run
	// prepared is the certificate every other account accepted
	// (prepareAccounts): the primary's refusal of it is a wait, not a fault.
	prepared string
}

// New checks the options and opens the key store. Nothing connects until
// Connect or Run.
func New(ctx context.Context, opts Options) (*Manager, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	m := &Manager{log: opts.Log, now: opts.Now, rand: opts.Rand}
	if m.rand == nil {
		m.rand = rand.Float64
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.now == nil {
		m.now = time.Now
	}
	stores, err := openKeyStores(ctx, &opts, m.log)
	if err != nil {
		return nil, err
	}
	m.opts, m.stores = opts, stores
	m.session = m.newSession(&opts)
	m.runner = m.newRunner(&opts, stores, m.session)
	return m, nil
}

func (m *Manager) newSession(o *Options) *Session {
	s := &Session{
		Config: iot.Config{
			Endpoint:      o.Endpoint,
			Roots:         o.Roots,
			ThingName:     o.ThingName,
			ClientID:      o.ClientID,
			Logger:        m.log,
			OnStateChange: o.OnStateChange,
			Backoff:       o.ConnectBackoff,
		},
		MinConnectInterval: o.MinConnectInterval,
		JustInTime:         o.JustInTime,
	}
	if o.Claim != nil {
		s.ClaimClientID = o.Claim.ClientID
	}
	return s
}

func (m *Manager) newRunner(o *Options, stores *keyStores, s *Session) *rotation.Runner {
	var issuer rotation.Issuer
	if o.Issuer != nil {
		issuer = o.Issuer(s)
	}
	subject := o.Subject
	if subject == "" {
		subject = "CN=" + o.ThingName
	}
	return &rotation.Runner{
		Machine:   o.Machine,
		Policy:    o.Policy,
		DeviceID:  o.clientID(),
		State:     rotation.StateStore{Dir: o.StateDir},
		Store:     stores.main,
		OpenKey:   stores.openKey,
		Algorithm: o.Algorithm,
		Subject:   subject,
		Issuer:    issuer,
		Connector: connector{m: m, onSwitch: o.OnSwitch},
		Reporter:  reporter{m},
		Roots:     o.Trust,
		Now:       m.now,
		Log:       m.log,
		AfterSave: o.AfterSave,
	}
}

// Reconfigure applies new options to a running Manager: a new key store if
// Store changed, a new connection if SameConnection says so (reconnect is
// then true: the caller connects again), and new rotation settings. The state
// folder cannot move. On error nothing changed.
func (m *Manager) Reconfigure(ctx context.Context, opts Options) (reconnect bool, err error) {
	if err := opts.Validate(); err != nil {
		return false, err
	}
	m.mu.Lock()
	old := m.opts
	oldStores, oldSession := m.stores, m.session
	m.mu.Unlock()
	if opts.StateDir != old.StateDir {
		return false, fmt.Errorf("device: the state folder cannot change from %s to %s while running", old.StateDir, opts.StateDir)
	}
	stores := oldStores
	if opts.Store != old.Store {
		if stores, err = openKeyStores(ctx, &opts, m.log); err != nil {
			return false, err
		}
	}
	reconnect = !SameConnection(&old, &opts)
	m.mu.Lock()
	m.opts, m.stores = opts, stores
	if reconnect {
		m.session = m.newSession(&opts)
	}
	m.runner = m.newRunner(&opts, stores, m.session)
	m.mu.Unlock()
	if reconnect {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = oldSession.Close(cctx)
		cancel()
	}
	if stores != oldStores {
		_ = oldStores.Close()
	}
	return reconnect, nil
}

// Options are the options in force.
func (m *Manager) Options() Options {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.opts
}

// Runner is the rotation runner over the Manager's connection and stores.
func (m *Manager) Runner() *rotation.Runner {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.runner
}

// Session is the connection, which follows rotation between identities.
func (m *Manager) Session() *Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.session
}

// Store is the store new keys are made in.
func (m *Manager) Store() keystore.Store {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stores.main
}

// ErrNoIdentity: the state folder holds no identity and the options give
// neither an identity nor a claim to provision with.
var ErrNoIdentity = errors.New("no identity")

// State loads the state folder; while it holds no identity yet it adopts
// Options.Identity, or else the claim (which Provision then replaces).
func (m *Manager) State(ctx context.Context) (*rotation.State, error) {
	r, o := m.Runner(), m.Options()
	st, err := r.Load()
	if !errors.Is(err, rotation.ErrNoState) {
		return st, err
	}
	switch {
	case o.Identity != nil:
		m.log.Info("adopting the configured identity", "key", keystore.RedactURI(o.Identity.KeyURI), "cert", o.Identity.CertFile)
		return r.Adopt(ctx, rotation.IdentityRecord{KeyURI: o.Identity.KeyURI, CertFile: o.Identity.CertFile})
	case o.Claim != nil:
		m.log.Info("no identity yet: provisioning by claim", "claim_key", keystore.RedactURI(o.Claim.KeyURI), "claim_cert", o.Claim.CertFile)
		return r.Adopt(ctx, m.claimRecord())
	}
	return nil, fmt.Errorf("device: state folder %s: %w: give an identity made elsewhere (key and certificate) or a claim to provision with", o.StateDir, ErrNoIdentity)
}

func (m *Manager) claimRecord() rotation.IdentityRecord {
	c := m.Options().Claim
	return rotation.IdentityRecord{KeyURI: c.KeyURI, CertFile: c.CertFile, Claim: true}
}

// Connect makes one attempt to connect with the current identity (adopting
// one first, as State does). It returns the state it connected with.
func (m *Manager) Connect(ctx context.Context) (*rotation.State, error) {
	st, err := m.State(ctx)
	if err != nil {
		return nil, err
	}
	if st.Current.Claim && m.Options().claimIssuerOnly() {
		m.log.Info("device: not provisioned yet; the claim is for the issuer only, so nothing connects until the first certificate is issued")
		return st, nil
	}
	r := m.Runner()
	id, err := r.Identity(ctx, *st.Current)
	if err != nil {
		return st, &IdentityError{CertificateID: st.Current.CertificateID, KeyURI: st.Current.KeyURI, Err: err}
	}
	return st, r.Connector.Switch(ctx, id)
}

// IdentityError: the current identity's key or certificate did not open.
type IdentityError struct {
	CertificateID string
	KeyURI        string
	Err           error
}

func (e *IdentityError) Error() string {
	return fmt.Sprintf("device: opening the current identity (certificate %s, key %s): %v", shortID(e.CertificateID), keystore.RedactURI(e.KeyURI), e.Err)
}

func (e *IdentityError) Unwrap() error { return e.Err }

// Provision replaces the claim identity by the device's own (the connection
// must be up with the claim: Connect first). rotation.ErrAlreadyProvisioned
// says the device has its own already.
func (m *Manager) Provision(ctx context.Context) (*rotation.State, error) {
	if m.Options().Claim == nil {
		return nil, fmt.Errorf("device: %w: provisioning needs a claim", ErrNoIdentity)
	}
	return m.Runner().Provision(ctx, m.claimRecord())
}

// Rotate renews the certificate now, for trigger's reason, or resumes the
// rotation in progress.
func (m *Manager) Rotate(ctx context.Context, t rotation.Trigger) (*rotation.State, error) {
	return m.Runner().Rotate(ctx, t)
}

// Resume carries on the rotation in progress, if any, and retires old keys
// whose grace period is over.
func (m *Manager) Resume(ctx context.Context) (*rotation.State, error) {
	return m.Runner().Resume(ctx)
}

// Publish, Subscribe and Unsubscribe go over the current connection.
func (m *Manager) Publish(ctx context.Context, topic string, qos iot.QoS, payload []byte) error {
	return m.Session().Publish(ctx, topic, qos, payload)
}

// Subscribe subscribes on the current connection. A subscription does not
// survive a move between the claim and the device's own identity: subscribe
// again from Options.OnSwitch.
func (m *Manager) Subscribe(ctx context.Context, filter string, qos iot.QoS, h iot.MessageHandler) error {
	return m.Session().Subscribe(ctx, filter, qos, h)
}

// SubscribeMultiple subscribes to several filters in one SUBSCRIBE on the
// current connection.
func (m *Manager) SubscribeMultiple(ctx context.Context, subs ...iot.Subscription) error {
	return m.Session().SubscribeMultiple(ctx, subs...)
}

// UnsubscribeNoWait unsubscribes on the current connection without waiting
// for the UNSUBACK.
func (m *Manager) UnsubscribeNoWait(filters ...string) {
	m.Session().UnsubscribeNoWait(filters...)
}

// Unsubscribe unsubscribes on the current connection.
func (m *Manager) Unsubscribe(ctx context.Context, filters ...string) error {
	return m.Session().Unsubscribe(ctx, filters...)
}

// Close disconnects and closes the key stores.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	s, stores := m.session, m.stores
	m.mu.Unlock()
	return errors.Join(s.Close(ctx), stores.Close())
}

// connector is the runner's Connector: the session of the moment, and the
// caller's OnSwitch after each move.
type connector struct {
	m        *Manager
	onSwitch func(ctx context.Context, id rotation.Identity)
}

func (c connector) Switch(ctx context.Context, id rotation.Identity) error {
	if id.Record.Claim && c.m.Options().claimIssuerOnly() {
		// Going back to a claim that cannot connect (a provisioning whose
		// new certificate failed): offline, and transient, so the runner
		// retries the new certificate later instead of rolling it back.
		_ = c.m.Session().Close(ctx)
		return rotation.NewTransient("going back to the claim", ErrClaimOffline, 0)
	}
	if err := c.m.Session().Switch(ctx, id); err != nil {
		c.m.mu.Lock()
		prepared := c.m.prepared != "" && c.m.prepared == id.Record.CertificateID
		c.m.mu.Unlock()
		if prepared {
			// Every other account accepts this certificate: the primary has
			// not registered it yet. Wait for it, as for the others.
			return rotation.NewTransient("connecting to the primary account with the new certificate", fmt.Errorf("device: %s does not accept the new certificate yet, which the device's other accounts accept: %w", c.m.Options().Endpoint.Host, err), 0)
		}
		return err
	}
	if !id.Record.Claim {
		c.m.onDeviceIdentity(ctx)
	}
	if c.onSwitch != nil {
		c.onSwitch(ctx, id)
	}
	return nil
}

// Prepare, for a device in several accounts, reports the new certificate
// and waits until every other account accepts it (see prepareAccounts).
func (c connector) Prepare(ctx context.Context, t rotation.Trigger, next rotation.Identity) error {
	o := c.m.Options()
	if len(o.Accounts) == 0 || next.Record.Claim || t.Kind == rotation.TriggerProvision {
		return nil
	}
	return c.m.prepareAccounts(ctx, o, t, next)
}

func (c connector) Confirm(ctx context.Context, t rotation.Trigger) error {
	return c.m.Session().Confirm(ctx, t)
}

var _ rotation.Preparer = connector{}

// reporter reports to the job over the session of the moment.
type reporter struct{ m *Manager }

func (r reporter) Report(ctx context.Context, rep rotation.Report) error {
	return jobs.Reporter{Client: r.m.Session().Jobs()}.Report(ctx, rep)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func (o Options) claimIssuerOnly() bool { return o.Claim != nil && o.Claim.IssuerOnly }
