package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/thingcert/thingcert/agentclient"
	"github.com/thingcert/thingcert/internal/cli"
	"github.com/thingcert/thingcert/internal/humanize"
	"github.com/thingcert/thingcert/internal/statusview"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/jobs"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/agent"
	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
	"github.com/thingcert/thingcert/rotation"
)

// The demo's cast.
const (
	demoAccount  = "demo"
	demoTemplate = "DemoFleet"
	demoSerial   = "0001"
	demoThing    = "demo-" + demoSerial
	demoJob      = "rotate-certificate-1"
	// demoLifetime is how long the emulator's certificates live, and
	// demoRenewBefore how long before expiry the policy renews them: the first
	// renewal comes about 6 s after provisioning.
	demoLifetime    = 20 * time.Second
	demoRenewBefore = 14 * time.Second
)

type demoOptions struct {
	keyStore string
	keep     bool
	verbose  bool
	timeout  time.Duration
}

func newDemoCmd(env *cliEnv) *cobra.Command {
	o := demoOptions{}
	c := &cobra.Command{
		Use:   "demo",
		Short: "Watch a device's identity from claim to two rotations, on a local emulator",
		Long: `Run the whole story in one process, with temporary folders and loopback ports
only, in about 15 seconds:

  1. start the AWS IoT emulator (thingcert emulator) with a fleet-provisioning
     template and 20-second certificates;
  2. make a claim identity, as a factory would, and register it;
  3. run the device agent (thingcert run) with a new key store: it provisions
     its own identity by claim (CreateCertificateFromCsr, RegisterThing);
  4. publish through the agent's local socket, as a device program would;
  5. let the renewal policy rotate the certificate (14 s before expiry);
  6. queue a rotation job: the agent rotates again and reports SUCCEEDED with
     the old and new certificate IDs;
  7. deactivate the old certificate, as the cloud side does, and show that the
     device is unaffected while the old certificate is refused.

Each step is printed with its time and duration. The key store is a folder by
default; --key-store tpm uses a software TPM (swtpm) and --key-store pkcs11 a
SoftHSM2 token, when installed. Everything is removed at the end (--keep keeps
the folder to look at: the emulator's state, the device's config and state).`,
		Example: `  go run ./cmd/thingcert demo
  thingcert demo --key-store tpm --verbose`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			switch o.keyStore {
			case "file", "tpm", "pkcs11":
			default:
				return cli.UsageError{Err: fmt.Errorf("--key-store %q: want file, tpm or pkcs11", o.keyStore)}
			}
			ctx, cancel := context.WithTimeout(c.Context(), o.timeout)
			defer cancel()
			return runDemo(ctx, env, o)
		},
	}
	c.Flags().StringVar(&o.keyStore, "key-store", "file", "where the device's keys are made: file, tpm (swtpm) or pkcs11 (SoftHSM2)")
	c.Flags().BoolVar(&o.keep, "keep", false, "keep the temporary folder (emulator state, device config and state) and print its path")
	c.Flags().BoolVarP(&o.verbose, "verbose", "v", false, "show every rotation step and the agent's log")
	c.Flags().DurationVar(&o.timeout, "timeout", 90*time.Second, "give up after this long")
	return c
}

// timeline prints the demo's steps as they end, each with the time since the
// start and how long it took.
type timeline struct {
	w     io.Writer
	start time.Time
	last  time.Time
	mu    sync.Mutex
	steps []timelineStep
}

type timelineStep struct {
	At, Took     time.Duration
	Name, Detail string
}

func newTimeline(w io.Writer) *timeline {
	now := time.Now()
	return &timeline{w: w, start: now, last: now}
}

// step records a step that ends now and began when the previous one ended.
func (tl *timeline) step(name, format string, args ...any) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	now := time.Now()
	s := timelineStep{At: now.Sub(tl.start), Took: now.Sub(tl.last), Name: name, Detail: fmt.Sprintf(format, args...)}
	tl.last = now
	tl.steps = append(tl.steps, s)
	fmt.Fprintf(tl.w, "%7s %7s  %-12s %s\n", demoSeconds(s.At), demoSeconds(s.Took), s.Name, s.Detail)
}

