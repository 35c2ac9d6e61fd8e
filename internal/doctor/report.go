// Package doctor checks a device's thingcert installation, one line per
// check, and says for each failure what to run to fix it. It never changes
// anything: it reads files, opens the key store to sign once, resolves and
// dials the endpoint and, only while the agent is not running, connects as the
// device (AWS IoT allows one connection per client ID, so connecting beside a
// running agent would knock it off).
//
// The decisions are pure functions of what was observed (file modes, times,
// errors); the probes that observe are thin and take their clock and paths
// from Env, so tests cause each failure for real and check each verdict.
package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Status is a check's verdict.
type Status int

const (
	// OK: nothing to do.
	OK Status = iota
	// Skipped: the check could not run (what it needs failed, or it would
	// disturb the running agent); the detail says why.
	Skipped
	// Warn: works now, but needs attention.
	Warn
	// Fail: does not work; the fix says what to run.
	Fail
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Skipped:
		return "skipped"
	case Warn:
		return "warning"
	case Fail:
		return "failure"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Mark is the status as one character for a terminal.
func (s Status) Mark() string {
	switch s {
	case OK:
		return "✓"
	case Warn:
		return "⚠"
	case Fail:
		return "✗"
	}
	return "-"
}

// MarshalText writes the status as its word.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a status word.
func (s *Status) UnmarshalText(b []byte) error {
	for _, v := range []Status{OK, Skipped, Warn, Fail} {
		if v.String() == string(b) {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("doctor: unknown status %q", b)
}

// Result is one check's outcome.
type Result struct {
	// Check names what was checked ("config", "clock", "tls", ...).
	Check  string `json:"check"`
	Status Status `json:"status"`
	// Detail is what was found, in one line.
	Detail string `json:"detail"`
	// Fix, for a warning or failure, is what to run (a command a person can
	// copy, with what it does around it when a command alone cannot say).
	Fix string `json:"fix,omitempty"`
}

func ok(check, format string, args ...any) Result {
	return Result{Check: check, Status: OK, Detail: fmt.Sprintf(format, args...)}
}

func skip(check, format string, args ...any) Result {
	return Result{Check: check, Status: Skipped, Detail: fmt.Sprintf(format, args...)}
}

func warn(check, fix, format string, args ...any) Result {
	return Result{Check: check, Status: Warn, Detail: fmt.Sprintf(format, args...), Fix: fix}
}

func fail(check, fix, format string, args ...any) Result {
	return Result{Check: check, Status: Fail, Detail: fmt.Sprintf(format, args...), Fix: fix}
}

// Report is every check's result, in the order they ran.
type Report struct {
	Config   string   `json:"config"`
	StateDir string   `json:"state_dir"`
	Checks   []Result `json:"checks"`
	Warnings int      `json:"warnings"`
	Failures int      `json:"failures"`
}

func (r *Report) add(res ...Result) {
	for _, x := range res {
		r.Checks = append(r.Checks, x)
		switch x.Status {
		case Warn:
			r.Warnings++
		case Fail:
			r.Failures++
		}
	}
}

// Find is the first result of check, or nil.
func (r *Report) Find(check string) *Result {
	for i := range r.Checks {
		if r.Checks[i].Check == check {
			return &r.Checks[i]
		}
	}
	return nil
}

// ExitCode is 0 when every check passed, 1 with warnings, 2 with failures.
func (r *Report) ExitCode() int {
	switch {
	case r.Failures > 0:
		return 2
	case r.Warnings > 0:
		return 1
	}
	return 0
}

// WriteText prints one line per check, and under a warning or failure the
// fix.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	width := 0
	for _, c := range r.Checks {
		width = max(width, len(c.Check))
	}
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "%s %-*s  %s\n", c.Status.Mark(), width, c.Check, c.Detail)
		if c.Fix != "" {
			fmt.Fprintf(&b, "  %-*s  fix: %s\n", width, "", c.Fix)
		}
	}
	switch {
	case r.Failures > 0:
		fmt.Fprintf(&b, "%d failure(s), %d warning(s)\n", r.Failures, r.Warnings)
	case r.Warnings > 0:
		fmt.Fprintf(&b, "%d warning(s), no failures\n", r.Warnings)
	default:
		b.WriteString("all checks passed\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the report as JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
