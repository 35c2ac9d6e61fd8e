package agent

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listenNotify is a stand-in for systemd's notification socket.
func listenNotify(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

func readNotify(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(buf[:n])
}

func TestNotifierSendsReadyStatusWatchdog(t *testing.T) {
	c := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "4000000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	n := NewNotifier(os.Getenv, nil)
	if !n.Enabled() || n.WatchdogInterval() != 2*time.Second {
		t.Fatalf("notifier %s, watchdog interval %s; want on, 2s", n, n.WatchdogInterval())
	}
	n.Ready("connected to\nexample")
	if got := readNotify(t, c); got != "READY=1\nSTATUS=connected to example" {
		t.Errorf("ready sent %q", got)
	}
	n.Status("connected to example") // unchanged: not resent
	n.Status("rotating")
	if got := readNotify(t, c); got != "STATUS=rotating" {
		t.Errorf("status sent %q", got)
	}
	n.Watchdog()
	if got := readNotify(t, c); got != "WATCHDOG=1" {
		t.Errorf("watchdog sent %q", got)
	}
	n.Reloading()
	if got := readNotify(t, c); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Errorf("reloading sent %q", got)
	}
	n.Stopping("stopping")
	if got := readNotify(t, c); got != "STOPPING=1\nSTATUS=stopping" {
		t.Errorf("stopping sent %q", got)
	}
}

func TestNotifierWatchdogForAnotherProcessIsIgnored(t *testing.T) {
	c := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "4000000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()+1))
	n := NewNotifier(os.Getenv, nil)
	if n.WatchdogInterval() != 0 {
		t.Fatalf("watchdog interval %s for another PID; want 0", n.WatchdogInterval())
	}
	n.Watchdog()
	n.Status("after")
	if got := readNotify(t, c); got != "STATUS=after" {
		t.Errorf("first datagram %q; want only the status (no watchdog ping)", got)
	}
}

func TestNotifierOffOutsideSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "4000000")
	n := NewNotifier(os.Getenv, nil)
	if n.Enabled() || n.WatchdogInterval() != 0 || n.String() != "off" {
		t.Fatalf("notifier %s without NOTIFY_SOCKET; want off", n)
	}
	n.Ready("x") // must not panic or block
	n.Watchdog()
	var nilN *Notifier
	nilN.Status("x")
}
