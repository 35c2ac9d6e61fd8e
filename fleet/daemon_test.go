package fleet

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/rotation"
)

// TestDueThings: the device's policy knobs decide which things are due, on
// each thing's newest ACTIVE certificate; things already rotating and
// things without an ACTIVE certificate are left out; the most overdue come first.
func TestDueThings(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	cert := func(id, status string, age, life time.Duration) Certificate {
		return Certificate{ID: id, Status: status, NotBefore: now.Add(-age), NotAfter: now.Add(-age + life)}
	}
	day := 24 * time.Hour
	things := []Thing{
		{Name: "young", Certificates: []Certificate{cert("y", "ACTIVE", 10*day, 100*day)}},
		{Name: "past-share", Certificates: []Certificate{cert("p", "ACTIVE", 60*day, 100*day)}},
		{Name: "very-late", Certificates: []Certificate{cert("v", "ACTIVE", 95*day, 100*day)}},
		{Name: "old", Certificates: []Certificate{cert("o", "ACTIVE", 400*day, 3650*day)}},
		{Name: "rotated", Certificates: []Certificate{cert("r-old", "ACTIVE", 90*day, 100*day), cert("r-new", "ACTIVE", day, 100*day)}},
		{Name: "inactive-only", Certificates: []Certificate{cert("i", "INACTIVE", 90*day, 100*day)}},
		{Name: "busy", Certificates: []Certificate{cert("b", "ACTIVE", 90*day, 100*day)}},
	}
	p := rotation.Policy{LifetimeRatio: 0.5, MaxAge: 365 * day, Jitter: -1}
	got := DueThings(things, p, map[string]bool{"busy": true}, now)
	var names []string
	for _, d := range got {
		names = append(names, d.Thing)
	}
	want := []string{"very-late", "old", "past-share"} // due 45, 35 and 10 days ago
	if len(names) != len(want) {
		t.Fatalf("due %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("due %v, want %v (most overdue first)", names, want)
		}
	}
	if got[0].Reason != rotation.ReasonLifetime || got[1].Reason != rotation.ReasonMaxAge || got[2].Reason != rotation.ReasonLifetime {
		t.Errorf("reasons: %+v", got)
	}
}

// TestThingsFromAudit: rotate --from-audit takes the things whose findings
// rotation cures (expiring, old, weak, shared), each once, and not those
// whose findings it does not (an INACTIVE certificate still attached).
func TestThingsFromAudit(t *testing.T) {
	r := Report{Findings: []Finding{
		{Check: CheckDeviceCertExpiring, Thing: "b"}, {Check: CheckDeviceCertAge, Thing: "b"},
		{Check: CheckDeviceCertShared, Thing: "a"}, {Check: CheckDeviceCertKey, Thing: "c"},
		{Check: CheckInactiveAttached, Thing: "d"}, {Check: CheckActiveUnattached, CertificateID: "x"},
	}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "audit.json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ThingsFromAudit(file)
	if err != nil || strings.Join(got, ",") != "a,b,c" {
		t.Fatalf("ThingsFromAudit: %v, %v; want a,b,c", got, err)
	}
	if err := os.WriteFile(file, []byte("not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ThingsFromAudit(file); err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("a file that is not an audit: %v", err)
	}
}
