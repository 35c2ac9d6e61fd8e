package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"
)

func newVersionCmd(env *cliEnv) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print thingcert's version and build",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			v, goVersion, vcs := "(devel)", "", ""
			if bi, ok := debug.ReadBuildInfo(); ok {
				if bi.Main.Version != "" {
					v = bi.Main.Version
				}
				goVersion = bi.GoVersion
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						vcs = s.Value
					}
				}
			}
			fmt.Fprintf(env.stdout, "thingcert %s %s", v, goVersion)
			if vcs != "" {
				fmt.Fprintf(env.stdout, " %s", vcs)
			}
			fmt.Fprintln(env.stdout)
			return nil
		},
	}
}
