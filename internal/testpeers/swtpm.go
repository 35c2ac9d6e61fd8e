package testpeers

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SWTPM is one software TPM started for one test, on its own free ports with
// its state in the test's temporary folder.
type SWTPM struct {
	t        testing.TB
	swtpm    string
	ioctl    string
	StateDir string
	Port     int // data port (TPM commands); the control port is Port+1
	cmd      *exec.Cmd
	exited   chan struct{}
}

// StartSWTPM starts swtpm for the test and stops it in t.Cleanup. It needs
// swtpm, swtpm_ioctl and the tpm2-tools the TPM tests use.
func StartSWTPM(t testing.TB) *SWTPM {
	t.Helper()
	paths := Need(t, "swtpm", "swtpm_ioctl", "tpm2_readpublic", "tpm2_createprimary", "tpm2_create", "tpm2_evictcontrol", "tpm2_getcap")
	s := &SWTPM{t: t, swtpm: paths[0], ioctl: paths[1], StateDir: t.TempDir()}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// Device is the device= value for thingcert's TPM URIs: tcp:127.0.0.1:PORT.
func (s *SWTPM) Device() string { return "tcp:127.0.0.1:" + strconv.Itoa(s.Port) }

// TCTI is the TPM2TOOLS_TCTI value for tpm2-tools.
func (s *SWTPM) TCTI() string { return "swtpm:host=127.0.0.1,port=" + strconv.Itoa(s.Port) }

func (s *SWTPM) start() {
	s.t.Helper()
	var lastErr error
	// A free port can be taken by someone else before swtpm binds it: try a few.
	for try := 0; try < 5; try++ {
		s.Port = FreePortPair(s.t)
		// In the foreground, so the test owns the process and stops it by PID.
		cmd := exec.Command(s.swtpm, "socket", "--tpm2",
			"--tpmstate", "dir="+s.StateDir,
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", s.Port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", s.Port+1),
			"--flags", "not-need-init,startup-clear",
			"--log", "file="+filepath.Join(s.StateDir, "swtpm.log")+",level=1")
		if err := cmd.Start(); err != nil {
			s.t.Fatalf("starting swtpm: %v", err)
		}
		s.cmd = cmd
		s.exited = make(chan struct{})
		go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(s.exited)
		if err := s.waitReady(); err != nil {
			s.Stop()
			lastErr = err
			continue
		}
		return
	}
	s.t.Fatalf("starting swtpm: %v", lastErr)
}

// waitReady waits until swtpm answers on its control port. It does not touch
// the data port, which serves one connection at a time and belongs to the test.
func (s *SWTPM) waitReady() error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-s.exited:
			log, _ := os.ReadFile(filepath.Join(s.StateDir, "swtpm.log"))
			return fmt.Errorf("swtpm exited at start (port %d taken?): %s", s.Port, log)
		default:
		}
		out, err := exec.Command(s.ioctl, "--tcp", fmt.Sprintf("127.0.0.1:%d", s.Port+1), "-c").CombinedOutput()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("swtpm on port %d did not become ready: %v: %s", s.Port, err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PID is swtpm's process ID, 0 when stopped.
func (s *SWTPM) PID() int {
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Stop stops swtpm: a clean shutdown through its control port (which saves
// its state), then by its PID if it is still running. Stopping twice is
// harmless.
func (s *SWTPM) Stop() {
	if s.cmd == nil {
		return
	}
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	_ = exec.Command(s.ioctl, "--tcp", fmt.Sprintf("127.0.0.1:%d", s.Port+1), "-s").Run()
	select {
	case <-exited:
		return
	case <-time.After(10 * time.Second):
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// Restart stops swtpm and starts it again on the same state, as a reboot of
// the device would. The ports may change: read Device() again.
func (s *SWTPM) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// Tool runs a tpm2-tools program against this swtpm and returns its stdout.
// The test must have closed its own connection first: swtpm serves one at a
// time, and a second client hangs.
func (s *SWTPM) Tool(name string, args ...string) string {
	s.t.Helper()
	out, err := s.TryTool(name, args...)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// TryTool is Tool for a program that may fail, such as tpm2_testparms.
func (s *SWTPM) TryTool(name string, args ...string) (string, error) {
	s.t.Helper()
	path := Need(s.t, name)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+s.TCTI())
	cmd.Dir = s.StateDir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// Reachable reports whether the data port accepts a connection (for tests of
// the test peer itself).
func (s *SWTPM) Reachable() bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
