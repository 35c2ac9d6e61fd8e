package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thingcert/thingcert/agentclient"
	"github.com/thingcert/thingcert/iot"

	"github.com/thingcert/thingcert/agent"
	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
	"github.com/thingcert/thingcert/rotation"
)

const (
	dmnAccount  = "acct"
	dmnTemplate = "fleet"
	dmnThing    = "dev-0099"
)

// fakeClock is the daemon's and the emulator's clock in tests that move time.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{at: c.now.Add(d), ch: ch})
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

// dmnDevice is a device for an in-process daemon: an emulator, a claim in it
// and a configuration.
type dmnDevice struct {
	t      *testing.T
	emu    *emulator.Emulator
	dir    string
	yaml   string
	socket string
	events chan agent.DaemonEvent
	logs   lockedBuffer // what the daemon logged
}

// lockedBuffer is a bytes.Buffer safe for the logger and the test at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newDmnDevice(t *testing.T, ecfg emulator.Config, extra string) *dmnDevice {
	t.Helper()
	ctx := context.Background()
	ecfg.Accounts = []emulator.Account{{Name: dmnAccount}}
	ecfg.Templates = []emulator.Template{{Name: dmnTemplate, Body: emulator.SimpleTemplate("dev-", "SerialNumber")}}
	ecfg.ClientConnectInterval = -1
	emu, err := emulator.Start(ctx, ecfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	dir := t.TempDir()
	cs, err := keystore.Open(ctx, "file:"+filepath.Join(dir, "claim")+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	uri, _ := cs.KeyURI("claim")
	k, err := cs.Generate(ctx, uri, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	claimPEM, _, err := emu.RegisterClaim(ctx, dmnAccount, k, "claim")
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"claim.crt": claimPEM, "root-ca.pem": emu.RootCAPEM(), "issuing-ca.pem": emu.IssuingCAPEM()} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d := &dmnDevice{t: t, emu: emu, dir: dir, socket: filepath.Join(dir, "agent.sock"), events: make(chan agent.DaemonEvent, 1024)}
	d.yaml = fmt.Sprintf(`endpoint: %s
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
    SerialNumber: "0099"
  timeout: 10s
state_dir: state
log:
  level: debug
`, emu.Endpoint(dmnAccount), emu.Addr(), dmnThing, dir, uri, dmnTemplate) + extra
	return d
}

func (d *dmnDevice) config() *config.Config {
	d.t.Helper()
	c, err := config.Parse([]byte(d.yaml), filepath.Join(d.dir, "thingcert.yaml"))
	if err != nil {
		d.t.Fatal(err)
	}
	return c
}

// settingsOf is the agent's settings for a configuration.
func settingsOf(t *testing.T, c *config.Config) agent.Settings {
	t.Helper()
	s, err := c.Settings()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// reloadFrom is a reload that reads configurations from f.
func reloadFrom(f func() (*config.Config, error)) func() (agent.Settings, error) {
	return func() (agent.Settings, error) {
		c, err := f()
		if err != nil {
			return agent.Settings{}, err
		}
		return c.Settings()
	}
}

// run starts a daemon; the returned function stops it and returns Run's error.
func (d *dmnDevice) run(o agent.DaemonOptions) (*agent.Daemon, func() error) {
	d.t.Helper()
	if o.Settings.Device.StateDir == "" {
		o.Settings = settingsOf(d.t, d.config())
	}
	if o.Reload == nil {
		path := filepath.Join(d.dir, "thingcert.yaml")
		o.Reload = func() (agent.Settings, error) { return config.LoadSettings(path) }
	}
	o.Socket = d.socket
	o.Log = agent.NewDaemonLogger(io.MultiWriter(testWriter{d.t}, &d.logs), o.Settings.Log, false)
	o.OnEvent = func(ev agent.DaemonEvent) { d.events <- ev }
	dm, err := agent.NewDaemon(o)
	if err != nil {
		d.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dm.Run(ctx) }()
	stopped := false
	var runErr error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			runErr = <-done
		}
		return runErr
	}
	d.t.Cleanup(func() { stop() })
	return dm, stop
}

// await waits for an event that pred accepts.
func (d *dmnDevice) await(what string, pred func(agent.DaemonEvent) bool) agent.DaemonEvent {
	d.t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case ev := <-d.events:
			if pred(ev) {
				return ev
			}
		case <-timeout:
			d.t.Fatalf("no %s within a minute", what)
		}
	}
}

