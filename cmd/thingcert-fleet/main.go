// Command thingcert-fleet is the operator's half of certificate rotation on
// AWS IoT: setup (policies, provisioning template, claim certificate), audit,
// rotate (one AWS IoT Jobs job) and retire (deactivate and delete the
// certificates rotations replaced). Credentials, region and endpoint come
// from aws-sdk-go-v2's standard chain, so the same commands run against AWS
// and against `thingcert emulator serve --api-listen`.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/thingcert/thingcert/fleet"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "thingcert-fleet: "+err.Error())
		var ue usageError
		switch {
		case errors.As(err, &ue), errors.Is(err, fleet.ErrInvalid):
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a mistake in the command line.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }
