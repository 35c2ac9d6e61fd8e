package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/thingcert/thingcert/iot"

	"github.com/thingcert/thingcert/agent"
	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

// localDevice is everything provision and rotate work with, made from the
// config as the agent makes its own (a device.Manager), under the state
// folder's run lock so that it cannot fight a running agent.
type localDevice struct {
	cfg     *config.Config
	mgr     *device.Manager
	session *device.Session
	runner  *rotation.Runner
	log     *slog.Logger
	lock    io.Closer
}

// newLogger is the configured logger on stderr.
func newLogger(w io.Writer, c config.Log) *slog.Logger {
	level := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}[c.Level]
	o := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, o))
	}
	return slog.New(slog.NewTextHandler(w, o))
}

// openDevice opens the key stores and prepares the session and runner.
// Nothing connects yet.
func openDevice(ctx context.Context, env *cliEnv, cfg *config.Config) (*localDevice, error) {
	log := newLogger(env.stderr, cfg.Log)
	opts, err := cfg.DeviceOptions()
	if err != nil {
		return nil, err
	}
	opts.Log, opts.AfterSave = log, testStopHook(env)
	lock, err := agent.LockRun(cfg.StateDir)
	if errors.Is(err, agent.ErrStateInUse) {
		return nil, fmt.Errorf("%w (systemctl stop thingcert, or start the rotation with a job)", err)
	}
	if err != nil {
		return nil, err
	}
	mgr, err := device.New(ctx, opts)
	if err != nil {
		lock.Close()
		return nil, err
	}
	return &localDevice{cfg: cfg, mgr: mgr, session: mgr.Session(), runner: mgr.Runner(), log: log, lock: lock}, nil
}

func (d *localDevice) close(ctx context.Context) {
	_ = d.mgr.Close(ctx)
	_ = d.lock.Close()
}

// state loads the state folder, adopting the config's key and cert when it
// has no identity yet.
func (d *localDevice) state(ctx context.Context) (*rotation.State, error) {
	s, err := d.runner.Load()
	if errors.Is(err, rotation.ErrNoState) && d.cfg.Key != "" {
		return d.runner.Adopt(ctx, rotation.IdentityRecord{KeyURI: d.cfg.Key, CertFile: d.cfg.Cert})
	}
	return s, err
}

