package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/thingcert/thingcert/internal/filelock"
)

// runLockFile keeps a second agent, or a provisioning or rotation by hand,
// off a state folder the agent is using: two processes with one client ID
// would take the connection from each other forever.
const runLockFile = "run.lock"

// ErrStateInUse: another process (the agent, most likely) is using the
// state folder.
var ErrStateInUse = errors.New("state folder in use")

// LockRun takes the state folder's run lock (released by the kernel when the
// process dies). The agent holds it for its life; a provisioning or rotation
// by hand while it works.
func LockRun(dir string) (io.Closer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: state folder %s: %w", dir, err)
	}
	l, err := filelock.Lock(filepath.Join(dir, runLockFile))
	var held *filelock.HeldError
	if errors.As(err, &held) {
		who := "another process"
		if held.PID != 0 {
			who = fmt.Sprintf("the process with pid %d", held.PID)
		}
		return nil, fmt.Errorf("agent: %s is using state folder %s (%w): if it is the agent, stop it first or rotate through a job", who, dir, ErrStateInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return l, nil
}
