package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thingcert/thingcert/agentclient"
	"github.com/thingcert/thingcert/internal/statusview"
	"github.com/thingcert/thingcert/iot"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
	"github.com/thingcert/thingcert/rotation"
)

// The daemon tests run thingcert as a real process, built once for the test
// binary (TestMain removes it).
var (
	daemonBinOnce sync.Once
	daemonBinDir  string
	daemonBin     string
	daemonBinErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if daemonBinDir != "" {
		os.RemoveAll(daemonBinDir)
	}
	os.Exit(code)
}

func thingcertBinary(t *testing.T) string {
	t.Helper()
	daemonBinOnce.Do(func() {
		goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
		if daemonBinDir, daemonBinErr = os.MkdirTemp("", "thingcert-test-bin-"); daemonBinErr != nil {
			return
		}
		daemonBin = filepath.Join(daemonBinDir, "thingcert")
		// thingcert-emulator beside it, as a release lays them out: it runs
		// `thingcert emulator` and `thingcert demo`.
		if out, err := exec.Command(goTool, "build", "-o", daemonBinDir+string(filepath.Separator), ".", "../thingcert-emulator").CombinedOutput(); err != nil {
			daemonBinErr = fmt.Errorf("go build ./cmd/thingcert ./cmd/thingcert-emulator: %v\n%s", err, out)
		}
	})
	if daemonBinErr != nil {
		t.Fatal(daemonBinErr)
	}
	return daemonBin
}

const (
	daemonAccount  = "acct"
	daemonTemplate = "fleet"
	daemonThing    = "gw-0007"
)

// daemonDevice is one device against an in-process emulator: a claim
// registered in it, a config file, a state folder and a socket path.
type daemonDevice struct {
	t      *testing.T
	emu    *emulator.Emulator
	dir    string
	config string
	socket string
	base   string // the config as first written
}

func newDaemonDevice(t *testing.T) *daemonDevice {
	t.Helper()
	ctx := context.Background()
	emu, err := emulator.Start(ctx, emulator.Config{
		Accounts:              []emulator.Account{{Name: daemonAccount}},
		Templates:             []emulator.Template{{Name: daemonTemplate, Body: emulator.SimpleTemplate("gw-", "SerialNumber")}},
		ClientConnectInterval: -1, // restarted processes reconnect at once; the daemon paces itself within a process
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	dir := t.TempDir()
	d := &daemonDevice{t: t, emu: emu, dir: dir, config: filepath.Join(dir, "thingcert.yaml"), socket: filepath.Join(dir, "agent.sock")}

	claimStore, err := keystore.Open(ctx, "file:"+filepath.Join(dir, "claim")+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer claimStore.Close()
	claimURI, _ := claimStore.KeyURI("claim")
	ck, err := claimStore.Generate(ctx, claimURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	claimPEM, _, err := emu.RegisterClaim(ctx, daemonAccount, ck, "claim")
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, "claim.crt"), claimPEM)
	mustWrite(t, filepath.Join(dir, "root-ca.pem"), emu.RootCAPEM())
	mustWrite(t, filepath.Join(dir, "issuing-ca.pem"), emu.IssuingCAPEM())
	d.base = fmt.Sprintf(`endpoint: %s
address: %s
ca: root-ca.pem
thing_name: %s
store: file:%s/keys/
claim:
  key: %s
  cert: claim.crt
provisioning:
  template: %s
  parameters:
    SerialNumber: "0007"
  timeout: 10s
rotation:
  retry_min: 1s
  retry_max: 2s
  trust: issuing-ca.pem
state_dir: state
log:
  level: info
`, emu.Endpoint(daemonAccount), emu.Addr(), daemonThing, dir, claimURI, daemonTemplate)
	d.writeConfig(d.base)
	return d
}

func mustWrite(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (d *daemonDevice) writeConfig(s string) { mustWrite(d.t, d.config, []byte(s)) }

// daemonProc is a running `thingcert run`.
type daemonProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  bytes.Buffer
	seen *sync.Cond
	done chan struct{}
	code int
}

func (d *daemonDevice) start(env ...string) *daemonProc {
	d.t.Helper()
	cmd := exec.Command(thingcertBinary(d.t), "run", "--config", d.config, "--socket", d.socket)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		d.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	p := &daemonProc{t: d.t, cmd: cmd, done: make(chan struct{})}
	p.seen = sync.NewCond(&p.mu)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.seen.Broadcast()
			p.mu.Unlock()
		}
		err := cmd.Wait()
		p.mu.Lock()
		p.code = cmd.ProcessState.ExitCode()
		_ = err
		close(p.done)
		p.seen.Broadcast()
		p.mu.Unlock()
	}()
	d.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if d.t.Failed() {
			d.t.Logf("thingcert run (pid %d) log:\n%s", cmd.Process.Pid, p.logText())
		}
	})
	return p
}