// note prints a detail line under the current step.
func (tl *timeline) note(format string, args ...any) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	fmt.Fprintf(tl.w, "%7s %7s  %-12s   · %s\n", demoSeconds(time.Since(tl.start)), "", "", fmt.Sprintf(format, args...))
}

func demoSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + "s"
}

// demo is one run of the demo: its folder, emulator, agent and timeline.
type demo struct {
	env    *cliEnv
	o      demoOptions
	dir    string
	tl     *timeline
	emu    *emulator.Emulator
	events chan agent.DaemonEvent
	stops  []func()
	// jobNoted keeps a job that is notified twice (notify-next, then the
	// check at connect) from being printed twice.
	jobNoted map[string]bool
}

func runDemo(ctx context.Context, env *cliEnv, o demoOptions) (err error) {
	dir, err := os.MkdirTemp("", "thingcert-demo-")
	if err != nil {
		return err
	}
	d := &demo{env: env, o: o, dir: dir, tl: newTimeline(env.stdout), events: make(chan agent.DaemonEvent, 4096), jobNoted: map[string]bool{}}
	defer func() {
		for i := len(d.stops) - 1; i >= 0; i-- {
			d.stops[i]()
		}
		if o.keep {
			fmt.Fprintf(env.stdout, "kept %s (thingcert emulator history --state %s; thingcert status --config %s)\n",
				dir, filepath.Join(dir, "emulator"), filepath.Join(dir, "device", "thingcert.yaml"))
		} else if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
			err = rerr
		}
	}()
	fmt.Fprintf(env.stdout, "thingcert demo: a device's identity from its claim to two rotations, against a local AWS IoT emulator\n")
	fmt.Fprintf(env.stdout, "(loopback only, temporary folder %s, device keys in a %s store)\n\n", dir, o.keyStore)
	fmt.Fprintf(env.stdout, "%7s %7s  %-12s %s\n", "time", "took", "step", "what happened")
	if err := d.run(ctx); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintf(env.stdout, "\ndemo finished in %s: provisioned by claim, rotated by time and by job, old certificate refused, device unaffected\n",
		demoSeconds(time.Since(d.tl.start)))
	return nil
}

func (d *demo) logger(level slog.Level) *slog.Logger {
	if !d.o.verbose {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(d.env.stderr, &slog.HandlerOptions{Level: level}))
}