// connectCurrent connects with the identity the state names. A CONNECT
// refused right away is tried twice more, a second apart: AWS IoT refuses a
// client ID's second CONNECT within a second, which a command run right after
// another (provision, then rotate) can meet.
func (d *localDevice) connectCurrent(ctx context.Context, s *rotation.State) error {
	if s.Current.Claim && !d.mgr.Options().ClaimConnects() {
		d.log.Info("the claim is for the CA only (provisioning.issuer: step-ca); nothing connects until the first certificate is issued")
		return nil
	}
	id, err := d.runner.Identity(ctx, *s.Current)
	if err != nil {
		return fmt.Errorf("opening the current identity (certificate %s, key %s): %w", shortID(s.Current.CertificateID), keystore.RedactURI(s.Current.KeyURI), err)
	}
	for attempt := 1; ; attempt++ {
		err = d.session.Switch(ctx, id)
		if err == nil || attempt == 3 || !(errors.Is(err, iot.ErrConnectRefused) || errors.Is(err, iot.ErrClosedAfterConnect)) {
			break
		}
		d.log.Info("connect refused; trying again in a second", "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(1500 * time.Millisecond):
		}
	}
	if err != nil {
		what := "the device's identity"
		if s.Current.Claim {
			what = "the claim identity"
		}
		return fmt.Errorf("connecting with %s (certificate %s): %w", what, shortID(s.Current.CertificateID), err)
	}
	return nil
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// identityReport is what provision and rotate print; its JSON form is a
// contract for scripts.
type identityReport struct {
	ThingName     string           `json:"thing_name"`
	KeyURI        string           `json:"key_uri"`
	CertFile      string           `json:"cert_file"`
	CertificateID string           `json:"certificate_id"`
	Subject       string           `json:"subject"`
	NotBefore     time.Time        `json:"not_before"`
	NotAfter      time.Time        `json:"not_after"`
	Phase         rotation.Phase   `json:"phase"`
	NextRenewal   *renewalReport   `json:"next_renewal,omitempty"`
	LastResult    *rotation.Result `json:"last_result,omitempty"`
	StateFile     string           `json:"state_file"`
	Action        string           `json:"action"`
}

type renewalReport struct {
	At        time.Time       `json:"at"`
	Reason    rotation.Reason `json:"reason"`
	Emergency bool            `json:"emergency,omitempty"`
}

func (d *localDevice) report(s *rotation.State, action string) identityReport {
	c := s.Current
	r := identityReport{
		ThingName: d.cfg.ThingName, KeyURI: keystore.RedactURI(c.KeyURI), CertFile: c.CertFile, CertificateID: c.CertificateID,
		Subject: c.Subject, NotBefore: c.NotBefore, NotAfter: c.NotAfter, Phase: s.Phase, LastResult: s.LastResult,
		StateFile: d.runner.State.Path(), Action: action,
	}
	if c.ThingName != "" {
		r.ThingName = c.ThingName
	}
	if !c.Claim {
		dec, _ := d.runner.Due(s, time.Now())
		r.NextRenewal = &renewalReport{At: dec.At, Reason: dec.Reason, Emergency: dec.Emergency}
	}
	return r
}

func printIdentity(env *cliEnv, r identityReport) {
	w := env.stdout
	fmt.Fprintf(w, "%s\n", r.Action)
	fmt.Fprintf(w, "  thing          %s\n", r.ThingName)
	fmt.Fprintf(w, "  key            %s\n", r.KeyURI)
	fmt.Fprintf(w, "  certificate    %s\n", r.CertificateID)
	fmt.Fprintf(w, "  file           %s\n", r.CertFile)
	fmt.Fprintf(w, "  valid          %s to %s\n", r.NotBefore.UTC().Format(time.RFC3339), r.NotAfter.UTC().Format(time.RFC3339))
	if r.NextRenewal != nil {
		fmt.Fprintf(w, "  next renewal   %s (%s)\n", r.NextRenewal.At.UTC().Format(time.RFC3339), r.NextRenewal.Reason)
	}
	if lr := r.LastResult; lr != nil {
		line := fmt.Sprintf("%s %s by %s", lr.At.UTC().Format(time.RFC3339), lr.Outcome, lr.Trigger)
		if lr.Error != "" {
			line += ": " + lr.Error
		}
		fmt.Fprintf(w, "  last rotation  %s\n", line)
	}
	fmt.Fprintf(w, "  state          %s\n", r.StateFile)
}

// testStopHook, for tests only, stops the process right after the state was
// saved in a chosen phase: THINGCERT_TEST_STOP_AFTER=<phase>[:<serial>[:<attempt>]]
// (attempt: the save that records that many failed attempts, for a retry).
// The process says so on stderr and waits to be killed, so a test can SIGKILL
// it at that exact point.
func testStopHook(env *cliEnv) func(context.Context, *rotation.State) error {
	v := os.Getenv("THINGCERT_TEST_STOP_AFTER")
	if v == "" {
		return nil
	}
	parts := strings.SplitN(v, ":", 3)
	return func(ctx context.Context, s *rotation.State) error {
		if string(s.Phase) != parts[0] ||
			len(parts) > 1 && parts[1] != "" && fmt.Sprint(s.Serial) != parts[1] ||
			len(parts) > 2 && fmt.Sprint(s.Attempt) != parts[2] {
			return nil
		}
		fmt.Fprintf(env.stderr, "thingcert: test: stopped after saving phase %s (serial %d, attempt %d)\n", s.Phase, s.Serial, s.Attempt)
		<-ctx.Done()
		return ctx.Err()
	}
}
