package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newRunCmd(env *cliEnv) *cobra.Command {
	return &cobra.Command{
		Use:    "run",
		Short:  "Run the device agent (not yet available)",
		Hidden: true,
		RunE: func(c *cobra.Command, _ []string) error {
			return errors.New("run is not available in this build yet")
		},
	}
}
