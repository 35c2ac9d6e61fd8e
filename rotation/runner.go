package rotation

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/thingcert/thingcert/keystore"
)

// Runner carries rotations out: it does each phase's action, feeds the
// outcome to Machine.Next and persists the new state before the next action.
// Whatever stops it (a crash, a kill, a power cut, a cancelled context), the
// next Runner on the same state folder resumes where it stopped.
type Runner struct {
	// Machine is the state machine's settings (backoff, grace period, key names).
	Machine Machine
	// Policy says when a renewal is due (Due).
	Policy Policy
	// DeviceID seeds this device's jitter (the client ID or thing name).
	DeviceID string
	// State is the state folder.
	State StateStore
	// Store is where new keys are made, and old ones deleted.
	Store keystore.Store
	// OpenKey opens the key of an identity, which may live outside Store (a
	// claim key on another token). Nil uses Store.Open.
	OpenKey func(ctx context.Context, keyURI string) (keystore.Key, error)
	// Algorithm is the new keys' algorithm; zero is keystore.DefaultAlgorithm.
	Algorithm keystore.Algorithm
	// Subject is the CSR's subject ("CN=thing-name"); AWS IoT ignores it for
	// CreateCertificateFromCsr, an owner's CA may not.
	Subject string
	// CSROptions are passed to keystore.CreateCSR.
	CSROptions keystore.CSROptions
	// Issuer turns the CSR into a certificate.
	Issuer Issuer
	// Connector moves the connection between identities.
	Connector Connector
	// Reporter tells the cloud how a rotation ended; nil tells nobody.
	Reporter Reporter
	// Roots are the CAs allowed to sign the device's certificates; nil skips
	// the chain check (see VerifyOptions.Roots).
	Roots *x509.CertPool
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Sleep waits for a retry; nil waits on a timer.
	Sleep func(ctx context.Context, d time.Duration) error
	// Log receives one line per transition; nil discards.
	Log *slog.Logger
	// AfterSave, if set, is called after each transition is recorded and
	// before the next action (status, metrics; tests use it to stop a process
	// at a chosen phase). Recorded means as Needs says: a transition whose
	// next action is local is kept in memory only, so a process stopped there
	// restarts from the state written before it. An error stops the runner,
	// as a cancelled context would.
	AfterSave func(ctx context.Context, s *State) error

	// last is the state file as this runner last wrote or read it, so that
	// reading it back (each Rotate and Resume starts by reading it, under the
	// folder's lock) does not decode the journal again when nobody changed it.
	last struct {
		sync.Mutex
		data  []byte
		state *State
	}
}

// ErrRolledBack: the rotation failed and the device kept its identity.
var ErrRolledBack = errors.New("rotation rolled back")

// ErrAlreadyProvisioned: Provision was asked of a device that has an identity.
var ErrAlreadyProvisioned = errors.New("device already provisioned")

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Runner) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

