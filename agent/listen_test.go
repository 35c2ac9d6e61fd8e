package agent

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// listenLocal never deletes what is not a socket, replaces a stale socket,
// makes the socket 0660 without touching the process umask, and removes it
// when closed.
func TestListenLocalPlacesItsSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.sock")
	if err := os.WriteFile(path, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenLocal(path, ""); err == nil || !strings.Contains(err.Error(), "is not a socket (a regular file)") {
		t.Fatalf("listenLocal over a regular file: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "not a socket" {
		t.Fatalf("the regular file after listenLocal: %q, %v", b, err)
	}
	os.Remove(path)

	// A stale socket: a listener gone without removing its file.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	l, err := listenLocal(path, "")
	if err != nil {
		t.Fatalf("listenLocal over a stale socket: %v", err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket: %v, %v", fi.Mode(), err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := listenLocal(path, ""); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("a second listenLocal: %v", err)
	}
	l.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("the socket after Close: %v", err)
	}
	// Nothing left beside it (the private folder it was made in).
	if e, _ := os.ReadDir(dir); len(e) != 0 {
		t.Errorf("left in the socket's folder: %v", e)
	}
}

// With a socket group the socket belongs to it (programs join that group,
// not the agent's); an unknown group is refused by name.
func TestListenLocalSocketGroup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	if _, err := listenLocal(path, "no-such-group-thingcert"); err == nil || !strings.Contains(err.Error(), `socket group "no-such-group-thingcert"`) {
		t.Fatalf("an unknown group: %v", err)
	}
	gid := os.Getgid() // a group this process may give its files to
	l, err := listenLocal(path, strconv.Itoa(gid))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Gid) != gid || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket group %d mode %v, want %d 0660", st.Gid, fi.Mode().Perm(), gid)
	}
}