func (d *demo) run(ctx context.Context) error {
	// 1. The cloud.
	emu, err := emulator.Start(ctx, emulator.Config{
		StateDir:            filepath.Join(d.dir, "emulator"),
		Accounts:            []emulator.Account{{Name: demoAccount, Prefix: "demo"}},
		Templates:           []emulator.Template{{Name: demoTemplate, Body: emulator.SimpleTemplate("demo-", "SerialNumber")}},
		CertificateLifetime: demoLifetime,
		Logger:              d.logger(slog.LevelWarn),
	})
	if err != nil {
		return err
	}
	d.emu = emu
	d.stops = append(d.stops, func() { emu.Close() })
	d.tl.step("emulator", "AWS IoT emulator on %s, endpoint %s, template %s, certificates live %s",
		emu.Addr(), emu.Endpoint(demoAccount), demoTemplate, demoLifetime)

	// 2. The factory: a claim key and certificate, registered without a CA and
	// attached to no thing, so it can do nothing but provision.
	claimKey, claimCert, claimID, err := d.makeClaim(ctx)
	if err != nil {
		return fmt.Errorf("claim: %w", err)
	}
	d.tl.step("claim", "claim identity made at the \"factory\": certificate %s registered (no CA, no thing; its policy %s allows fleet provisioning only)", short12(claimID), emulator.ClaimPolicyName)

	// 3. The device: a key store, a config, the agent.
	store, err := d.deviceStore(ctx)
	if err != nil {
		return fmt.Errorf("key store: %w", err)
	}
	issuing := filepath.Join(d.dir, "device", "issuing-ca.pem")
	if err := os.WriteFile(issuing, emu.IssuingCAPEM(), 0o644); err != nil {
		return err
	}
	cfgPath, err := d.writeConfig(store, claimKey, claimCert, issuing)
	if err != nil {
		return err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	d.tl.step("device", "config %s, keys in %s", cfgPath, keystore.RedactURI(store))

	socket := filepath.Join(d.dir, "device", "agent.sock")
	ag, err := d.startAgent(ctx, cfg, socket)
	if err != nil {
		return err
	}

	// 4. Provisioning by claim.
	ev, err := d.rotationEnded(ctx, ag, rotation.TriggerProvision)
	if err != nil {
		return fmt.Errorf("provisioning: %w", err)
	}
	lr := ev.State.LastResult
	d.tl.step("provision", "agent provisioned by claim: new key in the store, CSR, CreateCertificateFromCsr, RegisterThing → thing %s, certificate %s",
		demoThing, short12(lr.NewCertificateID))

	// 5. A device program publishes through the agent.
	prog, err := agentclient.Dial(ctx, socket)
	if err != nil {
		return err
	}
	d.stops = append(d.stops, func() { prog.Close() })
	echo := make(chan agentclient.Message, 16)
	topic := "dt/" + demoThing + "/hello" // within the least-privilege device policy (emulator.DevicePolicy)
	if err := prog.Subscribe(ctx, topic, agentclient.AtLeastOnce, func(m agentclient.Message) { echo <- m }); err != nil {
		return fmt.Errorf("subscribing through the agent: %w", err)
	}
	if err := prog.Publish(ctx, topic, agentclient.AtLeastOnce, []byte("hello from a device program")); err != nil {
		return fmt.Errorf("publishing through the agent: %w", err)
	}
	select {
	case m := <-echo:
		d.tl.step("publish", "a device program published %q on %s through the agent's socket (QoS 1) and got it back", m.Payload, m.Topic)
	case <-ctx.Done():
		return errors.New("the published message did not come back on the subscription")
	}

	// 6. The renewal policy rotates.
	d.tl.note("waiting for the renewal policy: %s before expiry (the certificate lives %s)", demoRenewBefore, demoLifetime)
	ev, err = d.rotationEnded(ctx, ag, rotation.TriggerTime)
	if err != nil {
		return fmt.Errorf("rotation by time: %w", err)
	}
	lr = ev.State.LastResult
	d.tl.step("rotate/time", "renewed by the policy (%s): %s → %s", lr.Trigger.Reason, short12(lr.OldCertificateID), short12(lr.NewCertificateID))

	// 7. A restart, as after an upgrade or a power cut: the agent comes back
	// with the identity the state folder names. (It also leaves a software
	// TPM, which holds only about three objects, with room for the next key.)
	prog.Close()
	if err := ag.stop(); err != nil {
		return fmt.Errorf("stopping the agent: %w", err)
	}
	// AWS IoT refuses a client ID's second CONNECT within a second; the agent
	// would retry, but the demo need not show that.
	if wait := time.Until(ag.lastConnect().Add(1100 * time.Millisecond)); wait > 0 {
		time.Sleep(wait)
	}
	if ag, err = d.startAgent(ctx, cfg, socket); err != nil {
		return err
	}
	if err := d.connected(ctx, ag); err != nil {
		return fmt.Errorf("after the restart: %w", err)
	}
	d.tl.step("restart", "agent stopped and started again: it reconnected with certificate %s from its state folder", short12(lr.NewCertificateID))
	if prog, err = agentclient.Dial(ctx, socket); err != nil {
		return err
	}
	d.stops = append(d.stops, func() { prog.Close() })

	// 8. The cloud asks with a job.
	doc := json.RawMessage(`{"operation": "` + jobs.RotateOperation + `"}`)
	if _, err := emu.CreateJob(ctx, demoAccount, emulator.Job{ID: demoJob, Document: doc, Things: []string{demoThing}}); err != nil {
		return err
	}
	d.tl.note("job %s queued for %s: %s", demoJob, demoThing, doc)
	ev, err = d.rotationEnded(ctx, ag, rotation.TriggerJob)
	if err != nil {
		return fmt.Errorf("rotation by job: %w", err)
	}
	lr = ev.State.LastResult
	ex, err := emu.JobExecution(ctx, demoAccount, demoThing, demoJob)
	if err != nil {
		return err
	}
	if ex.Status != emulator.JobSucceeded || ex.StatusDetails["oldCertificateId"] != lr.OldCertificateID {
		return fmt.Errorf("job %s is %s with %v; want SUCCEEDED naming the old certificate %s", demoJob, ex.Status, ex.StatusDetails, lr.OldCertificateID)
	}
	d.tl.step("rotate/job", "rotated for job %s: %s → %s; job SUCCEEDED with statusDetails oldCertificateId, newCertificateId",
		demoJob, short12(lr.OldCertificateID), short12(lr.NewCertificateID))
	old := lr.OldCertificateID

	// 9. The cloud deactivates the certificate the job named.
	if err := emu.SetCertificateStatus(ctx, demoAccount, old, emulator.StatusInactive); err != nil {
		return err
	}
	d.tl.step("deactivate", "cloud side set the old certificate %s INACTIVE, as the job's statusDetails named it", short12(old))
	if err := prog.Publish(ctx, topic, agentclient.AtLeastOnce, []byte("still here")); err != nil {
		return fmt.Errorf("publishing after the old certificate was deactivated: %w", err)
	}
	d.tl.step("unaffected", "the device still publishes (QoS 1 acknowledged): it no longer uses the old certificate")

	st, err := statusview.ReadStatus(cfg, time.Now())
	if err != nil {
		return err
	}
	if st.Identity != nil && st.Renewal != nil {
		d.tl.note("thingcert status: certificate %s expires %s, next renewal %s (%s), %d old identities kept for their grace period",
			short12(st.Identity.CertificateID), humanize.Relative(st.Identity.NotAfter, st.Now), humanize.Relative(st.Renewal.At, st.Now), st.Renewal.Reason, len(st.Retiring))
	}

	// 10. Stop the agent, then try the old identity.
	prog.Close()
	if err := ag.stop(); err != nil {
		return fmt.Errorf("stopping the agent: %w", err)
	}
	d.tl.step("stop", "agent stopped cleanly (SIGTERM does the same): connection closed, state saved")
	why, rule, err := d.oldIdentityRefused(ctx, cfg, old)
	if err != nil {
		return err
	}
	d.tl.step("refused", "a new connection with the old certificate %s is refused: %s (emulator rule %q)", short12(old), why, rule)
	return nil
}

// rotationEnded waits for the agent to finish a rotation for trigger kind k,
// printing what happens meanwhile; a rollback is an error.
func (d *demo) rotationEnded(ctx context.Context, ag *demoAgent, k rotation.TriggerKind) (agent.DaemonEvent, error) {
	var steps []string
	for {
		select {
		case <-ctx.Done():
			return agent.DaemonEvent{}, fmt.Errorf("waiting for the agent: %w", context.Cause(ctx))
		case err := <-ag.done:
			return agent.DaemonEvent{}, fmt.Errorf("the agent stopped: %v", err)
		case ev := <-d.events:
			ag.saw(ev)
			switch ev.Kind {
			case agent.EventRotationStep:
				if ev.State != nil && len(ev.State.Journal) > 0 {
					e := ev.State.Journal[len(ev.State.Journal)-1]
					if len(steps) == 0 && e.From != "" {
						steps = append(steps, string(e.From))
					}
					steps = append(steps, string(e.To))
				}
				if d.o.verbose {
					d.tl.note("rotation step %s", ev.Message)
				}
			case agent.EventConnected, agent.EventConnectionLost, agent.EventConnectFailed, agent.EventJob:
				if d.o.verbose || ev.Kind == agent.EventJob && !d.jobNoted[ev.JobID] {
					d.tl.note("%s", ev.Message)
				}
				if ev.Kind == agent.EventJob {
					d.jobNoted[ev.JobID] = true
				}
			case agent.EventRotationEnd:
				if ev.State == nil || ev.State.LastResult == nil {
					continue
				}
				lr := ev.State.LastResult
				if lr.Trigger.Kind != k {
					d.tl.note("%s", ev.Message)
					steps = nil
					continue
				}
				if lr.Outcome != rotation.Succeeded {
					return ev, fmt.Errorf("rolled back in phase %s: %s", lr.Phase, lr.Error)
				}
				if len(steps) > 0 {
					d.tl.note("steps, each saved before it was acted on: %s", strings.Join(steps, " → "))
				}
				return ev, nil
			}
		}
	}
}

// demoAgent is one run of the agent in the demo's process, as `thingcert
// run` runs it.
type demoAgent struct {
	done    chan error
	cancel  context.CancelFunc
	stopped bool
	err     error
	last    time.Time // the last connect
}

func (d *demo) startAgent(ctx context.Context, cfg *config.Config, socket string) (*demoAgent, error) {
	level := "warn"
	out := io.Discard
	if d.o.verbose {
		level, out = "info", d.env.stderr
	}
	set, err := cfg.Settings()
	if err != nil {
		return nil, err
	}
	daemon, err := agent.NewDaemon(agent.DaemonOptions{
		Settings: set,
		Log:      agent.NewDaemonLogger(out, agent.LogSettings{Format: "text", Level: level}, false),
		Socket:   socket,
		OnEvent: func(ev agent.DaemonEvent) {
			select {
			case d.events <- ev:
			default:
			}
		},
	})
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ag := &demoAgent{done: make(chan error, 1), cancel: cancel}
	go func() { ag.done <- daemon.Run(runCtx) }()
	d.stops = append(d.stops, func() { _ = ag.stop() })
	return ag, nil
}

// stop stops the agent as SIGTERM does and returns what Run returned.
func (a *demoAgent) stop() error {
	if !a.stopped {
		a.stopped = true
		a.cancel()
		a.err = <-a.done
	}
	return a.err
}

func (a *demoAgent) saw(ev agent.DaemonEvent) {
	if ev.Kind == agent.EventConnected {
		a.last = ev.At
	}
}

func (a *demoAgent) lastConnect() time.Time { return a.last }

// connected waits for the agent's first connection.
func (d *demo) connected(ctx context.Context, ag *demoAgent) error {
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the agent to connect: %w", context.Cause(ctx))
		case err := <-ag.done:
			return fmt.Errorf("the agent stopped: %v", err)
		case ev := <-d.events:
			ag.saw(ev)
			if d.o.verbose {
				d.tl.note("%s", ev.Message)
			}
			if ev.Kind == agent.EventConnected {
				return nil
			}
		}
	}
}

