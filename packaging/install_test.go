package packaging

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/filestore"

	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/internal/testpeers"
)

// The paths the package and this test touch on the machine. What exists
// before the test is moved aside and put back afterwards.
var machinePaths = []string{
	"/usr/bin/thingcert",
	"/etc/thingcert",
	"/var/lib/thingcert",
	"/etc/systemd/system/thingcert.service.d",
}

// testInstall installs the amd64 package on this machine with dpkg -i (CI
// runs as root), checks what it put where and with which owners and modes,
// the user, the unit (systemd-analyze verify), `thingcert version`, then
// removes and purges it and checks that keys, state and files it did not
// make were left. It puts the machine back as it found it.
func testInstall(t *testing.T, deb, version, repo string) {
	if os.Geteuid() != 0 {
		testpeers.Missing(t, "installing a package needs root (CI runs as root)")
	}
	tools := testpeers.Need(t, "dpkg", "dpkg-query", "systemd-analyze", "systemctl", "userdel", "groupdel", "git")
	dpkg, dpkgQuery, analyze, systemctl := tools[0], tools[1], tools[2], tools[3]
	if out, err := exec.Command(dpkgQuery, "-W", "-f=${db:Status-Status}", "thingcert").CombinedOutput(); err == nil && string(out) != "not-installed" {
		t.Fatalf("a thingcert package is already on this machine (%s): this test would replace and purge it; run it elsewhere", out)
	}
	restoreMachine(t, dpkg)

	// Install.
	out := mustRun(t, dpkg, "-i", deb)
	t.Logf("dpkg -i said:\n%s", out)
	for _, s := range []string{"not enabled or started", "sudo -e /etc/thingcert/thingcert.yaml", "thingcert doctor", "systemctl enable --now thingcert"} {
		if !strings.Contains(out, s) {
			t.Errorf("dpkg -i output lacks %q:\n%s", s, out)
		}
	}

	// The service user: a system user, home the state folder, no login, in tss.
	u, err := user.Lookup("thingcert")
	if err != nil {
		t.Fatalf("no user thingcert after install: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	if uid == 0 || uid >= 1000 || u.HomeDir != "/var/lib/thingcert" {
		t.Errorf("user thingcert: uid %s, home %s; want a system uid (1-999) and /var/lib/thingcert", u.Uid, u.HomeDir)
	}
	if tss, err := user.LookupGroup("tss"); err != nil {
		t.Errorf("no group tss: %v", err)
	} else if gids, err := u.GroupIds(); err != nil || !slices.Contains(gids, tss.Gid) {
		t.Errorf("user thingcert is not in group tss (%v, %v)", gids, err)
	}
	tg, err := user.LookupGroup("thingcert")
	if err != nil {
		t.Fatalf("no group thingcert: %v", err)
	}
	gid, _ := strconv.Atoi(tg.Gid)

	// Files, owners, modes.
	for _, c := range []struct {
		path     string
		mode     fs.FileMode
		uid, gid int
	}{
		{"/usr/bin/thingcert", 0o755, 0, 0},
		{"/usr/lib/systemd/system/thingcert.service", 0o644, 0, 0},
		{"/usr/lib/sysusers.d/thingcert.conf", 0o644, 0, 0},
		{"/usr/lib/tmpfiles.d/thingcert.conf", 0o644, 0, 0},
		{"/usr/share/thingcert/systemd/no-tpm.conf", 0o644, 0, 0},
		{"/usr/share/thingcert/systemd/pkcs11.conf", 0o644, 0, 0},
		{"/usr/share/man/man1/thingcert.1.gz", 0o644, 0, 0},
		{"/usr/share/bash-completion/completions/thingcert", 0o644, 0, 0},
		{"/usr/share/doc/thingcert/gateway-guide.md", 0o644, 0, 0},
		{"/etc/thingcert", fs.ModeDir | 0o750, 0, gid},
		{"/etc/thingcert/thingcert.yaml", 0o640, 0, gid},
		{"/var/lib/thingcert", fs.ModeDir | 0o700, uid, gid},
	} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Errorf("after install: %v", err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != c.mode || int(st.Uid) != c.uid || int(st.Gid) != c.gid {
			t.Errorf("%s: %v %d:%d, want %v %d:%d", c.path, fi.Mode(), st.Uid, st.Gid, c.mode, c.uid, c.gid)
		}
	}
	if _, err := config.Load("/etc/thingcert/thingcert.yaml"); err != nil {
		t.Errorf("the installed config does not load: %v", err)
	}
	if cf := mustRun(t, dpkgQuery, "-W", "-f=${Conffiles}", "thingcert"); !strings.Contains(cf, "/etc/thingcert/thingcert.yaml") {
		t.Errorf("the config is not a conffile: %q", cf)
	}

	// The unit: as systemd sees it, with the binary where the package put it,
	// alone and with each drop-in linked in the way the guide says. Not
	// enabled, not started.
	unit := "/usr/lib/systemd/system/thingcert.service"
	if b, _ := os.ReadFile(unit); !bytes.Contains(b, []byte("\nExecStart=/usr/bin/thingcert run --config /etc/thingcert/thingcert.yaml --socket-group thingcert-clients\n")) {
		t.Errorf("%s does not start /usr/bin/thingcert", unit)
	}
	for _, drop := range []string{"", "no-tpm.conf", "pkcs11.conf"} {
		dir := "/etc/systemd/system/thingcert.service.d"
		if drop != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("/usr/share/thingcert/systemd/"+drop, filepath.Join(dir, drop)); err != nil {
				t.Fatal(err)
			}
		}
		out, err := exec.Command(analyze, "verify", "--man=no", unit).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("systemd-analyze verify %s (drop-in %q): %v\n%s", unit, drop, err, out)
		}
		if drop != "" {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
		}
	}
	if en, _ := exec.Command(systemctl, "is-enabled", "thingcert.service").CombinedOutput(); strings.TrimSpace(string(en)) != "disabled" {
		t.Errorf("systemctl is-enabled thingcert = %q; the package must not enable it", strings.TrimSpace(string(en)))
	}

	// thingcert version, as installed.
	commit := strings.TrimSpace(mustRun(t, "git", "-C", repo, "rev-parse", "HEAD"))
	var v struct {
		Version, Commit, Date, Platform string
		Cgo                             bool
		KeyStores                       []string `json:"key_stores"`
	}
	vj := mustRun(t, "/usr/bin/thingcert", "version", "--json")
	if err := json.Unmarshal([]byte(vj), &v); err != nil {
		t.Fatalf("thingcert version --json: %v\n%s", err, vj)
	}
	if v.Version != "v"+version || v.Commit != commit || v.Date == "" || v.Platform != "linux/amd64" || v.Cgo || !slices.Equal(v.KeyStores, []string{"file", "tpm"}) {
		t.Errorf("thingcert version --json = %+v; want v%s, commit %s, linux/amd64, no cgo, file and tpm", v, version, commit)
	}
	t.Logf("installed thingcert version:\n%s", mustRun(t, "/usr/bin/thingcert", "version"))
	doctorOnEmulator(t)

	// What the device made: keys and state, and a claim key put in /etc.
	planted := map[string][]byte{
		"/var/lib/thingcert/keys/device.pem": []byte("-----BEGIN PRIVATE KEY-----\nplanted by the test\n-----END PRIVATE KEY-----\n"),
		"/var/lib/thingcert/rotation.json":   []byte(`{"state":"idle"}`),
		"/etc/thingcert/claim/claim.key":     []byte("planted claim key\n"),
	}
	for p, b := range planted {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	checkPlanted := func(when string) {
		for p, b := range planted {
			if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, b) {
				t.Errorf("after %s: %s was not left as it was (%v)", when, p, err)
			}
		}
	}

	// Remove: binary gone, config, keys and state kept.
	out = mustRun(t, dpkg, "-r", "thingcert")
	if _, err := os.Stat("/usr/bin/thingcert"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after dpkg -r: /usr/bin/thingcert: %v", err)
	}
	if _, err := os.Stat("/etc/thingcert/thingcert.yaml"); err != nil {
		t.Errorf("dpkg -r removed the config: %v", err)
	}
	checkPlanted("dpkg -r")
	for _, s := range []string{"/var/lib/thingcert", "dpkg --purge thingcert"} {
		if !strings.Contains(out, s) {
			t.Errorf("dpkg -r output lacks %q:\n%s", s, out)
		}
	}

	// Purge: the config goes, keys, state and the claim key stay, and it says so.
	out = mustRun(t, dpkg, "--purge", "thingcert")
	if _, err := os.Stat("/etc/thingcert/thingcert.yaml"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after dpkg --purge: /etc/thingcert/thingcert.yaml: %v", err)
	}
	checkPlanted("dpkg --purge")
	for _, s := range []string{"/var/lib/thingcert", "keys", "/etc/thingcert", "claim", "rm -rf /var/lib/thingcert"} {
		if !strings.Contains(out, s) {
			t.Errorf("dpkg --purge output lacks %q:\n%s", s, out)
		}
	}
	t.Logf("dpkg --purge said:\n%s", out)
	if st, _ := exec.Command(dpkgQuery, "-W", "-f=${db:Status-Status}", "thingcert").CombinedOutput(); string(st) != "not-installed" && !strings.Contains(string(st), "no packages found") {
		t.Errorf("after purge dpkg-query says %q", st)
	}
}

