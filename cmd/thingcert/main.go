// Command thingcert gives a Linux device an AWS IoT identity whose private key
// stays in a TPM, a PKCS#11 token or a file, and keeps it renewed. It is both the
// CLI and the daemon (`thingcert run`).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmdFor(os.Stdout, os.Stderr, os.Args[1:]).ExecuteContext(ctx)
	stop()
	if err != nil {
		// One line a person can act on; cobra's own usage dump is off. An
		// exit status without a message (thingcert-emulator's) has been
		// explained already.
		if msg := forShell(err); msg != "" {
			fmt.Fprintln(os.Stderr, "thingcert: "+msg)
		}
		os.Exit(exitCode(err))
	}
}
