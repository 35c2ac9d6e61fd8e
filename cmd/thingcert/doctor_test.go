package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/internal/doctor"
	"github.com/thingcert/thingcert/internal/statusview"
	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/internal/testpki"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/keystore"
)

// doctorRun is one `thingcert doctor --json` run, in process.
type doctorRun struct {
	rep  doctor.Report
	code int
	text string // the same run's text output
}

// runDoctor runs doctor twice (JSON, then text) with the test's clock and
// timesync flag file; set adjusts the probes further.
func runDoctor(t *testing.T, set func(*doctor.Env), args ...string) doctorRun {
	t.Helper()
	var r doctorRun
	for _, asJSON := range []bool{true, false} {
		var out, errb bytes.Buffer
		env := &cliEnv{stdout: &out, stderr: &errb, doctor: func(e *doctor.Env) {
			e.Timeout = 5 * time.Second
			e.TimesyncFlag = filepath.Join(t.TempDir(), "not-synchronized") // absent: not synchronised
			if set != nil {
				set(e)
			}
		}}
		root := newRootCmdEnv(env)
		a := append([]string{"doctor"}, args...)
		if asJSON {
			a = append(a, "--json")
		}
		root.SetArgs(a)
		code := 0
		if err := root.ExecuteContext(context.Background()); err != nil {
			code = exitCode(err)
		}
		if asJSON {
			if err := json.Unmarshal(out.Bytes(), &r.rep); err != nil {
				t.Fatalf("doctor --json: %v\n%s\n%s", err, out.String(), errb.String())
			}
			r.code = code
		} else {
			r.text = out.String()
			if code != r.code {
				t.Errorf("doctor exited %d, doctor --json %d", code, r.code)
			}
		}
	}
	return r
}

// synced makes doctor see systemd-timesyncd's flag file, as on a device whose
// clock NTP has set.
func synced(t *testing.T) func(*doctor.Env) {
	flag := filepath.Join(t.TempDir(), "synchronized")
	mustWrite(t, flag, nil)
	return func(e *doctor.Env) { e.TimesyncFlag = flag }
}

// want checks one check's status, and that a warning or failure has a fix
// and says what contains.
func (r doctorRun) want(t *testing.T, check string, status doctor.Status, contains ...string) *doctor.Result {
	t.Helper()
	res := r.rep.Find(check)
	if res == nil {
		t.Fatalf("no %q check in:\n%s", check, r.text)
	}
	if res.Status != status {
		t.Fatalf("%s: %s, want %s:\n%s", check, res.Status, status, r.text)
	}
	if (status == doctor.Fail || status == doctor.Warn) && res.Fix == "" {
		t.Errorf("%s: a %s without a fix:\n%s", check, status, r.text)
	}
	for _, c := range contains {
		if !strings.Contains(res.Detail+"\n"+res.Fix, c) {
			t.Errorf("%s: %q not in %q / fix %q", check, c, res.Detail, res.Fix)
		}
	}
	mark := status.Mark() + " " + check
	if !strings.Contains(r.text, mark) {
		t.Errorf("the text output has no line %q:\n%s", mark, r.text)
	}
	return res
}

// provisioned is a device the agent provisioned against the emulator and
// left connected (running) or stopped.
func provisioned(t *testing.T, running bool) (*daemonDevice, *daemonProc) {
	t.Helper()
	d := newDaemonDevice(t)
	p := d.start()
	p.waitLog(0, "thingcert agent started")
	eventually(t, "the daemon to provision and connect", d.connected)
	if !running {
		p.signal(syscall.SIGTERM)
		if code := p.exit(); code != 0 {
			t.Fatalf("thingcert run exited %d", code)
		}
		return d, nil
	}
	return d, p
}

func accepted(t *testing.T, d *daemonDevice) int {
	t.Helper()
	ev, err := d.emu.History(context.Background(), emulator.HistoryQuery{Account: daemonAccount, ClientID: daemonThing, Outcome: emulator.Accepted})
	if err != nil {
		t.Fatal(err)
	}
	return len(ev)
}

