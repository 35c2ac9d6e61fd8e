package main

import (
	"fmt"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/internal/doctor"
)

// exitStatus ends the program with a chosen code and no message of its own
// (the command already printed what it has to say).
type exitStatus struct {
	code int
	msg  string
}

func (e exitStatus) Error() string { return e.msg }

func newDoctorCmd(env *cliEnv) *cobra.Command {
	var cfgPath, state, socket string
	var asJSON bool
	c := &cobra.Command{
		Use:   "doctor [--config FILE] [--json]",
		Short: "Check the installation, one line per check, with the fix for each failure",
		Long: `Check what a device needs to keep its AWS IoT identity, and say for each failure
the command that fixes or explains it:

  config          the configuration file loads (a broken one names its line);
  state folder    owner and mode (0700);
  key store       file: the key folder (0700) and key files (0600);
                  tpm: device node, resource manager (tpmrm0), access for this
                  user, manufacturer and firmware;
                  pkcs11: module, PIN file mode (the PIN is never read or shown
                  here), token found and logged in;
  key             the current key opens, signs once, the signature verifies
                  and it is the certificate's key;
  certificate     the chain, its expiry and the next renewal;
  ntp, clock      synchronised (systemd-timesyncd or chrony), not before the
                  certificate's notBefore nor the build date;
  dns, tcp, tls   the endpoint resolves, its port connects, its server
                  certificate verifies with the configured roots;
  mqtt            CONNECT as the device and SUBSCRIBE to its Jobs topics, only
                  while the agent is not running (AWS IoT allows one connection
                  per client ID: doctor would knock the agent off); while it
                  runs, the agent is asked over its socket instead;
  agent           running, and its socket answers.

It changes nothing. Exit status: 0 all passed, 1 warnings, 2 failures.
When the config does not load, the other checks still run where they can; the
state folder is then --state, or state_dir read from the broken file if it is
still YAML, or /var/lib/thingcert.`,
		Example: `  sudo thingcert doctor --config /etc/thingcert/thingcert.yaml
  thingcert doctor --config /etc/thingcert/thingcert.yaml --json | jq '.checks[] | select(.status=="failure")'`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, cfgErr := config.Load(cfgPath)
			dir, _ := stateDir(state, cfgPath, cfg)
			denv := doctor.Env{ConfigPath: cfgPath, Config: cfg, ConfigErr: cfgErr, StateDir: dir, Now: env.clock(), Built: buildTime(), Socket: socket}
			if env.doctor != nil {
				env.doctor(&denv)
			}
			rep := doctor.Run(c.Context(), denv)
			var err error
			if asJSON {
				err = rep.WriteJSON(env.stdout)
			} else {
				err = rep.WriteText(env.stdout)
			}
			if err != nil {
				return err
			}
			if code := rep.ExitCode(); code != 0 {
				return exitStatus{code: code, msg: fmt.Sprintf("doctor: %d failure(s), %d warning(s)", rep.Failures, rep.Warnings)}
			}
			return nil
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "/etc/thingcert/thingcert.yaml", "device configuration file (YAML)")
	c.Flags().StringVar(&state, "state", "", "state folder (default: the config's state_dir; see above when the config does not load)")
	c.Flags().StringVar(&socket, "socket", "", "the agent's socket, if its record does not name it (default /run/thingcert/agent.sock, else <state>/agent.sock)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the checks as JSON")
	return c
}

// buildTime is the commit time the build recorded (zero when it did not).
func buildTime() time.Time {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return time.Time{}
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.time" {
			if t, err := time.Parse(time.RFC3339, s.Value); err == nil {
				return t
			}
		}
	}
	return time.Time{}
}
