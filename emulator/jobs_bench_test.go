package emulator

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// benchJobRegistry is an in-memory registry with n things in group "fleet"
// and one job ("rot") on the group, rolled out at once.
func benchJobRegistry(b *testing.B, n int) (*Registry, *testClock) {
	b.Helper()
	clock := newClock()
	r, err := Open(ctx, Config{Now: clock.Now, Accounts: []Account{{Name: "A", Prefix: "aaa"}}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	if _, err := r.CreateThingGroup(ctx, "A", ThingGroup{Name: "fleet"}); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		name := fmt.Sprintf("dev-%05d", i)
		if _, err := r.CreateThing(ctx, "A", name, nil); err != nil {
			b.Fatal(err)
		}
		if err := r.AddThingToThingGroup(ctx, "A", "fleet", name); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := r.CreateJob(ctx, "A", Job{ID: "rot", Document: json.RawMessage(`{"operation":"rotate-certificate"}`), ThingGroups: []string{"fleet"},
		TimeoutConfig: &JobTimeoutConfig{InProgressTimeoutInMinutes: 60}}); err != nil {
		b.Fatal(err)
	}
	return r, clock
}

// The emulator's once-a-second tick over a 10,000-thing job.
func BenchmarkAdvanceJobs10k(b *testing.B) {
	r, clock := benchJobRegistry(b, 10000)
	b.ResetTimer()
	for b.Loop() {
		clock.Advance(time.Second)
		if err := r.AdvanceJobs(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// DescribeJob (with its counts) over a 10,000-thing job.
func BenchmarkDescribeJob10k(b *testing.B) {
	r, _ := benchJobRegistry(b, 10000)
	b.ResetTimer()
	for b.Loop() {
		if _, err := r.DescribeJob(ctx, "A", "rot"); err != nil {
			b.Fatal(err)
		}
	}
}

// A device's start-next and SUCCEEDED in a 10,000-thing job.
func BenchmarkDeviceUpdate10k(b *testing.B) {
	r, _ := benchJobRegistry(b, 10000)
	i := 0
	b.ResetTimer()
	for b.Loop() {
		thing := fmt.Sprintf("dev-%05d", i%10000)
		i++
		r.handleJobs("A", thing, "start-next", nil)
		r.handleJobs("A", thing, "rot/update", []byte(`{"status":"SUCCEEDED","statusDetails":{"newCertificateId":"x"}}`))
	}
}

// A thing joining a group that a CONTINUOUS job targets, beside a
// 10,000-thing job.
func BenchmarkAddThingToGroupBesideJob10k(b *testing.B) {
	r, _ := benchJobRegistry(b, 10000)
	if _, err := r.CreateThingGroup(ctx, "A", ThingGroup{Name: "late"}); err != nil {
		b.Fatal(err)
	}
	if _, err := r.CreateJob(ctx, "A", Job{ID: "cont", Document: json.RawMessage(`{}`), ThingGroups: []string{"late"}, TargetSelection: TargetContinuous}); err != nil {
		b.Fatal(err)
	}
	i := 0
	b.ResetTimer()
	for b.Loop() {
		if err := r.AddThingToThingGroup(ctx, "A", "late", fmt.Sprintf("dev-%05d", i%10000)); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