func (p *daemonProc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// waitLog waits for a log line containing s after the first `after` bytes
// of the log, and returns the log's length then.
func (p *daemonProc) waitLog(after int, s string) int {
	p.t.Helper()
	timer := time.AfterFunc(60*time.Second, func() {
		p.mu.Lock()
		p.seen.Broadcast()
		p.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(60 * time.Second)
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if i := strings.Index(p.log.String()[after:], s); i >= 0 {
			return after + i + len(s)
		}
		select {
		case <-p.done:
			p.t.Fatalf("thingcert run exited (code %d) before logging %q", p.code, s)
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("thingcert run did not log %q within a minute", s)
		}
		p.seen.Wait()
	}
}

func (p *daemonProc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// exit waits for the process to end and returns its exit code.
func (p *daemonProc) exit() int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		p.t.Fatal("thingcert run did not exit within a minute")
	}
	return p.code
}

// status runs `thingcert status --json` as its own process.
func (d *daemonDevice) status() *statusview.Status {
	d.t.Helper()
	return d.statusWith(d.config)
}

func (d *daemonDevice) statusWith(config string) *statusview.Status {
	d.t.Helper()
	out, err := exec.Command(thingcertBinary(d.t), "status", "--config", config, "--json").Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		d.t.Fatalf("thingcert status: %v\n%s", err, stderr)
	}
	var s statusview.Status
	if err := json.Unmarshal(out, &s); err != nil {
		d.t.Fatalf("thingcert status --json: %v\n%s", err, out)
	}
	return &s
}

// eventually polls cond until it holds (a minute at most); what names it.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited a minute for %s", what)
		}
	}
}

func (d *daemonDevice) connected() bool {
	s := d.status()
	return s.Provisioned && s.Agent.Running && s.Agent.Connection != nil && s.Agent.Connection.State == iot.StateConnected.String()
}

// publishes proves the daemon's connection works for device programs.
func (d *daemonDevice) publishes() {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	c, err := agentclient.Dial(ctx, d.socket)
	if err != nil {
		d.t.Fatal(err)
	}
	defer c.Close()
	got := make(chan agentclient.Message, 1)
	topic := "dt/" + daemonThing + "/test"
	if err := c.Subscribe(ctx, topic, agentclient.AtLeastOnce, func(m agentclient.Message) { got <- m }); err != nil {
		d.t.Fatalf("subscribe through the agent: %v", err)
	}
	// Published again if it does not come back within 10 s: on a loaded
	// machine a message published right after a rotation's reconnect has,
	// rarely, not reached the program's new subscription (under
	// investigation); the test still fails if none of three comes back.
	for attempt := 1; ; attempt++ {
		if err := c.Publish(ctx, topic, agentclient.AtLeastOnce, []byte("ping")); err != nil {
			d.t.Fatalf("publish through the agent: %v", err)
		}
		select {
		case m := <-got:
			if string(m.Payload) != "ping" {
				d.t.Fatalf("got %q back", m.Payload)
			}
			if attempt > 1 {
				d.t.Logf("the published message came back at attempt %d", attempt)
			}
			return
		case <-time.After(10 * time.Second):
			if attempt == 3 {
				d.t.Fatal("the published message did not come back (3 attempts)")
			}
		case <-ctx.Done():
			d.t.Fatal("the published message did not come back")
		}
	}
}

