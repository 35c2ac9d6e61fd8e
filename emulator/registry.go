package emulator

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/thingcert/thingcert/internal/pemcert"
	"github.com/thingcert/thingcert/keystore"
)

// Files of the state folder besides the CAs and the history.
const (
	registryFile = "registry.json" // earlier versions' registry, migrated into registry.db (store.go)
	lockFileName = "lock"
	// AdminSocketFile is the unix socket a running emulator serves admin calls on.
	AdminSocketFile = "admin.sock"
	stateVersion    = 1
)

// Registry is the emulator's state: accounts, their CAs, certificates, things,
// provisioning templates and jobs, plus the connection history. It is what the
// admin calls work on. A running Emulator embeds one (its methods are the
// emulator's admin API); Open gives one over a state folder whose emulator is not
// running, for offline administration. Every change is saved atomically before
// the call returns.
type Registry struct {
	cfg     Config
	dir     string
	log     *slog.Logger
	root    *authority
	issuing *authority
	history *history
	lock    *os.File
	// store is the state folder's registry.db; nil in memory.
	store *store

	mu         sync.RWMutex
	st         *state
	byEndpoint map[string]string

	createLimit   *limiter
	registerLimit *limiter
	apiLimit      *limiter // per account and operation; nil: unlimited

	statsMu sync.Mutex
	stats   map[string]*OpStats

	events registryEvents
}

// registryEvents let a running emulator react to admin changes; each runs after
// the registry lock is released.
type registryEvents struct {
	accountsChanged func()
	statusChanged   func(account, certID string, status CertificateStatus)
	// notify sends a message to the subscribers of topic among an account's
	// connections (job notifications).
	notify func(account, topic string, payload []byte)
}

type state struct {
	Version  int                    `json:"version"`
	Seq      int64                  `json:"seq"`
	Accounts map[string]*accountRec `json:"accounts"`
}

type accountRec struct {
	Account
	CreatedAt time.Time            `json:"createdAt"`
	CAs       map[string]*caRec    `json:"cas"`
	Certs     map[string]*certRec  `json:"certificates"`
	Things    map[string]*thingRec `json:"things"`
	Templates map[string]*Template `json:"templates"`
	Jobs      map[string]*jobRec   `json:"jobs"`
	Tokens    map[string]*tokenRec `json:"ownershipTokens"`
	Groups    map[string]*groupRec `json:"thingGroups,omitempty"`
	// Events are UpdateEventConfigurations' switches by event type.
	Events map[string]bool `json:"eventConfigurations,omitempty"`
	// Policies are the account's IoT policies (policies.go).
	Policies map[string]*policyRec `json:"policies,omitempty"`
}

type caRec struct {
	PEM       string            `json:"pem"`
	Status    CertificateStatus `json:"status"`
	Mode      CertificateMode   `json:"mode"`
	CreatedAt time.Time         `json:"createdAt"`
	// AutoRegistration and Registration are allowAutoRegistration and
	// registrationConfig: just-in-time registration and provisioning (jit.go).
	AutoRegistration bool                  `json:"autoRegistration,omitempty"`
	Registration     *CARegistrationConfig `json:"registrationConfig,omitempty"`
	cert             *x509.Certificate
}

