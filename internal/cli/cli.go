// Package cli holds what the thingcert and thingcert-emulator commands share
// about their command lines: how a usage mistake is marked and how required
// flags are checked, so both binaries answer a mistake alike.
package cli

import (
	"errors"
	"strings"

	"github.com/spf13/cobra"
)

// UsageError marks a mistake in the command line (exit 2, as is usual).
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// IsUsage reports whether err is, or wraps, a UsageError.
func IsUsage(err error) bool {
	var u UsageError
	return errors.As(err, &u)
}

// OneLine folds a text onto one line (a help text quoted in an error).
func OneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Required checks that flags were given, as a usage error naming them.
func Required(c *cobra.Command, names ...string) error {
	var missing []string
	for _, n := range names {
		if !c.Flags().Changed(n) {
			missing = append(missing, "--"+n)
		}
	}
	if len(missing) > 0 {
		return UsageError{Err: errors.New(c.CommandPath() + " needs " + strings.Join(missing, " and ") + " (see `" + c.CommandPath() + " --help`)")}
	}
	return nil
}
