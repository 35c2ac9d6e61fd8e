package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newRotateCmd(env *cliEnv) *cobra.Command {
	return &cobra.Command{
		Use:    "rotate",
		Short:  "Renew the device certificate now (not yet available)",
		Hidden: true,
		RunE: func(c *cobra.Command, _ []string) error {
			return errors.New("rotate is not available in this build yet")
		},
	}
}
