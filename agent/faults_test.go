package agent_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/agent"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/internal/faultproxy"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/rotation"
)

// throughProxy puts a fault proxy between the device and the emulator.
func (d *dmnDevice) throughProxy() *faultproxy.Proxy {
	d.t.Helper()
	p, err := faultproxy.Start(d.emu.Addr())
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { p.Close() })
	d.yaml = strings.Replace(d.yaml, "address: "+d.emu.Addr(), "address: "+p.Addr(), 1)
	return p
}

// allowRecovery sets claim.recover with a rule.
func (d *dmnDevice) allowRecovery(refusals int, after string) {
	d.yaml = strings.Replace(d.yaml, "  cert: claim.crt\n",
		fmt.Sprintf("  cert: claim.crt\n  recover: true\n  recover_refusals: %d\n  recover_after: %s\n", refusals, after), 1)
}

// The faults anyone on the path (or a flaky link) can cause: none is the
// cloud refusing the identity. Split in two so that the client's backoff
// stays short.
var (
	forgedRefusals = []faultproxy.Fault{
		{Kind: faultproxy.ForgedAlert},            // bad_certificate before ServerHello
		{Kind: faultproxy.Reset, Records: 4},      // RST right after CONNECT
		{Kind: faultproxy.ForgedAlert, Alert: 44}, // certificate_revoked, forged
	}
	flakyLink = []faultproxy.Fault{
		{Kind: faultproxy.Truncate, Bytes: 200},                // the server's flight cut short
		{Kind: faultproxy.Drop},                                // accepted and closed
		{Kind: faultproxy.Delay, Delay: 30 * time.Millisecond}, // slow, but through
	}
)

