package main

import (
	"bytes"
	"context"
	"os/exec"
	"testing"
)

// run executes the CLI in-process as a user would call it.
func run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRootCmdFor(&out, &errb, args) // the tree the binary builds for this line
	root.SetArgs(args)
	if err := root.ExecuteContext(context.Background()); err != nil {
		return out.String(), "thingcert: " + forShell(err), exitCode(err)
	}
	return out.String(), errb.String(), 0
}

func execCommand(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