// makeClaim makes the claim key (a file, as a factory might flash it) and a
// self-signed certificate for it, registered in the emulator.
func (d *demo) makeClaim(ctx context.Context) (keyURI, certFile, certID string, err error) {
	s, err := keystore.Open(ctx, "file:"+filepath.Join(d.dir, "claim")+"/", keystore.Options{})
	if err != nil {
		return "", "", "", err
	}
	defer s.Close()
	keyURI, err = s.KeyURI("claim")
	if err != nil {
		return "", "", "", err
	}
	k, err := s.Generate(ctx, keyURI, keystore.ECDSAP256)
	if err != nil {
		return "", "", "", err
	}
	certPEM, c, err := d.emu.RegisterClaim(ctx, demoAccount, k, "demo claim")
	if err != nil {
		return "", "", "", err
	}
	certFile = filepath.Join(d.dir, "claim", "claim.crt")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return "", "", "", err
	}
	return keyURI, certFile, c.ID, nil
}

// deviceStore prepares the device's key store and returns its URI.
func (d *demo) deviceStore(ctx context.Context) (string, error) {
	keys := filepath.Join(d.dir, "device", "keys")
	if err := os.MkdirAll(keys, 0o700); err != nil {
		return "", err
	}
	switch d.o.keyStore {
	case "tpm":
		port, stop, err := startDemoSWTPM(ctx, filepath.Join(d.dir, "swtpm"))
		if err != nil {
			return "", err
		}
		d.stops = append(d.stops, stop)
		d.tl.step("swtpm", "software TPM 2.0 on 127.0.0.1:%d", port)
		return "tpm:blob-dir=" + keys + "?device=tcp:127.0.0.1:" + strconv.Itoa(port), nil
	case "pkcs11":
		uri, err := startDemoSoftHSM(ctx, filepath.Join(d.dir, "softhsm"))
		if err != nil {
			return "", err
		}
		d.tl.step("softhsm", "SoftHSM2 token \"demo\" initialized")
		return uri, nil
	}
	return "file:" + keys + "/", nil
}