func (r *Runner) sleep(ctx context.Context, d time.Duration) error {
	if r.Sleep != nil {
		return r.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (r *Runner) openKey(ctx context.Context, uri string) (keystore.Key, error) {
	if r.OpenKey != nil {
		return r.OpenKey(ctx, uri)
	}
	return r.Store.Open(ctx, uri)
}

func (r *Runner) algorithm() keystore.Algorithm {
	if r.Algorithm == "" {
		return keystore.DefaultAlgorithm
	}
	return r.Algorithm
}

// Load reads the persisted state (ErrNoState if there is none).
func (r *Runner) Load() (*State, error) { return r.load() }

// load is StateStore.Load, without decoding again a file this runner last
// wrote or read: the bytes are compared, so a change by anyone is seen.
func (r *Runner) load() (*State, error) {
	data, err := r.State.read()
	if err != nil {
		return nil, err
	}
	r.last.Lock()
	defer r.last.Unlock()
	if r.last.state != nil && bytes.Equal(data, r.last.data) {
		return r.last.state.Clone(), nil
	}
	s, err := decodeState(data, r.State.Path())
	if err != nil {
		return nil, err
	}
	r.last.data, r.last.state = data, s.Clone()
	return s, nil
}

// saveState records s as d says and remembers what was written.
func (r *Runner) saveState(s *State, d Durability) error {
	return r.saveStateAfter(s, d, nil)
}

// saveStateAfter is saveState that first makes the files s names durable
// (before: the run's pending syncs), together with the state's own content.
func (r *Runner) saveStateAfter(s *State, d Durability, before []func() error) error {
	data, err := r.State.saveDataAfter(s, d, before)
	if err != nil || data == nil {
		return err
	}
	r.last.Lock()
	r.last.data, r.last.state = data, s.Clone()
	r.last.Unlock()
	return nil
}

// Due is the renewal decision for the current identity, and whether a
// rotation should start now. A claim identity is always due: it is replaced
// by provisioning. After a rollback the next time-triggered start also waits
// for the backoff (State.NextRetry).
func (r *Runner) Due(s *State, now time.Time) (Decision, bool) {
	if s.Current == nil {
		return Decision{}, false
	}
	if s.Current.Claim {
		return Decision{At: now, Deadline: now, Reason: ReasonDemand}, !s.InProgress()
	}
	d := r.Policy.Decide(Input{NotBefore: s.Current.NotBefore, NotAfter: s.Current.NotAfter, Now: now,
		Seed: JitterSeed(r.DeviceID, s.Current.CertificateID)})
	if s.NextRetry.After(d.At) && !s.InProgress() {
		d.At = s.NextRetry
	}
	return d, !s.InProgress() && d.Due(now)
}

// Adopt makes rec the current identity of a state folder that has none yet:
// a claim identity before provisioning, or one made by hand. Its certificate
// is read for its ID and dates. An existing state is returned unchanged.
func (r *Runner) Adopt(ctx context.Context, rec IdentityRecord) (*State, error) {
	unlock, err := r.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return r.adopt(ctx, rec)
}

func (r *Runner) adopt(ctx context.Context, rec IdentityRecord) (*State, error) {
	s, err := r.load()
	if err == nil {
		return s, nil
	}
	if !errors.Is(err, ErrNoState) {
		return nil, err
	}
	chain, err := r.State.ReadChain(rec.CertFile)
	if err != nil {
		return nil, err
	}
	describe(&rec, chain[0])
	// The first state: its folders' entries must be durable (see Lock).
	if err := r.State.Init(); err != nil {
		return nil, err
	}
	s = &State{Version: StateVersion, Phase: PhaseIdle, Current: &rec}
	r.Machine.log(s, "", PhaseIdle, Event{Kind: "adopt"}, r.now(), "identity "+short(rec.CertificateID)+" with key "+keystore.RedactURI(rec.KeyURI))
	if err := r.save(ctx, s, Durable); err != nil {
		return nil, err
	}
	return s, nil
}

func describe(rec *IdentityRecord, leaf *x509.Certificate) {
	rec.CertificateID = certificateID(leaf)
	rec.Subject = leaf.Subject.String()
	rec.NotBefore = leaf.NotBefore
	rec.NotAfter = leaf.NotAfter
}

// Provision replaces a claim identity by the device's own: the claim becomes
// the current identity if the folder has none, then a rotation with
// TriggerProvision runs. A device that already has its own identity gets
// ErrAlreadyProvisioned; an interrupted provisioning is resumed.
func (r *Runner) Provision(ctx context.Context, claim IdentityRecord) (*State, error) {
	unlock, err := r.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	claim.Claim = true
	s, err := r.adopt(ctx, claim)
	if err != nil {
		return nil, err
	}
	if !s.InProgress() && !s.Current.Claim {
		return s, fmt.Errorf("rotation: %w with certificate %s (%s); renew it with a rotation instead", ErrAlreadyProvisioned, short(s.Current.CertificateID), s.Current.Subject)
	}
	return r.rotate(ctx, s, Trigger{Kind: TriggerProvision, Reason: "provisioning by claim"})
}

// Recover makes the claim the current identity again after the device's own
// was refused (revoked, deleted, expired), so that Provision can run: connect
// with the claim, then call Provision. The refused identity is kept for the
// grace period, in case the refusal was a passing misconfiguration rather
// than a revocation. why is recorded in the journal. Only a device whose
// configuration allows it (claim.recover) should be recovered: the claim then
// holds the power to replace the device's identity.
func (r *Runner) Recover(ctx context.Context, claim IdentityRecord, why string) (*State, error) {
	unlock, err := r.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	s, err := r.load()
	if err != nil || s.InProgress() || s.Current.Claim {
		return s, err // nothing to undo: Provision resumes or starts
	}
	chain, err := r.State.ReadChain(claim.CertFile)
	if err != nil {
		return s, err
	}
	claim.Claim = true
	describe(&claim, chain[0])
	n, err := r.Machine.Next(s, Event{Kind: EventRecover, Cert: &claim, Note: why}, r.now())
	if err != nil {
		return s, err
	}
	// Durable: the refused identity's key is in Previous from here on, to be
	// deleted after the grace period (see Needs on why that matters).
	if err := r.save(ctx, n, Durable); err != nil {
		return s, err
	}
	return n, nil
}

// Rotate starts a rotation for t, or resumes the one in progress (a job then
// joins it), and carries it to its end. It returns the final state, and an
// error wrapping ErrRolledBack if the device kept its old identity.
func (r *Runner) Rotate(ctx context.Context, t Trigger) (*State, error) {
	unlock, err := r.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	s, err := r.load()
	if err != nil {
		return nil, err
	}
	return r.rotate(ctx, s, t)
}

func (r *Runner) rotate(ctx context.Context, s *State, t Trigger) (*State, error) {
	now := r.now()
	serial := s.Serial + 1
	if s.InProgress() {
		serial = s.Serial // the URI is not used: the rotation in progress continues
	}
	var nonce [3]byte
	_, _ = rand.Read(nonce[:])
	uri, err := r.Store.KeyURI(r.Machine.KeyName(serial, now, hex.EncodeToString(nonce[:])))
	if err != nil {
		return s, fmt.Errorf("rotation: naming the new key: %w", err)
	}
	n, err := r.Machine.Next(s, Event{Kind: EventStart, Trigger: t, KeyURI: uri}, now)
	durable := false
	switch {
	case errors.Is(err, ErrInProgress):
		r.log().Info("rotation: resuming the rotation in progress", "phase", s.Phase)
	case err != nil:
		return s, err
	default:
		d := Needs(ActionFor(n, now))
		if err := r.save(ctx, n, d); err != nil {
			return s, err
		}
		s, durable = n, d == Durable
	}
	s, err = r.run(ctx, s, durable)
	if err != nil {
		return s, err
	}
	return s, rolledBack(s)
}

// rolledBack is the error for a state whose latest rotation rolled back.
func rolledBack(s *State) error {
	res := s.LastResult
	if res == nil || res.Outcome != RolledBack || res.Serial != s.Serial {
		return nil
	}
	return fmt.Errorf("rotation: %w in phase %s: %s; the device keeps certificate %s", ErrRolledBack, res.Phase, res.Error, short(res.OldCertificateID))
}

// Resume carries a rotation that was in progress to its end, and retires
// previous identities whose grace period is over. It returns at once when
// there is nothing to do.
func (r *Runner) Resume(ctx context.Context) (*State, error) {
	unlock, err := r.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	s, err := r.load()
	if err != nil {
		return nil, err
	}
	was := s.InProgress()
	s, err = r.run(ctx, s, false)
	if err == nil && was {
		err = rolledBack(s)
	}
	return s, err
}

func (r *Runner) lock() (func(), error) {
	c, err := r.State.Lock()
	if err != nil {
		return nil, err
	}
	return func() { c.Close() }, nil
}

// run acts until nothing is left to do, waiting for retries. Each new state
// is recorded as Needs says for the action that follows it; durable says
// whether s is known to be durable (a state read from the folder may have
// been only written). Before an action that needs a durable state, s is made
// durable if it is not: so every such action follows a durable save of the
// state it acts on, whether that state was made in this run or read.
func (r *Runner) run(ctx context.Context, s *State, durable bool) (*State, error) {
	s, written, err := r.steps(ctx, s, durable)
	if err != nil && !written {
		// A run that stops (a cancelled context, a failed step, AfterSave)
		// ends here, and where a run ends the state is written: so status
		// and the next start see where it stopped. Failing that, the next
		// start repeats the step, which Needs allows.
		if werr := r.saveState(s, Written); werr != nil {
			r.log().Warn("rotation: writing the state where the run stopped", "phase", s.Phase, "error", werr)
		}
	}
	return s, err
}

// steps is run's loop; written says whether the state returned is in the
// state file (a state read from it is).
func (r *Runner) steps(ctx context.Context, s *State, durable bool) (_ *State, written bool, _ error) {
	written = true
	c := &runCache{}
	defer func() {
		// A run that stops with a file not yet synced makes it durable
		// before run writes the state that may name it.
		if err := syncAll(c.takePending()); err != nil {
			r.log().Warn("rotation: syncing the certificate file where the run stopped", "error", err)
		}
	}()
	for {
		now := r.now()
		act := ActionFor(s, now)
		switch act {
		case ActNone:
			return s, written, nil
		case ActWait:
			r.log().Info("rotation: waiting to retry", "phase", s.Phase, "attempt", s.Attempt, "until", s.NextRetry.UTC().Format(time.RFC3339), "error", s.LastError)
			if err := r.sleep(ctx, s.NextRetry.Sub(now)); err != nil {
				return s, written, r.paused(s, err)
			}
			continue
		}
		if Needs(act) == Durable && !durable {
			if err := r.saveStateAfter(s, Durable, c.pending); err != nil {
				return s, false, err // the deferred sync above runs what is left
			}
			c.pending = nil
			durable, written = true, true
		}
		ev := r.act(ctx, s, act, c)
		if ev.Kind == EventFailed {
			if c, _ := Classify(ev.Err); c == Stopped || ctx.Err() != nil {
				return s, written, r.paused(s, ev.Err)
			}
		}
		now = r.now()
		n, err := r.Machine.Next(s, ev, now)
		if err != nil {
			return s, written, err
		}
		d := Needs(ActionFor(n, now))
		var before []func() error
		if d != InMemory {
			before = c.pending
		}
		if err := r.saveStateAfter(n, d, before); err != nil {
			return s, written, err // the deferred sync above runs what is left
		}
		if d != InMemory {
			c.pending = nil
		}
		s, durable, written = n, d == Durable, d != InMemory
		if err := r.announce(ctx, s, d); err != nil {
			return s, written, err
		}
		if ev.Kind == EventReported || ev.Kind == EventCleanedUp {
			if err := r.State.Tidy(s); err != nil {
				r.log().Warn("rotation: tidying the state folder", "error", err)
			}
		}
	}
}

func (r *Runner) paused(s *State, err error) error {
	if !s.InProgress() {
		return err
	}
	last := ""
	if s.LastError != "" {
		last = fmt.Sprintf(" after %d failed attempts (the last: %s)", s.Attempt, s.LastError)
	}
	return fmt.Errorf("rotation: stopped in phase %s%s (%w); it resumes there at the next rotation or start", s.Phase, last, err)
}

// save records a new state as d says, and announces it.
func (r *Runner) save(ctx context.Context, s *State, d Durability) error {
	if err := r.saveState(s, d); err != nil {
		return err
	}
	return r.announce(ctx, s, d)
}

// announce logs a recorded transition and calls AfterSave (for every
// transition, whether or not it was written).
func (r *Runner) announce(ctx context.Context, s *State, d Durability) error {
	if len(s.Journal) > 0 {
		e := s.Journal[len(s.Journal)-1]
		r.log().Info("rotation: "+string(e.From)+" → "+string(e.To), "event", e.Event, "note", e.Note, "recorded", d.String())
	}
	if r.AfterSave != nil {
		return r.AfterSave(ctx, s)
	}
	return nil
}

// runCache holds, for one run, the new key as made (for the CSR) and the
// issued chain as received (for the checks and the switch), so the steps
// after do not read and parse them again (for a file key, each opening also
// computes the public key; for a token or TPM it is a round trip). A
// restarted run reads them from the store and the folder.
type runCache struct {
	key   keystore.Key
	chain []*x509.Certificate
	path  string
	// pending are the syncs of changes made in this run that must be
	// durable before the next state that depends on them is renamed into
	// place (the new key before CSRSubmitted, the issued certificate before
	// Verified, a replaced key's deletion before the state that forgets it):
	// the next state written runs them beside its own content's sync, before
	// its rename, so a rotation waits for one round of syncs there rather
	// than two in a row.
	pending []func() error
}

// takePending returns the pending syncs and forgets them.
func (c *runCache) takePending() []func() error {
	p := c.pending
	c.pending = nil
	return p
}

// addPending adds a sync, made safe to call more than once (it runs once;
// later calls return its result): a state write that fails after running
// it leaves it pending, for the run's end to run again.
func (c *runCache) addPending(f func() error) {
	var (
		once sync.Once
		err  error
	)
	c.pending = append(c.pending, func() error {
		once.Do(func() { err = f() })
		return err
	})
}

func (c *runCache) pendingKey(ctx context.Context, r *Runner, uri string) (keystore.Key, error) {
	if c.key != nil && c.key.URI() == uri {
		return c.key, nil
	}
	k, err := r.Store.Open(ctx, uri)
	if err == nil {
		c.key = k
	}
	return k, err
}

func (c *runCache) readChain(r *Runner, path string) ([]*x509.Certificate, error) {
	if c.chain != nil && c.path == path {
		return c.chain, nil
	}
	return r.State.ReadChain(path)
}

// act does one action and says what came of it.
func (r *Runner) act(ctx context.Context, s *State, act Action, c *runCache) Event {
	fail := func(err error) Event { return Event{Kind: EventFailed, Err: err} }
	switch act {
	case ActGenerateKey:
		k, err := r.ensureKey(ctx, s.Pending.KeyURI, c)
		if err != nil {
			return fail(err)
		}
		c.key = k
		return Event{Kind: EventKeyReady}
	case ActMakeCSR:
		k, err := c.pendingKey(ctx, r, s.Pending.KeyURI)
		if errors.Is(err, keystore.ErrNotFound) {
			return fail(NewFatal("opening the new key", err))
		}
		if err != nil {
			return fail(err)
		}
		der, err := keystore.CreateCSR(k, r.subject(s), r.CSROptions)
		if err != nil {
			return fail(err)
		}
		return Event{Kind: EventCSRMade, CSR: string(keystore.EncodeCSR(der))}
	case ActSubmit:
		return r.submit(ctx, s, c)
	case ActVerify:
		// The new key's public key is the CSR's: the key signed it, and the
		// signature was checked when it was made. (A key lost since then is
		// found when the switch opens it, and rolls back the same way.)
		pub, err := csrPublicKey(s.CSR)
		if err != nil {
			return fail(NewFatal("reading the saved CSR", err))
		}
		chain, err := c.readChain(r, s.Pending.CertFile)
		if err != nil {
			return fail(NewFatal("reading the issued certificate", err))
		}
		if err := Verify(chain, VerifyOptions{PublicKey: pub, Roots: r.Roots, CertificateID: s.Pending.CertificateID, Now: r.now()}); err != nil {
			return fail(err)
		}
		return Event{Kind: EventVerified}
	case ActSwitch:
		return r.switchIdentity(ctx, s, c)
	case ActReport:
		if r.Reporter != nil && s.Trigger != nil && s.LastResult != nil {
			err := r.Reporter.Report(ctx, Report{Trigger: *s.Trigger, Outcome: Succeeded,
				OldCertificateID: s.LastResult.OldCertificateID, NewCertificateID: s.LastResult.NewCertificateID})
			if err != nil {
				return fail(err)
			}
		}
		return Event{Kind: EventReported}
	case ActCleanup:
		return r.cleanup(ctx, s)
	case ActRetire:
		return r.retire(ctx, s, c)
	}
	return fail(fmt.Errorf("rotation: no action %q", act))
}

func (r *Runner) subject(s *State) string {
	if r.Subject != "" {
		return r.Subject
	}
	if r.DeviceID != "" {
		return "CN=" + r.DeviceID
	}
	return "CN=thingcert-device"
}

// ensureKey makes the pending key, or reuses it if a run before a crash made
// it already: its name is new to this rotation, so a key there can only be
// ours. One that cannot be opened (half made by a store that is not atomic)
// is deleted and made again.
func (r *Runner) ensureKey(ctx context.Context, uri string, c *runCache) (keystore.Key, error) {
	k, err := r.Store.Open(ctx, uri)
	if err == nil {
		if k.Algorithm() == r.algorithm() {
			r.log().Info("rotation: reusing the new key made before a restart", "key", keystore.RedactURI(uri))
			if ug, ok := r.Store.(keystore.UnsyncedGenerator); ok {
				// The run that made it may have stopped before its sync.
				c.addPending(func() error { return ug.SyncKey(ctx, uri) })
			}
			return k, nil
		}
		err = fmt.Errorf("its algorithm is %s, not %s", k.Algorithm(), r.algorithm())
	}
	if !errors.Is(err, keystore.ErrNotFound) {
		r.log().Warn("rotation: replacing an unusable pending key", "key", keystore.RedactURI(uri), "error", err)
		if derr := r.Store.Delete(ctx, uri); derr != nil && !errors.Is(derr, keystore.ErrNotFound) {
			return nil, fmt.Errorf("rotation: the pending key %s is unusable (%v) and could not be deleted: %w", keystore.RedactURI(uri), err, derr)
		}
	}
	if ug, ok := r.Store.(keystore.UnsyncedGenerator); ok {
		// The key must be durable before its CSR is sent: it is synced
		// together with the CSRSubmitted state, made durable before the
		// CSR is sent, and before that state's rename (c.pending). A power
		// cut before then leaves a missing or damaged key at a name only
		// Started names, which the code above replaces.
		k, sync, err := ug.GenerateUnsynced(ctx, uri, r.algorithm())
		if err != nil {
			return nil, err
		}
		c.addPending(sync)
		return k, nil
	}
	return r.Store.Generate(ctx, uri, r.algorithm())
}

// csrPublicKey is the public key of a PEM CSR.
func csrPublicKey(csrPEM string) (crypto.PublicKey, error) {
	block, _ := pem.Decode([]byte(csrPEM))
	if block == nil {
		return nil, errors.New("not PEM")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	return csr.PublicKey, nil
}

func (r *Runner) submit(ctx context.Context, s *State, c *runCache) Event {
	fail := func(err error) Event { return Event{Kind: EventFailed, Err: err} }
	block, _ := pem.Decode([]byte(s.CSR))
	if block == nil {
		return fail(NewFatal("reading the saved CSR", errors.New("not PEM")))
	}
	if r.Issuer == nil {
		return fail(NewFatal("requesting a certificate", errors.New("no issuer configured")))
	}
	var (
		iss *Issued
		err error
	)
	if ii, ok := r.Issuer.(IdentityIssuer); ok {
		// The issuer proves the device with the identity current now: the
		// claim while provisioning, the device's own certificate after.
		cur, oerr := r.Identity(ctx, *s.Current)
		if oerr != nil {
			return fail(fmt.Errorf("rotation: opening the current identity to prove the device to the issuer: %w", oerr))
		}
		iss, err = ii.IssueWith(ctx, cur, block.Bytes)
	} else {
		iss, err = r.Issuer.Issue(ctx, block.Bytes)
	}
	if err != nil {
		return fail(err)
	}
	if iss == nil || len(iss.Chain) == 0 || iss.Chain[0] == nil {
		return fail(fmt.Errorf("rotation: %w: the issuer returned no certificate", ErrBadCertificate))
	}
	id := certificateID(iss.Chain[0])
	if iss.CertificateID != "" && !strings.EqualFold(iss.CertificateID, id) {
		return fail(fmt.Errorf("rotation: %w: the issuer named the certificate %s but its SHA-256 is %s", ErrBadCertificate, iss.CertificateID, id))
	}
	// Synced beside the state that names it first (Verified, made durable
	// before the switch), not on its own now.
	path, sync, err := r.State.writeChainUnsynced(id, iss.Chain)
	if err != nil {
		return fail(err)
	}
	c.addPending(sync)
	c.chain, c.path = iss.Chain, path
	rec := &IdentityRecord{CertFile: path, ThingName: iss.ThingName}
	describe(rec, iss.Chain[0])
	return Event{Kind: EventIssued, Cert: rec}
}

// pendingIdentity is Identity for the new identity, with the chain from the
// run's cache. The key is opened as every key the connection uses is
// (OpenKey, which may wrap it), not taken from the cache.
func (r *Runner) pendingIdentity(ctx context.Context, rec IdentityRecord, c *runCache) (Identity, error) {
	k, err := r.openKey(ctx, rec.KeyURI)
	if err != nil {
		return Identity{}, err
	}
	chain, err := c.readChain(r, rec.CertFile)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Record: rec, Key: k, Chain: chain}, nil
}

// Identity opens an identity's key and certificate.
func (r *Runner) Identity(ctx context.Context, rec IdentityRecord) (Identity, error) {
	k, err := r.openKey(ctx, rec.KeyURI)
	if err != nil {
		return Identity{}, err
	}
	chain, err := r.State.ReadChain(rec.CertFile)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Record: rec, Key: k, Chain: chain}, nil
}

// switchIdentity moves the connection to the new identity and has the cloud
// confirm it. If that fails the connection goes back to the current identity:
// if it connects, the new identity is at fault and the rotation rolls back;
// if it does not either, the network is, and the move is retried later.
func (r *Runner) switchIdentity(ctx context.Context, s *State, c *runCache) Event {
	fail := func(err error) Event { return Event{Kind: EventFailed, Err: err} }
	if r.Connector == nil {
		return fail(NewFatal("switching identity", errors.New("no connection to switch")))
	}
	next, err := r.pendingIdentity(ctx, *s.Pending, c)
	if err != nil {
		return fail(NewFatal("opening the new identity", err))
	}
	if p, ok := r.Connector.(Preparer); ok {
		if err := p.Prepare(ctx, *s.Trigger, next); err != nil {
			return fail(err)
		}
	}
	err = r.Connector.Switch(ctx, next)
	op := "connecting with the new identity"
	if err == nil {
		op = "confirming the new identity with the cloud"
		err = r.Connector.Confirm(ctx, *s.Trigger)
	}
	if err == nil {
		return Event{Kind: EventSwitched}
	}
	if c, _ := Classify(err); c == Stopped {
		return fail(err)
	}
	r.log().Warn("rotation: "+op+" failed; going back to the current identity", "error", err)
	// The current identity is opened only now: it is needed only to go back.
	cur, cerr := r.Identity(ctx, *s.Current)
	if cerr != nil {
		return fail(fmt.Errorf("rotation: %s failed (%w), and the current identity to go back to does not open: %v", op, err, cerr))
	}
	if berr := r.Connector.Switch(ctx, cur); errors.Is(berr, ErrNoFallback) {
		return fail(NewTransient(op, fmt.Errorf("%w; with nothing to fall back on (%v), it is tried again later", err, berr), 0))
	} else if berr != nil {
		return fail(NewTransient(op, fmt.Errorf("%w; and reconnecting with the current identity failed too (%v): the network is probably down", err, berr), 0))
	}
	var e *Error
	if errors.As(err, &e) && e.Transient {
		return fail(err) // throttled or similar: the new identity may be fine
	}
	return fail(NewFatal(op, fmt.Errorf("%w (the current identity still connects)", err)))
}

// cleanup undoes a failed rotation's side effects and reports the failure.
func (r *Runner) cleanup(ctx context.Context, s *State) Event {
	fail := func(err error) Event { return Event{Kind: EventFailed, Err: err} }
	var notes []string
	if p := s.Pending; p != nil {
		if p.KeyURI != "" && (s.Current == nil || p.KeyURI != s.Current.KeyURI) {
			if err := r.Store.Delete(ctx, p.KeyURI); err != nil && !errors.Is(err, keystore.ErrNotFound) {
				return fail(fmt.Errorf("rotation: deleting the new key %s after the rollback: %w", keystore.RedactURI(p.KeyURI), err))
			}
		}
		if p.CertFile != "" && r.ownFile(p.CertFile) {
			if err := r.State.RemoveFile(p.CertFile); err != nil {
				notes = append(notes, err.Error())
			}
		}
	}
	if r.Reporter != nil && s.Trigger != nil && s.LastResult != nil {
		err := r.Reporter.Report(ctx, Report{Trigger: *s.Trigger, Outcome: RolledBack,
			OldCertificateID: s.LastResult.OldCertificateID, Reason: s.LastResult.Error, Phase: s.LastResult.Phase})
		if err != nil {
			return fail(err)
		}
	}
	return Event{Kind: EventCleanedUp, Note: strings.Join(notes, "; ")}
}

// retire deletes the first previous identity whose grace period is over.
func (r *Runner) retire(ctx context.Context, s *State, c *runCache) Event {
	now := r.now()
	for _, p := range s.Previous {
		if p.RetireAt.IsZero() || now.Before(p.RetireAt) {
			continue
		}
		if s.Current != nil && p.KeyURI == s.Current.KeyURI {
			return Event{Kind: EventRetired, CertificateID: p.CertificateID}
		}
		if err := r.deleteRetired(ctx, p.KeyURI, c); err != nil && !errors.Is(err, keystore.ErrNotFound) {
			return Event{Kind: EventFailed, CertificateID: p.CertificateID, Err: fmt.Errorf("rotation: deleting old key %s: %w", keystore.RedactURI(p.KeyURI), err)}
		}
		if r.ownFile(p.CertFile) {
			// Not synced: a removal a power cut undoes leaves a certificate file
			// (public) that no state names, which the next Tidy removes; or one
			// the state still names, which the next retirement removes again.
			if err := r.State.removeFile(p.CertFile, false); err != nil {
				return Event{Kind: EventFailed, CertificateID: p.CertificateID, Err: err}
			}
		}
		return Event{Kind: EventRetired, CertificateID: p.CertificateID}
	}
	return Event{Kind: EventFailed, Err: errors.New("rotation: nothing to retire")}
}

// deleteRetired deletes a replaced key. Where the store can, the deletion's
// sync is left to the next state written (c.pending), which runs it beside
// its own and renames only after it: no state that forgets the key is
// renamed into place before the key is durably gone, as when Delete synced.
func (r *Runner) deleteRetired(ctx context.Context, uri string, c *runCache) error {
	if ud, ok := r.Store.(keystore.UnsyncedDeleter); ok {
		sync, err := ud.DeleteUnsynced(ctx, uri)
		if err != nil {
			return err
		}
		c.addPending(sync)
		return nil
	}
	return r.Store.Delete(ctx, uri)
}

// ownFile reports whether path is a certificate the state folder made (and so
// may delete); a certificate the user gave is never deleted.
func (r *Runner) ownFile(path string) bool {
	return filepath.Dir(filepath.Clean(path)) == filepath.Join(filepath.Clean(r.State.Dir), CertsDir)
}
