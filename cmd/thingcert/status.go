package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/config"
)

func newStatusCmd(env *cliEnv) *cobra.Command {
	var cfgPath string
	var asJSON, check bool
	c := &cobra.Command{
		Use:   "status --config FILE [--json]",
		Short: "Show the device identity's health: certificate, next renewal, last rotation",
		Long: `Show the device's identity as the state folder records it: thing name, endpoint,
key URI (without any PIN) and how the key is protected, certificate ID, subject,
validity and age, when the renewal policy renews it next and why, the last
rotation and how it ended, whether a rotation is in progress and at which step,
and whether the agent (thingcert run) is running and connected.

It reads only the config and the state folder: it opens no key store (no TPM or
token access) and makes no connection, so it is safe to run at any time, also
while a rotation runs. Problems that need attention are listed last; with
--check the exit status is 1 when there are any (for monitoring).`,
		Example: `  thingcert status --config /etc/thingcert/thingcert.yaml
  thingcert status --config /etc/thingcert/thingcert.yaml --json | jq .renewal.at`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := required(c, "config"); err != nil {
				return err
			}
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			st, err := ReadStatus(cfg, time.Now())
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
	c.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	c.Flags().BoolVar(&check, "check", false, "exit 1 when a problem needs attention")
	return c
}