// restoreMachine moves what exists of machinePaths aside and, when the test
// ends, purges the package if it is still there, removes what the test
// made, puts the old paths back, and deletes the user and groups the
// package created (never ones that were there before).
func restoreMachine(t *testing.T, dpkg string) {
	t.Helper()
	moved := map[string]string{}
	for _, p := range machinePaths {
		if _, err := os.Lstat(p); err == nil {
			aside := fmt.Sprintf("%s.before-thingcert-test-%d", p, os.Getpid())
			if err := os.Rename(p, aside); err != nil {
				t.Fatalf("moving %s aside: %v", p, err)
			}
			moved[p] = aside
		}
	}
	_, userErr := user.Lookup("thingcert")
	hadGroup := map[string]bool{}
	for _, g := range []string{"thingcert", "tss"} {
		_, err := user.LookupGroup(g)
		hadGroup[g] = err == nil
	}
	t.Cleanup(func() {
		if out, err := exec.Command("dpkg-query", "-W", "-f=${db:Status-Status}", "thingcert").CombinedOutput(); err == nil && string(out) != "not-installed" {
			if out, err := exec.Command(dpkg, "--purge", "thingcert").CombinedOutput(); err != nil {
				t.Errorf("cleanup: dpkg --purge thingcert: %v\n%s", err, out)
			}
		}
		for _, p := range machinePaths {
			if err := os.RemoveAll(p); err != nil {
				t.Errorf("cleanup: %v", err)
			}
			if aside, ok := moved[p]; ok {
				if err := os.Rename(aside, p); err != nil {
					t.Errorf("cleanup: putting %s back from %s: %v", p, aside, err)
				}
			}
		}
		if userErr != nil {
			if out, err := exec.Command("userdel", "thingcert").CombinedOutput(); err != nil {
				t.Errorf("cleanup: userdel thingcert: %v %s", err, out)
			}
		}
		for _, g := range []string{"thingcert", "tss"} {
			if _, err := user.LookupGroup(g); err == nil && !hadGroup[g] {
				if out, err := exec.Command("groupdel", g).CombinedOutput(); err != nil {
					t.Errorf("cleanup: groupdel %s: %v %s", g, err, out)
				}
			}
		}
	})
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// doctorOnEmulator runs the installed thingcert doctor on a device configured
// for an emulator in this process, with a claim: the installer's first
// command after configuring. The checks that need only the configuration and
// the network pass; the device has not provisioned yet, so doctor says so.
func doctorOnEmulator(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	emu, err := emulator.Start(ctx, emulator.Config{Accounts: []emulator.Account{{Name: "prod"}},
		Templates: []emulator.Template{{Name: "fleet", Body: emulator.SimpleTemplate("gw-", "SerialNumber")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cs, err := filestore.Open(ctx, "file:"+filepath.Join(dir, "claim")+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	uri, _ := cs.KeyURI("claim")
	k, err := cs.Generate(ctx, uri, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	cs.Close()
	claimPEM, _, err := emu.RegisterClaim(ctx, "prod", k, "claim")
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"claim.crt": claimPEM, "root-ca.pem": emu.RootCAPEM()} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "thingcert.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`endpoint: %s
address: %s
ca: %s/root-ca.pem
thing_name: gw-0001
store: file:%s/keys/
claim:
  key: %s
  cert: %s/claim.crt
provisioning:
  template: fleet
  parameters:
    SerialNumber: "0001"
state_dir: %s/state
`, emu.Endpoint("prod"), emu.Addr(), dir, dir, uri, dir, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/bin/thingcert", "doctor", "--config", cfg)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("thingcert doctor: %v\n%s", err, out)
	}
	for _, line := range []string{"✓ config", "✓ dns", "✓ tcp", "✓ tls"} {
		if !strings.Contains(string(out), line) {
			t.Errorf("installed thingcert doctor on an emulator-backed config lacks %q:\n%s", line, out)
		}
	}
	t.Logf("installed thingcert doctor (exit %d):\n%s", cmd.ProcessState.ExitCode(), out)
}