// TestDoctorHealthyDevice: a device the agent provisioned and keeps
// connected passes every check; doctor asks the agent over its socket and
// does not connect as the device (the emulator's history shows no new
// connection). With the agent stopped, doctor connects itself and subscribes
// to the Jobs topics, and only the agent check warns.
func TestDoctorHealthyDevice(t *testing.T) {
	d, p := provisioned(t, true)
	before := accepted(t, d)
	r := runDoctor(t, synced(t), "--config", d.config)
	for _, c := range r.rep.Checks {
		if c.Status != doctor.OK && !(c.Check == "jobs topics" && c.Status == doctor.Skipped) {
			t.Errorf("healthy device: %s is %s: %s", c.Check, c.Status, c.Detail)
		}
	}
	if r.code != 0 {
		t.Errorf("exit code %d on a healthy device:\n%s", r.code, r.text)
	}
	for _, c := range []string{"config", "state folder", "key folder", "key", "certificate", "renewal", "ntp", "clock", "dns", "tcp", "tls", "mqtt", "agent"} {
		r.want(t, c, doctor.OK)
	}
	r.want(t, "mqtt", doctor.OK, "the agent", "is connected as "+daemonThing)
	r.want(t, "jobs topics", doctor.Skipped, "while the agent runs")
	if after := accepted(t, d); after != before {
		t.Errorf("doctor connected as the device beside the running agent: %d accepted connections before, %d after", before, after)
	}
	if !d.connected() {
		t.Error("the agent is no longer connected after doctor")
	}
	t.Logf("healthy, agent running:\n%s", r.text)

	p.signal(syscall.SIGTERM)
	if code := p.exit(); code != 0 {
		t.Fatalf("thingcert run exited %d", code)
	}
	before = accepted(t, d)
	r = runDoctor(t, synced(t), "--config", d.config)
	r.want(t, "mqtt", doctor.OK, "CONNECT as "+daemonThing+" with the device identity accepted")
	r.want(t, "jobs topics", doctor.OK, "SUBSCRIBE $aws/things/"+daemonThing+"/jobs/notify-next allowed")
	r.want(t, "agent", doctor.Warn, "not running", "systemctl enable --now thingcert")
	if r.code != 1 {
		t.Errorf("exit code %d with only the agent stopped, want 1:\n%s", r.code, r.text)
	}
	if after := accepted(t, d); after != before+2 {
		t.Errorf("doctor (run twice: JSON and text) with the agent stopped: %d accepted connections before, %d after; want two more", before, after)
	}
	t.Logf("healthy, agent stopped:\n%s", r.text)
}

// TestDoctorPolicyDeniesJobs: the certificate's policy refuses the Jobs
// topics (an explicit Deny in a second policy); CONNECT works, the
// SUBSCRIBE is refused, and the fix lists the certificate's policies.
func TestDoctorPolicyDeniesJobs(t *testing.T) {
	d, _ := provisioned(t, false)
	ctx := context.Background()
	cert := d.status().Identity.CertificateID
	doc := `{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": ["iot:Subscribe"], "Resource": ["arn:aws:iot:*:*:topicfilter/$aws/things/*/jobs/*"]}]}`
	if _, err := d.emu.CreatePolicy(ctx, daemonAccount, "deny-jobs", doc); err != nil {
		t.Fatal(err)
	}
	if err := d.emu.AttachPolicy(ctx, daemonAccount, "deny-jobs", cert); err != nil {
		t.Fatal(err)
	}
	r := runDoctor(t, synced(t), "--config", d.config)
	r.want(t, "mqtt", doctor.OK)
	r.want(t, "jobs topics", doctor.Fail, "refused", "aws iot list-attached-policies", cert, "topicfilter/$aws/things/"+daemonThing+"/jobs/*")
	if r.code != 2 {
		t.Errorf("exit code %d, want 2", r.code)
	}
	t.Logf("policy denies the Jobs topics:\n%s", r.text)
}

// TestDoctorClockBeforeNotBefore: a clock (injected) an hour before the
// certificate's notBefore, as on a Raspberry Pi booted without NTP.
func TestDoctorClockBeforeNotBefore(t *testing.T) {
	d, _ := provisioned(t, false)
	nb := d.status().Identity.NotBefore
	r := runDoctor(t, func(e *doctor.Env) {
		synced(t)(e)
		e.Now = func() time.Time { return nb.Add(-time.Hour) }
	}, "--config", d.config)
	r.want(t, "clock", doctor.Fail, "before the certificate's notBefore "+nb.UTC().Format(time.RFC3339), "timedatectl set-ntp true")
	if r.code != 2 {
		t.Errorf("exit code %d, want 2", r.code)
	}
	// No time service: the flag file is absent, and with an empty PATH
	// neither timedatectl nor chronyc is there to ask.
	t.Setenv("PATH", t.TempDir())
	r = runDoctor(t, nil, "--config", d.config)
	r.want(t, "ntp", doctor.Warn, "cannot tell whether the clock is synchronised", "timedatectl set-ntp true")
	r.want(t, "clock", doctor.OK)
}

