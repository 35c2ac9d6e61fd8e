package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/iot"

	"github.com/thingcert/thingcert/agent"
	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
)

// TestSensorThroughAgent builds the example, runs it against an agent (in
// this process, on an identity given in its config) and checks that its
// readings reach the broker and a command reaches it.
func TestSensorThroughAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "sensor")
	if out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/sdk: %v\n%s", err, out)
	}

	emu, err := emulator.Start(ctx, emulator.Config{Accounts: []emulator.Account{{Name: "a"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	// An identity made by hand: a file key, and a certificate the emulator
	// issues for its CSR, attached to the thing.
	store, err := keystore.Open(ctx, "file:"+filepath.Join(dir, "keys")+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	keyURI, _ := store.KeyURI("first")
	k, err := store.Generate(ctx, keyURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := keystore.CreateCSR(k, "CN=sensor-1", keystore.CSROptions{})
	if err != nil {
		t.Fatal(err)
	}
	store.Close()
	cert, err := emu.IssueCertificate(ctx, "a", keystore.EncodeCSR(csr), emulator.IssueOptions{Thing: "sensor-1"})
	if err != nil {
		t.Fatal(err)
	}
	// The device's least-privilege policy covers its dt/ and cmd/ topics.
	if _, err := emu.CreatePolicy(ctx, "a", "device", emulator.DevicePolicy("*")); err != nil {
		t.Fatal(err)
	}
	if err := emu.AttachPolicy(ctx, "a", "device", cert.ID); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("cert.pem", []byte(cert.PEM))
	write("root-ca.pem", emu.RootCAPEM())
	cfgPath := write("thingcert.yaml", []byte(`endpoint: `+emu.Endpoint("a")+`
address: `+emu.Addr()+`
ca: root-ca.pem
thing_name: sensor-1
store: file:`+dir+`/keys/
key: `+keyURI+`
cert: cert.pem
state_dir: state
`))
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "agent.sock")
	d, err := agent.NewDaemon(agent.DaemonOptions{Settings: mustSettings(t, cfg), Socket: socket,
		Log: agent.NewDaemonLogger(os.Stderr, agent.LogSettings{Format: "text", Level: "warn"}, false)})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopAgent := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- d.Run(runCtx) }()
	defer func() {
		stopAgent()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	if err := d.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	// A witness on the agent's connection sees the readings.
	readings := make(chan iot.Message, 16)
	unsub, err := d.Subscribe(ctx, "dt/sensor-1/telemetry", iot.AtLeastOnce, func(m iot.Message) { readings <- m })
	if err != nil {
		t.Fatal(err)
	}
	defer unsub()

	cmd := exec.CommandContext(ctx, bin, "-socket", socket, "-interval", "500ms", "-count", "4")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	var got []string
	commanded := false
	for lines.Scan() {
		got = append(got, lines.Text())
		if strings.HasPrefix(lines.Text(), "published reading 1") && !commanded {
			commanded = true
			if err := d.Publish(ctx, "cmd/sensor-1/led", iot.AtLeastOnce, []byte("on")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the example failed: %v\n%s", err, strings.Join(got, "\n"))
	}
	text := strings.Join(got, "\n")
	for _, want := range []string{"agent: thing sensor-1, connected, certificate " + cert.ID[:12], "published reading 4", "command on cmd/sensor-1/led: on"} {
		if !strings.Contains(text, want) {
			t.Errorf("the example's output lacks %q:\n%s", want, text)
		}
	}
	for i := 1; i <= 3; i++ {
		select {
		case m := <-readings:
			if !strings.Contains(string(m.Payload), `"thing":"sensor-1"`) {
				t.Errorf("reading %q", m.Payload)
			}
		case <-ctx.Done():
			t.Fatalf("reading %d did not reach the broker", i)
		}
	}
}

func mustSettings(t *testing.T, c *config.Config) agent.Settings {
	t.Helper()
	s, err := c.Settings()
	if err != nil {
		t.Fatal(err)
	}
	return s
}
