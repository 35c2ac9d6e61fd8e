package main

import (
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/agent"
	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/internal/cli"
)

func newRunCmd(env *cliEnv) *cobra.Command {
	var cfgPath, socket, socketGroup string
	c := &cobra.Command{
		Use:   "run --config FILE",
		Short: "Run the device agent: provision, stay connected, renew the certificate",
		Long: `Run the device agent, the service that keeps this device connected to AWS IoT
and its identity renewed:

  - with no identity yet, it provisions by claim (claim.key, claim.cert);
  - it connects with the current identity and stays connected, reconnecting with
    capped exponential backoff and jitter;
  - it renews the certificate when the renewal policy says so (rotation in the
    config) and when an AWS IoT job asks ({"operation": "rotate-certificate"});
  - if the cloud refuses its identity (revoked, deactivated), with claim.recover
    it provisions again by claim; without, it retries and says what to do;
  - the device's own programs publish and subscribe on its connection through
    its local socket (--socket; Go: agentclient.Dial, see examples/sdk).

SIGTERM or SIGINT stop it cleanly: a rotation in progress stops at a persisted
step and resumes at the next start. SIGHUP reloads the config; one that does not
load or check is refused, logged, and the running one kept. Under systemd it
reports READY, STATUS and WATCHDOG (packaging/thingcert.service) and logs with
journald priorities. ` + "`thingcert status`" + ` shows how it is doing at any time.`,
		Example: `  thingcert run --config /etc/thingcert/thingcert.yaml
  systemctl start thingcert            # packaging/thingcert.service runs the line above`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "config"); err != nil {
				return err
			}
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			if !c.Flags().Changed("socket") {
				socket = defaultSocket(cfg)
			}
			if socket == "none" {
				socket = ""
			}
			set, err := cfg.Settings()
			if err != nil {
				return err
			}
			dlog := agent.NewDaemonLogger(env.stderr, set.Log, os.Getenv("JOURNAL_STREAM") != "")
			path := cfg.Path
			d, err := agent.NewDaemon(agent.DaemonOptions{
				Settings: set,
				Reload:   func() (agent.Settings, error) { return config.LoadSettings(path) },
				Log:      dlog,
				Notifier: agent.NewNotifier(os.Getenv, dlog.Logger()),
				Socket:   socket,
				// The group device programs join for the socket (the
				// unit passes thingcert-clients).
				SocketGroup: socketGroup,
				Version:     buildVersion(),
				// Tests stop the daemon at a chosen rotation step
				// (THINGCERT_TEST_STOP_AFTER, as provision and rotate do).
				AfterSave: testStopHook(env),
			})
			if err != nil {
				return err
			}
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			ctx := c.Context()
			go func() {
				for {
					select {
					case <-hup:
						d.Reload()
					case <-ctx.Done():
						return
					}
				}
			}()
			return d.Run(ctx)
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "", "device configuration file (YAML; see docs/config.md)")
	c.Flags().StringVar(&socketGroup, "socket-group", "", "group the local socket belongs to, for device programs (default: the agent's own group); the agent must be a member")
	c.Flags().StringVar(&socket, "socket", "", "local socket for the device's programs, or none (default $RUNTIME_DIRECTORY/agent.sock under systemd, else <state_dir>/agent.sock)")
	return c
}

// defaultSocket is the socket in systemd's RuntimeDirectory, where the
// service's group may reach it, or else in the state folder.
func defaultSocket(cfg *config.Config) string {
	if rd := os.Getenv("RUNTIME_DIRECTORY"); rd != "" {
		dir, _, _ := strings.Cut(rd, ":")
		return filepath.Join(dir, "agent.sock")
	}
	return filepath.Join(cfg.StateDir, "agent.sock")
}

func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
