package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/thingcert/thingcert/fleet"
	"github.com/thingcert/thingcert/internal/promtext"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/rotation"
)

// fleetConfig is fleet.yaml, decoded strictly.
type fleetConfig struct {
	// Interval between cycles (default 1h).
	Interval   time.Duration `yaml:"interval"`
	ThingGroup string        `yaml:"thing_group"`
	Policy     struct {
		LifetimeShare float64       `yaml:"lifetime_share"`
		MaxAge        time.Duration `yaml:"max_age"`
		BeforeExpiry  time.Duration `yaml:"before_expiry"`
		Jitter        time.Duration `yaml:"jitter"`
	} `yaml:"policy"`
	Wave struct {
		Size           int     `yaml:"size"`
		RatePerMinute  int32   `yaml:"rate_per_minute"`
		AbortFailedPct float64 `yaml:"abort_failed_pct"`
		TimeoutMinutes int64   `yaml:"timeout_minutes"`
	} `yaml:"wave"`
	Retire struct {
		Grace       time.Duration `yaml:"grace"`
		DeleteAfter time.Duration `yaml:"delete_after"`
		Workers     int           `yaml:"workers"`
	} `yaml:"retire"`
	// MetricsListen serves Prometheus metrics on /metrics (e.g. 127.0.0.1:9465).
	MetricsListen string `yaml:"metrics_listen"`
	// Accounts are the shared-config profiles of every account the devices
	// belong to, for certificates of a CA not registered with AWS IoT
	// (multi-account registration); OwnerCA is that CA's PEM file.
	Accounts []string `yaml:"accounts"`
	OwnerCA  string   `yaml:"owner_ca"`
}

func readFleetConfig(path string) (fleetConfig, fleet.CycleOptions, error) {
	var c fleetConfig
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fleet.CycleOptions{}, fmt.Errorf("reading %s: %w", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fleet.CycleOptions{}, usageError{fmt.Errorf("%s: %w", path, err)}
	}
	if c.Interval == 0 {
		c.Interval = time.Hour
	}
	o := fleet.CycleOptions{
		ThingGroup: c.ThingGroup,
		Policy:     rotation.Policy{LifetimeRatio: c.Policy.LifetimeShare, MaxAge: c.Policy.MaxAge, BeforeExpiry: c.Policy.BeforeExpiry, Jitter: c.Policy.Jitter},
		WaveSize:   c.Wave.Size,
		Rollout:    fleet.RotateOptions{MaxPerMinute: c.Wave.RatePerMinute, AbortFailedPercent: c.Wave.AbortFailedPct, TimeoutMinutes: c.Wave.TimeoutMinutes},
		Retire:     fleet.RetireOptions{Grace: c.Retire.Grace, DeleteAfter: c.Retire.DeleteAfter, Workers: max(c.Retire.Workers, 1)},
	}
	if err := o.Policy.Validate(); err != nil {
		return c, o, usageError{fmt.Errorf("%s: policy: %w", path, err)}
	}
	switch {
	case len(c.Accounts) > 0 && c.OwnerCA == "":
		return c, o, usageError{fmt.Errorf("%s: accounts: registering reported certificates needs owner_ca, the PEM file of the CA that signs them", path)}
	case c.OwnerCA != "" && len(c.Accounts) == 0:
		return c, o, usageError{fmt.Errorf("%s: owner_ca: only used with accounts (the profiles of every account the devices belong to)", path)}
	case c.OwnerCA != "":
		ca := c.OwnerCA
		if !filepath.IsAbs(ca) {
			ca = filepath.Join(filepath.Dir(path), ca)
		}
		pool, err := iot.LoadCAFile(ca)
		if err != nil {
			return c, o, fmt.Errorf("%s: owner_ca: %w", path, err)
		}
		o.OwnerCA = pool
	}
	return c, o, nil
}

// withAccounts makes the clients of the configuration's accounts.
func withAccounts(cmd *cobra.Command, g *globals, c fleetConfig, o *fleet.CycleOptions) error {
	if len(c.Accounts) == 0 {
		return nil
	}
	accts, err := g.accountClients(cmd.Context(), strings.Join(c.Accounts, ","))
	if err != nil {
		return err
	}
	o.Accounts = accts
	return nil
}

// daemonMetrics are the daemon's Prometheus gauges and counters.
type daemonMetrics struct {
	reg                               *promtext.Registry
	things, certs, due, rotating      promtext.Value
	findings                          promtext.Vec
	executions                        promtext.Vec
	retired, waves, cycleErrors, runs promtext.Value
	lastCycle                         promtext.Value
}

func newDaemonMetrics() *daemonMetrics {
	r := promtext.NewRegistry()
	m := &daemonMetrics{reg: r}
	const ns = "thingcert_fleet_"
	m.things = r.Gauge(ns+"things", "Things in the fleet at the last cycle.")
	m.certs = r.Gauge(ns+"certificates", "Certificates attached to the fleet's things at the last cycle.")
	m.due = r.Gauge(ns+"due_things", "Things whose certificate the policy says to rotate, not yet rotating.")
	m.rotating = r.Gauge(ns+"rotating_things", "Things with a QUEUED or IN_PROGRESS rotation execution.")
	m.lastCycle = r.Gauge(ns+"last_cycle_timestamp_seconds", "When the last cycle finished without error.")
	m.findings = r.GaugeVec(ns+"findings", "Audit findings at the last cycle, by check.", "check")
	m.executions = r.GaugeVec(ns+"job_executions", "Rotation job executions, by status, at the last cycle.", "status")
	m.retired = r.Counter(ns+"retired_certificates_total", "Old certificates deactivated or deleted.")
	m.waves = r.Counter(ns+"waves_total", "Rotation jobs created.")
	m.cycleErrors = r.Counter(ns+"cycle_errors_total", "Cycles that ended in an error.")
	m.runs = r.Counter(ns+"cycles_total", "Cycles run.")
	return m
}

