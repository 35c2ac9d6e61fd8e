package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

// DaemonOptions configure a Daemon. Only Config is required; every other
// field has a documented zero value.
type DaemonOptions struct {
	// Config is the device configuration (required).
	Config *config.Config
	// Reload reads the configuration again when Reload is called (SIGHUP).
	// Nil reads Config.Path with config.Load.
	Reload func() (*config.Config, error)
	// Log is the daemon's logger; nil logs to stderr in the configured format,
	// journald-style when $JOURNAL_STREAM is set.
	Log *DaemonLogger
	// Notifier talks to systemd; nil talks to nobody.
	Notifier *Notifier
	// Metrics collects the figures; nil makes new ones. They are served when
	// the configuration sets metrics.listen.
	Metrics *Metrics
	// Socket is the path of the local socket the device's own programs
	// publish and subscribe through (DialAgent); empty: none.
	Socket string
	// MinConnectInterval spaces two CONNECTs with one client ID; zero is 1 s
	// (AWS IoT's limit), negative none (for an emulator with the limit off).
	MinConnectInterval time.Duration
	// StopTimeout bounds how long stopping waits for a rotation step to end;
	// zero is 30 s. A step cut short is safe: each state is persisted before
	// its action, and the next start resumes it.
	StopTimeout time.Duration
	// Version is recorded for `thingcert status`.
	Version string
	// OnEvent, if set, is told what happens, in order (the demo prints a
	// timeline from it). It must return quickly.
	OnEvent func(DaemonEvent)
	// AfterSave, if set, is called after each rotation state is persisted,
	// after the daemon's own bookkeeping (tests stop the process there).
	AfterSave func(ctx context.Context, s *rotation.State) error
	// Now, After and Rand replace the clock, the renewal timer and the jitter
	// source, for tests. Now is also the rotation runner's clock.
	Now   func() time.Time
	After func(time.Duration) <-chan time.Time
	Rand  func() float64
}

// DaemonEventKind names a DaemonEvent.
type DaemonEventKind string

// What a daemon reports to DaemonOptions.OnEvent.
const (
	EventReady          DaemonEventKind = "ready"
	EventConnected      DaemonEventKind = "connected"
	EventConnectionLost DaemonEventKind = "connection-lost"
	EventConnectFailed  DaemonEventKind = "connect-failed"
	EventRotationStart  DaemonEventKind = "rotation-started"
	EventRotationStep   DaemonEventKind = "rotation-step"
	EventRotationEnd    DaemonEventKind = "rotation-ended"
	EventJob            DaemonEventKind = "job"
	EventReloaded       DaemonEventKind = "reloaded"
	EventReloadRefused  DaemonEventKind = "reload-refused"
	EventStopping       DaemonEventKind = "stopping"
	// EventIdentityRefused: the cloud refused the device's own identity
	// (revoked, deactivated, deleted); the message says what follows.
	EventIdentityRefused DaemonEventKind = "identity-refused"
	// EventRecovered: with claim.recover the claim is the identity again, to
	// provision anew.
	EventRecovered DaemonEventKind = "recovered"
)

// DaemonEvent is one thing that happened in a daemon.
type DaemonEvent struct {
	At      time.Time
	Kind    DaemonEventKind
	Message string
	// State is the rotation state, for rotation events.
	State *rotation.State
	// Change is the connection's change, for connection events.
	Change *StateChange
	JobID  string
	Err    error
}

// Daemon is the device agent `thingcert run` runs: it provisions the device
// if it has no identity of its own yet, keeps it connected (with backoff and
// jitter), renews its certificate when the policy says so or a job asks,
// offers the connection to the device's own programs (Publish, Subscribe,
// and the local socket), and reports to systemd and Prometheus. Stopping it
// (cancelling Run's context) never leaves a half-written state: every
// rotation state is persisted before its action, and the next Run resumes.
type Daemon struct {
	opts     DaemonOptions
	dlog     *DaemonLogger
	log      *slog.Logger
	now      func() time.Time
	after    func(time.Duration) <-chan time.Time
	rand     func() float64
	metrics  *Metrics
	notifier *Notifier
	router   *router

	reloadc  chan struct{}
	jobc     chan string
	rotatec  chan rotation.Trigger
	connc    chan struct{}
	recordc  chan struct{}
	refusedc chan error    // the client, reconnecting on its own, had the identity refused
	deviceUp chan struct{} // closed once the device's own identity connected

	mu           sync.Mutex // guards the fields below
	plan         *devicePlan
	stores       *keyStores
	session      *Session
	runner       *rotation.Runner
	record       DaemonRecord
	connState    State
	subscribedOn *Client // the client the router and jobs listener are subscribed on
	upOnce       sync.Once
}

