package main

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/thingcert/thingcert/internal/statusview"
	"github.com/thingcert/thingcert/iot"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/rotation"
)

// What the agent logs when it recovers, and when it may not.
const (
	logRecovering = "going back to the claim to provision again (claim.recover)"
	logRefused    = "the cloud refuses the device's identity: check the certificate's status in AWS IoT"
)

func (d *daemonDevice) allowRecovery() {
	// Two refusals, no minimum span: the rule is proven with an injected
	// clock in the agent's tests; here a real process counts them.
	d.base = strings.Replace(d.base, "  cert: claim.crt\n", "  cert: claim.crt\n  recover: true\n  recover_refusals: 2\n  recover_after: 0s\n", 1)
	d.writeConfig(d.base)
}

// recoveredFrom waits until the daemon is connected with an identity of its
// own other than old, and checks that it came from a recovery by claim: the
// status records it, the new certificate is ACTIVE and the thing's, the
// refused one retires, and device programs publish again.
func (d *daemonDevice) recoveredFrom(old string) string {
	d.t.Helper()
	var s *statusview.Status
	eventually(d.t, "the daemon to provision again and connect", func() bool {
		s = d.status()
		c := s.Agent.Connection
		return s.Provisioned && s.Identity.CertificateID != old && s.Agent.Running && c != nil && c.State == iot.StateConnected.String()
	})
	id := s.Identity.CertificateID
	if lr := s.LastRotation; lr == nil || lr.Trigger.Kind != rotation.TriggerProvision || lr.Outcome != rotation.Succeeded || lr.NewCertificateID != id {
		d.t.Errorf("last rotation after the recovery: %+v", s.LastRotation)
	}
	if rc := s.Agent.Recovered; rc == nil || rc.CertificateID != old || !strings.Contains(rc.Reason, "client certificate refused") {
		d.t.Errorf("status does not record the recovery from %s: %+v", old, rc)
	}
	if !slices.ContainsFunc(s.Retiring, func(r statusview.RetiringStatus) bool { return r.CertificateID == old }) {
		d.t.Errorf("the refused identity %s does not retire: %+v", old, s.Retiring)
	}
	if len(s.Problems) != 0 {
		d.t.Errorf("problems after the recovery: %q", s.Problems)
	}
	ctx := context.Background()
	if c, err := d.emu.Certificate(ctx, daemonAccount, id); err != nil || c.Status != emulator.StatusActive {
		d.t.Fatalf("new certificate in the emulator: %+v, %v", c, err)
	}
	th, err := d.emu.Thing(ctx, daemonAccount, daemonThing)
	if err != nil || !slices.Contains(th.Certificates, id) {
		d.t.Fatalf("thing %s after the recovery: %+v, %v", daemonThing, th, err)
	}
	d.publishes()
	return id
}

