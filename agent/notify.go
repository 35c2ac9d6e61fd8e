package agent

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// Notifier tells the service manager how the daemon is doing, through the
// sd_notify protocol: READY once it serves, STATUS in words, RELOADING and
// STOPPING around those, and WATCHDOG pings. Outside systemd (no
// NOTIFY_SOCKET) every method does nothing, so the daemon calls them
// unconditionally. The zero value is disabled; a nil *Notifier too.
type Notifier struct {
	enabled  bool
	watchdog time.Duration
	log      *slog.Logger
	mu       sync.Mutex
	// last is the last STATUS sent, so an unchanged status is not resent.
	last string
}

// NewNotifier reads the environment systemd gives a service (NOTIFY_SOCKET,
// WATCHDOG_USEC, WATCHDOG_PID). A watchdog meant for another process (a
// WATCHDOG_PID that is not ours) is ignored, as sd_watchdog_enabled does.
func NewNotifier(getenv func(string) string, log *slog.Logger) *Notifier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Notifier{enabled: getenv("NOTIFY_SOCKET") != "", log: log}
	if !n.enabled {
		return n
	}
	wd, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog setting ignored", "error", err)
	}
	n.watchdog = wd
	return n
}

// Enabled reports whether a service manager listens.
func (n *Notifier) Enabled() bool { return n != nil && n.enabled }

// WatchdogInterval is how often to ping: half the watchdog timeout, as
// sd_watchdog_enabled(3) advises; zero when no watchdog is set.
func (n *Notifier) WatchdogInterval() time.Duration {
	if !n.Enabled() {
		return 0
	}
	return n.watchdog / 2
}

func (n *Notifier) send(lines ...string) {
	if !n.Enabled() {
		return
	}
	if _, err := sd.SdNotify(false, strings.Join(lines, "\n")); err != nil {
		// The service manager going away is no reason to stop serving.
		n.log.Debug("sd_notify failed", "state", lines[0], "error", err)
	}
}

// statusLine makes s one line: the protocol is newline separated.
func statusLine(s string) string {
	return "STATUS=" + strings.Join(strings.Fields(s), " ")
}

// Ready says the daemon serves, with a status line.
func (n *Notifier) Ready(status string) {
	if !n.Enabled() {
		return
	}
	n.mu.Lock()
	n.last = statusLine(status)
	n.mu.Unlock()
	n.send(sd.SdNotifyReady, statusLine(status))
}

// Status updates the status line shown by `systemctl status`.
func (n *Notifier) Status(status string) {
	if !n.Enabled() {
		return
	}
	line := statusLine(status)
	n.mu.Lock()
	same := line == n.last
	n.last = line
	n.mu.Unlock()
	if !same {
		n.send(line)
	}
}

// Reloading says a configuration reload started; Ready must follow. The
// monotonic timestamp lets Type=notify-reload units tell this reload from an
// earlier one.
func (n *Notifier) Reloading() {
	n.send(sd.SdNotifyReloading, strings.TrimSpace(sd.SdNotifyMonotonicUsec()))
}

// Stopping says the daemon is shutting down.
func (n *Notifier) Stopping(status string) {
	n.send(sd.SdNotifyStopping, statusLine(status))
}

// Watchdog pings the watchdog. The daemon calls it from its main loop, so a
// loop that hangs stops the pings and systemd restarts the service.
func (n *Notifier) Watchdog() {
	if n.WatchdogInterval() > 0 {
		n.send(sd.SdNotifyWatchdog)
	}
}

// String describes the notifier for the start-up log line.
func (n *Notifier) String() string {
	switch {
	case !n.Enabled():
		return "off"
	case n.watchdog > 0:
		return fmt.Sprintf("on, watchdog %s", n.watchdog)
	}
	return "on"
}