// NewDaemon checks the options. Nothing is opened until Run.
func NewDaemon(opts DaemonOptions) (*Daemon, error) {
	if opts.Config == nil {
		return nil, errors.New("agent: daemon without a configuration")
	}
	d := &Daemon{
		opts:     opts,
		dlog:     opts.Log,
		now:      opts.Now,
		after:    opts.After,
		rand:     opts.Rand,
		metrics:  opts.Metrics,
		notifier: opts.Notifier,
		reloadc:  make(chan struct{}, 1),
		jobc:     make(chan string, 16),
		rotatec:  make(chan rotation.Trigger, 4),
		connc:    make(chan struct{}, 1),
		recordc:  make(chan struct{}, 1),
		refusedc: make(chan error, 1),
		deviceUp: make(chan struct{}),
	}
	if d.dlog == nil {
		d.dlog = NewDaemonLogger(os.Stderr, opts.Config.Log, os.Getenv("JOURNAL_STREAM") != "")
	}
	d.log = d.dlog.Logger()
	if d.now == nil {
		d.now = time.Now
	}
	if d.after == nil {
		d.after = time.After
	}
	if d.rand == nil {
		d.rand = rand.Float64
	}
	if d.metrics == nil {
		d.metrics = NewMetrics(d.now)
	}
	if d.opts.Reload == nil {
		path := opts.Config.Path
		d.opts.Reload = func() (*config.Config, error) { return config.Load(path) }
	}
	if d.opts.StopTimeout <= 0 {
		d.opts.StopTimeout = 30 * time.Second
	}
	d.router = newRouter(d.log)
	return d, nil
}

// Logger is the daemon's logger.
func (d *Daemon) Logger() *slog.Logger { return d.log }

// Metrics are the daemon's metrics.
func (d *Daemon) Metrics() *Metrics { return d.metrics }

// Reload asks the running daemon to read its configuration again. A
// configuration that does not load or check is refused, logged, and the
// running one kept. It does not wait.
func (d *Daemon) Reload() {
	select {
	case d.reloadc <- struct{}{}:
	default: // a reload is pending already
	}
}

// RequestRotation asks the daemon to rotate now (an operator's request). It
// does not wait; the outcome shows in the state folder and the events.
func (d *Daemon) RequestRotation(reason string) {
	select {
	case d.rotatec <- rotation.Trigger{Kind: rotation.TriggerOperator, Reason: reason}:
	default:
	}
}

func (d *Daemon) emit(ev DaemonEvent) {
	if d.opts.OnEvent == nil {
		return
	}
	if ev.At.IsZero() {
		ev.At = d.now()
	}
	d.opts.OnEvent(ev)
}

func (d *Daemon) cfg() *config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.plan == nil {
		return d.opts.Config // before Run
	}
	return d.plan.cfg
}

func (d *Daemon) currentSession() *Session {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.session
}

func (d *Daemon) currentRunner() *rotation.Runner {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.runner
}

// Run runs the daemon until ctx ends or it cannot go on (no identity and no
// claim, a state folder in use by another daemon, a key store that does not
// open). It returns nil after a clean stop.
func (d *Daemon) Run(ctx context.Context) error {
	cfg := d.opts.Config
	plan, err := planDevice(cfg)
	if err != nil {
		return err
	}
	lock, err := LockRun(cfg.StateDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	stores, err := openKeyStores(ctx, cfg.Store, d.log, d.metrics)
	if err != nil {
		return err
	}
	d.install(plan, stores)
	defer func() {
		d.mu.Lock()
		s := d.stores
		d.mu.Unlock()
		s.Close()
	}()
	d.mu.Lock()
	d.record = DaemonRecord{PID: os.Getpid(), Started: d.now(), Config: cfg.Path, Version: d.opts.Version,
		Connection: ConnectionRecord{State: StateDisconnected.String()}}
	if b, err := bootID(); err == nil {
		d.record.BootID = b
	}
	if t, err := processStartTicks(os.Getpid()); err == nil {
		d.record.StartTicks = t
	}
	d.mu.Unlock()
	d.saveRecord()

	st, err := d.initialState(ctx)
	if err != nil {
		d.stopped()
		return err
	}
	d.showIdentity(st)

	svcCtx, stopServices := context.WithCancel(context.WithoutCancel(ctx))
	svc := &services{ctx: svcCtx, stopMetrics: func() {}}
	defer func() {
		stopServices()
		svc.wg.Wait()
	}()
	if err := d.serveMetrics(svc, cfg.Metrics.Listen); err != nil {
		d.stopped()
		return err
	}
	if d.opts.Socket != "" {
		l, err := listenLocal(d.opts.Socket)
		if err != nil {
			d.stopped()
			return err
		}
		svc.wg.Add(1)
		go func() {
			defer svc.wg.Done()
			d.serveLocal(svcCtx, l)
		}()
	}
	d.log.Info("thingcert agent started", "thing", cfg.ThingName, "endpoint", plan.endpoint().String(),
		"state", cfg.StateDir, "store", keystore.RedactURI(cfg.Store), "systemd", d.notifier.String(),
		"metrics", cfg.Metrics.Listen, "socket", d.opts.Socket)
	d.notifier.Ready("connecting to " + plan.endpoint().String())
	d.emit(DaemonEvent{Kind: EventReady, Message: "agent started; connecting to " + plan.endpoint().String()})
	err = d.loop(ctx, st, svc)
	d.stopped()
	return err
}

// install makes the session and runner for a plan.
func (d *Daemon) install(p *devicePlan, stores *keyStores) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.plan, d.stores = p, stores
	d.session = newSession(p, d.log, d.onStateChange, d.opts.MinConnectInterval)
	d.runner = newRunner(p, stores, daemonConnector{d}, d.session, d.log, d.now, d.afterSave)
}

