package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newConnectCmd(env *cliEnv) *cobra.Command {
	return &cobra.Command{
		Use:    "connect",
		Short:  "Connect to AWS IoT with mutual TLS and optionally publish (not yet available)",
		Hidden: true,
		RunE: func(c *cobra.Command, _ []string) error {
			return errors.New("connect is not available in this build yet")
		},
	}
}
