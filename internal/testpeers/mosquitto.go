package testpeers

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// MosquittoConfig is what a test broker needs: its TLS server pair and the CA
// it checks client certificates against, all PEM.
type MosquittoConfig struct {
	CAPEM, CertPEM, KeyPEM []byte
	// Extra lines appended to mosquitto.conf.
	Extra []string
}

// Mosquitto is a running mosquitto with a mutual-TLS listener on 127.0.0.1.
type Mosquitto struct {
	Port int
	// Addr is 127.0.0.1:Port.
	Addr string
	// Dir holds the config and the PEM files (0755, files 0644).
	Dir string
	// CAFile is the path of the CA file mosquitto trusts.
	CAFile string

	cmd  *exec.Cmd
	log  *Buffer
	done chan struct{}
}

// StartMosquitto runs mosquitto in the foreground with require_certificate and
// use_identity_as_username, on a free port, and stops it (by its PID) when the
// test ends. It returns once the listener accepts connections.
func StartMosquitto(t testing.TB, cfg MosquittoConfig) *Mosquitto {
	t.Helper()
	bin := Need(t, "mosquitto")[0]
	// Started as root, mosquitto drops to user mosquitto, which must be able to
	// read its files: t.TempDir's 0700 parents would hide them.
	dir, err := os.MkdirTemp("", "thingcert-mosquitto-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	m := &Mosquitto{Dir: dir, log: &Buffer{}, done: make(chan struct{})}
	m.CAFile = write("ca.pem", cfg.CAPEM)
	cert := write("server.pem", cfg.CertPEM)
	key := write("server.key", cfg.KeyPEM)
	m.Port = FreePort(t)
	m.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(m.Port))
	conf := fmt.Sprintf(`per_listener_settings false
persistence false
set_tcp_nodelay true
log_dest stderr
log_type all
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
`, m.Port, m.CAFile, cert, key)
	for _, l := range cfg.Extra {
		conf += l + "\n"
	}
	confPath := write("mosquitto.conf", []byte(conf))

	m.cmd = exec.Command(bin, "-c", confPath)
	m.cmd.Stdout = m.log
	m.cmd.Stderr = m.log
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("starting mosquitto: %v", err)
	}
	go func() { m.cmd.Wait(); close(m.done) }()
	t.Cleanup(m.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", m.Log())
		}
	})

	// Wait for the listener. This is a readiness poll, not a timing assertion:
	// the deadline only turns a broken install into a failure instead of a hang.
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", m.Addr, time.Second)
		if err == nil {
			c.Close()
			return m
		}
		select {
		case <-m.done:
			t.Fatalf("mosquitto exited: %v\n%s", m.cmd.ProcessState, m.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto did not listen on %s: %v\n%s", m.Addr, err, m.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// PID is mosquitto's process ID.
func (m *Mosquitto) PID() int { return m.cmd.Process.Pid }

// Log is what mosquitto has written so far.
func (m *Mosquitto) Log() string { return m.log.String() }

// Stop terminates mosquitto by its PID and waits for it.
func (m *Mosquitto) Stop() {
	select {
	case <-m.done:
		return
	default:
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
		<-m.done
	}
}
