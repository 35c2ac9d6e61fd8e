package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thingcert/thingcert/internal/humanize"

	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/jobs"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

// DaemonOptions configure a Daemon. Only Config is required; every other
// field has a documented zero value.
type DaemonOptions struct {
	// Settings are what the agent starts with (required).
	Settings Settings
	// Reload reads the settings again when Reload is called (SIGHUP); nil
	// refuses reloads.
	Reload func() (Settings, error)
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
	// SocketGroup, if set, is the group the socket belongs to (a name or a
	// number): the group device programs join to use it, kept apart from
	// the agent's own group, which may read what the agent keeps. The agent
	// must be a member (systemd: SupplementaryGroups). Empty: the agent's
	// own group.
	SocketGroup string
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
	Change *iot.StateChange
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
	opts DaemonOptions
	dlog *DaemonLogger
	log  *slog.Logger
	now  func() time.Time
	// outlived, set when a task outlived StopTimeout, closes when it ends:
	// the key stores it may use stay open until then.
	outlived chan struct{}
	after    func(time.Duration) <-chan time.Time
	rand     func() float64
	metrics  *Metrics
	notifier *Notifier
	router   *router
	inflight atomic.Int64 // programs' publishes in flight, over all programs

	reloadc  chan struct{}
	jobc     chan string
	rotatec  chan rotation.Trigger
	connc    chan struct{}
	recordc  chan struct{}
	refusedc chan error    // the client, reconnecting on its own, had the identity refused
	deviceUp chan struct{} // closed once the device's own identity connected

	mu           sync.Mutex // guards the fields below
	set          Settings
	mgr          *device.Manager // nil before Run
	record       DaemonRecord
	connState    iot.ConnState
	subscribedOn *iot.Client // the client the router and jobs listener are subscribed on
	upOnce       sync.Once
}

