package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/filestore"
	"github.com/thingcert/thingcert/rotation"
)

const (
	rotAccount  = "fleet"
	rotTemplate = "gateways"
)

// buildThingcert builds the command for tests that run it as a real process
// (and kill it).
func buildThingcert(t *testing.T) string {
	t.Helper()
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		testpeers.Missing(t, "no go command next to this test's toolchain: "+err.Error())
	}
	dir := t.TempDir()
	// thingcert-emulator beside it runs `thingcert emulator`.
	if out, err := exec.Command(goTool, "build", "-o", dir+string(filepath.Separator), ".", "../thingcert-emulator").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/thingcert ./cmd/thingcert-emulator: %v\n%s", err, out)
	}
	return filepath.Join(dir, "thingcert")
}

// fleet is an in-process emulator with a provisioning template, and the
// root CA file devices trust.
type fleet struct {
	emu    *emulator.Emulator
	rootCA string
	dir    string
	// owner, if set, is the owner's step-ca, registered with JITP: devices
	// provision from it with a factory claim (stepca_test.go).
	owner *ownerCA
}

func startFleet(t *testing.T) *fleet {
	t.Helper()
	emu, err := emulator.Start(context.Background(), emulator.Config{
		Accounts:  []emulator.Account{{Name: rotAccount}},
		Templates: []emulator.Template{{Name: rotTemplate, Body: emulator.SimpleTemplate("gw-", "SerialNumber")}},
		// Processes restarted at once after a kill reconnect within the
		// second AWS IoT allows per client ID; the commands retry that, but
		// the test need not wait for it.
		ClientConnectInterval: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	dir := t.TempDir()
	root := filepath.Join(dir, "root-ca.pem")
	if err := os.WriteFile(root, emu.RootCAPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return &fleet{emu: emu, rootCA: root, dir: dir}
}

// cliDevice is one device's folder: its config, claim, key store and state.
type cliDevice struct {
	t       *testing.T
	bin     string
	fleet   *fleet
	dir     string
	config  string
	thing   string
	env     []string
	backend keyBackend
}

func (d *cliDevice) keys() []string { return d.backend.list(d.dir) }

// keyBackend is a kind of device key store for the CLI tests: the store URI
// for a device folder, the environment its processes need, and how to list
// the keys it holds.
type keyBackend struct {
	storeURI func(dir string) string
	env      []string
	list     func(dir string) []string
}

func fileBackend() keyBackend {
	return keyBackend{
		storeURI: func(dir string) string { return "file:" + filepath.Join(dir, "keys") + "/" },
		list: func(dir string) []string {
			m, _ := filepath.Glob(filepath.Join(dir, "keys", "*.pem"))
			return m
		},
	}
}

// newCLIDevice writes a config for a device with serial number serial, a
// claim registered in the emulator (its key in a file store of its own) and
// the device's key store from b.
func newCLIDevice(t *testing.T, bin string, f *fleet, serial string, b keyBackend) *cliDevice {
	t.Helper()
	dir := t.TempDir()
	if f.owner != nil {
		return newOwnerCADevice(t, bin, f, serial, b, dir)
	}
	ctx := context.Background()
	cs, err := filestore.Open(ctx, "file:"+filepath.Join(dir, "claim")+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	claimURI, _ := cs.KeyURI("claim")
	ck, err := cs.Generate(ctx, claimURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	claimPEM, _, err := f.emu.RegisterClaim(ctx, rotAccount, ck, "claim "+serial)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "claim.crt"), claimPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	storeURI := b.storeURI(dir)
	thing := "gw-" + serial
	cfg := fmt.Sprintf(`endpoint: %s
address: %s
ca: %s
thing_name: %s
store: %q
claim:
  key: %s
  cert: claim.crt
  client_id: claim-%s
provisioning:
  template: %s
  parameters:
    SerialNumber: %q
  timeout: 5s
rotation:
  retry_min: 1s
  retry_max: 2s
state_dir: state
log:
  level: warn
`, f.emu.Endpoint(rotAccount), f.emu.Addr(), f.rootCA, thing, storeURI, claimURI, serial, rotTemplate, serial)
	path := filepath.Join(dir, "thingcert.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return &cliDevice{t: t, bin: bin, fleet: f, dir: dir, config: path, thing: thing, env: b.env, backend: b}
}

func (d *cliDevice) command(args ...string) *exec.Cmd {
	c := exec.Command(d.bin, args...)
	c.Env = append(os.Environ(), d.env...)
	return c
}

// run runs thingcert to its end.
func (d *cliDevice) run(args ...string) (out string, code int) {
	d.t.Helper()
	b, err := d.command(args...).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(b), 0
	case errors.As(err, &exit):
		return string(b), exit.ExitCode()
	}
	d.t.Fatalf("running thingcert %v: %v", args, err)
	return "", -1
}

// killAfter runs thingcert until it says it saved phase (with serial), then
// kills it with SIGKILL.
func (d *cliDevice) killAfter(phase rotation.Phase, serial int, args ...string) {
	d.t.Helper()
	d.killAt(fmt.Sprintf("%s:%d", phase, serial), phase, args...)
}

// killAt is killAfter for any THINGCERT_TEST_STOP_AFTER value.
func (d *cliDevice) killAt(stop string, phase rotation.Phase, args ...string) {
	d.t.Helper()
	serial := stop
	c := d.command(args...)
	c.Env = append(c.Env, "THINGCERT_TEST_STOP_AFTER="+stop)
	stderr, err := c.StderrPipe()
	if err != nil {
		d.t.Fatal(err)
	}
	c.Stdout = nil
	if err := c.Start(); err != nil {
		d.t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		log strings.Builder
	)
	stopped := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		var once sync.Once
		for sc.Scan() {
			mu.Lock()
			log.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.Contains(sc.Text(), "test: stopped after saving phase "+string(phase)) {
				once.Do(func() { close(stopped) })
			}
		}
	}()
	exited := make(chan error, 1)
	go func() { exited <- c.Wait() }()
	select {
	case <-stopped:
		// SIGKILL by the PID of the process this test started.
		if err := c.Process.Kill(); err != nil {
			d.t.Fatal(err)
		}
		<-exited
	case err := <-exited:
		mu.Lock()
		defer mu.Unlock()
		d.t.Fatalf("thingcert %v ended (%v) before stopping at %s:\n%s", args, err, serial, log.String())
	case <-time.After(60 * time.Second):
		_ = c.Process.Kill()
		d.t.Fatalf("thingcert %v never reached phase %s", args, phase)
	}
}

func (d *cliDevice) state() *rotation.State {
	d.t.Helper()
	s, err := rotation.StateStore{Dir: filepath.Join(d.dir, "state")}.Load()
	if err != nil {
		d.t.Fatal(err)
	}
	return s
}

// works checks that the persisted current identity is what the device
// connects and publishes with (thingcert connect, a real process), and that
// the cloud holds it ACTIVE on the device's thing.
func (d *cliDevice) works() *rotation.State {
	d.t.Helper()
	s := d.state()
	if s.Current.Claim {
		d.t.Fatalf("the device is still on its claim")
	}
	c := d.fleet.emu.Endpoint(rotAccount)
	out, code := d.run("connect", "--endpoint", c, "--address", d.fleet.emu.Addr(), "--ca", d.fleet.rootCA,
		"--key", s.Current.KeyURI, "--cert", s.Current.CertFile, "--client-id", d.thing, "--publish", "dt/"+d.thing+"/up", "--message", "ok")
	if code != 0 || !strings.Contains(out, "PUBACK received") {
		d.t.Fatalf("connect with the current identity %s: exit %d\n%s", s.Current.CertificateID[:12], code, out)
	}
	cert, err := d.fleet.emu.Certificate(context.Background(), rotAccount, s.Current.CertificateID)
	if err != nil || cert.Status != emulator.StatusActive || len(cert.Things) != 1 || cert.Things[0] != d.thing {
		d.t.Fatalf("the cloud's record of the current certificate: %+v, %v", cert, err)
	}
	return s
}

// TestKillAtEveryTransition kills a real `thingcert provision` and a real
// `thingcert rotate` with SIGKILL right after each transition it persists,
// restarts it, and checks that the device ends with a working identity and no
// stray key every time. Transitions covered, for provision and for rotate:
// started, key-generated, csr-submitted, issued, verified, committed, idle
// (the end); for rotate also rolled-back.
func TestKillAtEveryTransition(t *testing.T) {
	bin := buildThingcert(t)
	f := startFleet(t)
	runKillTests(t, bin, f, "1", fileBackend())
	runKillExtras(t, bin, f)
}

// runKillExtras kills at the saves that are not phase changes: a failed
// attempt recorded for a retry, the deletion of a replaced identity after
// its grace period, and the return to the claim for a recovery.
func runKillExtras(t *testing.T, bin string, f *fleet) {
	t.Run("csr-submitted retry", func(t *testing.T) {
		d := newCLIDevice(t, bin, f, "1901", fileBackend())
		if out, code := d.run("provision", "--config", d.config); code != 0 {
			t.Fatalf("provision: %d\n%s", code, out)
		}
		before := d.works()
		remove, err := f.emu.InjectFault(emulator.Fault{Topic: "$aws/certificates/create-from-csr/json", Times: 1, Rewrite: func(topic string, _ []byte) (string, []byte) {
			return strings.Replace(topic, "/accepted", "/rejected", 1), []byte(`{"statusCode":429,"errorCode":"ThrottlingException","errorMessage":"Rate exceeded"}`)
		}})
		if err != nil {
			t.Fatal(err)
		}
		defer remove()
		d.killAt(fmt.Sprintf("%s:%d:1", rotation.PhaseCSRSubmitted, before.Serial+1), rotation.PhaseCSRSubmitted, "rotate", "--config", d.config, "--force")
		if s := d.state(); s.Attempt != 1 || !strings.Contains(s.LastError, "ThrottlingException") {
			t.Fatalf("saved before the kill: attempt %d, last error %q", s.Attempt, s.LastError)
		}
		if out, code := d.run("rotate", "--config", d.config); code != 0 {
			t.Fatalf("rotate after the kill: %d\n%s", code, out)
		}
		if s := d.works(); s.Current.CertificateID == before.Current.CertificateID {
			t.Error("the retried rotation did not complete")
		}
	})
	t.Run("idle retire", func(t *testing.T) {
		d := newCLIDevice(t, bin, f, "1902", fileBackend())
		cfg, _ := os.ReadFile(d.config)
		os.WriteFile(d.config, []byte(strings.Replace(string(cfg), "rotation:\n", "rotation:\n  grace_period: 1s\n", 1)), 0o644)
		if out, code := d.run("provision", "--config", d.config); code != 0 {
			t.Fatalf("provision: %d\n%s", code, out)
		}
		if out, code := d.run("rotate", "--config", d.config, "--force"); code != 0 {
			t.Fatalf("rotate: %d\n%s", code, out)
		}
		s := d.state()
		if len(s.Previous) != 1 || len(d.keys()) != 2 {
			t.Fatalf("before the grace period ends: previous %+v, keys %v", s.Previous, d.keys())
		}
		for time.Now().Before(s.Previous[0].RetireAt) {
			time.Sleep(50 * time.Millisecond) // the grace period, 1 s
		}
		// Not due, no job: the first save of this run is the retirement.
		d.killAfter(rotation.PhaseIdle, s.Serial, "rotate", "--config", d.config)
		if out, code := d.run("rotate", "--config", d.config); code != 0 || !strings.Contains(out, "not due") {
			t.Fatalf("rotate after the kill: %d\n%s", code, out)
		}
		s = d.works()
		if len(s.Previous) != 0 || len(d.keys()) != 1 {
			t.Errorf("after the grace period: previous %+v, keys %v", s.Previous, d.keys())
		}
		if certs, _ := filepath.Glob(filepath.Join(d.dir, "state", "certs", "*.pem")); len(certs) != 1 {
			t.Errorf("certificate files %v, want the current one only", certs)
		}
	})
	t.Run("idle recover", func(t *testing.T) {
		d := newCLIDevice(t, bin, f, "1903", fileBackend())
		cfg, _ := os.ReadFile(d.config)
		os.WriteFile(d.config, []byte(strings.Replace(string(cfg), "  client_id: claim-", "  recover: true\n  client_id: claim-", 1)), 0o644)
		if out, code := d.run("provision", "--config", d.config); code != 0 {
			t.Fatalf("provision: %d\n%s", code, out)
		}
		old := d.works()
		if err := f.emu.SetCertificateStatus(context.Background(), rotAccount, old.Current.CertificateID, emulator.StatusRevoked); err != nil {
			t.Fatal(err)
		}
		// The first save is the return to the claim.
		d.killAfter(rotation.PhaseIdle, old.Serial, "rotate", "--config", d.config)
		if s := d.state(); !s.Current.Claim {
			t.Fatalf("saved before the kill: current %+v", s.Current)
		}
		if out, code := d.run("rotate", "--config", d.config); code != 0 || !strings.Contains(out, "recovered") {
			t.Fatalf("rotate after the kill: %d\n%s", code, out)
		}
		if s := d.works(); s.Current.CertificateID == old.Current.CertificateID {
			t.Error("not recovered")
		}
	})
}

// runKillTests is the kill test for one kind of key store.
func runKillTests(t *testing.T, bin string, f *fleet, prefix string, b keyBackend) {
	phases := []rotation.Phase{rotation.PhaseStarted, rotation.PhaseKeyGenerated, rotation.PhaseCSRSubmitted, rotation.PhaseIssued,
		rotation.PhaseVerified, rotation.PhaseCommitted, rotation.PhaseIdle}
	n := 0
	t.Run("provision", func(t *testing.T) {
		for _, p := range phases {
			t.Run(string(p), func(t *testing.T) {
				n++
				d := newCLIDevice(t, bin, f, fmt.Sprintf("%s%03d", prefix, n), b)
				before := len(d.keys())
				d.killAfter(p, 1, "provision", "--config", d.config)
				if out, code := d.run("provision", "--config", d.config); code != 0 {
					t.Fatalf("provision after the kill: exit %d\n%s", code, out)
				}
				s := d.works()
				if got := len(d.keys()); got != before+1 {
					t.Errorf("%d keys in the store, want %d (one new key, none left over)", got, before+1)
				}
				if s.LastResult.Trigger.Kind != rotation.TriggerProvision || s.LastResult.Outcome != rotation.Succeeded {
					t.Errorf("last result %+v", s.LastResult)
				}
			})
		}
	})
	t.Run("rotate", func(t *testing.T) {
		n++
		d := newCLIDevice(t, bin, f, fmt.Sprintf("%s%03d", prefix, n), b)
		if out, code := d.run("provision", "--config", d.config); code != 0 {
			t.Fatalf("provision: exit %d\n%s", code, out)
		}
		base := len(d.keys())
		for _, p := range phases {
			t.Run(string(p), func(t *testing.T) {
				before := d.works()
				d.killAfter(p, before.Serial+1, "rotate", "--config", d.config, "--force")
				out, code := d.run("rotate", "--config", d.config)
				if code != 0 {
					t.Fatalf("rotate after the kill: exit %d\n%s", code, out)
				}
				s := d.works()
				if s.Current.CertificateID == before.Current.CertificateID || s.Serial != before.Serial+1 {
					t.Errorf("the interrupted rotation did not complete: serial %d → %d", before.Serial, s.Serial)
				}
				// The replaced keys wait out their grace period (24 h): the old
				// ones plus the current, nothing else.
				if got, want := len(d.keys()), base+len(s.Previous); got != want {
					t.Errorf("%d keys in the store, want %d", got, want)
				}
			})
		}
		t.Run(string(rotation.PhaseRolledBack), func(t *testing.T) {
			if f.owner != nil {
				f.owner.killRolledBack(t, d)
				return
			}
			before := d.works()
			keys := len(d.keys())
			remove, err := f.emu.InjectFault(emulator.Fault{Topic: "$aws/certificates/create-from-csr/json", Times: 1, Rewrite: func(topic string, _ []byte) (string, []byte) {
				return strings.Replace(topic, "/accepted", "/rejected", 1), []byte(`{"statusCode":400,"errorCode":"InvalidRequestException","errorMessage":"rejected by the test"}`)
			}})
			if err != nil {
				t.Fatal(err)
			}
			defer remove()
			d.killAfter(rotation.PhaseRolledBack, before.Serial+1, "rotate", "--config", d.config, "--force")
			out, code := d.run("rotate", "--config", d.config)
			if code != 1 || !strings.Contains(out, "rotation rolled back") || !strings.Contains(out, "rejected by the test") {
				t.Fatalf("rotate after the kill: exit %d, want 1 saying it rolled back\n%s", code, out)
			}
			s := d.works()
			if s.Current.CertificateID != before.Current.CertificateID || s.Phase != rotation.PhaseIdle {
				t.Errorf("after the rollback: phase %s, certificate %s", s.Phase, s.Current.CertificateID[:12])
			}
			if got := len(d.keys()); got != keys {
				t.Errorf("%d keys, want %d: the rolled-back key must be gone", got, keys)
			}
		})
	})
}

// TestProvisionRotateFromTheShell is the story a user types: provision,
// rotate --force, a rotate that is not due, then connect with the result.
func TestProvisionRotateFromTheShell(t *testing.T) {
	bin := buildThingcert(t)
	f := startFleet(t)
	d := newCLIDevice(t, bin, f, "0001", fileBackend())
	out, code := d.run("provision", "--config", d.config, "--json")
	if code != 0 {
		t.Fatalf("provision: exit %d\n%s", code, out)
	}
	var r identityReport
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Action != "provisioned" || r.ThingName != d.thing || r.NextRenewal == nil {
		t.Fatalf("provision --json: %v\n%s", err, out)
	}
	first := r.CertificateID
	out, code = d.run("provision", "--config", d.config)
	if code != 0 || !strings.Contains(out, "already provisioned") {
		t.Fatalf("second provision: exit %d\n%s", code, out)
	}
	out, code = d.run("rotate", "--config", d.config, "--force")
	if code != 0 || !strings.Contains(out, "rotated") || strings.Contains(out, first) {
		t.Fatalf("rotate --force: exit %d\n%s", code, out)
	}
	out, code = d.run("rotate", "--config", d.config)
	if code != 0 || !strings.Contains(out, "not due: renews at") || !strings.Contains(out, "max-age") {
		t.Fatalf("rotate when not due: exit %d\n%s", code, out)
	}
	d.works()
	// A job asks for a rotation: a plain rotate takes it.
	before := d.state().Current.CertificateID
	if _, err := f.emu.CreateJob(context.Background(), rotAccount, emulator.Job{ID: "rotate-now", Document: json.RawMessage(`{"operation":"rotate-certificate"}`), Things: []string{d.thing}}); err != nil {
		t.Fatal(err)
	}
	out, code = d.run("rotate", "--config", d.config)
	if code != 0 || !strings.Contains(out, "rotated") {
		t.Fatalf("rotate with a job pending: exit %d\n%s", code, out)
	}
	ex, err := f.emu.JobExecution(context.Background(), rotAccount, d.thing, "rotate-now")
	s := d.works()
	if err != nil || ex.Status != emulator.JobSucceeded || ex.StatusDetails["oldCertificateId"] != before || ex.StatusDetails["newCertificateId"] != s.Current.CertificateID {
		t.Fatalf("job: %+v, %v", ex, err)
	}
}

// TestRotateErrorsSayWhatToDo: the commands' refusals name the config and the
// next step.
func TestRotateErrorsSayWhatToDo(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("endpoint: x-ats.iot.eu-west-1.amazonaws.com\nthing_name: t\nstore: file:"+dir+"/keys/\nstate_dir: state\n"), 0o644)
	_, stderr, code := run(t, "rotate", "--config", cfg)
	if code != 1 || !strings.Contains(stderr, "run `thingcert provision --config") {
		t.Errorf("rotate without state: %d %s", code, stderr)
	}
	_, stderr, code = run(t, "provision", "--config", cfg)
	if code != 1 || !strings.Contains(stderr, "has no claim") {
		t.Errorf("provision without claim: %d %s", code, stderr)
	}
	os.WriteFile(cfg, []byte("endpoint: x\nthing_nam: t\n"), 0o644)
	_, stderr, code = run(t, "rotate", "--config", cfg)
	if code != 1 || !strings.Contains(stderr, `unknown key "thing_nam"`) || !strings.Contains(stderr, "line 2") {
		t.Errorf("rotate with a typo in the config: %d %s", code, stderr)
	}
	_, stderr, code = run(t, "rotate")
	if code != 2 || !strings.Contains(stderr, "--config") {
		t.Errorf("rotate without --config: %d %s", code, stderr)
	}
}

func TestKillAtEveryTransitionSoftHSM(t *testing.T) {
	testpeers.Need(t, "softhsm2-util", "pkcs11-tool")
	testpeers.NeedFile(t, testpeers.SoftHSMModule, "the SoftHSM2 PKCS#11 module")
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{})
	bin := buildThingcert(t)
	f := startFleet(t)
	// One token for every device of the test: a device's keys are those
	// whose label its rotations made; the claims stay in files.
	runKillTests(t, bin, f, "2", keyBackend{
		storeURI: func(string) string { return h.StoreURI() },
		env:      h.Env(),
		list: func(string) []string {
			out := h.Tool(t, "--list-objects", "--type", "privkey", "--login", "--pin", h.PIN)
			var labels []string
			for _, line := range strings.Split(out, "\n") {
				if l, ok := strings.CutPrefix(strings.TrimSpace(line), "label:"); ok {
					labels = append(labels, strings.TrimSpace(l))
				}
			}
			return labels
		},
	})
}

func TestKillAtEveryTransitionTPM(t *testing.T) {
	testpeers.Need(t, "swtpm", "swtpm_ioctl")
	tpm := testpeers.StartSWTPM(t)
	bin := buildThingcert(t)
	f := startFleet(t)
	runKillTests(t, bin, f, "3", tpmBackend(t, tpm))
}

// tpmBackend keeps each device's keys in swtpm, their files in the device's
// folder.
func tpmBackend(t *testing.T, tpm *testpeers.SWTPM) keyBackend {
	return keyBackend{
		storeURI: func(dir string) string {
			// The TPM store keeps key files in a folder it expects to exist.
			if err := os.Mkdir(filepath.Join(dir, "keys"), 0o700); err != nil {
				t.Fatal(err)
			}
			return "tpm:blob-dir=" + filepath.Join(dir, "keys") + "?device=" + tpm.Device()
		},
		// A killed process's keys stay loaded in a TPM without the resource
		// manager (swtpm over TCP here); the next run must flush them itself.
		list: func(dir string) []string {
			m, _ := filepath.Glob(filepath.Join(dir, "keys", "*.tpmkey"))
			return m
		},
	}
}

// TestRecoverRevokedDevice: the cloud revokes the device's certificate. Without
// claim.recover rotate says what to do; with it the claim provisions the
// device again.
func TestRecoverRevokedDevice(t *testing.T) {
	bin := buildThingcert(t)
	f := startFleet(t)
	d := newCLIDevice(t, bin, f, "0100", fileBackend())
	if out, code := d.run("provision", "--config", d.config); code != 0 {
		t.Fatalf("provision: %d\n%s", code, out)
	}
	old := d.works().Current.CertificateID
	if err := f.emu.SetCertificateStatus(context.Background(), rotAccount, old, emulator.StatusRevoked); err != nil {
		t.Fatal(err)
	}
	out, code := d.run("rotate", "--config", d.config)
	if code != 1 || !strings.Contains(out, "claim.recover") {
		t.Fatalf("rotate with a revoked certificate: exit %d\n%s", code, out)
	}
	cfg, _ := os.ReadFile(d.config)
	os.WriteFile(d.config, []byte(strings.Replace(string(cfg), "  client_id: claim-", "  recover: true\n  client_id: claim-", 1)), 0o644)
	out, code = d.run("rotate", "--config", d.config)
	if code != 0 || !strings.Contains(out, "recovered") {
		t.Fatalf("rotate with claim.recover: exit %d\n%s", code, out)
	}
	s := d.works()
	if s.Current.CertificateID == old || len(s.Previous) != 1 || s.Previous[0].CertificateID != old {
		t.Errorf("after recovery: current %s, previous %+v", s.Current.CertificateID[:12], s.Previous)
	}
}

// TestShellStory is the acceptance from the shell, every step a real
// process: `thingcert emulator serve`, its admin commands, a claim made with
// `thingcert key generate` and openssl, `thingcert provision`, `thingcert
// rotate --force`, and `thingcert connect` publishing with the result.
func TestShellStory(t *testing.T) {
	openssl := testpeers.Need(t, "openssl")[0]
	bin := buildThingcert(t)
	dir := t.TempDir()
	sh := func(name string, args ...string) string {
		t.Helper()
		c := exec.Command(name, args...)
		c.Dir = dir
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", filepath.Base(name), args, err, out)
		}
		return string(out)
	}
	port := testpeers.FreePort(t)
	emu := exec.Command(bin, "emulator", "serve", "--state", filepath.Join(dir, "emu"), "--account", "dev:demo", "--listen", fmt.Sprintf("127.0.0.1:%d", port))
	stdout, _ := emu.StdoutPipe()
	emu.Stderr = &testpeers.Buffer{}
	if err := emu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emu.Process.Kill(); _ = emu.Wait() })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		var once sync.Once
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "endpoint ") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("the emulator did not start")
	}
	sh(bin, "emulator", "create-template", "--state", "emu", "--account", "dev", "--name", "fleet", "--thing-name-prefix", "dev-", "--thing-name-param", "SerialNumber")
	sh(bin, "key", "generate", "--key", "file:"+filepath.Join(dir, "claim", "claim.pem"))
	sh(openssl, "req", "-new", "-x509", "-key", "claim/claim.pem", "-subj", "/CN=claim", "-days", "30", "-out", "claim/claim.crt")
	claimID := strings.TrimSpace(sh(bin, "emulator", "register-cert", "--state", "emu", "--account", "dev", "--cert", "claim/claim.crt", "--without-ca"))
	// The least-privilege claim policy: enough to provision, nothing more.
	sh(bin, "emulator", "create-policy", "--state", "emu", "--account", "dev", "--name", "claim", "--document-json", emulator.ClaimPolicy("fleet"))
	sh(bin, "emulator", "attach-policy", "--state", "emu", "--account", "dev", "--name", "claim", "--cert-id", claimID)
	cfg := fmt.Sprintf(`endpoint: demo-ats.iot.us-east-1.amazonaws.com
address: 127.0.0.1:%d
ca: emu/root-ca.pem
thing_name: dev-0042
store: file:%s/keys/
claim:
  key: file:%s/claim/claim.pem
  cert: claim/claim.crt
  client_id: claim-0042
provisioning:
  template: fleet
  parameters:
    SerialNumber: "0042"
state_dir: state
log:
  level: warn
`, port, dir, dir)
	if err := os.WriteFile(filepath.Join(dir, "thingcert.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := sh(bin, "provision", "--config", "thingcert.yaml"); !strings.Contains(out, "provisioned") {
		t.Fatalf("provision:\n%s", out)
	}
	out := sh(bin, "rotate", "--config", "thingcert.yaml", "--force", "--json")
	var r identityReport
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Action != "rotated" {
		t.Fatalf("rotate --force --json: %v\n%s", err, out)
	}
	// rotate's last CONNECT was a moment ago, and the emulator, like AWS IoT,
	// allows one per second per client ID: a refusal for that is retried.
	for attempt := 1; ; attempt++ {
		c := exec.Command(bin, "connect", "--endpoint", "demo-ats.iot.us-east-1.amazonaws.com", "--address", fmt.Sprintf("127.0.0.1:%d", port),
			"--ca", "emu/root-ca.pem", "--key", r.KeyURI, "--cert", r.CertFile, "--publish", "dt/dev-0042/hello", "--message", "hi")
		c.Dir = dir
		b, err := c.CombinedOutput()
		out = string(b)
		if err == nil || attempt == 3 || !strings.Contains(out, "CONNECT refused") {
			break
		}
		time.Sleep(time.Second)
	}
	if !strings.Contains(out, "PUBACK received") || !strings.Contains(out, r.CertificateID) {
		t.Fatalf("connect with the rotated identity:\n%s", out)
	}
	hist := sh(bin, "emulator", "history", "--state", "emu")
	if !strings.Contains(hist, "accepted") || !strings.Contains(hist, r.CertificateID) {
		t.Fatalf("history:\n%s", hist)
	}
}
