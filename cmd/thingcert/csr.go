package main

import "github.com/spf13/cobra"

func newCSRCmd(env *cliEnv) *cobra.Command {
	return &cobra.Command{Use: "csr", Short: "Make a CSR signed by a device key"}
}