func (d *demo) writeConfig(store, claimKey, claimCert, issuing string) (string, error) {
	q := strconv.Quote
	level := "warn"
	if d.o.verbose {
		level = "info"
	}
	conf := `# A demo device, written by thingcert demo (docs/config.md describes every key).
endpoint: ` + q(d.emu.Endpoint(demoAccount)) + `
address: ` + q(d.emu.Addr()) + `          # the emulator; SNI stays the endpoint
ca: ` + q(d.emu.RootCAFile()) + `
thing_name: ` + demoThing + `
store: ` + q(store) + `
claim:
  key: ` + q(claimKey) + `
  cert: ` + q(claimCert) + `
provisioning:
  template: ` + demoTemplate + `
  parameters:
    SerialNumber: "` + demoSerial + `"
  timeout: 10s
rotation:
  lifetime_ratio: "off"          # certificates live ` + demoLifetime.String() + ` here; renew by time before expiry
  before_expiry: ` + demoRenewBefore.String() + `
  jitter: 1s
  emergency_window: 2s
  grace_period: 1h               # keep replaced keys, so the demo can try the old one
  retry_min: 1s
  retry_max: 4s
  trust: ` + q(issuing) + `
state_dir: ` + q(filepath.Join(d.dir, "device", "state")) + `
log:
  level: ` + level + `
`
	path := filepath.Join(d.dir, "device", "thingcert.yaml")
	return path, os.WriteFile(path, []byte(conf), 0o600)
}