// deviceWith is a not yet provisioned device whose configuration replaces
// old by new.
func deviceWith(t *testing.T, pairs ...string) *daemonDevice {
	t.Helper()
	d := newDaemonDevice(t)
	cfg := d.base
	for i := 0; i+1 < len(pairs); i += 2 {
		if !strings.Contains(cfg, pairs[i]) {
			t.Fatalf("the config has no %q", pairs[i])
		}
		cfg = strings.Replace(cfg, pairs[i], pairs[i+1], 1)
	}
	d.writeConfig(cfg)
	return d
}

func TestDoctorNetworkFailures(t *testing.T) {
	t.Run("unresolvable endpoint", func(t *testing.T) {
		d := newDaemonDevice(t)
		ep := d.emu.Endpoint(daemonAccount)
		d.writeConfig(strings.Replace(strings.Replace(d.base, "address: "+d.emu.Addr()+"\n", "", 1), "endpoint: "+ep, "endpoint: doctor-test.invalid", 1))
		r := runDoctor(t, synced(t), "--config", d.config)
		r.want(t, "dns", doctor.Fail, "doctor-test.invalid does not resolve", "aws iot describe-endpoint")
		r.want(t, "tcp", doctor.Skipped)
		r.want(t, "mqtt", doctor.Skipped)
		t.Logf("\n%s", r.text)
	})
	t.Run("closed port", func(t *testing.T) {
		port := testpeers.FreePort(t)
		d := newDaemonDevice(t)
		d.writeConfig(strings.Replace(d.base, "address: "+d.emu.Addr(), fmt.Sprintf("address: 127.0.0.1:%d", port), 1))
		r := runDoctor(t, synced(t), "--config", d.config)
		r.want(t, "dns", doctor.OK)
		r.want(t, "tcp", doctor.Fail, "connection refused", fmt.Sprintf("nc -vz 127.0.0.1 %d", port), "port: 443")
		r.want(t, "tls", doctor.Skipped)
		t.Logf("\n%s", r.text)
	})
	t.Run("untrusted server", func(t *testing.T) {
		other := testpki.NewCA(t, "Some Other CA")
		d := newDaemonDevice(t)
		mustWrite(t, filepath.Join(d.dir, "other-ca.pem"), other.PEM())
		d.writeConfig(strings.Replace(d.base, "ca: root-ca.pem", "ca: other-ca.pem", 1))
		r := runDoctor(t, synced(t), "--config", d.config)
		r.want(t, "tcp", doctor.OK)
		r.want(t, "tls", doctor.Fail, "does not chain to the configured ca", "openssl s_client", "set ca:")
		r.want(t, "mqtt", doctor.Skipped)
		if r.code != 2 {
			t.Errorf("exit code %d, want 2", r.code)
		}
		t.Logf("\n%s", r.text)
	})
}

// TestDoctorNoTPM: the store names a TPM device that does not exist.
func TestDoctorNoTPM(t *testing.T) {
	d := newDaemonDevice(t)
	missing := filepath.Join(t.TempDir(), "tpmrm0")
	d.writeConfig(strings.Replace(d.base, "store: file:"+d.dir+"/keys/", "store: tpm:?device="+missing, 1))
	r := runDoctor(t, synced(t), "--config", d.config)
	r.want(t, "tpm device", doctor.Fail, missing+": no such device", "ls -l /dev/tpm*")
	if r.code != 2 {
		t.Errorf("exit code %d, want 2", r.code)
	}
	t.Logf("\n%s", r.text)
}