// TestRunProvisionsReloadsAndStops runs the daemon as a real process: it
// provisions by claim, serves device programs, takes a good configuration on
// SIGHUP and refuses a bad one (keeping the running one), and stops cleanly
// on SIGTERM; `thingcert status` (its own process) tells each phase.
func TestRunProvisionsReloadsAndStops(t *testing.T) {
	d := newDaemonDevice(t)
	if s := d.status(); s.Provisioned || s.Identity != nil || s.Agent.Running {
		t.Fatalf("status before the first run: %+v", s)
	}
	p := d.start()
	at := p.waitLog(0, "thingcert agent started")
	eventually(t, "the daemon to provision and connect", d.connected)
	s := d.status()
	if s.Identity == nil || s.Identity.Claim || s.LastRotation == nil || s.LastRotation.Trigger.Kind != rotation.TriggerProvision ||
		s.LastRotation.Outcome != rotation.Succeeded || s.Renewal == nil || s.Rotation.InProgress || len(s.Problems) != 0 {
		t.Fatalf("status after provisioning: %+v", s)
	}
	if s.Identity.Protection == nil || s.Identity.Protection.Backend != "file" {
		t.Errorf("key protection not recorded: %+v", s.Identity.Protection)
	}
	if c, err := d.emu.Certificate(context.Background(), daemonAccount, s.Identity.CertificateID); err != nil || c.Status != emulator.StatusActive {
		t.Fatalf("provisioned certificate in the emulator: %+v, %v", c, err)
	}
	d.publishes()

	// A good configuration: applied, and the log level follows it.
	d.writeConfig(strings.Replace(d.base, "level: info", "level: debug", 1))
	p.signal(syscall.SIGHUP)
	at = p.waitLog(at, "configuration reloaded")
	at = p.waitLog(at, "level=DEBUG")

	// A bad one: refused, logged, the running one kept.
	d.writeConfig(d.base + "renewal_interval: 1h\n")
	p.signal(syscall.SIGHUP)
	at = p.waitLog(at, "configuration reload refused")
	if !strings.Contains(p.logText()[max(0, at-300):], "renewal_interval") {
		t.Error("the refusal does not name the unknown key")
	}
	// status reads the broken file's state_dir and reports the agent from
	// its record, with the file's error. The refusal is logged, then
	// recorded.
	eventually(t, "the agent to record the refused reload", func() bool { return d.status().Agent.ReloadError != "" })
	s = d.status()
	if s.Agent.ReloadError == "" || !strings.Contains(s.ConfigError, "renewal_interval") ||
		!strings.Contains(strings.Join(s.Problems, "\n"), "keeps running with the configuration it loaded before") {
		t.Errorf("status after a refused reload: reload error %q, config error %q, problems %q", s.Agent.ReloadError, s.ConfigError, s.Problems)
	}
	// With a good copy of the file, the refused reload is a problem of its own.
	good := filepath.Join(d.dir, "good.yaml")
	mustWrite(t, good, []byte(d.base))
	s = d.statusWith(good)
	if s.Agent.ReloadError == "" || !strings.Contains(strings.Join(s.Problems, "\n"), "reload was refused") {
		t.Errorf("status after a refused reload: reload error %q, problems %q", s.Agent.ReloadError, s.Problems)
	}
	if c := s.Agent.Connection; !s.Agent.Running || c == nil || c.State != iot.StateConnected.String() {
		t.Fatalf("the daemon is not connected after a refused reload: %+v", s.Agent)
	}
	d.publishes()
	// A missing CA file is refused too (the configuration parses, but it
	// could not connect).
	d.writeConfig(strings.Replace(d.base, "ca: root-ca.pem", "ca: missing.pem", 1))
	p.signal(syscall.SIGHUP)
	at = p.waitLog(at, "configuration reload refused")

	d.writeConfig(d.base)
	p.signal(syscall.SIGHUP)
	at = p.waitLog(at, "configuration reloaded")
	eventually(t, "the reload error to clear", func() bool { return d.status().Agent.ReloadError == "" })

	p.signal(syscall.SIGTERM)
	if code := p.exit(); code != 0 {
		t.Fatalf("thingcert run exited %d after SIGTERM", code)
	}
	s = d.status()
	if s.Agent.Running || s.Agent.Stopped.IsZero() || !s.Provisioned {
		t.Errorf("status after SIGTERM: %+v", s.Agent)
	}

	// A second daemon on the same state folder is refused while one runs.
	p = d.start()
	p.waitLog(0, "thingcert agent started")
	eventually(t, "the daemon to reconnect", d.connected)
	out, err := exec.Command(thingcertBinary(t), "run", "--config", d.config, "--socket", "none").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is using state folder") {
		t.Errorf("a second thingcert run on the same state folder: %v\n%s", err, out)
	}
	// So is a rotation by hand: it would take the client ID from the agent.
	out, err = exec.Command(thingcertBinary(t), "rotate", "--config", d.config, "--force").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "stop it first") {
		t.Errorf("thingcert rotate beside the running agent: %v\n%s", err, out)
	}
	p.signal(syscall.SIGINT)
	if code := p.exit(); code != 0 {
		t.Fatalf("thingcert run exited %d after SIGINT", code)
	}
}

