package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/backends"
	"github.com/thingcert/thingcert/rotation"
)

// devicePlan is what a configuration resolves to before anything is opened:
// the files it names are read here, so a reload can refuse a configuration
// whose CA file is missing before it replaces a working one.
type devicePlan struct {
	cfg   *config.Config
	roots *x509.CertPool // nil: Amazon's roots
	trust *x509.CertPool // nil: the chain is not checked
}

func planDevice(cfg *config.Config) (*devicePlan, error) {
	p := &devicePlan{cfg: cfg}
	var err error
	if cfg.CA != "" {
		if p.roots, err = LoadCAFile(cfg.CA); err != nil {
			return nil, fmt.Errorf("config %s: ca: %w", cfg.Path, err)
		}
	}
	if cfg.Rotation.Trust != "" {
		if p.trust, err = LoadCAFile(cfg.Rotation.Trust); err != nil {
			return nil, fmt.Errorf("config %s: rotation.trust: %w", cfg.Path, err)
		}
	}
	if c := cfg.Claim; c != nil {
		if _, err := os.Stat(c.Cert); err != nil {
			return nil, fmt.Errorf("config %s: claim.cert: %w", cfg.Path, err)
		}
	}
	return p, nil
}

// endpoint is the configuration's endpoint.
func (p *devicePlan) endpoint() Endpoint {
	return Endpoint{Host: p.cfg.Endpoint, Port: p.cfg.Port, Address: p.cfg.Address}
}

// connectionKey is what a running connection depends on: when a reload
// changes it, the daemon reconnects.
func (p *devicePlan) connectionKey() string {
	c := p.cfg
	claimID := ""
	if c.Claim != nil {
		claimID = c.Claim.ClientID
	}
	return fmt.Sprintf("%s|%d|%s|%s|%s|%s|%s", c.Endpoint, c.Port, c.Address, c.CA, c.ThingName, c.ClientID, claimID)
}

// keyStores opens key stores on demand: the device's store (where rotation
// makes keys) and the store of any key outside it (a claim key on another
// token or in another folder). Safe for concurrent use.
type keyStores struct {
	log     *slog.Logger
	metrics *Metrics

	mu     sync.Mutex
	main   keystore.Store
	uri    string
	others map[string]keystore.Store // by the key URI that needed them
}

func openKeyStores(ctx context.Context, storeURI string, log *slog.Logger, m *Metrics) (*keyStores, error) {
	s, err := backends.Open(ctx, storeURI, keystore.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("agent: key store %s (config store): %w", keystore.RedactURI(storeURI), err)
	}
	return &keyStores{log: log, metrics: m, main: s, uri: storeURI, others: map[string]keystore.Store{}}, nil
}

// open opens a key in the device's store, or in its own store; keys come
// back wrapped to count signing errors.
func (k *keyStores) open(ctx context.Context, uri string) (keystore.Key, error) {
	key, err := k.main.Open(ctx, uri)
	if !errors.Is(err, keystore.ErrInvalidURI) {
		return k.metrics.CountSigningErrors(key), err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if s, ok := k.others[uri]; ok {
		key, err := s.Open(ctx, uri)
		return k.metrics.CountSigningErrors(key), err
	}
	s, key, err := backends.OpenKey(ctx, uri, keystore.Options{Logger: k.log})
	if err != nil {
		return nil, err
	}
	k.others[uri] = s
	return k.metrics.CountSigningErrors(key), nil
}

func (k *keyStores) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	var errs []error
	for _, s := range k.others {
		errs = append(errs, s.Close())
	}
	k.others = nil
	errs = append(errs, k.main.Close())
	return errors.Join(errs...)
}

// newSession is the connection for a plan.
func newSession(p *devicePlan, log *slog.Logger, onState func(StateChange), minInterval time.Duration) *Session {
	s := &Session{
		Config: Config{
			Endpoint:      p.endpoint(),
			Roots:         p.roots,
			ThingName:     p.cfg.ThingName,
			ClientID:      p.cfg.ClientID,
			Logger:        log,
			OnStateChange: onState,
		},
		MinConnectInterval: minInterval,
	}
	if p.cfg.Claim != nil {
		s.ClaimClientID = p.cfg.Claim.ClientID
	}
	return s
}