// awaitFaultsUsed waits until every queued fault met a connection.
func awaitFaultsUsed(t *testing.T, p *faultproxy.Proxy) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for p.Pending() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d faults never met a connection; seen %v", p.Pending(), p.Seen())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// awaitSeen waits until n connections after the first from met the proxy.
func awaitSeen(t *testing.T, p *faultproxy.Proxy, from, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for len(p.Seen()) < from+n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d connections; want %d", len(p.Seen())-from, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDaemonFaultyLinkNeverRecoversByClaim: with claim.recover allowed on a
// single refusal (so that only the refusal's authenticity stands between a
// fault and a recovery), forged alerts, resets after CONNECT, truncations,
// drops, delays and a black hole at every phase (provisioning, reconnecting,
// rotation by operator, rotation by job) end with a working identity of the
// device's own and no recovery by claim; a certificate the cloud really
// deactivates is recovered from, and the log says why.
func TestDaemonFaultyLinkNeverRecoversByClaim(t *testing.T) {
	d := newDmnDevice(t, emulator.Config{}, "rotation:\n  retry_min: 1s\n  retry_max: 2s\n")
	d.allowRecovery(1, "0s")
	p := d.throughProxy()
	ctx := context.Background()

	// Provisioning: the claim's connections fail first.
	p.Next(forgedRefusals[0])
	p.Next(flakyLink...)
	// Short reconnect delays: the faults fail many attempts in a row.
	set := settingsOf(t, d.config())
	set.Device.ConnectBackoff = iot.Backoff{Min: 100 * time.Millisecond, Max: time.Second, StableAfter: time.Second}
	dm, stop := d.run(agent.DaemonOptions{Settings: set})
	ev := d.await("provisioning", rotationEnded(rotation.TriggerProvision))
	if lr := ev.State.LastResult; lr.Outcome != rotation.Succeeded {
		t.Fatalf("provisioning through a faulty link: %+v", lr)
	}
	awaitFaultsUsed(t, p)
	first := ev.State.Current.CertificateID

	// Connected with its own identity, the link drops and every reconnect
	// fails until the faults are used up.
	// Forged "certificate revoked" alerts for a while (long enough that a
	// daemon believing them would have recovered), then the other faults.
	p.SetDefault(faultproxy.Fault{Kind: faultproxy.ForgedAlert, Alert: 44})
	from := len(p.Seen())
	p.CutAll()
	d.await("the connection lost", func(ev agent.DaemonEvent) bool { return ev.Kind == agent.EventConnectionLost })
	awaitSeen(t, p, from, 8)
	p.Next(forgedRefusals...)
	p.Next(flakyLink[2])
	p.SetDefault(faultproxy.Fault{Kind: faultproxy.Pass})
	d.await("the reconnection", func(ev agent.DaemonEvent) bool { return ev.Kind == agent.EventConnected })
	awaitFaultsUsed(t, p)

	// A black hole: the device waits, the link comes back.
	p.Next(faultproxy.Fault{Kind: faultproxy.BlackHole})
	p.CutAll()
	d.await("the connection lost", func(ev agent.DaemonEvent) bool { return ev.Kind == agent.EventConnectionLost })
	awaitFaultsUsed(t, p)
	p.CutAll() // ends the black-holed attempt
	d.await("the reconnection", func(ev agent.DaemonEvent) bool { return ev.Kind == agent.EventConnected })

	// A restart, whose first connections fail: the connect at start counts
	// no forged refusal either.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	p.Next(forgedRefusals...)
	dm, stop = d.run(agent.DaemonOptions{Settings: set})
	d.await("the connection after a restart", func(ev agent.DaemonEvent) bool { return ev.Kind == agent.EventConnected })
	awaitFaultsUsed(t, p)

	// A rotation whose new identity's connections fail first.
	p.Next(faultproxy.Fault{Kind: faultproxy.ForgedAlert}, faultproxy.Fault{Kind: faultproxy.Reset, Records: 4})
	dm.RequestRotation("fault test")
	ev = d.await("the rotation", rotationEnded(rotation.TriggerOperator))
	t.Logf("rotation through a faulty link: %s", ev.State.LastResult.Outcome)

	// A rotation by job, the same.
	p.Next(faultproxy.Fault{Kind: faultproxy.Truncate, Bytes: 300}, faultproxy.Fault{Kind: faultproxy.ForgedAlert, Alert: 46})
	if _, err := d.emu.CreateJob(ctx, dmnAccount, emulator.Job{ID: "rot-1", Document: []byte(`{"operation":"rotate-certificate"}`), Things: []string{dmnThing}}); err != nil {
		t.Fatal(err)
	}
	ev = d.await("the rotation by job", rotationEnded(rotation.TriggerJob))
	t.Logf("rotation by job through a faulty link: %s", ev.State.LastResult.Outcome)
	st := ev.State
	if st.Current == nil || st.Current.Claim {
		t.Fatalf("identity after the faults: %+v", st.Current)
	}
	publishes(t, dm)
	logs := d.logs.String()
	if strings.Contains(logs, "going back to the claim") {
		t.Fatal("the daemon went back to the claim on a faulty link")
	}
	// Each failure was logged with its diagnosis.
	for _, why := range []string{"remote error: tls: bad certificate", "remote error: tls: revoked certificate",
		"connection closed right after CONNECT", "TLS handshake failed"} {
		if !strings.Contains(logs, why) {
			t.Errorf("the log does not say %q", why)
		}
	}
	rec, err := agent.ReadDaemonRecord(d.config().StateDir)
	if err != nil || rec.Recovered != nil {
		t.Fatalf("the record shows a recovery: %+v, %v", rec, err)
	}
	// A rotation that rolled back leaves its certificate issued; the one in
	// use is the thing's and ACTIVE.
	th, err := d.emu.Thing(ctx, dmnAccount, dmnThing)
	if err != nil || !slices.Contains(th.Certificates, st.Current.CertificateID) {
		t.Fatalf("thing after the faults: %+v, %v (first certificate %s)", th, err, first)
	}
	if c, err := d.emu.Certificate(ctx, dmnAccount, st.Current.CertificateID); err != nil || c.Status != emulator.StatusActive {
		t.Fatalf("the certificate in use: %+v, %v", c, err)
	}

	// The cloud really refuses: the certificate set INACTIVE.
	cur := st.Current.CertificateID
	if err := d.emu.SetCertificateStatus(ctx, dmnAccount, cur, emulator.StatusInactive); err != nil {
		t.Fatal(err)
	}
	p.CutAll() // the emulator judges the certificate at the next connection
	d.await("the recovery", func(ev agent.DaemonEvent) bool { return ev.Kind == agent.EventRecovered })
	d.await("provisioning again", rotationEnded(rotation.TriggerProvision))
	logs = d.logs.String()
	if !strings.Contains(logs, "going back to the claim") || !strings.Contains(logs, "client certificate refused") {
		t.Errorf("the log does not say why the daemon recovered:\n%s", logs)
	}
	rec, err = agent.ReadDaemonRecord(d.config().StateDir)
	if err != nil || rec.Recovered == nil || rec.Recovered.CertificateID != cur {
		t.Fatalf("the record after the recovery: %+v, %v", rec, err)
	}
	publishes(t, dm)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func publishes(t *testing.T, dm *agent.Daemon) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := dm.Publish(ctx, "dt/"+dmnThing+"/x", iot.AtLeastOnce, []byte("1")); err != nil {
		t.Fatal(err)
	}
}

// TestDaemonKeepsStoresOpenForATaskThatOutlivesStop: a rotation step that
// does not stop within StopTimeout keeps the key stores open until it ends,
// then they close; Run returns meanwhile, saying so.
func TestDaemonKeepsStoresOpenForATaskThatOutlivesStop(t *testing.T) {
	d := newDmnDevice(t, emulator.Config{}, "")
	release := make(chan struct{})
	blocked := make(chan struct{}, 1)
	_, stop := d.run(agent.DaemonOptions{StopTimeout: 50 * time.Millisecond, AfterSave: func(ctx context.Context, s *rotation.State) error {
		if s.Phase == rotation.PhaseKeyGenerated {
			blocked <- struct{}{}
			<-release // a step deaf to cancellation (a slow token)
		}
		return nil
	}})
	select {
	case <-blocked:
	case <-time.After(time.Minute):
		t.Fatal("provisioning never reached key-generated")
	}
	if err := stop(); err == nil || !strings.Contains(err.Error(), "did not stop within") {
		t.Fatalf("Run with a task outliving StopTimeout: %v", err)
	}
	logs := d.logs.String()
	if !strings.Contains(logs, "key stores left open until the task still running ends") || strings.Contains(logs, "key stores closed") {
		t.Fatalf("the stores were closed under the running task:\n%s", logs)
	}
	close(release)
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(d.logs.String(), "key stores closed") {
		if time.Now().After(deadline) {
			t.Fatal("the key stores were never closed after the task ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDaemonRecoversOnlyAfterRepeatedRefusals: under the default rule (three
// refusals over ten minutes) a certificate the cloud deactivated is refused
// again and again without a recovery while the span is short; the count
// survives a restart, and once the refusals span ten minutes (an injected
// clock) the agent recovers with the claim.
func TestDaemonRecoversOnlyAfterRepeatedRefusals(t *testing.T) {
	clock := &fakeClock{now: time.Now().Truncate(time.Second)}
	d := newDmnDevice(t, emulator.Config{}, "")
	d.yaml = strings.Replace(d.yaml, "  cert: claim.crt\n", "  cert: claim.crt\n  recover: true\n", 1)
	set := settingsOf(t, d.config())
	if set.RecoveryRule.Span != agent.DefaultRecoverSpan || set.RecoveryRule.Refusals != 0 {
		t.Fatalf("default rule from the configuration: %+v", set.RecoveryRule)
	}
	set.Device.ConnectBackoff = iot.Backoff{Min: 100 * time.Millisecond, Max: time.Second, StableAfter: time.Second}
	_, stop := d.run(agent.DaemonOptions{Settings: set, Now: clock.Now})
	ev := d.await("provisioning", rotationEnded(rotation.TriggerProvision))
	cur := ev.State.Current.CertificateID
	ctx := context.Background()
	if err := d.emu.SetCertificateStatus(ctx, dmnAccount, cur, emulator.StatusInactive); err != nil {
		t.Fatal(err)
	}
	stateDir := d.config().StateDir
	refusals := func() *agent.RefusalRecord {
		rec, err := agent.ReadDaemonRecord(stateDir)
		if err != nil || rec == nil {
			return nil
		}
		return rec.Refusals
	}
	deadline := time.Now().Add(time.Minute)
	for r := refusals(); r == nil || r.Count < 5; r = refusals() {
		if time.Now().After(deadline) {
			t.Fatalf("refusals counted: %+v", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Contains(d.logs.String(), "going back to the claim") {
		t.Fatal("recovered on refusals within a moment")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	r := refusals()
	if r == nil || r.CertificateID != cur || r.Count < 5 || !strings.Contains(r.Reason, "client certificate refused") {
		t.Fatalf("refusals kept for the next start: %+v", r)
	}

	// Eleven minutes later, the next start's first refusal completes the rule.
	clock.Advance(11 * time.Minute)
	d.run(agent.DaemonOptions{Settings: set, Now: clock.Now})
	d.await("the recovery", func(ev agent.DaemonEvent) bool { return ev.Kind == agent.EventRecovered })
	d.await("provisioning again", rotationEnded(rotation.TriggerProvision))
	rec, err := agent.ReadDaemonRecord(stateDir)
	if err != nil || rec.Recovered == nil || rec.Recovered.CertificateID != cur {
		t.Fatalf("record after the recovery: %+v, %v", rec, err)
	}
	if !strings.Contains(d.logs.String(), "the cloud refused the device's identity often enough to recover with the claim") {
		t.Error("the log does not say why the agent recovered")
	}
}
