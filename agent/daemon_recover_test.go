package agent

import (
	"testing"
	"time"
)

func TestNextRecovery(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	n, at := nextRecovery(0, time.Time{}, t0, 0)
	if n != 0 || at != t0.Add(30*time.Second) {
		t.Fatalf("first recovery: %d, next at +%s", n, at.Sub(t0))
	}
	// Recoveries in quick succession wait longer and longer, up to an hour.
	last, now := t0, t0
	var waits []time.Duration
	for range 10 {
		now = at
		n, at = nextRecovery(n, last, now, 0)
		last = now
		waits = append(waits, at.Sub(now))
	}
	if waits[0] != time.Minute || waits[1] != 2*time.Minute || waits[9] != 30*time.Minute {
		t.Errorf("waits between recoveries in a row: %v", waits)
	}
	// An hour without one starts again.
	if n, at = nextRecovery(n, last, last.Add(time.Hour), 0); n != 0 || at != last.Add(time.Hour+30*time.Second) {
		t.Errorf("after a quiet hour: %d, next at +%s", n, at.Sub(last.Add(time.Hour)))
	}
}