// initialState loads the state folder, adopting the configured identity (key
// and cert) or the claim when it has none yet.
func (d *Daemon) initialState(ctx context.Context) (*rotation.State, error) {
	r := d.currentRunner()
	cfg := d.cfg()
	st, err := r.Load()
	if !errors.Is(err, rotation.ErrNoState) {
		return st, err
	}
	switch {
	case cfg.Key != "":
		d.log.Info("adopting the configured identity", "key", keystore.RedactURI(cfg.Key), "cert", cfg.Cert)
		return r.Adopt(ctx, rotation.IdentityRecord{KeyURI: cfg.Key, CertFile: cfg.Cert})
	case cfg.Claim != nil:
		d.log.Info("no identity yet: provisioning by claim", "claim_key", keystore.RedactURI(cfg.Claim.Key), "claim_cert", cfg.Claim.Cert)
		return r.Adopt(ctx, rotation.IdentityRecord{KeyURI: cfg.Claim.Key, CertFile: cfg.Claim.Cert, Claim: true})
	}
	return nil, fmt.Errorf("agent: the state folder %s holds no identity and config %s gives none: set claim (claim.key, claim.cert) to provision by claim, or key and cert for an identity made elsewhere", cfg.StateDir, cfg.Path)
}

// showIdentity publishes the current identity to the metrics.
func (d *Daemon) showIdentity(st *rotation.State) {
	if st == nil || st.Current == nil {
		return
	}
	c := st.Current
	d.metrics.SetCertificate(c.CertificateID, backendOf(c.KeyURI), c.NotBefore, c.NotAfter)
}

// task is one piece of work the daemon does at a time: connecting,
// provisioning and rotating all move the one connection.
type task struct {
	kind    taskKind
	trigger rotation.Trigger
	jobID   string
	why     string // for a recovery: the refusal
}

type taskKind string

const (
	taskConnect   taskKind = "connect"
	taskProvision taskKind = "provision"
	taskResume    taskKind = "resume"
	taskRotate    taskKind = "rotate"
	taskJob       taskKind = "job"
	taskCheckJobs taskKind = "check-jobs"
	taskRecover   taskKind = "recover"
)

type taskResult struct {
	task  task
	state *rotation.State
	err   error
	// rotated is set when the task ran a rotation (rather than finding none
	// to do).
	rotated bool
	// recovered is set when a recover task made the claim current again.
	recovered bool
}