func (m *daemonMetrics) observe(r *fleet.CycleReport) {
	m.things.Set(float64(r.Things))
	m.certs.Set(float64(r.Certificates))
	m.due.Set(float64(len(r.Due)))
	m.rotating.Set(float64(r.Rotating))
	m.findings.Reset()
	for k, v := range r.Findings {
		m.findings.With(k).Set(float64(v))
	}
	m.executions.Reset()
	for _, j := range r.Jobs {
		for k, v := range j.Counts {
			m.executions.With(k).Add(float64(v))
		}
		m.retired.Add(float64(j.Retired))
	}
	if r.Wave != nil && r.Wave.Created {
		m.waves.Inc()
	}
	m.lastCycle.Set(float64(r.At.Unix()))
}

func runCmd(g *globals) *cobra.Command {
	var cfgPath string
	var once bool
	c := &cobra.Command{
		Use:   "run --config fleet.yaml",
		Short: "The fleet rotation daemon: audit, rotate what is due, retire, report, on a schedule",
		Long: `run repeats, every interval: audit the fleet; start one rotation job (a wave of
at most wave.size things) for the things whose certificate the policy says is due
and that are not rotating already; retire what rotation jobs finished; log and
export the result as Prometheus metrics (metrics_listen). It keeps no state AWS
does not have, so it restarts anywhere, and two copies at once find the same jobs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfgPath == "" {
				return usageError{fmt.Errorf("run needs --config fleet.yaml")}
			}
			cfg, o, err := readFleetConfig(cfgPath)
			if err != nil {
				return err
			}
			if err := withAccounts(cmd, g, cfg, &o); err != nil {
				return err
			}
			api, err := g.client(cmd.Context())
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(g.errOut, nil))
			m := newDaemonMetrics()
			if cfg.MetricsListen != "" {
				ln, err := net.Listen("tcp", cfg.MetricsListen)
				if err != nil {
					return fmt.Errorf("metrics_listen %s: %w", cfg.MetricsListen, err)
				}
				srv := &http.Server{Handler: m.reg.Handler(), ReadHeaderTimeout: 10 * time.Second}
				go func() { _ = srv.Serve(ln) }()
				defer srv.Close()
				log.Info("metrics", "url", "http://"+ln.Addr().String()+"/metrics")
			}
			for {
				m.runs.Inc()
				r, err := fleet.Cycle(cmd.Context(), api, o, time.Now())
				if err != nil {
					if cmd.Context().Err() != nil {
						return nil
					}
					m.cycleErrors.Inc()
					log.Error("cycle failed; trying again at the next one", "error", err)
				} else {
					m.observe(r)
					attrs := []any{"things", r.Things, "certificates", r.Certificates, "due", len(r.Due), "rotating", r.Rotating}
					if r.Wave != nil {
						attrs = append(attrs, "wave", r.Wave.ID, "wave_created", r.Wave.Created)
					}
					log.Info("cycle", attrs...)
					for _, p := range r.Problems {
						log.Warn("retire: look at this", "thing", p.Thing, "reason", p.Reason, "error", p.Error)
					}
					for _, p := range r.Refused {
						log.Warn("register: refused", "thing", p.Thing, "account", p.Account, "certificate", p.NewCert, "reason", p.Reason, "error", p.Error)
					}
				}
				if once {
					if err != nil {
						return err
					}
					return printJSON(g.out, r)
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(cfg.Interval):
				}
			}
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "", "the daemon's YAML file")
	c.Flags().BoolVar(&once, "once", false, "run one cycle, print its report as JSON and exit")
	return c
}

func statusCmd(g *globals) *cobra.Command {
	var cfgPath string
	var asJSON bool
	c := &cobra.Command{
		Use:   "status --config fleet.yaml",
		Short: "What the daemon would do now: due things, rotation jobs, retirements, problems (changes nothing)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfgPath == "" {
				return usageError{fmt.Errorf("status needs --config fleet.yaml")}
			}
			cfg, o, err := readFleetConfig(cfgPath)
			if err != nil {
				return err
			}
			if err := withAccounts(cmd, g, cfg, &o); err != nil {
				return err
			}
			o.DryRun = true
			api, err := g.client(cmd.Context())
			if err != nil {
				return err
			}
			r, err := fleet.Cycle(cmd.Context(), api, o, time.Now())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(g.out, r)
			}
			fmt.Fprintf(g.out, "%d things, %d certificates, %d due, %d rotating\n", r.Things, r.Certificates, len(r.Due), r.Rotating)
			if r.Wave != nil {
				fmt.Fprintf(g.out, "next wave: job %s for %d things\n", r.Wave.ID, len(r.Wave.Targets))
			}
			for _, j := range r.Jobs {
				fmt.Fprintf(g.out, "job %s %s %v; %d would be retired, %d to look at\n", j.ID, j.Status, j.Counts, j.Retired, j.Reported)
			}
			for _, p := range r.Problems {
				fmt.Fprintf(g.out, "look at %s: %s%s\n", p.Thing, p.Reason, p.Error)
			}
			return nil
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "", "the daemon's YAML file")
	c.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return c
}