// NewDaemon checks the options. Nothing is opened until Run.
func NewDaemon(opts DaemonOptions) (*Daemon, error) {
	if err := opts.Settings.Validate(); err != nil {
		return nil, err
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
		d.dlog = NewDaemonLogger(os.Stderr, opts.Settings.Log, os.Getenv("JOURNAL_STREAM") != "")
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
		d.opts.Reload = func() (Settings, error) {
			return Settings{}, errors.New("agent: this agent was started without a way to reload its settings")
		}
	}
	d.set = opts.Settings
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

// settings are the settings in force.
func (d *Daemon) settings() Settings {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.set
}

func (d *Daemon) manager() *device.Manager {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mgr
}

func (d *Daemon) currentSession() *device.Session { return d.manager().Session() }

func (d *Daemon) currentRunner() *rotation.Runner { return d.manager().Runner() }

// Run runs the daemon until ctx ends or it cannot go on (no identity and no
// claim, a state folder in use by another daemon, a key store that does not
// open). It returns nil after a clean stop.
func (d *Daemon) Run(ctx context.Context) error {
	set := d.settings()
	dev := &set.Device
	lock, err := LockRun(dev.StateDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	mgr, err := device.New(ctx, d.deviceOptions(set))
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.mgr = mgr
	d.mu.Unlock()
	defer func() {
		closeStores := func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := d.manager().Close(cctx); err != nil {
				d.log.Warn("closing the key stores", "error", err)
			}
			d.log.Debug("key stores closed")
		}
		d.mu.Lock()
		outlived := d.outlived
		d.mu.Unlock()
		if outlived == nil {
			closeStores()
			return
		}
		// A task outlived StopTimeout and may still be signing with a key
		// (a token or TPM mid-command): closing its store under it could
		// fail the command half-way or crash the module. The stores close
		// when it ends; if the process exits first, the system closes them.
		d.log.Warn("key stores left open until the task still running ends")
		go func() {
			<-outlived
			closeStores()
		}()
	}()
	// What the last daemon counted of refusals goes on counting, and its
	// last recovery stays shown.
	prev, err := ReadDaemonRecord(dev.StateDir)
	if err != nil {
		d.log.Warn("the last daemon's record is unreadable; refusals of the identity are counted from zero", "error", err)
	}
	d.mu.Lock()
	d.record = DaemonRecord{PID: os.Getpid(), Started: d.now(), Config: set.Source, Version: d.opts.Version,
		Socket: d.opts.Socket, Connection: ConnectionRecord{State: iot.StateDisconnected.String()}}
	if prev != nil {
		d.record.Refusals, d.record.Recovered = prev.Refusals, prev.Recovered
	}
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
	if err := d.serveMetrics(svc, set.MetricsListen); err != nil {
		d.stopped()
		return err
	}
	if d.opts.Socket != "" {
		l, err := listenLocal(d.opts.Socket, d.opts.SocketGroup)
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
	d.log.Info("thingcert agent started", "thing", dev.ThingName, "endpoint", dev.Endpoint.String(),
		"state", dev.StateDir, "store", keystore.RedactURI(dev.Store), "systemd", d.notifier.String(),
		"metrics", set.MetricsListen, "socket", d.opts.Socket)
	d.notifier.Ready("connecting to " + dev.Endpoint.String())
	d.emit(DaemonEvent{Kind: EventReady, Message: "agent started; connecting to " + dev.Endpoint.String()})
	err = d.loop(ctx, st, svc)
	d.stopped()
	return err
}

// deviceOptions are the device's options with the agent's hooks: connection
// state, subscriptions after each switch, metrics and events per saved step.
func (d *Daemon) deviceOptions(set Settings) device.Options {
	o := set.Device
	o.Log, o.Now, o.Rand = d.log, d.now, d.rand
	if o.MinConnectInterval == 0 {
		o.MinConnectInterval = d.opts.MinConnectInterval
	}
	// The agent schedules jobs itself (a task each), beside its other work.
	o.OnStateChange = d.onStateChange
	o.OnSwitch = d.onSwitch
	o.AfterSave = d.afterSave
	o.WrapKey = d.metrics.CountSigningErrors
	return o
}

// initialState loads the state folder, adopting the configured identity (key
// and cert) or the claim when it has none yet.
func (d *Daemon) initialState(ctx context.Context) (*rotation.State, error) {
	st, err := d.manager().State(ctx)
	if errors.Is(err, device.ErrNoIdentity) {
		set := d.settings()
		return nil, fmt.Errorf("agent: the state folder %s holds no identity and the settings from %s give none: give a claim to provision with, or a key and certificate made elsewhere: %w", set.Device.StateDir, set.Source, err)
	}
	return st, err
}

// showIdentity publishes the current identity to the metrics.
func (d *Daemon) showIdentity(st *rotation.State) {
	if st == nil || st.Current == nil {
		return
	}
	c := st.Current
	d.metrics.SetCertificate(c.CertificateID, backendOf(c.KeyURI), c.NotBefore, c.NotAfter)
}

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

// loop is the daemon's main loop: a select over the task queue's work, the
// renewal timer when idle, reloads, jobs, the watchdog and stop.
func (d *Daemon) loop(ctx context.Context, st *rotation.State, svc *services) error {
	q := newTaskQueue(func(n int) time.Duration {
		return iot.Backoff{Min: 5 * time.Second, Max: 5 * time.Minute}.Delay(n-1, d.rand())
	}, task{kind: taskConnect})
	switch {
	case st.Current.Claim:
		q.add(task{kind: taskProvision})
	case st.InProgress():
		q.add(task{kind: taskResume})
	}
	var (
		stopRunning context.CancelFunc // ends the running task early (a connect, for a reload)
		interrupted bool               // stopRunning was called
		done        = make(chan taskResult, 1)
		timerc      <-chan time.Time
		watchdog    <-chan time.Time
		pending     *Settings // a reload to apply when the running task ends
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
	// queueRecovery puts a recovery first, within the recoveries' spacing.
	queueRecovery := func(why string) {
		q.addFirst(task{kind: taskRecover, why: why})
		q.holdUntil(recoverAt)
	}
	for {
		now := d.now()
		if t, ok := q.start(now); ok {
			timerc = nil // the next idle round decides again
			tctx, cancel := context.WithCancel(ctx)
			stopRunning, interrupted = cancel, false
			go func() {
				defer cancel()
				done <- d.runTask(tctx, t)
			}()
		}
		if q.running == nil && timerc == nil {
			if !q.idle() {
				timerc = d.after(q.waiting(now)) // a failure's backoff
			} else if t, wait := d.schedule(now); t != nil {
				q.add(*t)
				continue
			} else {
				timerc = d.after(wait)
			}
		}
		select {
		case <-ctx.Done():
			return d.shutdown(ctx, q.running, done)
		case r := <-done:
			switch {
			case interrupted && ctx.Err() == nil:
				q.interrupted() // stopped for a reload: again after it
			case errors.As(r.err, &refusal) && ctx.Err() == nil:
				// A connect found the device's identity refused: recover,
				// then connect again (with the claim if it recovered).
				q.interrupted()
				queueRecovery(refusal.err.Error())
			case r.err != nil && ctx.Err() == nil && !errors.Is(r.err, rotation.ErrRolledBack):
				delay := q.failed(d.now())
				d.log.Error("task failed; trying again later", "task", r.task.kind, "retry_in", delay.Round(time.Millisecond).String(), "error", r.err)
			case r.err == nil:
				q.succeeded()
			default:
				q.settled()
			}
			if r.recovered {
				recoveries, recoverAt = nextRecovery(recoveries, lastRecovery, d.now(), d.rand())
				lastRecovery = d.now()
				// The claim connects and provisions, as on a new device.
				q.add(task{kind: taskConnect}, task{kind: taskProvision})
			}
			d.afterTask(r)
			if pending != nil {
				q.add(d.apply(ctx, pending, svc)...)
				pending = nil
			}
		case <-d.reloadc:
			p := d.prepareReload()
			switch {
			case p == nil:
			case q.running != nil && (q.running.kind == taskConnect || q.running.kind == taskCheckJobs):
				// A connect may never succeed with the old settings (the
				// reload may be what fixes them): stop it, apply, start again.
				d.applyServices(p, svc)
				pending = p
				interrupted = true
				stopRunning()
			case q.running != nil:
				// Logging and metrics change now; the connection and the
				// rotation settings when the task ends (a rotation waiting to
				// retry may take hours).
				d.applyServices(p, svc)
				d.log.Info("configuration reload checked; logging and metrics applied, the rest when the current task ends", "task", q.running.kind)
				pending = p
			default:
				q.add(d.apply(ctx, p, svc)...)
			}
			timerc = nil
		case id := <-d.jobc:
			q.add(task{kind: taskJob, jobID: id})
			timerc = nil
		case t := <-d.rotatec:
			q.add(task{kind: taskRotate, trigger: t})
			timerc = nil
		case <-d.connc:
			if !d.settings().Device.NoJobs {
				q.add(task{kind: taskCheckJobs})
			}
			timerc = nil
		case err := <-d.refusedc:
			// The client, reconnecting on its own, was refused: count it;
			// recover once the refusals meet the rule.
			st, lerr := d.currentRunner().Load()
			set := d.settings()
			switch {
			case lerr != nil:
				d.log.Error("reading the rotation state", "error", lerr)
			case !set.canRecover():
				queueRecovery(err.Error()) // it says what to do instead
			case d.recoverable(st, err) && d.refusedEnough(st, err):
				queueRecovery(err.Error())
			}
			timerc = nil
		case <-d.recordc:
			d.saveRecord()
		case <-watchdog:
			d.notifier.Watchdog()
		case <-timerc:
			timerc = nil
		}
	}
}

// schedule decides, when idle, whether work is due now (a task) or how long
// to sleep before deciding again (device.NextStep decides).
func (d *Daemon) schedule(now time.Time) (*task, time.Duration) {
	r := d.currentRunner()
	st, err := r.Load()
	if err != nil {
		d.log.Error("reading the rotation state", "error", err)
		return nil, time.Minute
	}
	n := device.NextStep(r, st, now)
	if !n.Renewal.At.IsZero() {
		d.metrics.SetNextRenewal(n.Renewal.At, n.Renewal.Emergency)
	}
	switch n.Step {
	case device.StepProvision:
		return &task{kind: taskProvision}, 0
	case device.StepResume:
		return &task{kind: taskResume}, 0
	case device.StepRotate:
		return &task{kind: taskRotate, trigger: n.Trigger}, 0
	}
	wait := n.At.Sub(now)
	d.log.Debug("renewal timer", "next", n.Renewal.String(), "sleep", wait.String())
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
		if d.settings().Device.Claim == nil {
			res.state, res.err = r.Resume(ctx)
			break
		}
		d.emit(DaemonEvent{Kind: EventRotationStart, Message: "provisioning by claim"})
		d.metrics.RotationStarted(string(rotation.TriggerProvision))
		res.rotated = true
		res.state, res.err = d.manager().Provision(ctx)
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
		res.state, res.rotated, res.err = d.runJob(ctx, t.jobID)
	case taskCheckJobs:
		res.err = d.checkJobs(ctx)
	case taskRecover:
		res.state, res.recovered, res.err = d.recoverIdentity(ctx, r, t.why)
	}
	return res
}

// connect connects with the current identity, retrying with backoff and
// jitter until it works or ctx ends; a refusal the claim may recover from
// ends it with a *refusalError.
func (d *Daemon) connect(ctx context.Context) error {
	return d.manager().ConnectRetry(ctx, func(st *rotation.State, err error, delay time.Duration) error {
		switch {
		case d.recoverable(st, err):
			if d.refusedEnough(st, err) {
				return &refusalError{err}
			}
			// Counted and logged; the claim recovers it if it goes on.
			d.notifier.Status(refusedStatus(err, delay, true))
		case iot.IdentityRefused(err) && st != nil && !st.Current.Claim:
			d.adviseRefused(st, err)
			d.notifier.Status(refusedStatus(err, delay, false))
		default:
			d.log.Warn("cannot connect; trying again", "retry_in", delay.Round(time.Millisecond).String(), "error", err)
			d.notifier.Status("not connected (" + FailureKind(err) + "); retrying in " + humanize.Duration(delay))
		}
		d.emit(DaemonEvent{Kind: EventConnectFailed, Message: err.Error(), Err: err})
		return nil
	})
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

// runJob carries out a rotation job (see device.Manager.RunJob), with the
// agent's events and metrics.
func (d *Daemon) runJob(ctx context.Context, jobID string) (*rotation.State, bool, error) {
	return d.manager().RunJob(ctx, jobID, func(resumed bool) {
		if !resumed {
			d.emit(DaemonEvent{Kind: EventRotationStart, Message: "rotation for job " + jobID, JobID: jobID})
		}
		d.metrics.RotationStarted(string(rotation.TriggerJob))
	})
}

// checkJobs asks for the next pending job, in case a notification was missed
// while the device was offline.
func (d *Daemon) checkJobs(ctx context.Context) error {
	if !d.deviceConnected() || d.settings().Device.NoJobs {
		return nil
	}
	return d.manager().CheckJobs(ctx, d.onJob)
}

// onJob is told of each pending rotation job.
func (d *Daemon) onJob(e *jobs.Execution) {
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
		s += "; renews " + humanize.Relative(dec.At, d.now())
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
func (d *Daemon) onStateChange(ch iot.StateChange) {
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
	if ch.State == iot.StateWaiting {
		rec.Retry = now.Add(ch.Retry)
	}
	if ch.Err != nil {
		rec.Error, rec.Kind, rec.Refused = ch.Err.Error(), FailureKind(ch.Err), iot.IdentityRefused(ch.Err)
	} else if ch.State == iot.StateConnected {
		rec.Error, rec.Kind, rec.Refused = "", "", false
		d.record.Refusals = nil // the identity works: refusals count from zero again
	}
	canRecover := d.set.canRecover()
	if ch.Info != nil {
		rec.Endpoint, rec.ClientID = ch.Info.Endpoint, ch.Info.ClientID
	}
	d.mu.Unlock()
	lost := prev == iot.StateConnected && ch.State == iot.StateWaiting
	d.metrics.ConnectionChanged(ch, lost)
	d.pokeRecord()
	c := ch
	switch {
	case ch.State == iot.StateConnected:
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
		d.notifier.Status("connection lost; reconnecting in " + humanize.Duration(ch.Retry))
		d.emit(DaemonEvent{Kind: EventConnectionLost, Message: fmt.Sprint(ch.Err), Change: &c, Err: ch.Err})
	case ch.State == iot.StateWaiting && iot.IdentityRefused(ch.Err):
		// The client goes on retrying; the loop recovers, or says what to do.
		d.notifier.Status(refusedStatus(ch.Err, ch.Retry, canRecover))
		select {
		case d.refusedc <- ch.Err:
		default: // one pending is enough
		}
	case ch.State == iot.StateWaiting:
		d.notifier.Status("not connected (" + FailureKind(ch.Err) + "); retrying in " + humanize.Duration(ch.Retry))
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
	dir := d.set.Device.StateDir
	d.mu.Unlock()
	if err := writeDaemonRecord(dir, &rec); err != nil {
		d.log.Warn("saving the daemon record for thingcert status", "error", err)
	}
}

func (d *Daemon) stopped() {
	d.mu.Lock()
	d.record.Stopped = d.now()
	d.record.Connection = ConnectionRecord{State: iot.StateDisconnected.String(), Since: d.record.Stopped}
	d.mu.Unlock()
	d.saveRecord()
}

// onSwitch follows each move of the connection to an identity: the key's
// protection for the status record, and the daemon's own subscriptions
// brought to a new client.
func (d *Daemon) onSwitch(ctx context.Context, id rotation.Identity) {
	d.recordProtection(ctx, id)
	if !id.Record.Claim {
		d.deviceSubscriptions(ctx, d.currentSession())
	}
}

// deviceSubscriptions subscribes the device programs' filters and the jobs
// listener on the session's client, once per client: a client keeps its
// subscriptions across reconnects, but a new client (after provisioning, or a
// reload that changed the endpoint) starts with none.
func (d *Daemon) deviceSubscriptions(ctx context.Context, s *device.Session) {
	cl := s.Client()
	d.mu.Lock()
	same := cl == nil || cl == d.subscribedOn
	d.subscribedOn = cl
	d.mu.Unlock()
	if !same {
		// The programs' subscriptions first: once WaitConnected returns, a
		// program's publish can count on its own subscriptions being made.
		d.router.attach(ctx, cl)
		if !d.settings().Device.NoJobs {
			if err := d.manager().ListenJobs(ctx, d.onJob); err != nil {
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
			ended := make(chan struct{})
			go func() {
				<-done
				close(ended)
			}()
			d.mu.Lock()
			d.outlived = ended
			d.mu.Unlock()
		}
		t.Stop()
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	d.router.detach()
	_ = d.currentSession().Close(cctx)
	d.log.Info("stopped")
	return err
}

// prepareReload reads and checks the settings again; nil if refused.
func (d *Daemon) prepareReload() *Settings {
	d.notifier.Reloading()
	old := d.settings()
	set, err := d.opts.Reload()
	if err == nil && set.Device.StateDir != old.Device.StateDir {
		err = fmt.Errorf("agent: settings from %s: the state folder changed from %s to %s: a running agent cannot move its state; restart it", set.Source, old.Device.StateDir, set.Device.StateDir)
	}
	if err == nil {
		err = set.Validate()
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
	return &set
}

// apply makes checked settings the running ones and returns the tasks they
// need (a reconnect when the connection settings changed).
func (d *Daemon) apply(ctx context.Context, set *Settings, svc *services) []task {
	d.applyServices(set, svc)
	mgr := d.manager()
	opts := d.deviceOptions(*set)
	reconnect, err := mgr.Reconfigure(ctx, opts)
	if err != nil && opts.Store != mgr.Options().Store {
		// A new store that does not open must not cost the running one.
		d.log.Error("configuration reload: the new store does not open; keeping the old store", "error", err)
		opts.Store = mgr.Options().Store
		set.Device.Store = opts.Store
		reconnect, err = mgr.Reconfigure(ctx, opts)
	}
	if err != nil {
		d.log.Error("configuration reload refused; the running configuration is kept", "error", err)
		d.emit(DaemonEvent{Kind: EventReloadRefused, Message: err.Error(), Err: err})
		return nil
	}
	var tasks []task
	d.mu.Lock()
	d.set = *set
	if reconnect {
		d.subscribedOn = nil
		// Programs' subscriptions made meanwhile wait for the new connection.
		d.router.detach()
	}
	d.record.Reloaded, d.record.ReloadError, d.record.Config = d.now(), "", set.Source
	d.mu.Unlock()
	if reconnect {
		tasks = append(tasks, task{kind: taskConnect})
		d.log.Info("connection settings changed; reconnecting", "endpoint", set.Device.Endpoint.String())
	}
	d.saveRecord()
	d.log.Info("configuration reloaded", "config", set.Source)
	d.notifier.Ready(d.statusLine())
	d.emit(DaemonEvent{Kind: EventReloaded, Message: "configuration reloaded from " + set.Source})
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
func (d *Daemon) applyServices(set *Settings, svc *services) {
	d.dlog.Set(set.Log)
	if set.MetricsListen != svc.metricsAddr {
		svc.stopMetrics()
		svc.stopMetrics, svc.metricsAddr = func() {}, ""
		if err := d.serveMetrics(svc, set.MetricsListen); err != nil {
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
	l, err := listenMetrics(svc.ctx, addr)
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
