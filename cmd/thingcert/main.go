// Command thingcert gives a Linux device an AWS IoT identity whose private key
// stays in a TPM, a PKCS#11 token or a file, and keeps it renewed. It is both the
// CLI and the daemon (`thingcert run`).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

func main() {
	ctx, stop := notifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
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

// notifyContext is signal.NotifyContext with the handlers installed beside the
// command rather than before it: the process's first signal.Notify waits for
// the runtime to start a thread for signals, 0.1–0.25 ms that every command
// (a whole `connect --publish` is ~6 ms) would otherwise wait for. A signal in
// that window ends the process as one during start-up does.
func notifyContext(parent context.Context, sigs ...os.Signal) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	done := make(chan struct{})
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, sigs...)
		defer signal.Stop(ch)
		select {
		case <-ch:
			cancel()
			// Later signals are caught and dropped until stop, as with
			// signal.NotifyContext: the command is already shutting down.
			<-done
		case <-done:
		}
	}()
	return ctx, sync.OnceFunc(func() { cancel(); close(done) })
}
