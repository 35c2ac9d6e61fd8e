package agent

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
)

// DaemonLogger is the daemon's logger: text or JSON on a writer, one line per
// record, with a format and level that a configuration reload can change
// while loggers derived from it (With) keep working.
//
// Under systemd (JournalStream set, from $JOURNAL_STREAM) each line starts
// with its syslog priority, <3> to <7>, which journald strips and keeps as
// the entry's priority (so `journalctl -p warning` works), and the time is
// left out since journald stamps each entry itself.
type DaemonLogger struct {
	w       io.Writer
	journal bool
	level   slog.LevelVar
	cur     atomic.Pointer[slog.Handler]
	pw      *priorityWriter
}

// NewDaemonLogger makes a logger writing to w in the configured format and level.
func NewDaemonLogger(w io.Writer, c LogSettings, journal bool) *DaemonLogger {
	l := &DaemonLogger{w: w, journal: journal, pw: &priorityWriter{w: w, on: journal}}
	l.Set(c)
	return l
}

// Set changes the format and level.
func (l *DaemonLogger) Set(c LogSettings) {
	l.level.Set(parseLevel(c.Level))
	o := &slog.HandlerOptions{Level: &l.level}
	if l.journal {
		o.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	var h slog.Handler
	if c.Format == "json" {
		h = slog.NewJSONHandler(l.pw, o)
	} else {
		h = slog.NewTextHandler(l.pw, o)
	}
	l.cur.Store(&h)
}

// Logger is a *slog.Logger on this handler.
func (l *DaemonLogger) Logger() *slog.Logger { return slog.New(&swapHandler{l: l}) }

func parseLevel(s string) slog.Level {
	switch s {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// swapHandler forwards to the logger's current handler, replaying the
// attributes and groups it was derived with.
type swapHandler struct {
	l   *DaemonLogger
	ops []func(slog.Handler) slog.Handler
}

func (h *swapHandler) inner() slog.Handler {
	in := *h.l.cur.Load()
	for _, op := range h.ops {
		in = op(in)
	}
	return in
}

func (h *swapHandler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= h.l.level.Level()
}

func (h *swapHandler) Handle(ctx context.Context, r slog.Record) error {
	in := h.inner()
	h.l.pw.mu.Lock()
	defer h.l.pw.mu.Unlock()
	h.l.pw.prefix = priority(r.Level)
	return in.Handle(ctx, r)
}

func (h *swapHandler) with(op func(slog.Handler) slog.Handler) slog.Handler {
	ops := append(append([]func(slog.Handler) slog.Handler(nil), h.ops...), op)
	return &swapHandler{l: h.l, ops: ops}
}

func (h *swapHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return h.with(func(in slog.Handler) slog.Handler { return in.WithAttrs(as) })
}

func (h *swapHandler) WithGroup(name string) slog.Handler {
	return h.with(func(in slog.Handler) slog.Handler { return in.WithGroup(name) })
}

// priorityWriter prefixes each record (slog handlers write one record per
// Write) with its syslog priority when on.
type priorityWriter struct {
	mu     sync.Mutex // held by swapHandler.Handle around the write
	w      io.Writer
	on     bool
	prefix string
}

func (p *priorityWriter) Write(b []byte) (int, error) {
	if !p.on {
		return p.w.Write(b)
	}
	// One write, so a line is never split from its prefix.
	if _, err := p.w.Write(append([]byte(p.prefix), b...)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// priority is the sd-daemon(3) prefix for a level.
func priority(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "<3>"
	case l >= slog.LevelWarn:
		return "<4>"
	case l >= slog.LevelInfo:
		return "<6>"
	}
	return "<7>"
}
