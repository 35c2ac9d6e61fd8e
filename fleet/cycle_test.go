package fleet_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	awsiot "github.com/aws/aws-sdk-go-v2/service/iot"

	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/fleet"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/fleetprov"
	"github.com/thingcert/thingcert/rotation"
)

// TestDaemonCycle: the daemon's cycle finds the things the policy says are
// due (devices that would not renew on their own), starts one wave for
// them, leaves them alone while they rotate, retires what succeeded, and
// then has nothing to do. A dry run (status) changes nothing.
func TestDaemonCycle(t *testing.T) {
	emu := startEmu(t, emulator.Config{})
	api := apiClient(t, emu)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	so := fleet.SetupOptions{Template: template, ThingPrefix: prefix, RoleARN: roleARN,
		ClaimKey: "file:" + filepath.Join(dir, "claim", "claim.pem"), ClaimCertFile: filepath.Join(dir, "claim.crt")}
	if _, err := fleet.Setup(ctx, api, so); err != nil {
		t.Fatal(err)
	}
	const n = 4
	var ms []*device.Manager
	done := make(chan error, n)
	for i := range n {
		serial := fmt.Sprintf("%d", i)
		thing := prefix + serial
		m, err := device.New(ctx, device.Options{
			Endpoint: iot.Endpoint{Host: emu.Endpoint(account), Address: emu.Addr()}, Roots: emu.RootCAs(), ThingName: thing,
			StateDir: filepath.Join(dir, thing, "state"), Store: "file:" + filepath.Join(dir, thing, "keys") + "/",
			Claim: &device.Claim{Credentials: device.Credentials{KeyURI: so.ClaimKey, CertFile: so.ClaimCertFile}, ClientID: "claim-" + thing},
			Issuer: func(c iot.MQTT) rotation.Issuer {
				return &fleetprov.Issuer{Conn: c, Template: template, Parameters: map[string]string{fleet.ThingNameParameter: serial}, ThingName: thing}
			},
			// These devices never renew on their own: only the fleet's jobs rotate them.
			Policy:             rotation.Policy{LifetimeRatio: -1, MaxAge: -1, EmergencyWindow: -1, Jitter: -1},
			Machine:            rotation.Machine{GracePeriod: time.Hour, Backoff: rotation.Backoff{Min: time.Second, Max: 2 * time.Second}},
			MinConnectInterval: -1,
		})
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
		go func() { done <- m.Run(ctx) }()
	}
	defer func() {
		cancel()
		for _, m := range ms {
			<-done
			m.Close(context.Background())
		}
	}()
	for _, m := range ms {
		waitState(t, ctx, m, func(s *rotation.State) bool { return !s.Current.Claim && !s.InProgress() })
	}
	// Due at 30 minutes of age. The emulator backdates NotBefore by a minute
	// (truncated to the second); later is chosen so that the certificates
	// provisioned (two seconds or more before now) are due at it and those
	// the rotation issues (after now) are not.
	const maxAge = 30 * time.Minute
	o := fleet.CycleOptions{Policy: rotation.Policy{LifetimeRatio: -1, MaxAge: maxAge, EmergencyWindow: -1, Jitter: -1}, Rollout: fleet.RotateOptions{TimeoutMinutes: 10}}
	time.Sleep(2 * time.Second)
	later := time.Now().Add(maxAge - time.Minute - 1500*time.Millisecond)

	dry := o
	dry.DryRun = true
	r, err := fleet.Cycle(ctx, api, dry, later)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Due) != n || r.Wave == nil || !r.Wave.DryRun {
		t.Fatalf("dry cycle: %+v", r)
	}
	if jobs, err := api.ListJobs(ctx, &awsiot.ListJobsInput{}); err != nil || len(jobs.Jobs) != 0 {
		t.Fatalf("the dry cycle created a job: %+v, %v", jobs, err)
	}

	r, err = fleet.Cycle(ctx, api, o, later)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Due) != n || r.Wave == nil || !r.Wave.Created || len(r.Wave.Targets) != n {
		t.Fatalf("first cycle: %+v", r)
	}
	// Another cycle (a second daemon) while the wave runs starts no other job.
	again, err := fleet.Cycle(ctx, api, o, later)
	if err != nil {
		t.Fatal(err)
	}
	if again.Wave != nil && again.Wave.Created {
		t.Fatalf("a second cycle created another wave: %+v", again.Wave)
	}
	for {
		p, err := fleet.JobProgress(ctx, api, r.Wave.ID, time.Now(), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if p.Finished() {
			if p.Counts["SUCCEEDED"] != n {
				t.Fatalf("wave: %s", p.Line())
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("wave not finished: %s", p.Line())
		case <-time.After(100 * time.Millisecond):
		}
	}
	r, err = fleet.Cycle(ctx, api, o, later)
	if err != nil {
		t.Fatal(err)
	}
	// The cycle during the wave may have retired the things that had finished.
	early := 0
	for _, j := range again.Jobs {
		early += j.Retired
	}
	if len(r.Due) != 0 || r.Wave != nil || len(r.Jobs) != 1 || early+r.Jobs[0].Retired != n ||
		r.Findings[fleet.CheckMultipleActive] != n-early || r.Findings[fleet.CheckInactiveAttached] != early {
		t.Fatalf("cycle after the wave (%d retired during it): %+v", early, r)
	}
	r, err = fleet.Cycle(ctx, api, o, later)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Due) != 0 || r.Wave != nil || r.Jobs[0].Retired != 0 || r.Findings[fleet.CheckMultipleActive] != 0 || r.Findings[fleet.CheckInactiveAttached] != n {
		t.Fatalf("last cycle: %+v", r)
	}
}
