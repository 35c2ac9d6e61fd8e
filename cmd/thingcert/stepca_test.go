package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

// ownerCAKillTemplate is the JITP template of the owner's CA in the CLI
// tests: the thing by the certificate's common name, a policy for its own
// client ID, its Jobs topics and dt/<thing>/* (what works() publishes on).
const ownerCAKillTemplate = `{
 "Parameters": {
  "AWS::IoT::Certificate::CommonName": {"Type": "String"},
  "AWS::IoT::Certificate::Id": {"Type": "String"}},
 "Resources": {
  "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}}},
  "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
  "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": "{\"Version\": \"2012-10-17\", \"Statement\": [{\"Effect\": \"Allow\", \"Action\": \"iot:Connect\", \"Resource\": \"arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}\"}, {\"Effect\": \"Allow\", \"Action\": [\"iot:Publish\", \"iot:Receive\"], \"Resource\": [\"arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/*\", \"arn:aws:iot:*:*:topic/dt/${iot:Connection.Thing.ThingName}/*\"]}, {\"Effect\": \"Allow\", \"Action\": \"iot:Subscribe\", \"Resource\": \"arn:aws:iot:*:*:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/*\"}]}"}}}}`

// ownerCA is the owner's step-ca beside the emulator, its intermediate
// registered in the account with auto-registration and the JITP template.
type ownerCA struct {
	ca      *testpeers.StepCA
	factory *testpeers.FactoryCA
}

// startOwnerCAFleet is startFleet with the owner's step-ca: devices are
// configured with provisioning.issuer: step-ca.
func startOwnerCAFleet(t *testing.T) *fleet {
	t.Helper()
	f := startFleet(t)
	o := &ownerCA{factory: testpeers.NewFactoryCA(t)}
	o.ca = testpeers.StartStepCA(t, testpeers.StepCAOptions{X5CRootsPEM: o.factory.PEM})
	if _, err := f.emu.RegisterCA(context.Background(), rotAccount, o.ca.IntermediatePEM, emulator.CAOptions{AutoRegistration: true,
		Registration: &emulator.CARegistrationConfig{TemplateBody: ownerCAKillTemplate, RoleArn: "arn:aws:iam::123456789012:role/JITP"}}); err != nil {
		t.Fatal(err)
	}
	f.owner = o
	return f
}

