package emulator

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestStateFolderWritableByOthersIsRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o770, 0o757, 0o777} {
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		r, err := Open(ctx, Config{StateDir: dir})
		if err == nil {
			r.Close()
			t.Fatalf("state folder mode %04o accepted", mode)
		}
		if !strings.Contains(err.Error(), "chmod 700 "+dir) {
			t.Errorf("mode %04o: %v; want the chmod that fixes it", mode, err)
		}
	}
	if err := os.Chmod(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, Config{StateDir: dir})
	if err != nil {
		t.Fatalf("a 0750 state folder (not writable by others): %v", err)
	}
	r.Close()
}

// TestAdminSocketIsNeverReachableByOthers: the socket is bound in a private
// folder and reaches its name already 0600, whatever the umask.
func TestAdminSocketIsNeverReachableByOthers(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, AdminSocketFile)
	ln, err := listenPrivate(path, func(bound string) {
		if _, err := os.Lstat(path); err == nil {
			t.Errorf("the socket is at %s before its mode is set", path)
		}
		fi, err := os.Stat(filepath.Dir(bound))
		if err != nil || fi.Mode().Perm() != 0o700 || filepath.Dir(filepath.Dir(bound)) != dir {
			t.Errorf("bound in %s (%v, %v); want a 0700 folder in the state folder", filepath.Dir(bound), fi.Mode(), err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket: %v %v; want a 0600 socket", fi.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("left in the state folder: %v", entries)
	}
	// It serves at its final name.
	syscall.Umask(old)
	e := startEmu(t, Config{StateDir: t.TempDir()})
	adm, online, err := OpenAdmin(ctx, Config{StateDir: e.StateDir()})
	if err != nil || !online {
		t.Fatalf("admin over the socket: online %v, %v", online, err)
	}
	adm.Close()
}