// loop is the daemon's main loop: it runs one task at a time, arms the
// renewal timer when idle, and answers reloads, jobs, the watchdog and stop.
func (d *Daemon) loop(ctx context.Context, st *rotation.State, svc *services) error {
	queue := []task{{kind: taskConnect}}
	switch {
	case st.Current.Claim:
		queue = append(queue, task{kind: taskProvision})
	case st.InProgress():
		queue = append(queue, task{kind: taskResume})
	}
	var (
		running     *task
		stopRunning context.CancelFunc // ends the running task early (a connect, for a reload)
		interrupted bool               // stopRunning was called
		done        = make(chan taskResult, 1)
		timerc      <-chan time.Time
		watchdog    <-chan time.Time
		failures    int
		notBefore   time.Time
		pendingPlan *devicePlan
		jobsSeen    = map[string]bool{}
		// Recoveries by claim are spaced (nextRecovery): none before recoverAt.
		recoveries   int
		lastRecovery time.Time
		recoverAt    time.Time
		refusal      *refusalError
	)
	if iv := d.notifier.WatchdogInterval(); iv > 0 {
		t := time.NewTicker(iv)
		defer t.Stop()
		watchdog = t.C
	}
	// stopTimer forgets the renewal timer, so the next round decides again.
	stopTimer := func() { timerc = nil }
	var queued func(k taskKind, job string) bool
	enqueue := func(ts ...task) {
		for _, t := range ts {
			if !queued(t.kind, t.jobID) {
				queue = append(queue, t)
			}
		}
	}
	// queueRecovery puts a recovery first, within the recoveries' spacing.
	queueRecovery := func(why string) {
		if !queued(taskRecover, "") {
			queue = append([]task{{kind: taskRecover, why: why}}, queue...)
		}
		if notBefore.Before(recoverAt) {
			notBefore = recoverAt
		}
	}
	queued = func(k taskKind, job string) bool {
		if running != nil && running.kind == k && running.jobID == job {
			return true
		}
		for _, t := range queue {
			if t.kind == k && t.jobID == job {
				return true
			}
		}
		return false
	}
	for {
		now := d.now()
		if running == nil && len(queue) > 0 && !now.Before(notBefore) {
			t := queue[0]
			queue = queue[1:]
			running = &t
			stopTimer()
			tctx, cancel := context.WithCancel(ctx)
			stopRunning, interrupted = cancel, false
			go func() {
				defer cancel()
				done <- d.runTask(tctx, t)
			}()
		}
		if running == nil && timerc == nil {
			if len(queue) > 0 {
				// Waiting out a failure's backoff before the next task.
				timerc = d.after(notBefore.Sub(now))
			} else if t, wait := d.schedule(now); t != nil {
				queue = append(queue, *t)
				continue
			} else {
				timerc = d.after(wait)
			}
		}
		select {
		case <-ctx.Done():
			return d.shutdown(ctx, running, done)
		case r := <-done:
			running = nil
			switch {
			case interrupted && ctx.Err() == nil:
				// Stopped for a reload: do it again after (unless the reload
				// queued it already).
				if !queued(r.task.kind, r.task.jobID) {
					queue = append([]task{r.task}, queue...)
				}
			case errors.As(r.err, &refusal) && ctx.Err() == nil:
				// A connect found the device's identity refused: recover,
				// then connect again (with the claim if it recovered).
				if !queued(taskConnect, "") {
					queue = append([]task{r.task}, queue...)
				}
				queueRecovery(refusal.err.Error())
			case r.err != nil && ctx.Err() == nil && !errors.Is(r.err, rotation.ErrRolledBack):
				failures++
				delay := Backoff{Min: 5 * time.Second, Max: 5 * time.Minute}.Delay(failures-1, d.rand())
				notBefore = d.now().Add(delay)
				d.log.Error("task failed; trying again later", "task", r.task.kind, "retry_in", delay.Round(time.Millisecond).String(), "error", r.err)
				if r.task.kind != taskCheckJobs {
					queue = append([]task{r.task}, queue...)
				}
			case r.err == nil:
				failures = 0
			}
			if r.recovered {
				recoveries, recoverAt = nextRecovery(recoveries, lastRecovery, d.now(), d.rand())
				lastRecovery = d.now()
				// The claim connects and provisions, as on a new device.
				enqueue(task{kind: taskConnect}, task{kind: taskProvision})
			}
			d.afterTask(r)
			if pendingPlan != nil {
				enqueue(d.apply(ctx, pendingPlan, svc)...)
				pendingPlan = nil
			}
		case <-d.reloadc:
			p := d.prepareReload()
			switch {
			case p == nil:
			case running != nil && (running.kind == taskConnect || running.kind == taskCheckJobs):
				// A connect may never succeed with the old settings (the
				// reload may be what fixes them): stop it, apply, start again.
				d.applyServices(p, svc)
				pendingPlan = p
				interrupted = true
				stopRunning()
			case running != nil:
				// Logging and metrics change now; the connection and the
				// rotation settings when the task ends (a rotation waiting to
				// retry may take hours).
				d.applyServices(p, svc)
				d.log.Info("configuration reload checked; logging and metrics applied, the rest when the current task ends", "task", running.kind)
				pendingPlan = p
			default:
				enqueue(d.apply(ctx, p, svc)...)
			}
			stopTimer()
		case id := <-d.jobc:
			if !jobsSeen[id] && !queued(taskJob, id) {
				queue = append(queue, task{kind: taskJob, jobID: id})
			}
			stopTimer()
		case t := <-d.rotatec:
			queue = append(queue, task{kind: taskRotate, trigger: t})
			stopTimer()
		case <-d.connc:
			if d.cfg().JobsEnabled() && !queued(taskCheckJobs, "") {
				queue = append(queue, task{kind: taskCheckJobs})
			}
			stopTimer()
		case err := <-d.refusedc:
			queueRecovery(err.Error())
			stopTimer()
		case <-d.recordc:
			d.saveRecord()
		case <-watchdog:
			d.notifier.Watchdog()
		case <-timerc:
			timerc = nil
		}
		// A job is carried out once, however often it is notified.
		if running != nil && running.kind == taskJob {
			jobsSeen[running.jobID] = true
		}
	}
}

// maxSleep caps the renewal timer, so a wall clock that jumps (a device
// without a real-time clock setting its time from NTP after boot) is noticed
// within the hour.
const maxSleep = time.Hour

// schedule decides, when idle, whether a rotation is due now (a task) or how
// long to sleep before deciding again.
func (d *Daemon) schedule(now time.Time) (*task, time.Duration) {
	r := d.currentRunner()
	st, err := r.Load()
	if err != nil {
		d.log.Error("reading the rotation state", "error", err)
		return nil, time.Minute
	}
	if st.Current == nil {
		return nil, maxSleep
	}
	if st.Current.Claim {
		// After a provisioning that rolled back, wait out its backoff.
		if !st.InProgress() && now.Before(st.NextRetry) {
			return nil, min(st.NextRetry.Sub(now), maxSleep)
		}
		return &task{kind: taskProvision}, 0
	}
	if st.InProgress() {
		return &task{kind: taskResume}, 0
	}
	dec, due := r.Due(st, now)
	d.metrics.SetNextRenewal(dec.At, dec.Emergency)
	if due {
		return &task{kind: taskRotate, trigger: rotation.Trigger{Kind: rotation.TriggerTime, Reason: string(dec.Reason)}}, 0
	}
	if rotation.ActionFor(st, now) == rotation.ActRetire {
		return &task{kind: taskResume}, 0
	}
	next := dec.At
	if w := st.WakeAt(now); !w.IsZero() && w.Before(next) {
		next = w
	}
	wait := next.Sub(now)
	if wait > maxSleep {
		wait = maxSleep
	}
	if wait < 0 {
		wait = 0
	}
	d.log.Debug("renewal timer", "next", dec.String(), "sleep", wait.String())
	return nil, wait
}

