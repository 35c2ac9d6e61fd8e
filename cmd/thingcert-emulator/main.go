// Command thingcert-emulator is the half of thingcert that runs a local AWS
// IoT Core: `thingcert emulator ...` and `thingcert demo` run it (it lies
// beside thingcert, or on PATH). Its command tree is thingcert's for those
// two commands, so `thingcert-emulator emulator serve` is
// `thingcert emulator serve`.
//
// Why a second binary: a Go program initialises every package it links
// before main, in every run of every subcommand. The emulator's broker
// (mochi-mqtt, whose packets package builds 360 KB of tables at init, and
// rs/xid, which reads /etc/machine-id and /proc/self/cpuset) and the
// emulator itself made every `thingcert` run on a device — `thingcert
// version`, `thingcert connect`, the agent — about 0.8 ms of CPU and 130
// page faults slower and its binary 2.5 MB larger, for commands a device
// never runs (bench/startup, bench/README.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/thingcert/thingcert/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "thingcert: "+cli.OneLine(err.Error()))
		os.Exit(exitCode(err))
	}
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	env := &cliEnv{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		// Named as the user typed it: thingcert runs this binary for
		// `thingcert emulator` and `thingcert demo`.
		Use:           "thingcert",
		Short:         "thingcert's local AWS IoT Core emulator and demo (run as `thingcert emulator` and `thingcert demo`)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return cli.UsageError{Err: errors.New(err.Error() + " (see `" + c.CommandPath() + " --help`)")}
	})
	env.log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	root.AddCommand(newEmulatorCmd(env), newDemoCmd(env))
	return root
}

// cliEnv is what every command writes to; tests give it buffers.
type cliEnv struct {
	stdout, stderr io.Writer
	log            *slog.Logger
}

func exitCode(err error) int {
	if cli.IsUsage(err) {
		return 2
	}
	return 1
}
