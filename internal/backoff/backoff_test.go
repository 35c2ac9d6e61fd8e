package backoff

import (
	"math"
	"testing"
	"time"
)

func TestBase(t *testing.T) {
	for _, c := range []struct {
		min, max time.Duration
		n        int
		want     time.Duration
	}{
		{time.Second, time.Minute, 0, time.Second},
		{time.Second, time.Minute, 3, 8 * time.Second},
		{time.Second, time.Minute, 10, time.Minute},
		{time.Second, time.Minute, 1000, time.Minute}, // no overflow
		{time.Minute, time.Second, 2, time.Minute},    // a cap below min is min
	} {
		if got := Base(c.min, c.max, c.n); got != c.want {
			t.Errorf("Base(%v, %v, %d) = %v, want %v", c.min, c.max, c.n, got, c.want)
		}
	}
}

func TestJitterStaysInTheUpperHalf(t *testing.T) {
	base := 10 * time.Second
	for _, r := range []float64{-1, 0, 0.25, 0.5, 0.9999, 1, 7, math.NaN()} {
		d := Jitter(base, r)
		if d < base/2 || d >= base {
			t.Errorf("Jitter(%v, %v) = %v: outside [%v, %v)", base, r, d, base/2, base)
		}
	}
	if Jitter(base, 0) != base/2 || Jitter(base, 0.5) != base/2+base/4 {
		t.Errorf("Jitter is not linear in r: %v, %v", Jitter(base, 0), Jitter(base, 0.5))
	}
}
