package humanize

import (
	"testing"
	"time"
)

func TestHuman(t *testing.T) {
	for d, want := range map[time.Duration]string{
		250 * time.Millisecond:       "250ms",
		1500 * time.Millisecond:      "1.5s",
		90 * time.Second:             "1m 30s",
		time.Hour:                    "1h",
		26*time.Hour + 5*time.Minute: "1d 2h",
		400 * 24 * time.Hour:         "400d",
		-(3*time.Hour + 20*time.Minute + 5*time.Second): "-3h 20m",
	} {
		if got := Duration(d); got != want {
			t.Errorf("Duration(%s) = %q, want %q", d, got, want)
		}
	}
	now := time.Unix(1000, 0)
	if got := Relative(now.Add(time.Minute), now); got != "in 1m" {
		t.Errorf("Relative = %q", got)
	}
	if got := Relative(now.Add(-time.Minute), now); got != "1m ago" {
		t.Errorf("Relative = %q", got)
	}
}
