// Package filelock takes an exclusive, advisory lock on a file that the
// operating system releases when the process dies: a crashed agent never
// leaves a stale lock behind.
package filelock

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
)

// ErrHeld: another process holds the lock.
var ErrHeld = errors.New("lock held by another process")

// Lock opens (creating, 0600) and locks path without waiting. The file then
// holds the locking process's PID, for a message about who holds it. Closing
// the result releases the lock.
func Lock(path string) (io.Closer, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lock(f); err != nil {
		holder, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		if errors.Is(err, ErrHeld) {
			if pid, perr := strconv.Atoi(string(holder)); perr == nil {
				return nil, &HeldError{Path: path, PID: pid}
			}
			return nil, &HeldError{Path: path}
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())), 0)
	return f, nil
}

// HeldError says who holds a lock.
type HeldError struct {
	Path string
	PID  int // zero if unknown
}

func (e *HeldError) Error() string {
	if e.PID != 0 {
		return fmt.Sprintf("%s is locked by process %d", e.Path, e.PID)
	}
	return e.Path + " is locked by another process"
}

func (e *HeldError) Unwrap() error { return ErrHeld }
