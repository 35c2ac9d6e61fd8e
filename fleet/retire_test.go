package fleet

import (
	"testing"
	"time"
)

// TestPlanRetire: what retirement does for each state an execution and its
// certificates can be in.
func TestPlanRetire(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	done := now.Add(-2 * time.Hour)
	ok := map[string]string{"oldCertificateId": "old", "newCertificateId": "new"}
	active := func(id string, things ...string) *CertState {
		return &CertState{ID: id, Status: "ACTIVE", Things: things}
	}
	inactive := func(id string, things ...string) *CertState {
		return &CertState{ID: id, Status: "INACTIVE", Things: things}
	}
	gone := &CertState{ID: "old"}
	succeeded := func(old, new *CertState, thingActive ...string) ExecState {
		return ExecState{Thing: "t", Status: "SUCCEEDED", Details: ok, Finished: done, Old: old, New: new, ThingActive: thingActive}
	}
	for _, c := range []struct {
		name string
		e    ExecState
		o    RetireOptions
		want Step
		done bool
	}{
		{"succeeded: deactivate", succeeded(active("old", "t"), active("new", "t"), "old", "new"), RetireOptions{}, StepDeactivate, false},
		{"old already detached but active", succeeded(active("old"), active("new", "t"), "new"), RetireOptions{}, StepDeactivate, false},
		{"within grace", succeeded(active("old", "t"), active("new", "t"), "old", "new"), RetireOptions{Grace: 3 * time.Hour}, StepWait, false},
		{"grace over", succeeded(active("old", "t"), active("new", "t"), "old", "new"), RetireOptions{Grace: time.Hour}, StepDeactivate, false},
		{"new not active", succeeded(active("old", "t"), inactive("new", "t"), "old"), RetireOptions{}, StepReport, false},
		{"new missing", succeeded(active("old", "t"), &CertState{ID: "new"}, "old"), RetireOptions{}, StepReport, false},
		{"new not attached", succeeded(active("old", "t"), active("new"), "old"), RetireOptions{}, StepReport, false},
		{"old is the only active one", succeeded(active("old", "t"), active("new", "t"), "old"), RetireOptions{}, StepReport, false},
		{"old shared with another thing", succeeded(active("old", "t", "u"), active("new", "t"), "old", "new"), RetireOptions{}, StepReport, false},
		{"inactive shared: still not touched", succeeded(inactive("old", "t", "u"), active("new", "t"), "new"), RetireOptions{DeleteAfter: time.Minute}, StepReport, false},
		{"inactive, no deletion asked", succeeded(inactive("old", "t"), active("new", "t"), "new"), RetireOptions{}, StepNothing, true},
		{"inactive, deletion not due", succeeded(inactive("old", "t"), active("new", "t"), "new"), RetireOptions{DeleteAfter: 3 * time.Hour}, StepWait, false},
		{"inactive, deletion due", succeeded(inactive("old", "t"), active("new", "t"), "new"), RetireOptions{DeleteAfter: time.Hour}, StepDelete, false},
		{"detached, not deleted (interrupted)", succeeded(inactive("old"), active("new", "t"), "new"), RetireOptions{DeleteAfter: time.Hour}, StepDelete, false},
		{"deleted", succeeded(gone, active("new", "t"), "new"), RetireOptions{DeleteAfter: time.Hour}, StepNothing, true},
		{"no status details", ExecState{Thing: "t", Status: "SUCCEEDED", Finished: done}, RetireOptions{}, StepReport, false},
		{"same certificate", ExecState{Thing: "t", Status: "SUCCEEDED", Details: map[string]string{"oldCertificateId": "a", "newCertificateId": "a"}}, RetireOptions{}, StepNothing, true},
		{"failed", ExecState{Thing: "t", Status: "FAILED", Details: map[string]string{"reason": "CSR refused", "certificateId": "old"}}, RetireOptions{}, StepReport, false},
		{"timed out", ExecState{Thing: "t", Status: "TIMED_OUT"}, RetireOptions{}, StepReport, false},
		{"queued", ExecState{Thing: "t", Status: "QUEUED"}, RetireOptions{}, StepPending, false},
		{"in progress", ExecState{Thing: "t", Status: "IN_PROGRESS"}, RetireOptions{}, StepPending, false},
		{"canceled", ExecState{Thing: "t", Status: "CANCELED"}, RetireOptions{}, StepNothing, false},
	} {
		d := PlanRetire(c.e, c.o, now)
		if d.Step != c.want || d.Done != c.done {
			t.Errorf("%s: %+v, want %s (done %v)", c.name, d, c.want, c.done)
		}
		if d.Step == StepReport && d.Reason == "" {
			t.Errorf("%s: a report without a reason", c.name)
		}
		if d.Step == StepWait && !d.At.After(now) {
			t.Errorf("%s: wait until %v, not after now", c.name, d.At)
		}
	}
	// A failure's reason names what the device said and the certificate it kept.
	d := PlanRetire(ExecState{Thing: "t", Status: "FAILED", Details: map[string]string{"reason": "CSR refused", "certificateId": "abc"}}, RetireOptions{}, now)
	if d.Reason != "FAILED: CSR refused (the device kept certificate abc)" {
		t.Errorf("failed reason: %q", d.Reason)
	}
}

