package agent

import (
	"bytes"
	"strings"
	"testing"
)

func TestDaemonLoggerJournalPrioritiesAndReload(t *testing.T) {
	var b bytes.Buffer
	l := NewDaemonLogger(&b, LogSettings{Format: "text", Level: "info"}, true)
	log := l.Logger().With("thing", "dev-1")
	log.Debug("hidden")
	log.Info("connected", "endpoint", "e")
	log.Warn("connection lost")
	log.Error("rotation rolled back")
	want := []string{
		`<6>level=INFO msg=connected thing=dev-1 endpoint=e`,
		`<4>level=WARN msg="connection lost" thing=dev-1`,
		`<3>level=ERROR msg="rotation rolled back" thing=dev-1`,
	}
	if got := strings.Split(strings.TrimSpace(b.String()), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("journal lines:\n%s\nwant:\n%s", b.String(), strings.Join(want, "\n"))
	}
	// A reload to JSON at debug level changes loggers made before it.
	b.Reset()
	l.Set(LogSettings{Format: "json", Level: "debug"})
	log.Debug("now shown")
	if got := b.String(); !strings.HasPrefix(got, `<7>{"level":"DEBUG","msg":"now shown","thing":"dev-1"}`) {
		t.Errorf("after the reload: %q", got)
	}
}

func TestDaemonLoggerPlain(t *testing.T) {
	var b bytes.Buffer
	l := NewDaemonLogger(&b, LogSettings{Format: "text", Level: "warn"}, false)
	l.Logger().Info("hidden")
	l.Logger().WithGroup("g").Warn("shown", "k", "v")
	got := b.String()
	if !strings.HasPrefix(got, "time=") || !strings.Contains(got, `level=WARN msg=shown g.k=v`) || strings.Contains(got, "hidden") || strings.HasPrefix(got, "<") {
		t.Errorf("plain log: %q", got)
	}
}
