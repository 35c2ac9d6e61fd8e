//go:build !thingcert_gendocs

package main

import "github.com/spf13/cobra"

// buildOnlyCommands is empty in the binary that ships: see gendocs.go.
func buildOnlyCommands(*cliEnv) []*cobra.Command { return nil }
