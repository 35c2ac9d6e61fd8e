package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// emulatorBinary is the program that runs `thingcert emulator` and
// `thingcert demo`: the local AWS IoT Core is a second binary, so that no
// other command (nor the agent on a device) links and initialises its broker
// at every start (cmd/thingcert-emulator says what that cost).
const emulatorBinary = "thingcert-emulator"

// newForwardCmd is a command that thingcert-emulator runs, with every
// argument, flags and --help included, passed on unparsed.
func newForwardCmd(env *cliEnv, use, short string) *cobra.Command {
	return &cobra.Command{
		Use:                use,
		Short:              short,
		DisableFlagParsing: true,
		RunE: func(c *cobra.Command, args []string) error {
			return runEmulatorBinary(c.Context(), env, append([]string{c.Name()}, args...))
		},
	}
}

func newEmulatorCmd(env *cliEnv) *cobra.Command {
	return newForwardCmd(env, "emulator", "Run a local AWS IoT Core (mutual TLS, accounts by SNI, fleet provisioning, Jobs) and administer it")
}

func newDemoCmd(env *cliEnv) *cobra.Command {
	return newForwardCmd(env, "demo", "Watch a device's identity from claim to two rotations, on a local emulator")
}

// errNoEmulator: thingcert-emulator is neither beside thingcert nor on PATH.
var errNoEmulator = errors.New(emulatorBinary + " not found")

// findEmulator is thingcert-emulator beside this program (as a release and
// `go build -o DIR ./cmd/...` lay them out), else on PATH.
func findEmulator() (string, error) {
	if self, err := os.Executable(); err == nil {
		if self, err = filepath.EvalSymlinks(self); err == nil {
			p := filepath.Join(filepath.Dir(self), emulatorBinary)
			if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				return p, nil
			}
		}
	}
	if p, err := exec.LookPath(emulatorBinary); err == nil {
		return p, nil
	}
	return "", errNoEmulator
}

// runEmulatorBinary runs thingcert-emulator with args. From the command
// line it replaces this process (execve): the emulator then has thingcert's
// PID, input, outputs, signals and exit code, so a service manager or a
// script that stops `thingcert emulator serve` by its PID stops the
// emulator, not a parent that would leave it running. In-process callers
// (tests, whose outputs are buffers) get a child process instead. Under
// `go run ./cmd/thingcert demo` it runs the source tree's emulator package
// the same way, with `go run`.
func runEmulatorBinary(ctx context.Context, env *cliEnv, args []string) error {
	var argv []string
	// Under `go run` the source tree's emulator goes first: one installed
	// on PATH may be of another version than the thingcert being run.
	if goTool, gerr := exec.LookPath("go"); gerr == nil && builtByGoRun() {
		argv = append([]string{goTool, "run", "github.com/thingcert/thingcert/cmd/" + emulatorBinary}, args...)
	} else if bin, err := findEmulator(); err == nil {
		argv = append([]string{bin}, args...)
	} else {
		return fmt.Errorf("%w beside %s or on PATH: `thingcert %s` runs it; install it with thingcert (go install github.com/thingcert/thingcert/cmd/%s@latest, or build ./cmd/%s into the folder that holds thingcert)",
			err, selfDir(), args[0], emulatorBinary, emulatorBinary)
	}
	if env.stdout == os.Stdout && env.stderr == os.Stderr {
		err := syscall.Exec(argv[0], argv, os.Environ())
		return fmt.Errorf("running %s: %w", argv[0], err) // only if the exec failed
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, env.stdout, env.stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	// ctx ends on SIGINT or SIGTERM: pass it on and let the emulator or the
	// demo stop cleanly, as they do when run directly.
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Signal(syscall.SIGTERM) })
	err := cmd.Wait()
	stop()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		// The emulator has said why on stderr; end with its code, silently.
		code := exit.ExitCode()
		if code < 0 {
			code = 1
		}
		return exitStatus{code: code}
	}
	return err
}

// builtByGoRun reports whether this program is `go run`'s: a binary the go
// command built into its temporary folder (…/go-build…/exe/thingcert).
func builtByGoRun() bool {
	self, err := os.Executable()
	if err != nil {
		return false
	}
	dir := filepath.Dir(self)
	return filepath.Base(dir) == "exe" && strings.Contains(dir, string(filepath.Separator)+"go-build")
}

func selfDir() string {
	self, err := os.Executable()
	if err != nil {
		return "thingcert"
	}
	return filepath.Dir(self)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
