// Package backoff is the one capped exponential backoff with jitter that
// the connection's reconnects and rotation's retries both build on: the base
// doubles per failure up to a cap, and the delay is drawn from the upper half
// of the base, so a fleet that failed together spreads out and no delay ever
// collapses to zero.
package backoff

import "time"

// Base is lo doubled doublings times, capped at hi (lo when hi < lo).
func Base(lo, hi time.Duration, doublings int) time.Duration {
	base := lo
	for i := 0; i < doublings && base < hi; i++ {
		base *= 2
	}
	return max(lo, min(base, hi))
}

// Jitter draws a delay from [base/2, base) with r uniform in [0, 1); an r
// outside that range (or NaN) is clamped.
func Jitter(base time.Duration, r float64) time.Duration {
	half := base / 2
	return half + Scale(base-half, r)
}

// Scale is d·r for r clamped to [0, 1).
func Scale(d time.Duration, r float64) time.Duration {
	if r < 0 || r != r {
		r = 0
	}
	if r >= 1 {
		r = 0.9999999
	}
	return time.Duration(float64(d) * r)
}