func rotationEnded(k rotation.TriggerKind) func(agent.DaemonEvent) bool {
	return func(ev agent.DaemonEvent) bool {
		return ev.Kind == agent.EventRotationEnd && ev.State != nil && ev.State.LastResult != nil && ev.State.LastResult.Trigger.Kind == k
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestDaemonServesDevicePrograms: programs publish and subscribe on the
// agent's connection, in process and through the socket; a subscription made
// before provisioning works after it; two programs on one filter both get
// messages until one leaves; the agent's own topics are refused.
func TestDaemonServesDevicePrograms(t *testing.T) {
	d := newDmnDevice(t, emulator.Config{}, "")
	dm, _ := d.run(agent.DaemonOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	early := make(chan iot.Message, 4)
	unsubEarly, err := dm.Subscribe(ctx, "cmd/"+dmnThing+"/#", iot.AtLeastOnce, func(m iot.Message) { early <- m })
	if err != nil {
		t.Fatal(err)
	}
	defer unsubEarly()
	if err := dm.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	var a, b *agentclient.Conn
	for _, c := range []**agentclient.Conn{&a, &b} {
		if *c, err = agentclient.Dial(ctx, d.socket); err != nil {
			t.Fatal(err)
		}
		defer (*c).Close()
	}
	got := map[string]chan agentclient.Message{"a": make(chan agentclient.Message, 4), "b": make(chan agentclient.Message, 4)}
	topic := "dt/" + dmnThing + "/temp"
	if err := a.Subscribe(ctx, topic, agentclient.AtLeastOnce, func(m agentclient.Message) { got["a"] <- m }); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe(ctx, topic, agentclient.AtMostOnce, func(m agentclient.Message) { got["b"] <- m }); err != nil {
		t.Fatal(err)
	}
	if err := dm.Publish(ctx, topic, iot.AtLeastOnce, []byte("21.5")); err != nil {
		t.Fatal(err)
	}
	for name, ch := range got {
		select {
		case m := <-ch:
			if string(m.Payload) != "21.5" || m.Topic != topic {
				t.Errorf("%s got %q on %s", name, m.Payload, m.Topic)
			}
		case <-ctx.Done():
			t.Fatalf("program %s got nothing", name)
		}
	}
	if err := a.Unsubscribe(ctx, topic); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, topic, agentclient.AtLeastOnce, []byte("22")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got["b"]:
		if string(m.Payload) != "22" {
			t.Errorf("b got %q", m.Payload)
		}
	case <-ctx.Done():
		t.Fatal("b lost its subscription when a left")
	}
	// The subscription made before the device had an identity.
	if err := b.Publish(ctx, "cmd/"+dmnThing+"/reboot", agentclient.AtLeastOnce, []byte("now")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-early:
		if m.Topic != "cmd/"+dmnThing+"/reboot" {
			t.Errorf("early subscription got %s", m.Topic)
		}
	case <-ctx.Done():
		t.Fatal("the subscription made before provisioning got nothing")
	}

	for _, topic := range []string{"$aws/things/" + dmnThing + "/jobs/j1/update", "$aws/certificates/create-from-csr/json"} {
		if err := a.Publish(ctx, topic, agentclient.AtLeastOnce, []byte("{}")); err == nil || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("a program published to %s: %v", topic, err)
		}
	}
	// Through the socket, no filter that can see the agent's traffic.
	for _, f := range []string{"$aws/things/" + dmnThing + "/jobs/notify-next", "$aws/#", "$aws/things/" + dmnThing + "/#", "$aws/things/+/jobs/#"} {
		if err := a.Subscribe(ctx, f, agentclient.AtLeastOnce, func(agentclient.Message) {}); !errors.Is(err, agentclient.ErrReservedTopic) {
			t.Errorf("a program subscribed to %s: %v", f, err)
		}
	}
	if _, err := dm.Subscribe(ctx, "$aws/provisioning-templates/#", iot.AtLeastOnce, func(iot.Message) {}); !errors.Is(err, agent.ErrReservedTopic) {
		t.Errorf("in-process subscription to provisioning topics: %v", err)
	}
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Connected || st.ThingName != dmnThing || len(st.CertificateID) != 64 {
		t.Errorf("status through the socket: %+v", st)
	}
}

// TestDaemonRenewsByTimeAndJob moves an injected clock past the renewal time:
// the timer rotates; then a job rotates again and is reported SUCCEEDED.
// Metrics and systemd notifications follow.
func TestDaemonRenewsByTimeAndJob(t *testing.T) {
	clock := &fakeClock{now: time.Now().Truncate(time.Second)}
	d := newDmnDevice(t, emulator.Config{Now: clock.Now, CertificateLifetime: 3 * time.Hour},
		"rotation:\n  jitter: \"off\"\n  trust: issuing-ca.pem\nmetrics:\n  listen: 127.0.0.1:"+strconv.Itoa(freePort(t))+"\n")
	notify := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "60000000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	cfg := d.config()
	_, stop := d.run(agent.DaemonOptions{Settings: settingsOf(t, cfg), Now: clock.Now, After: clock.After, Notifier: agent.NewNotifier(os.Getenv, nil)})

	if got := readNotify(t, notify); !strings.HasPrefix(got, "READY=1\nSTATUS=connecting to ") {
		t.Errorf("first notification %q", got)
	}
	ev := d.await("provisioning", rotationEnded(rotation.TriggerProvision))
	first := ev.State.Current
	// Issued with a minute's backdating: 3h1m of life, renewed at 2/3.
	wantAt := first.NotBefore.Add(2 * (first.NotAfter.Sub(first.NotBefore)) / 3)
	metricsShow(t, cfg.Metrics.Listen,
		fmt.Sprintf(`thingcert_certificate_info{backend="file",certificate_id="%s"} 1`, first.CertificateID),
		`thingcert_connection_state{state="connected"} 1`,
		`thingcert_rotation_results_total{outcome="succeeded",trigger="provision"} 1`,
		"thingcert_renewal_next_timestamp_seconds "+strconv.FormatFloat(float64(wantAt.Unix()), 'g', -1, 64),
	)

	clock.Advance(wantAt.Sub(clock.Now()) + time.Second)
	ev = d.await("a rotation by time", rotationEnded(rotation.TriggerTime))
	if lr := ev.State.LastResult; lr.Outcome != rotation.Succeeded || lr.OldCertificateID != first.CertificateID || lr.Trigger.Reason != string(rotation.ReasonLifetime) {
		t.Fatalf("rotation by time: %+v", lr)
	}

	ctx := context.Background()
	if _, err := d.emu.CreateJob(ctx, dmnAccount, emulator.Job{ID: "rot-1", Document: []byte(`{"operation":"rotate-certificate"}`), Things: []string{dmnThing}}); err != nil {
		t.Fatal(err)
	}
	ev = d.await("a rotation by job", rotationEnded(rotation.TriggerJob))
	lr := ev.State.LastResult
	ex, err := d.emu.JobExecution(ctx, dmnAccount, dmnThing, "rot-1")
	if err != nil || ex.Status != emulator.JobSucceeded || ex.StatusDetails["oldCertificateId"] != lr.OldCertificateID || ex.StatusDetails["newCertificateId"] != lr.NewCertificateID {
		t.Fatalf("job execution %+v, %v; rotation %+v", ex, err, lr)
	}
	metricsShow(t, cfg.Metrics.Listen,
		`thingcert_rotation_results_total{outcome="succeeded",trigger="time"} 1`,
		`thingcert_rotation_results_total{outcome="succeeded",trigger="job"} 1`,
		`thingcert_rotation_in_progress 0`,
		fmt.Sprintf(`thingcert_certificate_info{backend="file",certificate_id="%s"} 1`, lr.NewCertificateID),
	)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for {
		got := readNotify(t, notify)
		if strings.HasPrefix(got, "STOPPING=1") {
			break
		}
	}
}

// TestDaemonReloadRefusesWhatItCannotApply: a configuration that moves the
// state folder, or one that does not load, is refused and the running one
// kept; a good one is applied.
func TestDaemonReloadRefusesWhatItCannotApply(t *testing.T) {
	d := newDmnDevice(t, emulator.Config{}, "")
	cfg := d.config()
	var mu sync.Mutex
	next := func() (*config.Config, error) { return cfg, nil }
	dm, _ := d.run(agent.DaemonOptions{Settings: settingsOf(t, cfg), Reload: reloadFrom(func() (*config.Config, error) {
		mu.Lock()
		defer mu.Unlock()
		return next()
	})})
	d.await("provisioning", rotationEnded(rotation.TriggerProvision))
	for _, bad := range []func() (*config.Config, error){
		func() (*config.Config, error) {
			c := *cfg
			c.StateDir = filepath.Join(d.dir, "elsewhere")
			return &c, nil
		},
		func() (*config.Config, error) { return nil, errors.New("config: line 3: unknown key") },
	} {
		mu.Lock()
		next = bad
		mu.Unlock()
		dm.Reload()
		ev := d.await("a refused reload", func(ev agent.DaemonEvent) bool {
			return ev.Kind == agent.EventReloadRefused || ev.Kind == agent.EventReloaded
		})
		if ev.Kind != agent.EventReloadRefused {
			t.Fatalf("a bad configuration was applied")
		}
	}
	mu.Lock()
	next = func() (*config.Config, error) { return cfg, nil }
	mu.Unlock()
	dm.Reload()
	if ev := d.await("a reload", func(ev agent.DaemonEvent) bool {
		return ev.Kind == agent.EventReloadRefused || ev.Kind == agent.EventReloaded
	}); ev.Kind != agent.EventReloaded {
		t.Fatalf("the good configuration was refused: %s", ev.Message)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dm.Publish(ctx, "dt/"+dmnThing+"/x", iot.AtLeastOnce, []byte("1")); err != nil {
		t.Fatalf("publish after reloads: %v", err)
	}
}

// metricsShow scrapes the endpoint until it shows every line (the daemon
// updates some just after the event the test waited for).
func metricsShow(t *testing.T, addr string, lines ...string) {
	t.Helper()
	var body string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		body = scrapeMetrics(t, addr)
		missing := 0
		for _, l := range lines {
			if !strings.Contains(body, "\n"+l+"\n") {
				missing++
			}
		}
		if missing == 0 {
			return
		}
	}
	for _, l := range lines {
		if !strings.Contains(body, "\n"+l+"\n") {
			t.Errorf("metrics lack %q", l)
		}
	}
}

func scrapeMetrics(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// listenNotify stands in for systemd's notification socket, reading every
// datagram as systemd does (a full socket would block the sender).
func listenNotify(t *testing.T) <-chan string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	ch := make(chan string, 1024)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			select {
			case ch <- string(buf[:n]):
			default:
			}
		}
	}()
	return ch
}

