package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newStatusCmd(env *cliEnv) *cobra.Command {
	return &cobra.Command{
		Use:    "status",
		Short:  "Show the device identity's health (not yet available)",
		Hidden: true,
		RunE: func(c *cobra.Command, _ []string) error {
			return errors.New("status is not available in this build yet")
		},
	}
}