// runTask does one task; it runs in its own goroutine.
func (d *Daemon) runTask(ctx context.Context, t task) taskResult {
	r := d.currentRunner()
	res := taskResult{task: t}
	switch t.kind {
	case taskConnect:
		res.err = d.connect(ctx)
	case taskProvision:
		cfg := d.cfg()
		if cfg.Claim == nil {
			res.state, res.err = r.Resume(ctx)
			break
		}
		claim := rotation.IdentityRecord{KeyURI: cfg.Claim.Key, CertFile: cfg.Claim.Cert, Claim: true}
		d.emit(DaemonEvent{Kind: EventRotationStart, Message: "provisioning by claim"})
		d.metrics.RotationStarted(string(rotation.TriggerProvision))
		res.rotated = true
		res.state, res.err = r.Provision(ctx, claim)
		if errors.Is(res.err, rotation.ErrAlreadyProvisioned) {
			res.err = nil
		}
	case taskResume:
		st, err := r.Load()
		if err == nil && st.InProgress() && st.Trigger != nil {
			d.emit(DaemonEvent{Kind: EventRotationStart, Message: "resuming the rotation in progress (" + st.Trigger.String() + ") from " + string(st.Phase), State: st})
			d.metrics.RotationStarted(string(st.Trigger.Kind))
			res.rotated = true
		}
		res.state, res.err = r.Resume(ctx)
	case taskRotate:
		d.emit(DaemonEvent{Kind: EventRotationStart, Message: "rotation for " + t.trigger.String()})
		d.metrics.RotationStarted(string(t.trigger.Kind))
		res.rotated = true
		res.state, res.err = r.Rotate(ctx, t.trigger)
	case taskJob:
		res.state, res.rotated, res.err = d.runJob(ctx, r, t.jobID)
	case taskCheckJobs:
		res.err = d.checkJobs(ctx)
	case taskRecover:
		res.state, res.recovered, res.err = d.recoverIdentity(ctx, r, t.why)
	}
	return res
}