// newRunner is the rotation runner for a plan, over the daemon's session.
func newRunner(p *devicePlan, stores *keyStores, conn rotation.Connector, s *Session, log *slog.Logger, now func() time.Time, afterSave func(context.Context, *rotation.State) error) *rotation.Runner {
	cfg := p.cfg
	var issuer rotation.Issuer
	switch cfg.Provisioning.Issuer {
	case config.IssuerTopics:
		issuer = &TopicIssuer{Conn: s, ThingName: cfg.ThingName, Request: cfg.Provisioning.Topics.Request,
			Response: cfg.Provisioning.Topics.Response, Timeout: cfg.RequestTimeout()}
	default:
		issuer = &FleetProvisioning{Conn: s, Template: cfg.Provisioning.Template, Parameters: cfg.Provisioning.Parameters,
			ThingName: cfg.ThingName, Timeout: cfg.RequestTimeout()}
	}
	return &rotation.Runner{
		Machine:   cfg.Machine(),
		Policy:    cfg.Policy(),
		DeviceID:  cfg.ClientID,
		State:     rotation.StateStore{Dir: cfg.StateDir},
		Store:     stores.main,
		OpenKey:   stores.open,
		Algorithm: cfg.Algorithm(),
		Subject:   cfg.Subject,
		Issuer:    issuer,
		Connector: conn,
		Reporter:  JobReporter{Jobs: s.Jobs()},
		Roots:     p.trust,
		Now:       now,
		Log:       log,
		AfterSave: afterSave,
	}
}

// runLockFile keeps a second `thingcert run`, or a `thingcert provision` or
// `rotate` by hand, off a state folder the agent is using: two processes with
// one client ID would take the connection from each other forever.
const runLockFile = "run.lock"

// LockRun takes the state folder's run lock (flock, released by the kernel
// when the process dies). `thingcert run` holds it for its life, the
// provision and rotate commands while they work.
func LockRun(dir string) (io.Closer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: state folder %s: %w", dir, err)
	}
	path := filepath.Join(dir, runLockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			who := "another thingcert process"
			if pid, perr := strconv.Atoi(string(holder)); perr == nil {
				who += fmt.Sprintf(" (pid %d)", pid)
			}
			return nil, fmt.Errorf("agent: %s is using state folder %s: if it is the agent (`thingcert run`), stop it first (systemctl stop thingcert) or rotate through a job", who, dir)
		}
		return nil, fmt.Errorf("agent: locking %s: %w", path, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())), 0)
	return f, nil
}

// Rotation is what one `thingcert provision` or `rotate` by hand works with:
// the state folder's run lock (so it cannot run beside the agent), the key
// stores, the connection and the rotation runner, built as the agent builds
// its own.
type Rotation struct {
	Session *Session
	Runner  *rotation.Runner
	stores  *keyStores
	lock    io.Closer
}

// OpenRotation opens a Rotation for cfg. afterSave, if set, runs after each
// saved step (tests stop the process there).
func OpenRotation(ctx context.Context, cfg *config.Config, log *slog.Logger, afterSave func(context.Context, *rotation.State) error) (*Rotation, error) {
	p, err := planDevice(cfg)
	if err != nil {
		return nil, err
	}
	lock, err := LockRun(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	stores, err := openKeyStores(ctx, cfg.Store, log, nil)
	if err != nil {
		lock.Close()
		return nil, err
	}
	s := newSession(p, log, nil, 0)
	return &Rotation{
		Session: s,
		Runner:  newRunner(p, stores, s, s, log, nil, afterSave),
		stores:  stores,
		lock:    lock,
	}, nil
}

// Close disconnects, closes the key stores and releases the run lock.
func (r *Rotation) Close(ctx context.Context) error {
	err := errors.Join(r.Session.Close(ctx), r.stores.Close())
	return errors.Join(err, r.lock.Close())
}
