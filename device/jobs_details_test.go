package device_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/iot/jobs"
)

// TestFailedReasonReachesTheJob: a rotation's FAILED reason is an error
// text, often several lines (errors.Join); the emulator, as AWS, refuses
// statusDetails with control characters, so the report is made acceptable
// rather than lost.
func TestFailedReasonReachesTheJob(t *testing.T) {
	emu := startEmulator(t, emulator.Config{})
	r := newRig(t, emu, fileStores)
	r.provision()
	ctx := context.Background()
	if _, err := emu.CreateJob(ctx, account, emulator.Job{ID: "rotate-x", Document: json.RawMessage(`{"operation":"rotate-certificate"}`), Things: []string{thing}}); err != nil {
		t.Fatal(err)
	}
	c := r.session.Jobs()
	if err := c.Update(ctx, "rotate-x", jobs.StatusInProgress, nil); err != nil {
		t.Fatal(err)
	}
	reason := "rotation: phase issued: verify:\ncertificate expired\n\tand the old one too\x00"
	if err := c.Update(ctx, "rotate-x", jobs.StatusFailed, map[string]string{"reason": reason, "phase": ""}); err != nil {
		t.Fatalf("the emulator refused the FAILED report: %v", err)
	}
	ex, err := emu.JobExecution(ctx, account, thing, "rotate-x")
	if err != nil || ex.Status != emulator.JobFailed {
		t.Fatalf("execution %+v, %v", ex, err)
	}
	if got := ex.StatusDetails["reason"]; got != "rotation: phase issued: verify: certificate expired and the old one too" || ex.StatusDetails["phase"] != "-" {
		t.Fatalf("statusDetails %q", ex.StatusDetails)
	}
}
