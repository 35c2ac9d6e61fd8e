package testpeers

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SServer is a running `openssl s_server`: a TLS server that is not an MQTT
// broker, used as an independent witness of what a client really sends.
type SServer struct {
	Addr string
	cmd  *exec.Cmd
	out  *Buffer
	done chan struct{}
}

// StartSServer runs `openssl s_server -trace` on a free 127.0.0.1 port with
// the given PEM server pair and extra arguments (such as -alpn), and stops it
// by its PID when the test ends.
func StartSServer(t testing.TB, certPEM, keyPEM []byte, args ...string) *SServer {
	t.Helper()
	openssl := Need(t, "openssl")[0]
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	if err := os.WriteFile(cert, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	port := FreePort(t)
	s := &SServer{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), out: &Buffer{}, done: make(chan struct{})}
	all := append([]string{"s_server", "-accept", s.Addr, "-cert", cert, "-key", key, "-trace", "-naccept", "1"}, args...)
	s.cmd = exec.Command(openssl, all...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	// s_server ends when its stdin does: keep a pipe open until cleanup.
	stdin, err := s.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		stdin.Close()
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
	})
	deadline := time.Now().Add(20 * time.Second) // readiness poll, not an assertion
	for {
		select {
		case <-s.done:
			t.Fatalf("openssl s_server exited:\n%s", s.out.String())
		default:
		}
		// s_server prints ACCEPT once it listens; a probe connection would use
		// up its single accept.
		if slices.Contains(strings.Split(s.Output(), "\n"), "ACCEPT") {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("openssl s_server did not start:\n%s", s.out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Output is what s_server has printed so far.
func (s *SServer) Output() string { return s.out.String() }