// TestDoctorTPMServiceCannotOpen: a device node the service user cannot
// open (root:root 0600, no tss group), made with mknod; it is a character
// device that does not answer TPM commands (the null device's numbers).
func TestDoctorTPMServiceCannotOpen(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "tpmrm0")
	if err := syscall.Mknod(dev, syscall.S_IFCHR|0o600, 1<<8|3); err != nil {
		testpeers.Missing(t, fmt.Sprintf("a device node to test with: mknod needs CAP_MKNOD (root has it in CI): %v", err))
	}
	if err := os.Chmod(dev, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dev, 0, 0); err != nil {
		t.Fatal(err)
	}
	d := newDaemonDevice(t)
	d.writeConfig(strings.Replace(d.base, "store: file:"+d.dir+"/keys/", "store: tpm:?device="+dev, 1))
	r := runDoctor(t, synced(t), "--config", d.config)
	r.want(t, "tpm device", doctor.OK)
	r.want(t, "tpm resource manager", doctor.OK)
	r.want(t, "tpm service access", doctor.Fail, "mode 0600", "cannot open it", "tpm-udev")
	r.want(t, "tpm", doctor.Fail, "does not answer")
	t.Logf("\n%s", r.text)
}

// TestDoctorTPM: a claim key made in swtpm: the TPM's manufacturer and
// firmware are read, the key signs in the TPM, and CONNECT works with it.
func TestDoctorTPM(t *testing.T) {
	tpm := testpeers.StartSWTPM(t)
	d := newDaemonDevice(t)
	ctx := context.Background()
	keyURI := "tpm:blob=" + filepath.Join(d.dir, "tpmkeys", "claim.tpmkey") + "?device=" + tpm.Device()
	if err := os.Mkdir(filepath.Join(d.dir, "tpmkeys"), 0o700); err != nil {
		t.Fatal(err)
	}
	store, err := keystore.Open(ctx, keyURI, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	k, err := store.Generate(ctx, keyURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := d.emu.RegisterClaim(ctx, daemonAccount, k, "tpm-claim")
	store.Close() // swtpm serves one connection at a time
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(d.dir, "tpm-claim.crt"), certPEM)
	cfg := d.base
	for old, new := range map[string]string{
		"store: file:" + d.dir + "/keys/": "store: tpm:?device=" + tpm.Device() + "&blob-dir=" + d.dir + "/tpmkeys",
		"cert: claim.crt":                 "cert: tpm-claim.crt",
	} {
		cfg = strings.Replace(cfg, old, new, 1)
	}
	cfg = regexp.MustCompile(`(?m)^  key: .*$`).ReplaceAllString(cfg, "  key: "+keyURI)
	d.writeConfig(cfg)
	r := runDoctor(t, synced(t), "--config", d.config)
	r.want(t, "tpm device", doctor.OK, tpm.Device())
	r.want(t, "tpm", doctor.OK, "manufacturer IBM", "firmware")
	r.want(t, "key", doctor.OK, keyURI, "claim identity", "signs")
	r.want(t, "mqtt", doctor.OK, "claim identity accepted")
	t.Logf("\n%s", r.text)
}

// TestDoctorPKCS11PINFileMode: a SoftHSM token whose PIN file others can
// read; the PIN never shows. With mode 0600 the token opens.
func TestDoctorPKCS11PINFileMode(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	d := newDaemonDevice(t)
	d.writeConfig(strings.Replace(d.base, "store: file:"+d.dir+"/keys/", "store: "+h.StoreURI(), 1))
	if err := os.Chmod(h.PINFile, 0o644); err != nil {
		t.Fatal(err)
	}
	r := runDoctor(t, synced(t), "--config", d.config)
	r.want(t, "pkcs11 PIN file", doctor.Fail, h.PINFile, "mode 0644", "chmod 600 "+h.PINFile)
	r.want(t, "pkcs11 token", doctor.Skipped)
	if strings.Contains(r.text, h.PIN) {
		t.Error("doctor printed the PIN")
	}
	t.Logf("\n%s", r.text)
	if err := os.Chmod(h.PINFile, 0o600); err != nil {
		t.Fatal(err)
	}
	r = runDoctor(t, synced(t), "--config", d.config)
	r.want(t, "pkcs11 module", doctor.OK)
	r.want(t, "pkcs11 PIN file", doctor.OK)
	r.want(t, "pkcs11 token", doctor.OK)
}

// TestDoctorModes: a state folder others can write in, a key file others
// can read.
func TestDoctorModes(t *testing.T) {
	d, _ := provisioned(t, false)
	state := filepath.Join(d.dir, "state")
	if err := os.Chmod(state, 0o777); err != nil {
		t.Fatal(err)
	}
	key := strings.TrimPrefix(d.status().Identity.KeyURI, "file:")
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	r := runDoctor(t, synced(t), "--config", d.config)
	r.want(t, "state folder", doctor.Fail, "mode 0777", "group or others can write", "chmod 700 "+state)
	r.want(t, "key file", doctor.Fail, key, "mode 0644", "chmod 600 "+key)
	if res := r.want(t, "key", doctor.Fail); res.Fix != "chmod 600 "+key {
		t.Errorf("key: fix %q, want chmod 600 %s", res.Fix, key)
	}
	if err := os.Chmod(state, 0o750); err != nil {
		t.Fatal(err)
	}
	r = runDoctor(t, synced(t), "--config", d.config)
	r.want(t, "state folder", doctor.Warn, "mode 0750", "chmod 700 "+state)
	t.Logf("\n%s", r.text)

	// A damaged agent record: the agent may be running, so doctor does not
	// connect as the device.
	if err := os.Chmod(key, 0o600); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(state, "daemon.json"), []byte("{\"pid\": 12"))
	r = runDoctor(t, synced(t), "--config", d.config)
	r.want(t, "key", doctor.OK)
	r.want(t, "agent record", doctor.Warn, "damaged")
	r.want(t, "mqtt", doctor.Skipped, "may be running")
}

