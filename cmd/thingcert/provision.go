package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newProvisionCmd(env *cliEnv) *cobra.Command {
	return &cobra.Command{
		Use:    "provision",
		Short:  "Provision the device's identity by claim (not yet available)",
		Hidden: true,
		RunE: func(c *cobra.Command, _ []string) error {
			return errors.New("provision is not available in this build yet")
		},
	}
}