// TestJobIDIsDeterministic: the same targets in any order give the same job;
// another round or other targets another one; IDs are valid AWS job IDs.
func TestJobIDIsDeterministic(t *testing.T) {
	a := JobID([]string{"arn:x:thing/a", "arn:x:thing/b"}, "")
	if b := JobID([]string{"arn:x:thing/b", "arn:x:thing/a", "arn:x:thing/a"}, ""); a != b {
		t.Fatalf("%s != %s", a, b)
	}
	for _, other := range []string{JobID([]string{"arn:x:thing/a"}, ""), JobID([]string{"arn:x:thing/a", "arn:x:thing/b"}, "2027 Q1")} {
		if other == a {
			t.Fatalf("different targets or round, same ID %s", a)
		}
	}
	id := JobID([]string{"x"}, "a round/with spaces & more than twenty-four characters")
	if len(id) > 64 {
		t.Fatalf("%s: longer than AWS's 64", id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			t.Fatalf("%s: %q is not allowed in a job ID", id, r)
		}
	}
}

// TestCreateJobInput: the rollout, abort and timeout configs AWS takes,
// and the limits it refuses checked before a request is sent.
func TestCreateJobInput(t *testing.T) {
	in, err := createJobInput([]string{"arn:g"}, RotateOptions{ExponentialBase: 10, ExponentialFactor: 2, AbortFailedPercent: 10, TimeoutMinutes: 30})
	if err != nil {
		t.Fatal(err)
	}
	rc := in.JobExecutionsRolloutConfig
	if rc.MaximumPerMinute != nil || *rc.ExponentialRate.BaseRatePerMinute != 10 || *rc.ExponentialRate.IncrementFactor != 2 ||
		*in.AbortConfig.CriteriaList[0].ThresholdPercentage != 10 || *in.TimeoutConfig.InProgressTimeoutInMinutes != 30 || *in.Document != RotateDocument {
		t.Fatalf("%+v", in)
	}
	if in, err := createJobInput([]string{"arn:g"}, RotateOptions{MaxPerMinute: 100}); err != nil || *in.JobExecutionsRolloutConfig.MaximumPerMinute != 100 {
		t.Fatalf("fixed rate: %+v, %v", in, err)
	}
	for _, o := range []RotateOptions{{MaxPerMinute: 1001}, {MaxPerMinute: 100, ExponentialBase: 10, ExponentialFactor: 2}, {ExponentialBase: 10, ExponentialFactor: 6}, {AbortFailedPercent: 101}, {TimeoutMinutes: 10081}} {
		if _, err := createJobInput([]string{"arn:g"}, o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// TestCertificateFindings: each check fires on its case and not on a
// healthy thing.
func TestCertificateFindings(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	healthy := Certificate{ID: "h", Status: "ACTIVE", NotBefore: now.Add(-24 * time.Hour), NotAfter: now.Add(200 * 24 * time.Hour), KeyAlgorithm: "ECDSA", KeyBits: 256, SigAlgorithm: "ECDSA-SHA256", Things: []string{"ok"}}
	expiring, old, weak, shared, inactive := healthy, healthy, healthy, healthy, healthy
	expiring.ID, expiring.NotAfter, expiring.Things = "e", now.Add(24*time.Hour), []string{"exp"}
	old.ID, old.NotBefore, old.Things = "o", now.Add(-400*24*time.Hour), []string{"old"}
	weak.ID, weak.KeyAlgorithm, weak.KeyBits, weak.Things = "w", "RSA", 1024, []string{"weak"}
	shared.ID, shared.Things = "s", []string{"sa", "sb"}
	inactive.ID, inactive.Status, inactive.Things = "i", "INACTIVE", []string{"two"}
	second := healthy
	second.ID, second.Things = "h2", []string{"two"}
	third := healthy
	third.ID, third.Things = "h3", []string{"two"}
	things := []Thing{
		{Name: "ok", Certificates: []Certificate{healthy}},
		{Name: "exp", Certificates: []Certificate{expiring}},
		{Name: "old", Certificates: []Certificate{old}},
		{Name: "weak", Certificates: []Certificate{weak}},
		{Name: "sa", Certificates: []Certificate{shared}},
		{Name: "sb", Certificates: []Certificate{shared}},
		{Name: "two", Certificates: []Certificate{second, third, inactive}},
	}
	got := map[string]string{}
	for _, f := range CertificateFindings(things, AuditOptions{}, now) {
		if _, dup := got[f.Check]; dup {
			t.Errorf("%s twice: %+v", f.Check, f)
		}
		got[f.Check] = f.Thing
	}
	want := map[string]string{
		CheckDeviceCertExpiring: "exp", CheckDeviceCertAge: "old", CheckDeviceCertKey: "weak", CheckDeviceCertShared: "sa",
		CheckMultipleActive: "two", CheckInactiveAttached: "two",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: on %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("findings %v, want %v", got, want)
	}
}