// connect connects with the current identity, retrying with backoff and
// jitter until it works or ctx ends.
func (d *Daemon) connect(ctx context.Context) error {
	r := d.currentRunner()
	for failures := 0; ; failures++ {
		st, err := d.connectOnce(ctx, r)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		if d.recoverable(st, err) {
			return &refusalError{err}
		}
		delay := Backoff{}.Delay(failures, d.rand())
		if IdentityRefused(err) && st != nil && !st.Current.Claim {
			d.adviseRefused(st, err)
			d.notifier.Status(refusedStatus(err, delay, false))
		} else {
			d.log.Warn("cannot connect; trying again", "retry_in", delay.Round(time.Millisecond).String(), "error", err)
			d.notifier.Status("not connected (" + FailureKind(err) + "); retrying in " + Human(delay))
		}
		d.emit(DaemonEvent{Kind: EventConnectFailed, Message: err.Error(), Err: err})
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// connectOnce makes one attempt with the current identity, which it returns.
func (d *Daemon) connectOnce(ctx context.Context, r *rotation.Runner) (*rotation.State, error) {
	st, err := r.Load()
	if err != nil {
		return nil, err
	}
	id, err := r.Identity(ctx, *st.Current)
	if err != nil {
		return st, fmt.Errorf("agent: opening the current identity (certificate %s, key %s): %w", short(st.Current.CertificateID), keystore.RedactURI(st.Current.KeyURI), err)
	}
	return st, daemonConnector{d}.Switch(ctx, id)
}

// recordProtection notes how the key about to be used is protected, for
// `thingcert status` (which never opens the store itself).
func (d *Daemon) recordProtection(ctx context.Context, id rotation.Identity) {
	var prot *keystore.Protection
	if pr, ok := id.Key.(keystore.ProtectionReporter); ok {
		if p, err := pr.Protection(ctx); err == nil {
			prot = &p
		}
	}
	// Redacted: the record is for people, and a PKCS#11 URI may carry a PIN.
	uri := keystore.RedactURI(id.Record.KeyURI)
	d.mu.Lock()
	changed := d.record.KeyURI != uri
	d.record.KeyURI, d.record.Protection = uri, prot
	d.mu.Unlock()
	if changed {
		d.pokeRecord()
	}
}

// runJob carries out a rotation job: marks it IN_PROGRESS, rotates (the
// runner reports SUCCEEDED or FAILED to the job), or resumes the rotation
// already running for it.
func (d *Daemon) runJob(ctx context.Context, r *rotation.Runner, jobID string) (*rotation.State, bool, error) {
	st, err := r.Load()
	if err != nil {
		return nil, false, err
	}
	trig := rotation.Trigger{Kind: rotation.TriggerJob, JobID: jobID, Reason: RotateOperation}
	if st.InProgress() && st.Trigger != nil && st.Trigger.JobID == jobID {
		d.metrics.RotationStarted(string(rotation.TriggerJob))
		st, err := r.Resume(ctx)
		return st, true, err
	}
	if lr := st.LastResult; lr != nil && lr.Trigger.JobID == jobID {
		d.log.Info("job already carried out", "job", jobID, "outcome", lr.Outcome)
		return st, false, nil
	}
	jobs := d.currentSession().Jobs()
	if err := jobs.Update(ctx, jobID, JobInProgress, map[string]string{"step": "rotating", "certificateId": st.Current.CertificateID}); err != nil {
		var je *JobsError
		if errors.As(err, &je) && (je.Code == "InvalidStateTransition" || je.Code == "ResourceNotFound" || je.Code == "TerminalStateReached") {
			d.log.Info("rotation job no longer pending; skipped", "job", jobID, "reason", je.Error())
			return st, false, nil
		}
		return st, false, fmt.Errorf("agent: marking job %s IN_PROGRESS: %w", jobID, err)
	}
	d.emit(DaemonEvent{Kind: EventRotationStart, Message: "rotation for job " + jobID, JobID: jobID})
	d.metrics.RotationStarted(string(rotation.TriggerJob))
	st, err = r.Rotate(ctx, trig)
	return st, true, err
}

// checkJobs asks for the next pending job, in case a notification was missed
// while the device was offline.
func (d *Daemon) checkJobs(ctx context.Context) error {
	if !d.deviceConnected() || !d.cfg().JobsEnabled() {
		return nil
	}
	e, err := d.currentSession().Jobs().Next(ctx)
	if err != nil {
		return err
	}
	d.onJob(e)
	return nil
}

func (d *Daemon) onJob(e *JobExecution) {
	if e == nil || !e.IsRotation() || (e.Status != JobQueued && e.Status != JobInProgress) {
		return
	}
	d.emit(DaemonEvent{Kind: EventJob, Message: "job " + e.JobID + " asks for a certificate rotation (" + e.Status + ")", JobID: e.JobID})
	select {
	case d.jobc <- e.JobID:
	default:
		d.log.Warn("too many jobs pending; this one is picked up later", "job", e.JobID)
	}
}

func (d *Daemon) deviceConnected() bool {
	select {
	case <-d.deviceUp:
		return true
	default:
		return false
	}
}

// afterTask updates what depends on the identity once a task ends.
func (d *Daemon) afterTask(r taskResult) {
	st := r.state
	if st == nil {
		st, _ = d.currentRunner().Load()
	}
	d.showIdentity(st)
	if r.rotated {
		outcome, trig := "", ""
		if st != nil && st.LastResult != nil {
			outcome, trig = string(st.LastResult.Outcome), string(st.LastResult.Trigger.Kind)
		}
		if r.state != nil && r.err == nil || errors.Is(r.err, rotation.ErrRolledBack) {
			d.metrics.RotationEnded(trig, outcome)
			msg := "rotation " + outcome
			if st != nil && st.LastResult != nil {
				lr := st.LastResult
				msg = fmt.Sprintf("%s %s: %s → %s", lr.Trigger, lr.Outcome, short(lr.OldCertificateID), short(lr.NewCertificateID))
				if lr.Error != "" {
					msg += ": " + lr.Error
				}
			}
			d.emit(DaemonEvent{Kind: EventRotationEnd, Message: msg, State: st, Err: r.err})
		} else {
			d.metrics.RotationEnded(trig, "")
		}
	}
	d.notifier.Status(d.statusLine())
}

// statusLine is the one-line status for systemd.
func (d *Daemon) statusLine() string {
	d.mu.Lock()
	state := d.connState
	d.mu.Unlock()
	st, err := d.currentRunner().Load()
	if err != nil || st.Current == nil {
		return state.String()
	}
	s := state.String() + " as " + short(st.Current.CertificateID)
	if st.Current.Claim {
		s += " (claim)"
	}
	if st.InProgress() {
		s += "; rotating: " + string(st.Phase)
	} else if dec, _ := d.currentRunner().Due(st, d.now()); !st.Current.Claim {
		s += "; renews " + Relative(dec.At, d.now())
	}
	return s
}

// afterSave is the runner's hook: metrics, systemd status and events for
// every persisted rotation state.
func (d *Daemon) afterSave(ctx context.Context, s *rotation.State) error {
	if n := len(s.Journal); n > 0 {
		e := s.Journal[n-1]
		if e.Event == rotation.EventFailed {
			d.metrics.RotationStepFailed(string(e.From))
		}
		msg := string(e.From) + " → " + string(e.To)
		if e.Note != "" {
			msg += ": " + e.Note
		}
		d.emit(DaemonEvent{Kind: EventRotationStep, Message: msg, State: s.Clone()})
	}
	if s.InProgress() {
		d.notifier.Status("rotating: " + string(s.Phase))
	}
	if d.opts.AfterSave != nil {
		return d.opts.AfterSave(ctx, s)
	}
	return nil
}

// onStateChange is every client's OnStateChange: it must return quickly.
func (d *Daemon) onStateChange(ch StateChange) {
	d.mu.Lock()
	prev := d.connState
	d.connState = ch.State
	now := d.now()
	rec := &d.record.Connection
	if ch.State.String() != rec.State {
		rec.Since = now
	}
	rec.State = ch.State.String()
	rec.Failures = ch.Failures
	rec.Retry = time.Time{}
	if ch.State == StateWaiting {
		rec.Retry = now.Add(ch.Retry)
	}
	if ch.Err != nil {
		rec.Error, rec.Kind, rec.Refused = ch.Err.Error(), FailureKind(ch.Err), IdentityRefused(ch.Err)
	} else if ch.State == StateConnected {
		rec.Error, rec.Kind, rec.Refused = "", "", false
	}
	canRecover := d.plan != nil && d.plan.cfg.Claim != nil && d.plan.cfg.Claim.Recover
	if ch.Info != nil {
		rec.Endpoint, rec.ClientID = ch.Info.Endpoint, ch.Info.ClientID
	}
	d.mu.Unlock()
	lost := prev == StateConnected && ch.State == StateWaiting
	d.metrics.ConnectionChanged(ch, lost)
	d.pokeRecord()
	c := ch
	switch {
	case ch.State == StateConnected:
		msg := "connected"
		if ch.Info != nil {
			msg = fmt.Sprintf("connected to %s as %s (%s)", ch.Info.Endpoint, ch.Info.ClientID, ch.Info.TLS.Version)
		}
		d.notifier.Status(msg)
		d.emit(DaemonEvent{Kind: EventConnected, Message: msg, Change: &c})
		select {
		case d.connc <- struct{}{}:
		default:
		}
	case lost:
		d.log.Warn("connection lost", "retry_in", ch.Retry.Round(time.Millisecond).String(), "error", ch.Err)
		d.notifier.Status("connection lost; reconnecting in " + Human(ch.Retry))
		d.emit(DaemonEvent{Kind: EventConnectionLost, Message: fmt.Sprint(ch.Err), Change: &c, Err: ch.Err})
	case ch.State == StateWaiting && IdentityRefused(ch.Err):
		// The client goes on retrying; the loop recovers, or says what to do.
		d.notifier.Status(refusedStatus(ch.Err, ch.Retry, canRecover))
		select {
		case d.refusedc <- ch.Err:
		default: // one pending is enough
		}
	case ch.State == StateWaiting:
		d.notifier.Status("not connected (" + FailureKind(ch.Err) + "); retrying in " + Human(ch.Retry))
	}
}

func (d *Daemon) pokeRecord() {
	select {
	case d.recordc <- struct{}{}:
	default:
	}
}

func (d *Daemon) saveRecord() {
	d.mu.Lock()
	d.record.Updated = d.now()
	rec := d.record
	dir := d.opts.Config.StateDir
	d.mu.Unlock()
	if err := WriteDaemonRecord(dir, &rec); err != nil {
		d.log.Warn("saving the daemon record for thingcert status", "error", err)
	}
}

func (d *Daemon) stopped() {
	d.mu.Lock()
	d.record.Stopped = d.now()
	d.record.Connection = ConnectionRecord{State: StateDisconnected.String(), Since: d.record.Stopped}
	d.mu.Unlock()
	d.saveRecord()
}

// daemonConnector is the runner's Connector: the session's, plus the
// daemon's own subscriptions brought to a new client.
type daemonConnector struct{ d *Daemon }

func (c daemonConnector) Switch(ctx context.Context, id rotation.Identity) error {
	s := c.d.currentSession()
	if err := s.Switch(ctx, id); err != nil {
		return err
	}
	c.d.recordProtection(ctx, id)
	if !id.Record.Claim {
		c.d.deviceSubscriptions(ctx, s)
	}
	return nil
}

func (c daemonConnector) Confirm(ctx context.Context, t rotation.Trigger) error {
	return c.d.currentSession().Confirm(ctx, t)
}

// deviceSubscriptions subscribes the device programs' filters and the jobs
// listener on the session's client, once per client: a client keeps its
// subscriptions across reconnects, but a new client (after provisioning, or a
// reload that changed the endpoint) starts with none.
func (d *Daemon) deviceSubscriptions(ctx context.Context, s *Session) {
	cl := s.Client()
	d.mu.Lock()
	same := cl == nil || cl == d.subscribedOn
	d.subscribedOn = cl
	d.mu.Unlock()
	if !same {
		// The programs' subscriptions first: once WaitConnected returns, a
		// program's publish can count on its own subscriptions being made.
		d.router.attach(ctx, cl)
		if d.cfg().JobsEnabled() {
			if err := s.Jobs().OnNext(ctx, d.onJob); err != nil {
				d.log.Warn("cannot listen for rotation jobs; they are checked at each connect instead", "error", err)
			}
		}
	}
	d.upOnce.Do(func() { close(d.deviceUp) })
}

// shutdown stops cleanly: the rotation in progress reaches a persisted
// point (its context is ctx, now cancelled), then the connection closes.
func (d *Daemon) shutdown(ctx context.Context, running *task, done chan taskResult) error {
	d.log.Info("stopping")
	d.notifier.Stopping("stopping")
	d.emit(DaemonEvent{Kind: EventStopping, Message: "stopping"})
	var err error
	if running != nil {
		t := time.NewTimer(d.opts.StopTimeout)
		select {
		case r := <-done:
			if r.state != nil && r.state.InProgress() {
				d.log.Info("rotation paused; it resumes at the next start", "phase", r.state.Phase)
			}
		case <-t.C:
			err = fmt.Errorf("agent: the %s task did not stop within %s; its state is persisted and resumes at the next start", running.kind, d.opts.StopTimeout)
			d.log.Error("stopping", "error", err)
		}
		t.Stop()
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	d.router.detach()
	if s := d.currentSession(); s != nil {
		_ = s.Close(cctx)
	}
	d.log.Info("stopped")
	return err
}

// prepareReload reads and checks the configuration again; nil if refused.
func (d *Daemon) prepareReload() *devicePlan {
	d.notifier.Reloading()
	old := d.cfg()
	cfg, err := d.opts.Reload()
	if err == nil && cfg.StateDir != old.StateDir {
		err = fmt.Errorf("config %s: state_dir changed from %s to %s: a running daemon cannot move its state; restart it", cfg.Path, old.StateDir, cfg.StateDir)
	}
	var p *devicePlan
	if err == nil {
		p, err = planDevice(cfg)
	}
	if err != nil {
		d.log.Error("configuration reload refused; the running configuration is kept", "error", err)
		d.mu.Lock()
		d.record.ReloadError = err.Error()
		d.mu.Unlock()
		d.saveRecord()
		d.notifier.Ready(d.statusLine() + " (reload refused)")
		d.emit(DaemonEvent{Kind: EventReloadRefused, Message: err.Error(), Err: err})
		return nil
	}
	return p
}

// apply makes a checked configuration the running one and returns the tasks
// it needs (a reconnect when the connection settings changed).
func (d *Daemon) apply(ctx context.Context, p *devicePlan, svc *services) []task {
	cfg := p.cfg
	d.applyServices(p, svc)
	d.mu.Lock()
	old := d.plan
	oldStores, oldSession := d.stores, d.session
	d.mu.Unlock()
	var tasks []task
	stores := oldStores
	if cfg.Store != old.cfg.Store {
		s, err := openKeyStores(ctx, cfg.Store, d.log, d.metrics)
		if err != nil {
			d.log.Error("configuration reload: the new store does not open; keeping the old store", "error", err)
			cfg.Store = old.cfg.Store
		} else {
			stores = s
		}
	}
	reconnect := p.connectionKey() != old.connectionKey()
	d.mu.Lock()
	d.plan, d.stores = p, stores
	if reconnect {
		d.session = newSession(p, d.log, d.onStateChange, d.opts.MinConnectInterval)
		d.subscribedOn = nil
		// Programs' subscriptions made meanwhile wait for the new connection.
		d.router.detach()
	}
	d.runner = newRunner(p, stores, daemonConnector{d}, d.session, d.log, d.now, d.afterSave)
	d.record.Reloaded, d.record.ReloadError, d.record.Config = d.now(), "", cfg.Path
	d.mu.Unlock()
	if reconnect {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = oldSession.Close(cctx)
		cancel()
		tasks = append(tasks, task{kind: taskConnect})
		d.log.Info("connection settings changed; reconnecting", "endpoint", p.endpoint().String())
	}
	if stores != oldStores {
		oldStores.Close()
	}
	d.saveRecord()
	d.log.Info("configuration reloaded", "config", cfg.Path)
	d.notifier.Ready(d.statusLine())
	d.emit(DaemonEvent{Kind: EventReloaded, Message: "configuration reloaded from " + cfg.Path})
	return tasks
}

// services are what the daemon serves beside its connection: the metrics
// endpoint and the local socket.
type services struct {
	ctx         context.Context
	wg          sync.WaitGroup
	metricsAddr string
	stopMetrics context.CancelFunc
}

// applyServices applies what a reload changes at once: logging and the
// metrics endpoint.
func (d *Daemon) applyServices(p *devicePlan, svc *services) {
	d.dlog.Set(p.cfg.Log)
	if p.cfg.Metrics.Listen != svc.metricsAddr {
		svc.stopMetrics()
		svc.stopMetrics, svc.metricsAddr = func() {}, ""
		if err := d.serveMetrics(svc, p.cfg.Metrics.Listen); err != nil {
			d.log.Error("configuration reload: metrics endpoint", "error", err)
		}
	}
}

// serveMetrics serves the metrics on addr until svc stops them; an empty
// addr serves nothing.
func (d *Daemon) serveMetrics(svc *services, addr string) error {
	if addr == "" {
		return nil
	}
	l, err := ListenMetrics(svc.ctx, addr)
	if err != nil {
		return err
	}
	mctx, stop := context.WithCancel(svc.ctx)
	svc.stopMetrics, svc.metricsAddr = stop, addr
	svc.wg.Add(1)
	go func() {
		defer svc.wg.Done()
		if err := d.metrics.Serve(mctx, l, d.log); err != nil {
			d.log.Error("metrics endpoint stopped", "error", err)
		}
	}()
	d.log.Info("metrics served", "url", "http://"+l.Addr().String()+"/metrics")
	return nil
}