// newOwnerCADevice writes the config of a device provisioned by step-ca: a
// factory claim (its key in a file store of its own) that step-ca's X5C
// provisioner trusts and AWS IoT does not know.
func newOwnerCADevice(t *testing.T, bin string, f *fleet, serial string, b keyBackend, dir string) *cliDevice {
	t.Helper()
	ctx := context.Background()
	cs, err := keystore.Open(ctx, "file:"+filepath.Join(dir, "claim")+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	claimURI, _ := cs.KeyURI("claim")
	ck, err := cs.Generate(ctx, claimURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	thing := "gw-" + serial
	if err := os.WriteFile(filepath.Join(dir, "claim.crt"), f.owner.factory.Claim(t, ck.Public(), "factory "+serial), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`endpoint: %s
address: %s
ca: %s
thing_name: %s
store: %q
claim:
  key: %s
  cert: claim.crt
provisioning:
  issuer: step-ca
  ca_url: %s
  root: %s
  root_fingerprint: %s
  provisioner: %s
  timeout: 5s
rotation:
  retry_min: 1s
  retry_max: 2s
state_dir: state
log:
  level: warn
`, f.emu.Endpoint(rotAccount), f.emu.Addr(), f.rootCA, thing, b.storeURI(dir), claimURI,
		f.owner.ca.URL, f.owner.ca.RootFile, fingerprint(f.owner.ca), f.owner.ca.Provisioner)
	path := filepath.Join(dir, "thingcert.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return &cliDevice{t: t, bin: bin, fleet: f, dir: dir, config: path, thing: thing, env: b.env, backend: b}
}

func fingerprint(ca *testpeers.StepCA) string {
	return fmt.Sprintf("%x", sha256Sum(ca.Root.Raw))
}

// killRolledBack is the rolled-back kill for the step-ca issuer: the new
// certificate fails the device's check (rotation.trust names another CA for
// this run), the rotation rolls back, and the process is killed right after
// it saved that; the next run finishes the rollback.
func (o *ownerCA) killRolledBack(t *testing.T, d *cliDevice) {
	before := d.works()
	keys := len(d.keys())
	orig, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(d.dir, "other-ca.pem")
	if err := os.WriteFile(other, testpeers.NewFactoryCA(t).PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(orig), "rotation:\n", "rotation:\n  trust: "+other+"\n", 1)
	if err := os.WriteFile(d.config, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	d.killAfter(rotation.PhaseRolledBack, before.Serial+1, "rotate", "--config", d.config, "--force")
	out, code := d.run("rotate", "--config", d.config)
	if code != 1 || !strings.Contains(out, "rotation rolled back") {
		t.Fatalf("rotate after the kill: exit %d, want 1 saying it rolled back\n%s", code, out)
	}
	if err := os.WriteFile(d.config, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	s := d.works()
	if s.Current.CertificateID != before.Current.CertificateID || s.Phase != rotation.PhaseIdle {
		t.Errorf("after the rollback: phase %s, certificate %s", s.Phase, s.Current.CertificateID[:12])
	}
	if got := len(d.keys()); got != keys {
		t.Errorf("%d keys, want %d: the rolled-back key must be gone", got, keys)
	}
}

// TestKillAtEveryTransitionStepCA is the kill test with the step-ca issuer:
// provision (X5C token by the factory claim, then JITP on the first
// connection) and rotate (rekey over mutual TLS, JITP again), each killed
// with SIGKILL after every transition it persists, then run again.
func TestKillAtEveryTransitionStepCA(t *testing.T) {
	bin := buildThingcert(t)
	f := startOwnerCAFleet(t)
	runKillTests(t, bin, f, "5", fileBackend())
}

// TestKillAtEveryTransitionStepCATPM is the same with the device's keys in
// swtpm: the rekey's mutual TLS signs with the current key in the TPM, in a
// process started after the kill.
func TestKillAtEveryTransitionStepCATPM(t *testing.T) {
	testpeers.Need(t, "swtpm", "swtpm_ioctl")
	tpm := testpeers.StartSWTPM(t)
	bin := buildThingcert(t)
	f := startOwnerCAFleet(t)
	runKillTests(t, bin, f, "7", tpmBackend(t, tpm))
}

// TestProvisionRotateStepCAFromTheShell: provision and rotate --force with
// the step-ca issuer as a user types them; each says what happened, and the
// first connection of each certificate, closed by JITP, is tried again.
func TestProvisionRotateStepCAFromTheShell(t *testing.T) {
	bin := buildThingcert(t)
	f := startOwnerCAFleet(t)
	d := newCLIDevice(t, bin, f, "6001", fileBackend())
	cfg, _ := os.ReadFile(d.config)
	os.WriteFile(d.config, []byte(strings.Replace(string(cfg), "level: warn", "level: info", 1)), 0o644)
	out, code := d.run("provision", "--config", d.config)
	if code != 0 || !strings.Contains(out, "provisioned") || !strings.Contains(out, "connecting again") || !strings.Contains(out, "accepted after its just-in-time registration") {
		t.Fatalf("provision: exit %d\n%s", code, out)
	}
	first := d.works()
	out, code = d.run("rotate", "--config", d.config, "--force")
	if code != 0 || !strings.Contains(out, "accepted after its just-in-time registration") {
		t.Fatalf("rotate: exit %d\n%s", code, out)
	}
	if s := d.works(); s.Current.CertificateID == first.Current.CertificateID {
		t.Fatal("rotate did not change the certificate")
	}
	if !strings.Contains(f.owner.ca.Log(), "path=/1.0/rekey") {
		t.Errorf("step-ca saw no rekey:\n%s", f.owner.ca.Log())
	}
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

// TestAgentProvisionsFromStepCA: the agent (thingcert run) with the step-ca
// issuer provisions without ever connecting with the factory claim, connects
// through JITP, and stays connected on its certificate.
func TestAgentProvisionsFromStepCA(t *testing.T) {
	bin := buildThingcert(t)
	f := startOwnerCAFleet(t)
	d := newCLIDevice(t, bin, f, "6101", fileBackend())
	cfg, _ := os.ReadFile(d.config)
	os.WriteFile(d.config, []byte(strings.Replace(string(cfg), "level: warn", "level: info", 1)), 0o644)
	log := &testpeers.Buffer{}
	agent := d.command("run", "--config", d.config, "--socket", "none")
	agent.Stdout, agent.Stderr = log, log
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = agent.Process.Signal(syscall.SIGTERM)
		_ = agent.Wait()
		if t.Failed() || testing.Verbose() {
			t.Logf("agent log:\n%s", log.String())
		}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(log.String(), "accepted after its just-in-time registration") {
		if time.Now().After(deadline) {
			t.Fatal("the agent did not connect through JITP in 60 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	s := d.state()
	if s.Current.Claim || s.LastResult == nil || s.LastResult.Outcome != rotation.Succeeded {
		t.Fatalf("state after the agent provisioned: %+v", s)
	}
	evs, err := f.emu.History(context.Background(), emulator.HistoryQuery{Account: rotAccount})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.CertificateID != "" && e.CertificateID != s.Current.CertificateID {
			t.Errorf("a connection with another certificate than the device's (the claim?): %+v", e)
		}
	}
	if c, err := f.emu.Certificate(context.Background(), rotAccount, s.Current.CertificateID); err != nil || c.Status != emulator.StatusActive || len(c.Things) != 1 || c.Things[0] != d.thing {
		t.Fatalf("the certificate in AWS IoT: %+v, %v", c, err)
	}
}
