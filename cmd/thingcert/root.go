package main

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/internal/cli"
	"github.com/thingcert/thingcert/internal/doctor"
)

func exitCode(err error) int {
	if cli.IsUsage(err) {
		return 2
	}
	var x exitStatus
	if errors.As(err, &x) {
		return x.code
	}
	return 1
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	return newRootCmdEnv(&cliEnv{stdout: stdout, stderr: stderr})
}

// subcommands are thingcert's commands (help lists them sorted by name).
var subcommands = [...]struct {
	name string
	make func(*cliEnv) *cobra.Command
}{
	{"key", newKeyCmd},
	{"csr", newCSRCmd},
	{"connect", newConnectCmd},
	{"provision", newProvisionCmd},
	{"rotate", newRotateCmd},
	{"run", newRunCmd},
	{"status", newStatusCmd},
	{"doctor", newDoctorCmd},
	{"emulator", newEmulatorCmd},
	{"demo", newDemoCmd},
	{"version", newVersionCmd},
}

// newRootCmdFor is the command tree for one command line (os.Args[1:]). When
// the line starts with a command's name only that command is built: building
// every command, with its flags and help, took 0.14–0.43 ms of each run (one
// command 0.04–0.1 ms), against ~6 ms for a whole `connect --publish`
// (bench/connect). Anything else
// (help, completion, a flag, a misspelt command to suggest a name for) gets
// the whole tree.
func newRootCmdFor(stdout, stderr io.Writer, args []string) *cobra.Command {
	env := &cliEnv{stdout: stdout, stderr: stderr}
	if len(args) > 0 {
		for _, s := range subcommands {
			if s.name == args[0] {
				return newRootCmdOnly(env, s.name)
			}
		}
	}
	return newRootCmdEnv(env)
}

// newRootCmdEnv is the command tree writing to env's outputs, with env's
// clock and probes (tests replace them).
func newRootCmdEnv(env *cliEnv) *cobra.Command { return newRootCmdOnly(env, "") }

// newRootCmdOnly is the root with every command, or with only the one named.
func newRootCmdOnly(env *cliEnv, only string) *cobra.Command {
	stdout, stderr := env.stdout, env.stderr
	root := &cobra.Command{
		Use:   "thingcert",
		Short: "An AWS IoT device identity whose private key never leaves secure storage",
		Long: `thingcert gives a Linux device an X.509 client identity for AWS IoT Core whose
private key stays in a TPM 2.0, a PKCS#11 token or (least secure) a file: it makes
the key there, makes CSRs with it, connects over MQTT with mutual TLS, provisions by
claim and renews the certificate before it ages out.

Keys are named by URI:
  file:/var/lib/thingcert/keys/device.pem
  pkcs11:token=T;object=device?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/thingcert/pin
  tpm:blob=/var/lib/thingcert/keys/device.tpmkey?device=/dev/tpmrm0
  tpm:handle=0x81000010

Start with:  thingcert demo          (the whole story on a local emulator)
             thingcert key generate --key file:/tmp/k/device.pem`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return cli.UsageError{Err: errors.New(err.Error() + " (see `" + c.CommandPath() + " --help`)")}
	})
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	env.log = logger
	for _, s := range subcommands {
		if only == "" || s.name == only {
			root.AddCommand(s.make(env))
		}
	}
	if only != "" {
		// The command line names its command: no completion command can be
		// asked for, and cobra would build one in every run.
		root.CompletionOptions.DisableDefaultCmd = true
		return root
	}
	root.AddCommand(buildOnlyCommands(env)...) // none in a release binary: gendocs.go
	return root
}

// cliEnv is what every command writes to; tests give it buffers.
type cliEnv struct {
	stdout, stderr io.Writer
	log            *slog.Logger
	// now replaces the clock of status and doctor (nil: time.Now); doctor,
	// if set, adjusts doctor's probes (paths, clock). Tests set them.
	now    func() time.Time
	doctor func(*doctor.Env)
}

func (e *cliEnv) clock() func() time.Time {
	if e.now != nil {
		return e.now
	}
	return time.Now
}

// flagFor words a library's setting as the command line's flag, so that a
// hint tells a person what to type.
func flagFor(setting string) string {
	switch setting {
	case "Endpoint.Address":
		return "--address HOST:PORT"
	case "Endpoint.Port":
		return "--port"
	case "Roots":
		return "--ca FILE"
	case "ClientID":
		return "--client-id"
	case "Identity":
		return "--cert and --key"
	}
	return ""
}

// forShell is an error's text for the shell: settings a connection error's
// hint names (as Go options) become the flags that set them.
func forShell(err error) string {
	msg := err.Error()
	var h interface{ HintSettings() []string }
	if errors.As(err, &h) {
		for _, s := range h.HintSettings() {
			if f := flagFor(s); f != "" {
				msg = strings.ReplaceAll(msg, s, f)
			}
		}
	}
	return cli.OneLine(msg)
}
