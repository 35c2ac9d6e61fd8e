package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newDemoCmd(env *cliEnv) *cobra.Command {
	return &cobra.Command{
		Use:    "demo",
		Short:  "Show the whole story on a local emulator (not yet available)",
		Hidden: true,
		RunE: func(c *cobra.Command, _ []string) error {
			return errors.New("demo is not available in this build yet")
		},
	}
}
