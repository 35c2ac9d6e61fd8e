package filelock

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TestLockExcludesAnotherProcess: a second process cannot take the lock while
// this one holds it, and is told this process's PID; released, it can.
func TestLockExcludesAnotherProcess(t *testing.T) {
	if os.Getenv("FILELOCK_CHILD") != "" {
		_, err := Lock(os.Getenv("FILELOCK_CHILD"))
		var held *HeldError
		switch {
		case err == nil:
			os.Exit(0)
		case errors.As(err, &held):
			os.Stdout.WriteString(strconv.Itoa(held.PID))
			os.Exit(3)
		}
		os.Exit(4)
	}
	path := filepath.Join(t.TempDir(), "run.lock")
	l, err := Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	child := func() (int, string) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLockExcludesAnotherProcess$")
		cmd.Env = append(os.Environ(), "FILELOCK_CHILD="+path)
		out, err := cmd.Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := child(); code != 3 || out != strconv.Itoa(os.Getpid()) {
		t.Fatalf("while held: child exit %d, said %q; want 3 and our pid %d", code, out, os.Getpid())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if code, _ := child(); code != 0 {
		t.Fatalf("after release: child exit %d, want 0", code)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file mode: %v %v", fi, err)
	}
}
