package main

import "github.com/spf13/cobra"

func newKeyCmd(env *cliEnv) *cobra.Command {
	return &cobra.Command{Use: "key", Short: "Make, show, import and delete device keys"}
}
