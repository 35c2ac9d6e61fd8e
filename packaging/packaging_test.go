// Package packaging holds the systemd unit and the files it uses; its tests
// check them against systemd's own tools and against the config loader.
package packaging

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/internal/testpeers"
)

// directives reads a unit file's Key=Value lines (all values of a key, in order).
func directives(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: not Key=Value: %q", path, line)
		}
		d[k] = append(d[k], v)
	}
	return d
}

func TestUnitHardening(t *testing.T) {
	d := directives(t, "thingcert.service")
	want := map[string]string{
		"Type":                  "notify",
		"NotifyAccess":          "main",
		"ExecStart":             "/usr/local/bin/thingcert run --config /etc/thingcert/thingcert.yaml --socket-group thingcert-clients",
		"ExecReload":            "/bin/kill -HUP $MAINPID",
		"User":                  "thingcert",
		"Group":                 "thingcert",
		"SupplementaryGroups":   "tss thingcert-clients",
		"RuntimeDirectoryMode":  "0755", // the socket itself is 0660, group thingcert-clients
		"StateDirectory":        "thingcert",
		"StateDirectoryMode":    "0700",
		"RuntimeDirectory":      "thingcert",
		"ProtectSystem":         "strict",
		"ProtectHome":           "yes",
		"NoNewPrivileges":       "yes",
		"DevicePolicy":          "closed",
		"DeviceAllow":           "/dev/tpmrm0 rw",
		"CapabilityBoundingSet": "",
		"PrivateTmp":            "yes",
		"UMask":                 "0077",
	}
	for k, v := range want {
		got := d[k]
		if len(got) != 1 || got[0] != v {
			t.Errorf("%s=%q, want %s=%q", k, got, k, v)
		}
	}
	if len(d["WatchdogSec"]) != 1 {
		t.Error("no WatchdogSec: the agent pings the watchdog, the unit must ask for it")
	}
	if p := d["PrivateDevices"]; len(p) != 0 {
		t.Errorf("PrivateDevices=%v would hide /dev/tpmrm0; the unit builds the same isolation from DevicePolicy and DeviceAllow", p)
	}
}

func TestConfigMatchesUnit(t *testing.T) {
	c, err := config.Load("thingcert.yaml")
	if err != nil {
		t.Fatalf("the packaged config does not load: %v", err)
	}
	if c.StateDir != "/var/lib/thingcert" {
		t.Errorf("state_dir %s is not the unit's StateDirectory /var/lib/thingcert", c.StateDir)
	}
	if !strings.Contains(c.Store, "device=/dev/tpmrm0") || !strings.HasPrefix(c.Store, "tpm:blob-dir=/var/lib/thingcert/") {
		t.Errorf("store %s: want the TPM through /dev/tpmrm0 (the one device the unit allows), blobs in the state folder", c.Store)
	}
	if c.Metrics.Listen == "" || !strings.HasPrefix(c.Metrics.Listen, "127.0.0.1:") {
		t.Errorf("metrics.listen %q: want loopback", c.Metrics.Listen)
	}
	sample, err := config.Load(filepath.Join("..", "examples", "config", "thingcert.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if sample.StateDir != c.StateDir {
		t.Errorf("examples/config and packaging disagree on state_dir: %s, %s", sample.StateDir, c.StateDir)
	}
}

func TestSysusers(t *testing.T) {
	b, err := os.ReadFile("sysusers.conf")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"u thingcert - ", "m thingcert tss", "g thingcert-clients -", "m thingcert thingcert-clients"} {
		if !strings.Contains(string(b), "\n"+line) {
			t.Errorf("sysusers.conf lacks %q", line)
		}
	}
}

// TestSystemdAcceptsUnit runs systemd's own checks: the unit parses
// (systemd-analyze verify) and its exposure score stays at most 2.0 of 10
// (systemd-analyze security, offline).
func TestSystemdAcceptsUnit(t *testing.T) {
	sa := testpeers.Need(t, "systemd-analyze")[0]
	b, err := os.ReadFile("thingcert.service")
	if err != nil {
		t.Fatal(err)
	}
	// verify insists that ExecStart exists: point it at a program that does.
	unit := filepath.Join(t.TempDir(), "thingcert.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/thingcert", "/bin/true")), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, drop := range []string{"", "pkcs11.conf", "no-tpm.conf"} {
		u := unit
		if drop != "" {
			extra, err := os.ReadFile(drop)
			if err != nil {
				t.Fatal(err)
			}
			u = filepath.Join(t.TempDir(), "thingcert.service")
			if err := os.WriteFile(u, append(append([]byte(strings.ReplaceAll(string(b), "/usr/local/bin/thingcert", "/bin/true")), '\n'), extra...), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if out, err := exec.Command(sa, "verify", "--man=no", u).CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("systemd-analyze verify (drop-in %q): %v\n%s", drop, err, out)
		}
	}
	// systemd 252 exits 1 in offline mode whatever the threshold: read the
	// score it prints.
	out, _ := exec.Command(sa, "security", "--offline=yes", "--no-pager", unit).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security printed no exposure level:\n%s", out)
	}
	score, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil || score > 2.0 {
		t.Errorf("exposure level %s of 10; want at most 2.0:\n%s", m[1], out)
	}
	t.Logf("systemd-analyze security: exposure %s of 10", m[1])
}