type certRec struct {
	PEM    string            `json:"pem"`
	Status CertificateStatus `json:"status"`
	CAID   string            `json:"caId,omitempty"`
	Things []string          `json:"things,omitempty"`
	// Policies are the names of the IoT policies attached to it.
	Policies  []string  `json:"policies,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	cert      *x509.Certificate
}

type thingRec struct {
	Attributes map[string]string `json:"attributes,omitempty"`
	CreatedAt  time.Time         `json:"createdAt"`
}

type tokenRec struct {
	CertID    string    `json:"certificateId"`
	ExpiresAt time.Time `json:"expiresAt"`
}

func newAccountRec(a Account, now time.Time) *accountRec {
	return &accountRec{
		Account: a, CreatedAt: now,
		CAs: map[string]*caRec{}, Certs: map[string]*certRec{}, Things: map[string]*thingRec{},
		Templates: map[string]*Template{}, Jobs: map[string]*jobRec{}, Tokens: map[string]*tokenRec{},
		Groups:   map[string]*groupRec{},
		Policies: map[string]*policyRec{},
	}
}

// Open opens the registry of cfg.StateDir (making the folder, its CAs and an
// empty registry when missing) and locks the folder, so neither an emulator nor
// another admin command can change it meanwhile; Close unlocks it. The
// registry is registry.db (store.go); a registry.json of an earlier version
// is migrated into it first. With
// cfg.StateDir empty the registry lives in memory. cfg.Accounts and
// cfg.Templates are added where missing.
func Open(ctx context.Context, cfg Config) (*Registry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := &Registry{
		cfg:           cfg,
		dir:           cfg.StateDir,
		log:           cfg.logger(),
		st:            &state{Version: stateVersion, Accounts: map[string]*accountRec{}},
		createLimit:   newLimiter(rateOr(cfg.CreateCertificateRate, defaultCreateCertRate), rateOr(cfg.CreateCertificateRate, defaultCreateCertRate)),
		registerLimit: newLimiter(rateOr(cfg.RegisterThingRate, defaultRegisterThingRate), rateOr(cfg.RegisterThingRate, defaultRegisterThingRate)),
		stats:         map[string]*OpStats{},
	}
	if cfg.APIRate > 0 {
		r.apiLimit = newLimiter(cfg.APIRate, cfg.APIRate)
	}
	ok := false
	defer func() {
		if !ok {
			r.Close()
		}
	}()
	if r.dir != "" {
		abs, err := filepath.Abs(r.dir)
		if err != nil {
			return nil, fmt.Errorf("emulator: state folder %s: %w", r.dir, err)
		}
		r.dir = abs
		if err := os.MkdirAll(r.dir, 0o700); err != nil {
			return nil, fmt.Errorf("emulator: making state folder: %w", err)
		}
		if err := checkStateDirMode(r.dir); err != nil {
			return nil, err
		}
		if err := r.lockDir(); err != nil {
			return nil, err
		}
		if err := r.load(); err != nil {
			return nil, err
		}
	}
	var err error
	if r.root, err = loadOrCreateAuthority(r.dir, RootCAFile, rootKeyFile, rootSubject()); err != nil {
		return nil, err
	}
	if r.issuing, err = loadOrCreateAuthority(r.dir, issuingCAFile, issuingKeyFile, issuingSubject()); err != nil {
		return nil, err
	}
	if r.history, err = openHistory(r.dir, cfg.historyLimit()); err != nil {
		return nil, err
	}
	r.reindex()
	for _, a := range cfg.Accounts {
		if _, err := r.AddAccount(ctx, a); err != nil && !errors.Is(err, ErrExists) {
			return nil, err
		}
		for _, t := range cfg.Templates {
			if err := r.CreateTemplate(ctx, a.Name, t); err != nil && !errors.Is(err, ErrExists) {
				return nil, err
			}
		}
	}
	if err := r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) { r.sweepLocked(tx, now); return nil, nil }); err != nil {
		return nil, err
	}
	ok = true
	return r, nil
}

// Close saves nothing (every change is already saved) and releases the state
// folder.
func (r *Registry) Close() error {
	var err error
	if r.history != nil {
		err = r.history.close()
	}
	// Under the lock: a change still running (a device's late request)
	// finishes its commit first; one after this sees no store.
	r.mu.Lock()
	if r.store != nil {
		if serr := r.store.close(); err == nil {
			err = serr
		}
		r.store = nil
	}
	r.mu.Unlock()
	if r.lock != nil {
		_ = syscall.Flock(int(r.lock.Fd()), syscall.LOCK_UN)
		if cerr := r.lock.Close(); err == nil {
			err = cerr
		}
		r.lock = nil
	}
	return err
}

// checkStateDirMode refuses a state folder others can write to: they could
// replace the CA keys, the registry or the admin socket.
func checkStateDirMode(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("emulator: state folder %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("emulator: state folder %s is not a folder", dir)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("emulator: state folder %s is writable by group or others (mode %04o), who could replace its CA keys and registry; run: chmod 700 %s", dir, perm, dir)
	}
	return nil
}

func (r *Registry) lockDir() error {
	path := filepath.Join(r.dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("emulator: opening %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("emulator: %s: %w by another emulator or admin command (its admin socket %s did not answer)", r.dir, ErrLocked, filepath.Join(r.dir, AdminSocketFile))
		}
		return fmt.Errorf("emulator: locking %s: %w", path, err)
	}
	r.lock = f
	return nil
}

// readAccount runs fn on an account under the registry's read lock: the
// getters' common prologue (the caller's context, the account looked up).
func readAccount[T any](ctx context.Context, r *Registry, account string, fn func(a *accountRec) (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, err := r.accountLocked(account)
	if err != nil {
		return zero, err
	}
	return fn(a)
}

// mutate runs fn under the write lock and saves the records fn marked in c
// (c.touchThing...) if fn succeeded: only those are written, so fn must mark
// every record it changes; a call that changed nothing (a device reading its
// jobs) marks nothing and writes nothing. fn must check everything before it
// changes anything: when it fails, nothing is saved. The functions fn returns
// run after the lock is released: they publish notifications or disconnect
// clients, which must not happen under the registry lock.
func (r *Registry) mutate(fn func(c *changeSet, now time.Time) ([]func(), error)) error {
	r.mu.Lock()
	var c changeSet
	after, err := fn(&c, r.cfg.now())
	if err == nil && r.store != nil && !c.empty() {
		err = r.store.commit(r.st, &c)
	}
	if err == nil && r.cfg.storeCheck != nil {
		r.cfg.storeCheck(r.checkStoreLocked())
	}
	r.mu.Unlock()
	if err != nil {
		return err
	}
	for _, f := range after {
		f()
	}
	return nil
}

func (r *Registry) reindex() {
	r.byEndpoint = map[string]string{}
	for name, a := range r.st.Accounts {
		r.byEndpoint[a.Endpoint()] = name
	}
}

// accountLocked finds an account by name, with an error that lists the others.
func (r *Registry) accountLocked(name string) (*accountRec, error) {
	if a, ok := r.st.Accounts[name]; ok {
		return a, nil
	}
	names := make([]string, 0, len(r.st.Accounts))
	for n := range r.st.Accounts {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return nil, fmt.Errorf("emulator: account %q: %w: there are no accounts yet (add one with add-account)", name, ErrNotFound)
	}
	return nil, fmt.Errorf("emulator: account %q: %w (accounts: %s)", name, ErrNotFound, strings.Join(names, ", "))
}

// accountBySNILocked maps an SNI host name to its account, or nil.
func (r *Registry) accountBySNILocked(sni string) *accountRec {
	name, ok := r.byEndpoint[strings.TrimSuffix(strings.ToLower(sni), ".")]
	if !ok {
		return nil
	}
	return r.st.Accounts[name]
}

// Names are checked by hand, not by regexp: package-level regexps would be
// compiled when any thingcert command starts, the emulator's or not, and
// whole-process connect time is a measured figure.

// isName: 1 to max ASCII letters, digits or characters of extra.
func isName(s string, max int, extra string) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(extra, c) >= 0) {
			return false
		}
	}
	return true
}

func isAccountName(s string) bool  { return isName(s, 64, "._-") }
func isThingName(s string) bool    { return isName(s, 128, ":_-") }
func isJobID(s string) bool        { return isName(s, 64, "_-") }
func isTemplateName(s string) bool { return isName(s, 36, "_-") }

// isPrefix: 1 to 40 lower-case letters or digits.
func isPrefix(s string) bool {
	return isName(s, 40, "") && strings.ToLower(s) == s
}

// isRegion: two letters, one or more -word parts, then -N or -NN (eu-west-1,
// us-gov-east-1, ap-southeast-12).
func isRegion(s string) bool {
	parts := strings.Split(s, "-")
	if len(parts) < 3 || len(parts[0]) != 2 {
		return false
	}
	last := parts[len(parts)-1]
	if len(last) < 1 || len(last) > 2 {
		return false
	}
	for _, c := range last {
		if c < '0' || c > '9' {
			return false
		}
	}
	for _, p := range parts[:len(parts)-1] {
		if p == "" {
			return false
		}
		for _, c := range p {
			if c < 'a' || c > 'z' {
				return false
			}
		}
	}
	return true
}

func randomPrefix() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 14)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// AddAccount adds an account. An empty Prefix gets a random one and an empty
// Region is us-east-1; the returned Account has them filled in. The server
// certificate of a running emulator is re-issued to cover the new endpoint.
func (r *Registry) AddAccount(ctx context.Context, a Account) (Account, error) {
	if err := ctx.Err(); err != nil {
		return Account{}, err
	}
	if !isAccountName(a.Name) {
		return Account{}, fmt.Errorf("emulator: account name %q: %w: use 1-64 letters, digits, '.', '_' or '-'", a.Name, ErrInvalid)
	}
	if a.Prefix == "" {
		a.Prefix = randomPrefix()
	}
	a.Prefix = strings.ToLower(a.Prefix)
	if !isPrefix(a.Prefix) {
		return Account{}, fmt.Errorf("emulator: endpoint prefix %q: %w: use 1-40 lowercase letters and digits (the part before -ats.iot)", a.Prefix, ErrInvalid)
	}
	if a.Region == "" {
		a.Region = defaultRegion
	}
	if !isRegion(a.Region) {
		return Account{}, fmt.Errorf("emulator: region %q: %w: write it as AWS does, e.g. us-east-1 or eu-central-1", a.Region, ErrInvalid)
	}
	err := r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		if _, ok := r.st.Accounts[a.Name]; ok {
			return nil, fmt.Errorf("emulator: account %q: %w", a.Name, ErrExists)
		}
		if other, ok := r.byEndpoint[a.Endpoint()]; ok {
			return nil, fmt.Errorf("emulator: endpoint %s: %w (account %q has it)", a.Endpoint(), ErrExists, other)
		}
		r.st.Accounts[a.Name] = newAccountRec(a, now)
		tx.touchWholeAccount(a.Name)
		r.reindex()
		return []func(){r.accountsChanged}, nil
	})
	if err != nil {
		return Account{}, err
	}
	r.log.Info("emulator: account added", "account", a.Name, "endpoint", a.Endpoint())
	return a, nil
}

func (r *Registry) accountsChanged() {
	if r.events.accountsChanged != nil {
		r.events.accountsChanged()
	}
}

// Accounts lists the accounts by name.
func (r *Registry) Accounts(ctx context.Context) ([]Account, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Account, 0, len(r.st.Accounts))
	for _, a := range r.st.Accounts {
		out = append(out, a.Account)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// RootCAPEM is the PEM of the root CA that signs the emulator's server
// certificate: what clients trust in place of Amazon's roots.
func (r *Registry) RootCAPEM() []byte { return slices.Clone(r.root.pem) }

// RootCAs is a pool holding only RootCAPEM, for a client's tls.Config.RootCAs.
func (r *Registry) RootCAs() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(r.root.cert)
	return p
}

// IssuingCAPEM is the PEM of the Amazon-like CA that signs the certificates the
// emulator issues. Every account trusts it implicitly, as AWS IoT trusts the CA
// behind CreateCertificateFromCsr; devices never need it.
func (r *Registry) IssuingCAPEM() []byte { return slices.Clone(r.issuing.pem) }

// StateDir is the absolute state folder, or "" for an in-memory registry.
func (r *Registry) StateDir() string { return r.dir }

func parseCerts(data []byte) ([]*x509.Certificate, error) {
	certs, err := pemcert.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("emulator: %w: %v", ErrInvalid, err)
	}
	return certs, nil
}

func parseOneCert(data []byte) (*x509.Certificate, error) {
	certs, err := parseCerts(data)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// CAOptions are the choices of RegisterCA. The zero value registers an ACTIVE
// CA in DEFAULT mode.
type CAOptions struct {
	// Mode DEFAULT lets the certificates it signed connect without SNI when they
	// are registered in one account only; SNI_ONLY (multi-account registration)
	// makes them send SNI.
	Mode CertificateMode `json:"mode,omitempty"`
	// Status is ACTIVE when empty; an INACTIVE CA's certificates cannot connect.
	Status CertificateStatus `json:"status,omitempty"`
	// AutoRegistration and Registration are RegisterCACertificate's
	// allowAutoRegistration and registrationConfig: an unknown certificate the
	// CA signed is registered at its first connection (JITR), and provisioned
	// by the template if there is one (JITP).
	AutoRegistration bool                  `json:"autoRegistration,omitempty"`
	Registration     *CARegistrationConfig `json:"registrationConfig,omitempty"`
}

// RegisterCA registers a CA certificate (the first PEM certificate of caPEM) in
// an account.
func (r *Registry) RegisterCA(ctx context.Context, account string, caPEM []byte, opts CAOptions) (CA, error) {
	if err := ctx.Err(); err != nil {
		return CA{}, err
	}
	cert, err := parseOneCert(caPEM)
	if err != nil {
		return CA{}, err
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return CA{}, fmt.Errorf("emulator: %q is not a CA certificate (basicConstraints CA:TRUE is missing): %w", cert.Subject, ErrInvalid)
	}
	mode, err := ParseCertificateMode(string(opts.Mode))
	if err != nil {
		return CA{}, err
	}
	status := opts.Status
	if status == "" {
		status = StatusActive
	}
	if status, err = ParseCertificateStatus(string(status)); err != nil {
		return CA{}, err
	}
	id := CertificateID(cert.Raw)
	var out CA
	err = r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		if _, ok := a.CAs[id]; ok {
			return nil, fmt.Errorf("emulator: CA %s in account %s: %w", id, account, ErrExists)
		}
		rec := &caRec{PEM: string(encodeCert(cert.Raw)), Status: status, Mode: mode, CreatedAt: now, AutoRegistration: opts.AutoRegistration, Registration: opts.Registration, cert: cert}
		a.CAs[id] = rec
		tx.touchCA(account, id)
		out = rec.export(account, id)
		return nil, nil
	})
	if err != nil {
		return CA{}, err
	}
	r.log.Info("emulator: CA registered", "account", account, "ca_id", id, "mode", mode, "status", status)
	return out, nil
}

func (c *caRec) export(account, id string) CA {
	return CA{Account: account, ID: id, PEM: c.PEM, Status: c.Status, Mode: c.Mode, Subject: c.cert.Subject.String(), NotBefore: c.cert.NotBefore, NotAfter: c.cert.NotAfter, CreatedAt: c.CreatedAt, AutoRegistration: c.AutoRegistration, Registration: c.Registration}
}

// SetCAStatus changes a registered CA's status (ACTIVE or INACTIVE, as AWS's
// UpdateCACertificate).
func (r *Registry) SetCAStatus(ctx context.Context, account, caID string, status CertificateStatus) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	status, err := ParseCertificateStatus(string(status))
	if err != nil {
		return err
	}
	return r.mutate(func(tx *changeSet, _ time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		c, ok := a.CAs[caID]
		if !ok {
			return nil, fmt.Errorf("emulator: CA %s in account %s: %w", caID, account, ErrNotFound)
		}
		c.Status = status
		tx.touchCA(account, caID)
		return nil, nil
	})
}

// CAs lists an account's registered CAs ("" lists every account's).
func (r *Registry) CAs(ctx context.Context, account string) ([]CA, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []CA
	for _, a := range r.accountsLocked(account) {
		if a == nil {
			return nil, r.missingAccount(account)
		}
		for id, c := range a.CAs {
			out = append(out, c.export(a.Name, id))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Account+out[i].ID < out[j].Account+out[j].ID })
	return out, nil
}

func (r *Registry) missingAccount(name string) error {
	_, err := r.accountLocked(name)
	return err
}

// accountsLocked is one account (nil in the slice when missing) or, for "", all.
func (r *Registry) accountsLocked(name string) []*accountRec {
	if name != "" {
		return []*accountRec{r.st.Accounts[name]}
	}
	out := make([]*accountRec, 0, len(r.st.Accounts))
	for _, a := range r.st.Accounts {
		out = append(out, a)
	}
	return out
}

// caLocked finds a CA an account trusts: one registered there, or the
// emulator's issuing CA, which every account trusts as AWS IoT trusts its own.
func (r *Registry) caLocked(a *accountRec, id string) (cert *x509.Certificate, status CertificateStatus, mode CertificateMode, ok bool) {
	if id == r.issuing.id {
		return r.issuing.cert, StatusActive, ModeDefault, true
	}
	c, ok := a.CAs[id]
	if !ok {
		return nil, "", "", false
	}
	return c.cert, c.Status, c.Mode, true
}

// CertificateOptions are the choices of RegisterCertificate. The zero value
// registers an ACTIVE certificate under the registered CA that signed it.
type CertificateOptions struct {
	// WithoutCA registers it as RegisterCertificateWithoutCA does: no CA is
	// needed, and the certificate is SNI_ONLY.
	WithoutCA bool `json:"withoutCA,omitempty"`
	// Status is ACTIVE when empty.
	Status CertificateStatus `json:"status,omitempty"`
	// Thing, if set, is created when missing and the certificate attached to it.
	Thing string `json:"thing,omitempty"`
}

// RegisterCertificate registers a device certificate (the first PEM certificate
// of certPEM; any further ones are intermediates between it and its CA) in an
// account. Unless opts.WithoutCA, a CA registered in the account must have signed
// it. A certificate AWS IoT would refuse (RSA under 2048 bits, P-224, a
// signature algorithm off its list) is refused here too, wrapping keystore.ErrPolicy.
func (r *Registry) RegisterCertificate(ctx context.Context, account string, certPEM []byte, opts CertificateOptions) (Certificate, error) {
	if err := ctx.Err(); err != nil {
		return Certificate{}, err
	}
	chain, err := parseCerts(certPEM)
	if err != nil {
		return Certificate{}, err
	}
	leaf := chain[0]
	if err := keystore.CheckCertificate(leaf); err != nil {
		return Certificate{}, fmt.Errorf("emulator: registering %s: %w", CertificateID(leaf.Raw), err)
	}
	status, err := defaultStatus(opts.Status, StatusActive)
	if err != nil {
		return Certificate{}, err
	}
	if opts.Thing != "" && !isThingName(opts.Thing) {
		return Certificate{}, thingNameError(opts.Thing)
	}
	var out Certificate
	err = r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		id := CertificateID(leaf.Raw)
		if _, ok := a.Certs[id]; ok {
			return nil, fmt.Errorf("emulator: certificate %s in account %s: %w", id, account, ErrExists)
		}
		caID := ""
		if !opts.WithoutCA {
			if caID = r.signerLocked(a, chain); caID == "" {
				return nil, fmt.Errorf("emulator: certificate %s (issuer %q): %w: no CA registered in account %s signed it; register its CA first (register-ca) or register the certificate without a CA", id, leaf.Issuer, ErrInvalid, account)
			}
		}
		rec := &certRec{PEM: string(encodeCert(leaf.Raw)), Status: status, CAID: caID, CreatedAt: now, cert: leaf}
		a.Certs[id] = rec
		tx.touchCert(account, id)
		if opts.Thing != "" {
			attachLocked(tx, a, opts.Thing, id, now)
		}
		out = r.exportCertLocked(a, id, rec)
		return nil, nil
	})
	if err != nil {
		return Certificate{}, err
	}
	r.log.Info("emulator: certificate registered", "account", account, "cert_id", out.ID, "status", out.Status, "mode", out.Mode, "ca_id", out.CAID)
	return out, nil
}

func thingNameError(name string) error {
	return fmt.Errorf("emulator: thing name %q: %w: use 1-128 letters, digits, ':', '_' or '-'", name, ErrInvalid)
}

func defaultStatus(s, def CertificateStatus) (CertificateStatus, error) {
	if s == "" {
		return def, nil
	}
	return ParseCertificateStatus(string(s))
}

// signerLocked is the ID of the CA, trusted by the account, that chain[0] chains
// to (through the rest of chain), or "". Only signatures count: a certificate
// may be registered before or after its validity.
func (r *Registry) signerLocked(a *accountRec, chain []*x509.Certificate) string {
	ids := make([]string, 0, len(a.CAs)+1)
	for id := range a.CAs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	ids = append(ids, r.issuing.id)
	for _, id := range ids {
		ca, _, _, _ := r.caLocked(a, id)
		at := ca.NotBefore
		for _, c := range chain {
			if c.NotBefore.After(at) {
				at = c.NotBefore
			}
		}
		if verifyChain(chain, ca, at.Add(time.Second)) == nil {
			return id
		}
	}
	return ""
}

// verifyChain checks that chain[0] chains to ca, through chain[1:], at time at.
func verifyChain(chain []*x509.Certificate, ca *x509.Certificate, at time.Time) error {
	if len(chain) == 1 {
		// The common case, without x509.Verify's name and usage machinery.
		if err := chain[0].CheckSignatureFrom(ca); err != nil {
			return err
		}
		if at.Before(ca.NotBefore) || at.After(ca.NotAfter) {
			return fmt.Errorf("the CA %q is valid from %s to %s", ca.Subject, ca.NotBefore.UTC().Format(time.RFC3339), ca.NotAfter.UTC().Format(time.RFC3339))
		}
		return nil
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

func (r *Registry) exportCertLocked(a *accountRec, id string, c *certRec) Certificate {
	mode := ModeSNIOnly
	if c.CAID != "" {
		if _, _, m, ok := r.caLocked(a, c.CAID); ok {
			mode = m
		}
	}
	return Certificate{
		Account: a.Name, ID: id, PEM: c.PEM, Status: c.Status, Mode: mode, CAID: c.CAID,
		Things: slices.Clone(c.Things), Subject: c.cert.Subject.String(),
		NotBefore: c.cert.NotBefore, NotAfter: c.cert.NotAfter, CreatedAt: c.CreatedAt,
	}
}

// IssueOptions are the choices of IssueCertificate. The zero value issues an
// ACTIVE certificate with the emulator's configured lifetime.
type IssueOptions struct {
	Status CertificateStatus `json:"status,omitempty"`
	// Thing, if set, is created when missing and the certificate attached to it.
	Thing string `json:"thing,omitempty"`
	// Lifetime overrides Config.CertificateLifetime for this certificate.
	Lifetime time.Duration `json:"lifetime,omitempty"`
}

// IssueCertificate signs a CSR with the emulator's Amazon-like issuing CA and
// registers the certificate, as AWS's CreateCertificateFromCsr API does from the
// cloud side. The CSR must pass keystore.CheckCSR.
func (r *Registry) IssueCertificate(ctx context.Context, account string, csrPEM []byte, opts IssueOptions) (Certificate, error) {
	if err := ctx.Err(); err != nil {
		return Certificate{}, err
	}
	csr, err := parseCSR(csrPEM)
	if err != nil {
		return Certificate{}, err
	}
	status, err := defaultStatus(opts.Status, StatusActive)
	if err != nil {
		return Certificate{}, err
	}
	if opts.Thing != "" && !isThingName(opts.Thing) {
		return Certificate{}, thingNameError(opts.Thing)
	}
	var out Certificate
	err = r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		id, rec, err := r.issueLocked(tx, a, csr.PublicKey, csr.Subject, status, opts.Lifetime, now)
		if err != nil {
			return nil, err
		}
		if opts.Thing != "" {
			attachLocked(tx, a, opts.Thing, id, now)
		}
		out = r.exportCertLocked(a, id, rec)
		return nil, nil
	})
	if err != nil {
		return Certificate{}, err
	}
	r.log.Info("emulator: certificate issued", "account", account, "cert_id", out.ID, "status", out.Status, "not_after", out.NotAfter)
	return out, nil
}

func parseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	b, _ := pem.Decode(csrPEM)
	if b == nil || (b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST") {
		return nil, fmt.Errorf("emulator: %w: no PEM CERTIFICATE REQUEST block found", ErrInvalid)
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("emulator: %w: the CSR does not parse: %v", ErrInvalid, err)
	}
	if err := keystore.CheckCSR(csr); err != nil {
		return nil, fmt.Errorf("emulator: %w", err)
	}
	return csr, nil
}

// issueLocked signs and registers a certificate for pub in account a.
func (r *Registry) issueLocked(tx *changeSet, a *accountRec, pub any, subject pkix.Name, status CertificateStatus, lifetime time.Duration, now time.Time) (string, *certRec, error) {
	if len(subject.Names) == 0 && subject.CommonName == "" {
		subject.CommonName = "AWS IoT Certificate"
	}
	notBefore := now.Add(-time.Minute).Truncate(time.Second)
	der, err := r.issuing.issue(pub, subject, notBefore, r.cfg.notAfter(now, lifetime))
	if err != nil {
		return "", nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", nil, err
	}
	id := CertificateID(der)
	rec := &certRec{PEM: string(encodeCert(der)), Status: status, CAID: r.issuing.id, CreatedAt: now, cert: cert}
	a.Certs[id] = rec
	tx.touchCert(a.Name, id)
	return id, rec, nil
}

// SetCertificateStatus changes a certificate's status in one account, as AWS's
// UpdateCertificate. A running emulator disconnects the certificate's
// connections in that account when it stops being ACTIVE.
func (r *Registry) SetCertificateStatus(ctx context.Context, account, certID string, status CertificateStatus) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	status, err := ParseCertificateStatus(string(status))
	if err != nil {
		return err
	}
	// AWS's UpdateCertificate throws on PENDING_TRANSFER and
	// PENDING_ACTIVATION (its own internal statuses) and calls
	// REGISTER_INACTIVE deprecated: none is a status one sets.
	switch status {
	case StatusPendingActivation, StatusPendingTransfer, StatusRegisterInactive:
		return fmt.Errorf("emulator: certificate %s in account %s: %w: status %s cannot be set (AWS IoT uses it internally or has deprecated it); set ACTIVE, INACTIVE or REVOKED", certID, account, ErrInvalid, status)
	}
	err = r.mutate(func(tx *changeSet, _ time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		c, ok := a.Certs[certID]
		if !ok {
			return nil, fmt.Errorf("emulator: certificate %s in account %s: %w", certID, account, ErrNotFound)
		}
		// AWS: once a certificate is revoked, its status cannot change.
		if c.Status == StatusRevoked && status != StatusRevoked {
			return nil, fmt.Errorf("emulator: certificate %s in account %s is REVOKED: %w: a revoked certificate's status cannot change; register or issue a new certificate", certID, account, ErrCertificateState)
		}
		c.Status = status
		tx.touchCert(account, certID)
		if r.events.statusChanged == nil {
			return nil, nil
		}
		return []func(){func() { r.events.statusChanged(account, certID, status) }}, nil
	})
	if err == nil {
		r.log.Info("emulator: certificate status changed", "account", account, "cert_id", certID, "status", status)
	}
	return err
}

// Certificate returns one registered certificate.
func (r *Registry) Certificate(ctx context.Context, account, certID string) (Certificate, error) {
	if err := ctx.Err(); err != nil {
		return Certificate{}, err
	}
	r.sweep()
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, err := r.accountLocked(account)
	if err != nil {
		return Certificate{}, err
	}
	c, ok := a.Certs[certID]
	if !ok {
		return Certificate{}, fmt.Errorf("emulator: certificate %s in account %s: %w", certID, account, ErrNotFound)
	}
	return r.exportCertLocked(a, certID, c), nil
}

// Certificates lists an account's certificates ("" lists every account's),
// oldest first.
func (r *Registry) Certificates(ctx context.Context, account string) ([]Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.sweep()
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []Certificate
	for _, a := range r.accountsLocked(account) {
		if a == nil {
			return nil, r.missingAccount(account)
		}
		for id, c := range a.Certs {
			out = append(out, r.exportCertLocked(a, id, c))
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].Account+out[i].ID < out[j].Account+out[j].ID
	})
	return out, nil
}

// DeleteCertificate removes a certificate from an account, as AWS's
// DeleteCertificate: an ACTIVE certificate is refused (ErrCertificateState,
// AWS's CertificateStateException: set it INACTIVE first), and so is one still
// attached to a thing (ErrConflict, AWS's DeleteConflictException: detach it
// first).
func (r *Registry) DeleteCertificate(ctx context.Context, account, certID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return r.mutate(func(tx *changeSet, _ time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		c, ok := a.Certs[certID]
		if !ok {
			return nil, fmt.Errorf("emulator: certificate %s in account %s: %w", certID, account, ErrNotFound)
		}
		if c.Status == StatusActive {
			return nil, fmt.Errorf("emulator: certificate %s in account %s is ACTIVE: %w: set it INACTIVE first", certID, account, ErrCertificateState)
		}
		if len(c.Things) > 0 {
			return nil, fmt.Errorf("emulator: certificate %s in account %s is attached to %s: %w: detach it first", certID, account, strings.Join(c.Things, ", "), ErrConflict)
		}
		if len(c.Policies) > 0 {
			return nil, fmt.Errorf("emulator: certificate %s in account %s: %w: policies %s are attached to it; detach them first", certID, account, ErrConflict, strings.Join(c.Policies, ", "))
		}
		delete(a.Certs, certID)
		tx.touchCert(account, certID)
		return nil, nil
	})
}

func attachLocked(tx *changeSet, a *accountRec, thing, certID string, now time.Time) {
	if _, ok := a.Things[thing]; !ok {
		a.Things[thing] = &thingRec{CreatedAt: now}
		tx.touchThing(a.Name, thing)
	}
	c := a.Certs[certID]
	if !slices.Contains(c.Things, thing) {
		c.Things = append(c.Things, thing)
		sort.Strings(c.Things)
		tx.touchCert(a.Name, certID)
	}
}

// CreateThing creates a thing with optional attributes.
func (r *Registry) CreateThing(ctx context.Context, account, name string, attributes map[string]string) (Thing, error) {
	if err := ctx.Err(); err != nil {
		return Thing{}, err
	}
	if !isThingName(name) {
		return Thing{}, thingNameError(name)
	}
	var out Thing
	err := r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		if _, ok := a.Things[name]; ok {
			return nil, fmt.Errorf("emulator: thing %q in account %s: %w", name, account, ErrExists)
		}
		t := &thingRec{Attributes: attributes, CreatedAt: now}
		a.Things[name] = t
		tx.touchThing(account, name)
		// A new thing has no certificates yet: a certificate names only
		// existing things (attaching creates or needs the thing, and a thing
		// with certificates cannot be deleted), so the scan of every
		// certificate exportThingLocked does, O(fleet), is skipped.
		out = Thing{Account: account, Name: name, CreatedAt: now}
		if len(attributes) > 0 {
			out.Attributes = maps.Clone(attributes)
		}
		return nil, nil
	})
	return out, err
}

// AttachCertificate attaches a certificate to a thing (AttachThingPrincipal):
// from then on it may connect only with the thing's name as client ID.
func (r *Registry) AttachCertificate(ctx context.Context, account, thing, certID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		if _, ok := a.Things[thing]; !ok {
			return nil, fmt.Errorf("emulator: thing %q in account %s: %w", thing, account, ErrNotFound)
		}
		if _, ok := a.Certs[certID]; !ok {
			return nil, fmt.Errorf("emulator: certificate %s in account %s: %w", certID, account, ErrNotFound)
		}
		attachLocked(tx, a, thing, certID, now)
		return nil, nil
	})
}

// DetachCertificate detaches a certificate from a thing.
func (r *Registry) DetachCertificate(ctx context.Context, account, thing, certID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return r.mutate(func(tx *changeSet, _ time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		c, ok := a.Certs[certID]
		if !ok || !slices.Contains(c.Things, thing) {
			return nil, fmt.Errorf("emulator: certificate %s attached to thing %q in account %s: %w", certID, thing, account, ErrNotFound)
		}
		c.Things = slices.DeleteFunc(c.Things, func(t string) bool { return t == thing })
		tx.touchCert(account, certID)
		return nil, nil
	})
}

func exportThingLocked(a *accountRec, name string, t *thingRec) Thing {
	out := Thing{Account: a.Name, Name: name, CreatedAt: t.CreatedAt}
	if len(t.Attributes) > 0 {
		out.Attributes = map[string]string{}
		for k, v := range t.Attributes {
			out.Attributes[k] = v
		}
	}
	for id, c := range a.Certs {
		if slices.Contains(c.Things, name) {
			out.Certificates = append(out.Certificates, id)
		}
	}
	sort.Strings(out.Certificates)
	return out
}

// Thing returns one thing with its attached certificates.
func (r *Registry) Thing(ctx context.Context, account, name string) (Thing, error) {
	return readAccount(ctx, r, account, func(a *accountRec) (Thing, error) {
		t, ok := a.Things[name]
		if !ok {
			return Thing{}, fmt.Errorf("emulator: thing %q in account %s: %w", name, account, ErrNotFound)
		}
		return exportThingLocked(a, name, t), nil
	})
}

// Things lists an account's things ("" lists every account's) by name.
func (r *Registry) Things(ctx context.Context, account string) ([]Thing, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []Thing
	for _, a := range r.accountsLocked(account) {
		if a == nil {
			return nil, r.missingAccount(account)
		}
		for name, t := range a.Things {
			out = append(out, exportThingLocked(a, name, t))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Account+"/"+out[i].Name < out[j].Account+"/"+out[j].Name })
	return out, nil
}

// CreateTemplate adds a fleet-provisioning template to an account. Its body is
// checked now, so a mistake shows here rather than at a device's RegisterThing.
func (r *Registry) CreateTemplate(ctx context.Context, account string, t Template) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !isTemplateName(t.Name) {
		return fmt.Errorf("emulator: template name %q: %w: use 1-36 letters, digits, '_' or '-'", t.Name, ErrInvalid)
	}
	if _, err := parseTemplate(t.Body); err != nil {
		return fmt.Errorf("emulator: template %q: %w", t.Name, err)
	}
	return r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		if t.CreatedAt.IsZero() {
			t.CreatedAt = now
		}
		if _, ok := a.Templates[t.Name]; ok {
			return nil, fmt.Errorf("emulator: template %q in account %s: %w", t.Name, account, ErrExists)
		}
		c := t
		c.Body = slices.Clone(t.Body)
		a.Templates[t.Name] = &c
		tx.touchTemplate(account, t.Name)
		return nil, nil
	})
}

// Templates lists an account's provisioning templates by name.
func (r *Registry) Templates(ctx context.Context, account string) ([]Template, error) {
	return readAccount(ctx, r, account, func(a *accountRec) ([]Template, error) {
		out := make([]Template, 0, len(a.Templates))
		for _, t := range a.Templates {
			out = append(out, *t)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		return out, nil
	})
}

// History returns the connection events that match q, oldest first.
func (r *Registry) History(ctx context.Context, q HistoryQuery) ([]ConnectionEvent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return r.history.query(q), nil
}

// sweep deletes expired ownership tokens, and the certificates they were for
// when those were never activated, as AWS IoT does after the token's hour.
func (r *Registry) sweep() {
	r.mu.RLock()
	now := r.cfg.now()
	due := false
	for _, a := range r.st.Accounts {
		for _, t := range a.Tokens {
			if !now.Before(t.ExpiresAt) {
				due = true
			}
		}
	}
	r.mu.RUnlock()
	if due {
		if err := r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) { r.sweepLocked(tx, now); return nil, nil }); err != nil {
			r.log.Warn("emulator: removing expired ownership tokens", "error", err)
		}
	}
}

func (r *Registry) sweepLocked(tx *changeSet, now time.Time) {
	for _, a := range r.st.Accounts {
		for tok, t := range a.Tokens {
			if now.Before(t.ExpiresAt) {
				continue
			}
			delete(a.Tokens, tok)
			tx.touchToken(a.Name, tok)
			if c, ok := a.Certs[t.CertID]; ok && c.Status == StatusPendingActivation && len(c.Things) == 0 {
				delete(a.Certs, t.CertID)
				tx.touchCert(a.Name, t.CertID)
				r.log.Info("emulator: certificate deleted: its ownership token expired before RegisterThing", "account", a.Name, "cert_id", t.CertID)
			}
		}
	}
}
