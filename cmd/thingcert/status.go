package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/internal/cli"
	"github.com/thingcert/thingcert/internal/statusview"
)

func newStatusCmd(env *cliEnv) *cobra.Command {
	var cfgPath, state string
	var asJSON, check bool
	c := &cobra.Command{
		Use:   "status --config FILE [--json] [--check] [--state DIR]",
		Short: "Show the device identity's health: certificate, next renewal, last rotation",
		Long: `Show the device's identity as the state folder records it: thing name, endpoint,
key URI (without any PIN) and how the key is protected, certificate ID, subject,
validity and age, when the renewal policy renews it next and why, the last
rotation and how it ended, whether a rotation is in progress and at which step,
and whether the agent (thingcert run) is running and connected.

It reads only the config and the state folder: it opens no key store (no TPM or
token access) and makes no connection, so it is safe to run at any time, also
while a rotation runs. Problems that need attention are listed last; with
--check the exit status is 1 when there are any (for monitoring).

A config file that does not load (say the one a SIGHUP reload just refused)
does not stop it: it reports the agent's state from the state folder's record
and the config's error beside it, as a problem. The state folder is then
--state, or state_dir read from the broken file if it is still YAML, or
/var/lib/thingcert.`,
		Example: `  thingcert status --config /etc/thingcert/thingcert.yaml
  thingcert status --config /etc/thingcert/thingcert.yaml --json | jq .renewal.at`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "config"); err != nil {
				return err
			}
			now := env.clock()()
			cfg, cfgErr := config.Load(cfgPath)
			var st *statusview.Status
			var err error
			if cfgErr != nil {
				dir, how := stateDir(state, cfgPath, nil)
				st, err = statusview.ReadStatusBroken(cfgPath, cfgErr, dir, how, now)
			} else {
				if state != "" {
					cfg.StateDir = state
				}
				st, err = statusview.ReadStatus(cfg, now)
			}
			if err != nil {
				return err
			}
			if asJSON {
				err = writeJSON(env.stdout, st)
			} else {
				err = st.WriteText(env.stdout)
			}
			if err != nil {
				return err
			}
			if check && len(st.Problems) > 0 {
				return fmt.Errorf("%d problem(s) need attention: %s", len(st.Problems), st.Problems[0])
			}
			return nil
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "", "device configuration file (YAML)")
	c.Flags().StringVar(&state, "state", "", "state folder (default: the config's state_dir; see above when the config does not load)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	c.Flags().BoolVar(&check, "check", false, "exit 1 when a problem needs attention")
	return c
}
