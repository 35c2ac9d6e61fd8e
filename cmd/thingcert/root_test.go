package main

import (
	"bytes"
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// The table that builds one command alone must name every command of the
// whole tree, by the name cobra dispatches on; a command missing from it would
// still work (the whole tree is the fallback) but lose the fast start.
func TestSubcommandTableIsTheWholeTree(t *testing.T) {
	root := newRootCmd(new(bytes.Buffer), new(bytes.Buffer))
	var tree []string
	for _, c := range root.Commands() {
		tree = append(tree, c.Name())
	}
	var table []string
	for _, s := range subcommands {
		table = append(table, s.name)
		if got := s.make(&cliEnv{stdout: new(bytes.Buffer), stderr: new(bytes.Buffer)}).Name(); got != s.name {
			t.Errorf("subcommands lists %q but its constructor makes %q", s.name, got)
		}
	}
	// buildOnlyCommands adds nothing to the release binary this test builds;
	// cobra sorts its commands by name.
	slices.Sort(table)
	if strings.Join(tree, " ") != strings.Join(table, " ") {
		t.Errorf("whole tree has commands %v, the table %v", tree, table)
	}
}

// A line that starts with a command's name gets a tree of that command alone;
// it must behave as the whole tree does: same help, same flags, same errors.
func TestOneCommandTreeBehavesAsTheWholeTree(t *testing.T) {
	lines := [][]string{
		{"connect"}, // missing required flags
		{"connect", "--endpoint", "x", "--bogus"}, // unknown flag
		{"key", "generate", "--help"},
		{"version", "extra"}, // no arguments taken
	}
	for _, s := range subcommands { // and every command's help
		lines = append(lines, []string{s.name, "--help"})
	}
	for _, args := range lines {
		whole := execTree(t, newRootCmd, args)
		one := execTree(t, func(o, e io.Writer) *cobra.Command { return newRootCmdFor(o, e, args) }, args)
		if whole != one {
			t.Errorf("thingcert %s: the one-command tree says\n%s\nthe whole tree\n%s", strings.Join(args, " "), one, whole)
		}
	}
	if n := len(newRootCmdFor(new(bytes.Buffer), new(bytes.Buffer), []string{"connect"}).Commands()); n != 1 {
		t.Errorf("thingcert connect built %d commands, want only connect", n)
	}
}

// Anything but a command's name gets the whole tree: the command list in
// help, and a suggestion for a misspelt command.
func TestOtherLinesGetTheWholeTree(t *testing.T) {
	out, _, code := run(t, "--help")
	if code != 0 {
		t.Fatalf("--help exited %d", code)
	}
	for _, s := range subcommands {
		if !strings.Contains(out, "\n  "+s.name+" ") {
			t.Errorf("thingcert --help does not list %q:\n%s", s.name, out)
		}
	}
	_, stderr, code := run(t, "conect")
	if code == 0 || !strings.Contains(stderr, "connect") {
		t.Errorf("thingcert conect: exit %d, %q; want a failure suggesting connect", code, stderr)
	}
	if out, _, code := run(t, "completion", "bash"); code != 0 || !strings.Contains(out, "bash completion") {
		t.Errorf("thingcert completion bash: exit %d, output starts %.80q", code, out)
	}
}

// execTree runs one command line on a tree and returns all it printed and the
// error it ended with, as one text.
func execTree(t *testing.T, build func(o, e io.Writer) *cobra.Command, args []string) string {
	t.Helper()
	var out, errb bytes.Buffer
	root := build(&out, &errb)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	s := out.String() + "\n--stderr--\n" + errb.String()
	if err != nil {
		s += "\n--error--\n" + forShell(err)
	}
	return s
}