// TestRunStopDuringRotationThenRestart stops the daemon with SIGTERM at each
// persisted step of a job's rotation, checks what status says there, and
// restarts it: every time the rotation resumes where it stopped and ends
// with the job SUCCEEDED and a working identity.
func TestRunStopDuringRotationThenRestart(t *testing.T) {
	d := newDaemonDevice(t)
	p := d.start()
	p.waitLog(0, "thingcert agent started")
	eventually(t, "the daemon to provision and connect", d.connected)
	p.signal(syscall.SIGTERM)
	if code := p.exit(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	ctx := context.Background()
	doc := json.RawMessage(`{"operation": "rotate-certificate"}`)
	for i, phase := range []rotation.Phase{rotation.PhaseStarted, rotation.PhaseKeyGenerated, rotation.PhaseCSRSubmitted,
		rotation.PhaseIssued, rotation.PhaseVerified, rotation.PhaseCommitted} {
		t.Run(string(phase), func(t *testing.T) {
			d.t = t
			before := d.status().Identity.CertificateID
			job := fmt.Sprintf("rotate-%d", i)
			if _, err := d.emu.CreateJob(ctx, daemonAccount, emulator.Job{ID: job, Document: doc, Things: []string{daemonThing}}); err != nil {
				t.Fatal(err)
			}
			// Serial 1 was provisioning; this rotation is serial i+2.
			p := d.start(fmt.Sprintf("THINGCERT_TEST_STOP_AFTER=%s:%d", phase, i+2))
			p.waitLog(0, "stopped after saving phase "+string(phase))
			// A state before a local step is kept in memory (rotation.Needs):
			// the folder shows the one written before it until the run ends.
			shown := map[rotation.Phase]rotation.Phase{rotation.PhaseKeyGenerated: rotation.PhaseStarted, rotation.PhaseIssued: rotation.PhaseCSRSubmitted}[phase]
			if shown == "" {
				shown = phase
			}
			s := d.status()
			if !s.Rotation.InProgress || s.Rotation.Phase != shown || s.Rotation.Trigger == nil || s.Rotation.Trigger.JobID != job || !s.Agent.Running {
				t.Fatalf("status while stopped in %s: rotation %+v, agent running %v", phase, s.Rotation, s.Agent.Running)
			}
			p.signal(syscall.SIGTERM)
			if code := p.exit(); code != 0 {
				t.Fatalf("exit code %d after SIGTERM in phase %s", code, phase)
			}
			if s := d.status(); s.Agent.Running || s.Rotation.Phase != phase {
				t.Fatalf("status after SIGTERM in %s: phase %s, agent running %v", phase, s.Rotation.Phase, s.Agent.Running)
			}

			p = d.start()
			eventually(t, "the job to succeed after the restart", func() bool {
				ex, err := d.emu.JobExecution(ctx, daemonAccount, daemonThing, job)
				return err == nil && ex.Status == emulator.JobSucceeded
			})
			eventually(t, "the rotation to end", func() bool {
				s := d.status()
				return !s.Rotation.InProgress && s.LastRotation != nil && s.LastRotation.Trigger.JobID == job
			})
			s = d.status()
			if s.LastRotation.Outcome != rotation.Succeeded || s.Identity.CertificateID == before || s.LastRotation.OldCertificateID != before {
				t.Fatalf("after resuming from %s: last rotation %+v, certificate %s (was %s)", phase, s.LastRotation, s.Identity.CertificateID, before)
			}
			ex, _ := d.emu.JobExecution(ctx, daemonAccount, daemonThing, job)
			if ex.StatusDetails["oldCertificateId"] != before || ex.StatusDetails["newCertificateId"] != s.Identity.CertificateID {
				t.Errorf("job statusDetails %v; want old %s, new %s", ex.StatusDetails, before, s.Identity.CertificateID)
			}
			eventually(t, "the daemon to be connected", d.connected)
			d.publishes()
			p.signal(syscall.SIGTERM)
			if code := p.exit(); code != 0 {
				t.Fatalf("exit code %d", code)
			}
		})
		if t.Failed() {
			return
		}
	}
}

// TestRunTalksToSystemd runs the daemon as systemd would (NOTIFY_SOCKET,
// WATCHDOG_USEC, JOURNAL_STREAM) and reads what it sends: READY with a
// status, watchdog pings, RELOADING then READY on SIGHUP, STOPPING on
// SIGTERM; its log lines carry journald priorities.
func TestRunTalksToSystemd(t *testing.T) {
	d := newDaemonDevice(t)
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 1024)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	want := func(prefix string) string {
		t.Helper()
		timeout := time.After(60 * time.Second)
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notification socket closed before %q", prefix)
				}
				if strings.HasPrefix(m, prefix) {
					return m
				}
			case <-timeout:
				t.Fatalf("no %q notification within a minute", prefix)
			}
		}
	}
	p := d.start("NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=400000", "JOURNAL_STREAM=8:1234")
	if m := want("READY=1"); !strings.Contains(m, "\nSTATUS=connecting to ") {
		t.Errorf("READY without the status: %q", m)
	}
	want("WATCHDOG=1")
	if m := want("STATUS=connected"); !strings.Contains(m, " as "+daemonThing) {
		t.Errorf("connected status %q", m)
	}
	eventually(t, "the daemon to provision and connect", d.connected)
	p.signal(syscall.SIGHUP)
	want("RELOADING=1\nMONOTONIC_USEC=")
	want("READY=1")
	want("WATCHDOG=1")
	p.signal(syscall.SIGTERM)
	want("STOPPING=1")
	if code := p.exit(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	log := p.logText()
	if !strings.HasPrefix(log, "<6>level=INFO ") || strings.Contains(log, "time=") {
		t.Errorf("under journald the log should carry priorities and no time:\n%s", log)
	}
}
