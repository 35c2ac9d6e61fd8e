package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newEmulatorCmd(env *cliEnv) *cobra.Command {
	return &cobra.Command{
		Use:    "emulator",
		Short:  "Run a local AWS IoT Core emulator (not yet available)",
		Hidden: true,
		RunE: func(c *cobra.Command, _ []string) error {
			return errors.New("emulator is not available in this build yet")
		},
	}
}