// oldIdentityRefused connects once with a replaced identity and says how it
// was refused: by the agent's diagnosis and by the emulator's rule.
func (d *demo) oldIdentityRefused(ctx context.Context, cfg *config.Config, certID string) (why, rule string, err error) {
	st, err := rotation.StateStore{Dir: cfg.StateDir}.Load()
	if err != nil {
		return "", "", err
	}
	var rec *rotation.IdentityRecord
	for _, p := range st.Previous {
		if p.CertificateID == certID {
			rec = &p.IdentityRecord
		}
	}
	if rec == nil {
		return "", "", fmt.Errorf("the old certificate %s is not among the identities kept for their grace period", short12(certID))
	}
	store, key, err := keystore.OpenKey(ctx, rec.KeyURI, keystore.Options{})
	if err != nil {
		return "", "", err
	}
	defer store.Close()
	chain, err := iot.LoadCertificateChain(rec.CertFile)
	if err != nil {
		return "", "", err
	}
	id, err := iot.NewIdentity(key, chain)
	if err != nil {
		return "", "", err
	}
	c, err := iot.New(iot.Config{
		Endpoint:  iot.Endpoint{Host: cfg.Endpoint, Address: cfg.Address},
		Roots:     d.emu.RootCAs(),
		ThingName: demoThing,
		Identity:  iot.NewIdentitySource(id),
	})
	if err != nil {
		return "", "", err
	}
	if _, err := c.Connect(ctx); err == nil {
		c.Disconnect(ctx)
		return "", "", fmt.Errorf("the deactivated certificate %s still connects", short12(certID))
	} else {
		why = agent.FailureKind(err)
		if errors.Is(err, iot.ErrClientCertRefused) {
			why = "client certificate refused"
		}
	}
	// The emulator records the refusal as the handshake ends, perhaps just
	// after the client saw it.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		evs, _ := d.emu.History(ctx, emulator.HistoryQuery{CertificateID: certID, Outcome: emulator.Refused})
		if len(evs) > 0 {
			return why, string(evs[len(evs)-1].Rule), nil
		}
	}
	return why, "not recorded", nil
}