// TestDoctorAndStatusWithBrokenConfig: the agent refused a reload of a
// broken file; status still reports the agent from its record with the
// config's error beside it, and doctor names the line and runs the checks
// that do not need the config.
func TestDoctorAndStatusWithBrokenConfig(t *testing.T) {
	d, p := provisioned(t, true)
	d.writeConfig(d.base + "renewal_interval: 1h\n")
	p.signal(syscall.SIGHUP)
	p.waitLog(0, "configuration reload refused")
	// The refusal is logged, then recorded.
	eventually(t, "the agent to record the refused reload", func() bool { return d.status().Agent.ReloadError != "" })

	out, err := exec.Command(thingcertBinary(t), "status", "--config", d.config, "--json").Output()
	if err != nil {
		t.Fatalf("thingcert status with a broken config: %v", err)
	}
	var s statusview.Status
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.ConfigError, "renewal_interval") || !strings.Contains(s.ConfigError, "line ") || s.StateDirFrom != fromLenient {
		t.Errorf("config error %q, state folder from %q", s.ConfigError, s.StateDirFrom)
	}
	if c := s.Agent.Connection; !s.Agent.Running || c == nil || c.State != iot.StateConnected.String() || s.Agent.ReloadError == "" {
		t.Errorf("agent in status: %+v", s.Agent)
	}
	if len(s.Problems) == 0 || !strings.Contains(s.Problems[0], "does not load") || s.Identity == nil || s.Identity.CertificateID == "" {
		t.Errorf("status: problems %q, identity %+v", s.Problems, s.Identity)
	}
	text, err := exec.Command(thingcertBinary(t), "status", "--config", d.config).Output()
	if err != nil || !strings.Contains(string(text), "does not load") {
		t.Errorf("thingcert status (text): %v\n%s", err, text)
	}
	t.Logf("status with a broken config:\n%s", text)
	if err := exec.Command(thingcertBinary(t), "status", "--config", d.config, "--check").Run(); err == nil {
		t.Error("status --check exits 0 with a broken config")
	}

	r := runDoctor(t, synced(t), "--config", d.config)
	r.want(t, "config", doctor.Fail, "line 21", "renewal_interval", "+21 "+d.config)
	r.want(t, "state folder", doctor.OK)
	r.want(t, "agent", doctor.OK, "socket")
	r.want(t, "agent config", doctor.Warn, "refused the last reload", "+21 "+d.config)
	r.want(t, "clock", doctor.OK)
	r.want(t, "key", doctor.OK, "device identity")
	r.want(t, "certificate", doctor.OK, s.Identity.CertificateID[:12])
	r.want(t, "mqtt", doctor.OK, "the agent")
	if r.code != 2 {
		t.Errorf("exit code %d, want 2", r.code)
	}
	t.Logf("doctor with a broken config:\n%s", r.text)
}