// TestRunRecoversRefusedIdentityByClaim: with claim.recover the daemon, as a
// real process, answers the cloud revoking its certificate (the connection
// dropped, the reconnect refused) by going back to the claim, provisioning a
// new certificate and carrying on; and a certificate deactivated while it
// was stopped is recovered from at the next start.
func TestRunRecoversRefusedIdentityByClaim(t *testing.T) {
	d := newDaemonDevice(t)
	d.allowRecovery()
	ctx := context.Background()
	p := d.start()
	p.waitLog(0, "thingcert agent started")
	eventually(t, "the daemon to provision and connect", d.connected)
	first := d.status().Identity.CertificateID

	if err := d.emu.SetCertificateStatus(ctx, daemonAccount, first, emulator.StatusRevoked); err != nil {
		t.Fatal(err)
	}
	p.waitLog(0, logRecovering)
	second := d.recoveredFrom(first)
	if c, _ := d.emu.Certificate(ctx, daemonAccount, first); c.Status != emulator.StatusRevoked {
		t.Errorf("the revoked certificate is %s", c.Status)
	}
	p.signal(syscall.SIGTERM)
	if code := p.exit(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	if strings.Contains(p.logText(), logRefused) {
		t.Error("the daemon gave the advice for claim.recover while it is set")
	}

	// Deactivated while the daemon was stopped: its first connect is refused.
	if err := d.emu.SetCertificateStatus(ctx, daemonAccount, second, emulator.StatusInactive); err != nil {
		t.Fatal(err)
	}
	p = d.start()
	p.waitLog(0, logRecovering)
	third := d.recoveredFrom(second)
	if third == first {
		t.Fatal("recovered to the revoked certificate")
	}
	p.signal(syscall.SIGTERM)
	if code := p.exit(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

// TestRunRefusedIdentityWithoutRecover: without claim.recover the daemon
// whose certificate is revoked keeps its identity and retries with backoff,
// and its log and `thingcert status` say what to do, while it runs and after
// a restart; setting claim.recover and reloading then recovers it.
func TestRunRefusedIdentityWithoutRecover(t *testing.T) {
	d := newDaemonDevice(t)
	ctx := context.Background()
	p := d.start()
	p.waitLog(0, "thingcert agent started")
	eventually(t, "the daemon to provision and connect", d.connected)
	old := d.status().Identity.CertificateID

	if err := d.emu.SetCertificateStatus(ctx, daemonAccount, old, emulator.StatusRevoked); err != nil {
		t.Fatal(err)
	}
	// Said at the refusal, and again at the next attempt: it keeps trying.
	at := p.waitLog(0, logRefused)
	p.waitLog(at, logRefused)
	d.refusedUnrecovered(old)

	// At the next start the first connect is refused: the same.
	p.signal(syscall.SIGTERM)
	if code := p.exit(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	p = d.start()
	at = p.waitLog(0, logRefused)
	d.refusedUnrecovered(old)
	if strings.Contains(p.logText(), logRecovering) {
		t.Fatal("the daemon recovered without claim.recover")
	}

	// Doing as told: claim.recover, and a reload.
	d.allowRecovery()
	p.signal(syscall.SIGHUP)
	at = p.waitLog(at, "configuration reloaded")
	p.waitLog(at, logRecovering)
	d.recoveredFrom(old)
	p.signal(syscall.SIGTERM)
	if code := p.exit(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

// refusedUnrecovered checks a daemon whose identity old is refused and that
// may not recover: it still has old, the thing no other certificate, and
// status (JSON and text) says what to do.
func (d *daemonDevice) refusedUnrecovered(old string) {
	d.t.Helper()
	var s *statusview.Status
	eventually(d.t, "status to show the refusal", func() bool {
		s = d.status()
		c := s.Agent.Connection
		return c != nil && c.Refused && c.Kind == "client-cert-refused" && c.State != iot.StateConnected.String()
	})
	if s.Identity == nil || s.Identity.CertificateID != old || s.Identity.Claim || s.Agent.Recovered != nil {
		d.t.Errorf("identity after the refusal: %+v, recovered %+v", s.Identity, s.Agent.Recovered)
	}
	problems := strings.Join(s.Problems, "\n")
	for _, want := range []string{"refuses the device's certificate", "AWS IoT", "claim.recover: true"} {
		if !strings.Contains(problems, want) {
			d.t.Errorf("status problems do not say %q: %q", want, s.Problems)
		}
	}
	out, err := exec.Command(thingcertBinary(d.t), "status", "--config", d.config).Output()
	if err != nil || !strings.Contains(string(out), "problem         the cloud refuses the device's certificate") {
		d.t.Errorf("thingcert status: %v\n%s", err, out)
	}
	th, err := d.emu.Thing(context.Background(), daemonAccount, daemonThing)
	if err != nil || !slices.Equal(th.Certificates, []string{old}) {
		d.t.Errorf("thing %s after the refusal: %+v, %v", daemonThing, th, err)
	}
}