func short12(id string) string {
	if len(id) > 12 {
		return id[:12] + "…"
	}
	return id
}

// startDemoSWTPM runs a software TPM on free loopback ports, in the
// foreground as our child, and returns its data port and how to stop it.
func startDemoSWTPM(ctx context.Context, dir string) (int, func(), error) {
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		return 0, nil, errors.New("--key-store tpm needs swtpm (apt-get install swtpm swtpm-tools)")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, nil, err
	}
	var lastErr error
	for range 5 {
		port, err := freePortPair()
		if err != nil {
			return 0, nil, err
		}
		cmd := exec.CommandContext(context.WithoutCancel(ctx), bin, "socket", "--tpm2", "--tpmstate", "dir="+dir,
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
			"--flags", "not-need-init,startup-clear")
		if err := cmd.Start(); err != nil {
			return 0, nil, fmt.Errorf("starting swtpm: %w", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() {
			_ = cmd.Process.Signal(os.Interrupt)
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			select {
			case <-exited:
				lastErr = errors.New("swtpm exited at start")
			default:
			}
			if lastErr != nil {
				break
			}
			if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port+1)); err == nil {
				c.Close()
				return port, stop, nil
			}
		}
		stop()
		if lastErr == nil {
			lastErr = errors.New("swtpm did not listen")
		}
	}
	return 0, nil, lastErr
}

func freePortPair() (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1)); err == nil {
			l2.Close()
			return p, nil
		}
	}
	return 0, errors.New("no two consecutive free ports on 127.0.0.1")
}

// startDemoSoftHSM makes a SoftHSM2 token store in dir, selects it for this
// process (SOFTHSM2_CONF) and returns the token's store URI.
func startDemoSoftHSM(ctx context.Context, dir string) (string, error) {
	const module = "/usr/lib/softhsm/libsofthsm2.so"
	util, err := exec.LookPath("softhsm2-util")
	if _, serr := os.Stat(module); err != nil || serr != nil {
		return "", errors.New("--key-store pkcs11 needs SoftHSM2 (apt-get install softhsm2)")
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return "", err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		return "", err
	}
	pin := make([]byte, 8)
	if _, err := rand.Read(pin); err != nil {
		return "", err
	}
	pinHex := fmt.Sprintf("%x", pin)
	pinFile := filepath.Join(dir, "user.pin")
	if err := os.WriteFile(pinFile, []byte(pinHex+"\n"), 0o600); err != nil {
		return "", err
	}
	// SoftHSM reads its configuration from the environment when the module
	// is loaded: this process is the demo, nothing else uses it.
	os.Setenv("SOFTHSM2_CONF", conf)
	cmd := exec.CommandContext(ctx, util, "--init-token", "--free", "--label", "demo", "--so-pin", pinHex+"so", "--pin", pinHex)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("softhsm2-util --init-token: %v: %s", err, out)
	}
	return "pkcs11:token=demo?module-path=" + module + "&pin-source=file:" + pinFile, nil
}
