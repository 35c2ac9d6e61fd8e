package iot_test

import (
	"testing"
	"time"

	"github.com/thingcert/thingcert/iot"
)

func TestBackoffDelay(t *testing.T) {
	s := time.Second
	b := iot.Backoff{Min: 2 * s, Max: 60 * s}
	cases := []struct {
		failures int
		// The delay is drawn from [base/2, base).
		base time.Duration
	}{
		{0, 2 * s}, {1, 4 * s}, {2, 8 * s}, {3, 16 * s}, {4, 32 * s},
		{5, 60 * s}, // 64 s capped
		{6, 60 * s}, {100, 60 * s}, {1 << 30, 60 * s},
	}
	for _, tc := range cases {
		lo, hi := b.Delay(tc.failures, 0), b.Delay(tc.failures, 0.9999999999)
		mid := b.Delay(tc.failures, 0.5)
		if lo != tc.base/2 {
			t.Errorf("failures %d: shortest delay %s, want %s", tc.failures, lo, tc.base/2)
		}
		if hi >= tc.base || hi < tc.base-time.Millisecond {
			t.Errorf("failures %d: longest delay %s, want just under %s", tc.failures, hi, tc.base)
		}
		if want := tc.base/2 + tc.base/4; mid != want {
			t.Errorf("failures %d: delay at r=0.5 is %s, want %s", tc.failures, mid, want)
		}
	}
	// Out-of-range draws are clamped into the interval, never outside it.
	if d := b.Delay(0, -1); d != s {
		t.Errorf("r=-1: %s", d)
	}
	if d := b.Delay(0, 7); d >= 2*s {
		t.Errorf("r=7: %s", d)
	}
}

func TestBackoffDefaults(t *testing.T) {
	var b iot.Backoff
	// AWS IoT allows one CONNECT per second per client ID: the shortest
	// default delay must respect it.
	if d := b.Delay(0, 0); d != iot.DefaultBackoffMin/2 || d < time.Second {
		t.Errorf("shortest default delay %s", d)
	}
	if d := b.Delay(50, 0.9999); d >= iot.DefaultBackoffMax || d < iot.DefaultBackoffMax/2 {
		t.Errorf("longest default delay %s, want below the %s cap", d, iot.DefaultBackoffMax)
	}
	// A Max below Min is raised to Min rather than producing nonsense.
	b = iot.Backoff{Min: 10 * time.Second, Max: time.Second}
	if err := b.Validate(); err == nil {
		t.Error("Validate accepted max < min")
	}
	if d := b.Delay(3, 0); d != 5*time.Second {
		t.Errorf("max below min: %s", d)
	}
	if err := (iot.Backoff{Min: -1}).Validate(); err == nil {
		t.Error("Validate accepted a negative duration")
	}
}

func TestBackoffJitterSpreadsAFleet(t *testing.T) {
	// Devices drawing different r get different delays within the bounds:
	// a fleet that lost its broker together does not return together.
	b := iot.Backoff{}
	seen := map[time.Duration]bool{}
	for i := 0; i < 100; i++ {
		d := b.Delay(2, float64(i)/100)
		if d < 4*time.Second || d >= 8*time.Second {
			t.Fatalf("r=%v: %s outside [4s, 8s)", float64(i)/100, d)
		}
		seen[d] = true
	}
	if len(seen) != 100 {
		t.Errorf("100 draws gave %d distinct delays", len(seen))
	}
}

func TestBackoffAfterLoss(t *testing.T) {
	b := iot.Backoff{StableAfter: time.Minute}
	cases := []struct {
		failures int
		upFor    time.Duration
		want     int
	}{
		{0, 0, 1},                // dropped at once: a failure
		{3, 59 * time.Second, 4}, // not stable yet: keeps growing
		{3, time.Minute, 0},      // stable: start again
		{9, time.Hour, 0},
	}
	for _, tc := range cases {
		if got := b.AfterLoss(tc.failures, tc.upFor); got != tc.want {
			t.Errorf("AfterLoss(%d, %s) = %d, want %d", tc.failures, tc.upFor, got, tc.want)
		}
	}
	var def iot.Backoff
	if got := def.AfterLoss(2, iot.DefaultBackoffStableAfter-time.Second); got != 3 {
		t.Errorf("default StableAfter: %d", got)
	}
}
