package rotation

import (
	"fmt"
	"time"

	"github.com/thingcert/thingcert/internal/backoff"
)

// Backoff spaces the retries of a failed renewal step: capped exponential
// growth with jitter, never sooner than a server's throttling hint, and never
// a final failure: while the current certificate is valid the device keeps
// trying, more often as its expiry nears. The zero value is ready to use.
type Backoff struct {
	// Min is the base of the first retry delay. Zero means 30 s (DefaultRetryMin).
	Min time.Duration
	// Max caps the base delay. Zero means 4 h (DefaultRetryMax).
	Max time.Duration
}

// Defaults of the zero Backoff.
const (
	DefaultRetryMin = 30 * time.Second
	DefaultRetryMax = 4 * time.Hour
	// minRetry keeps to AWS IoT's one CONNECT per second per client ID even for
	// a tiny Min: a retry that reconnects must not be refused for its haste.
	minRetry = time.Second
)

func (b Backoff) withDefaults() Backoff {
	if b.Min <= 0 {
		b.Min = DefaultRetryMin
	}
	b.Min = max(b.Min, minRetry)
	if b.Max <= 0 {
		b.Max = DefaultRetryMax
	}
	b.Max = max(b.Max, b.Min)
	return b
}

// Validate reports a Backoff that makes no sense.
func (b Backoff) Validate() error {
	if b.Min < 0 || b.Max < 0 {
		return fmt.Errorf("rotation: retry delays must not be negative (min %s, max %s)", b.Min, b.Max)
	}
	if b.Min > 0 && b.Max > 0 && b.Max < b.Min {
		return fmt.Errorf("rotation: retry max %s is below retry min %s", b.Max, b.Min)
	}
	return nil
}

// Retry is what a retry delay depends on.
type Retry struct {
	// Failures is how many attempts have failed in a row, counting the last (≥ 1).
	Failures int
	// Hint is how long the server asked the device to wait (a throttling
	// answer's retry-after); zero if none.
	Hint time.Duration
	// Remaining is how long the current certificate stays valid; zero or
	// negative once it has expired.
	Remaining time.Duration
	// Random is drawn uniformly from [0, 1): the jitter.
	Random float64
}

// Delay is the wait before the next attempt. The base doubles from Min per
// failure up to Max; while the certificate is valid it is also capped at an
// eighth of the remaining validity (but not below Min), so several attempts
// still fit before expiry. The delay is drawn from the upper half of the base,
// [base/2, base), so a fleet that failed together spreads out and a delay
// never collapses to zero. A server's hint is a floor: the delay is then the
// hint plus up to a quarter of it, so throttled devices do not return in step.
func (b Backoff) Delay(r Retry) time.Duration {
	b = b.withDefaults()
	base := backoff.Base(b.Min, b.Max, r.Failures-1)
	if r.Remaining > 0 {
		base = min(base, max(r.Remaining/8, b.Min))
	}
	d := backoff.Jitter(base, r.Random)
	if r.Hint > 0 && d < r.Hint {
		d = r.Hint + backoff.Scale(r.Hint/4, r.Random)
	}
	return max(d, minRetry)
}
