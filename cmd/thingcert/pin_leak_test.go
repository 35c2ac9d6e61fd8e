package main

import (
	"context"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/internal/testpeers"
)

// TestNoPINInAnyOutput: a device whose key store is a PKCS#11 token opened
// with pin-value= in its URI provisions, rotates by job while running,
// rotates by hand while stopped, and is looked at with status (text and
// JSON) and the metrics; the PIN appears in none of it: the daemon's log
// (debug level), the commands' output, the metrics, and every file in the
// state folder (the rotation state, the daemon's record).
func TestNoPINInAnyOutput(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{Label: "T"})
	// A PIN no other text holds by chance.
	pin := h.PIN
	d := newDaemonDevice(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := l.Addr().String()
	l.Close()
	store := "pkcs11:token=T?module-path=" + h.Module + "&pin-value=" + pin
	cfg := d.base
	i := strings.Index(cfg, "store: ")
	j := i + strings.IndexByte(cfg[i:], '\n')
	cfg = cfg[:i] + "store: " + strconv.Quote(store) + cfg[j:]
	cfg = strings.Replace(cfg, "  level: info\n", "  level: debug\nmetrics:\n  listen: "+metricsAddr+"\n", 1)
	d.writeConfig(cfg)

	var outputs []string
	p := d.start()
	p.waitLog(0, "thingcert agent started")
	eventually(t, "the daemon to provision and connect", d.connected)
	first := d.status().Identity.CertificateID

	ctx := context.Background()
	if _, err := d.emu.CreateJob(ctx, daemonAccount, emulator.Job{ID: "rot-pin", Document: []byte(`{"operation":"rotate-certificate"}`), Things: []string{daemonThing}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the rotation by job", func() bool {
		ex, err := d.emu.JobExecution(ctx, daemonAccount, daemonThing, "rot-pin")
		return err == nil && ex.Status == emulator.JobSucceeded
	})
	d.publishes()
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	outputs = append(outputs, "metrics", string(metrics))
	for _, args := range [][]string{{"status", "--json"}, {"status"}} {
		out, _ := exec.Command(thingcertBinary(t), append(args, "--config", d.config)...).CombinedOutput()
		outputs = append(outputs, "thingcert "+strings.Join(args, " ")+" while running", string(out))
	}
	p.signal(syscall.SIGTERM)
	if code := p.exit(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	outputs = append(outputs, "thingcert run's log", p.logText())

	out, err := exec.Command(thingcertBinary(t), "rotate", "--config", d.config, "--force").CombinedOutput()
	if err != nil {
		t.Fatalf("thingcert rotate: %v\n%s", err, out)
	}
	outputs = append(outputs, "thingcert rotate", string(out))
	for _, args := range [][]string{{"status", "--json"}, {"status"}} {
		out, _ := exec.Command(thingcertBinary(t), append(args, "--config", d.config)...).CombinedOutput()
		outputs = append(outputs, "thingcert "+strings.Join(args, " "), string(out))
	}
	s := d.status()
	if s.Identity == nil || s.Identity.CertificateID == first || !strings.HasPrefix(s.Identity.KeyURI, "pkcs11:") {
		t.Fatalf("identity after two rotations: %+v", s.Identity)
	}
	err = filepath.WalkDir(filepath.Join(d.dir, "state"), func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		outputs = append(outputs, path, string(b))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for k := 0; k < len(outputs); k += 2 {
		if strings.Contains(outputs[k+1], pin) {
			t.Errorf("the PIN is in %s:\n%s", outputs[k], outputs[k+1])
		}
	}
	if !strings.Contains(strings.Join(outputs, "\n"), "pin-value=REDACTED") {
		t.Error("no output shows the redacted URI: the test looked at nothing")
	}
}