func readNotify(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(30 * time.Second):
		t.Fatal("no notification within 30 s")
		return ""
	}
}

// TestDaemonProvisioningRollsBack: a claim that cannot provision (the
// template does not exist) leaves the device on its claim, running and
// saying why, and the next attempt waits for the backoff.
func TestDaemonProvisioningRollsBack(t *testing.T) {
	d := newDmnDevice(t, emulator.Config{}, "")
	d.yaml = strings.Replace(d.yaml, "template: "+dmnTemplate, "template: NoSuchTemplate", 1)
	cfg := d.config()
	d.run(agent.DaemonOptions{Settings: settingsOf(t, cfg)})
	ev := d.await("the provisioning's end", rotationEnded(rotation.TriggerProvision))
	lr := ev.State.LastResult
	if lr.Outcome != rotation.RolledBack || !strings.Contains(lr.Error, "NoSuchTemplate") {
		t.Fatalf("provisioning with a missing template: %+v", lr)
	}
	rec, err := agent.ReadDaemonRecord(cfg.StateDir)
	if err != nil || !rec.Running() {
		t.Fatalf("the agent's record after a failed provisioning: %+v, %v", rec, err)
	}
	s, err := rotation.StateStore{Dir: cfg.StateDir}.Load()
	if err != nil || !s.Current.Claim || !s.NextRetry.After(time.Now()) {
		t.Fatalf("no backoff before the next provisioning: next retry %v, %v", s.NextRetry, err)
	}
}

// TestDaemonReloadFixesTheAddress: a daemon that cannot connect (a wrong
// address) takes a reload that fixes it at once, rather than after a connect
// that would never succeed.
func TestDaemonReloadFixesTheAddress(t *testing.T) {
	d := newDmnDevice(t, emulator.Config{}, "")
	good := d.config()
	bad := *good
	bad.Address = "127.0.0.1:" + strconv.Itoa(freePort(t)) // nothing listens
	dm, _ := d.run(agent.DaemonOptions{Settings: settingsOf(t, &bad), Reload: reloadFrom(func() (*config.Config, error) { return good, nil })})
	ev := d.await("a failed connect", func(ev agent.DaemonEvent) bool { return ev.Kind == agent.EventConnectFailed })
	if !errors.Is(ev.Err, iot.ErrUnreachable) {
		t.Errorf("connect to a closed port: %v", ev.Err)
	}
	dm.Reload()
	d.await("the reload", func(ev agent.DaemonEvent) bool { return ev.Kind == agent.EventReloaded })
	d.await("provisioning", rotationEnded(rotation.TriggerProvision))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dm.Publish(ctx, "dt/"+dmnThing+"/x", iot.AtLeastOnce, []byte("1")); err != nil {
		t.Fatal(err)
	}
}
