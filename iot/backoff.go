package iot

import (
	"fmt"
	"time"

	"github.com/thingcert/thingcert/internal/backoff"
)

// Backoff spaces reconnect attempts: capped exponential growth with jitter, so
// a fleet that lost its broker at the same moment does not come back at the
// same moment (AWS IoT allows one CONNECT per second per client ID and 500 per
// second per account). The zero value is ready to use.
type Backoff struct {
	// Min is the base of the first delay. Zero means 2 s, so that even the
	// shortest jittered delay (Min/2) keeps to AWS IoT's one CONNECT per
	// second per client ID.
	Min time.Duration
	// Max caps the base delay. Zero means 2 minutes.
	Max time.Duration
	// StableAfter is how long a connection must stay up before its loss
	// starts the sequence again from Min. A connection that drops sooner
	// (a policy that refuses publishes, two devices sharing a client ID)
	// counts as one more failure, so it cannot make the device hammer the
	// broker. Zero means 1 minute.
	StableAfter time.Duration
}

// Defaults of the zero Backoff.
const (
	DefaultBackoffMin         = 2 * time.Second
	DefaultBackoffMax         = 2 * time.Minute
	DefaultBackoffStableAfter = time.Minute
)

func (b Backoff) withDefaults() Backoff {
	if b.Min <= 0 {
		b.Min = DefaultBackoffMin
	}
	if b.Max <= 0 {
		b.Max = DefaultBackoffMax
	}
	if b.Max < b.Min {
		b.Max = b.Min
	}
	if b.StableAfter <= 0 {
		b.StableAfter = DefaultBackoffStableAfter
	}
	return b
}

// Validate reports a Backoff that makes no sense.
func (b Backoff) Validate() error {
	if b.Min < 0 || b.Max < 0 || b.StableAfter < 0 {
		return fmt.Errorf("iot: backoff durations must not be negative (min %s, max %s, stable after %s)", b.Min, b.Max, b.StableAfter)
	}
	if b.Min > 0 && b.Max > 0 && b.Max < b.Min {
		return fmt.Errorf("iot: backoff max %s is below min %s", b.Max, b.Min)
	}
	return nil
}

// Delay is the wait before the next attempt after failures consecutive
// failures (0 for the first retry), given r drawn uniformly from [0, 1).
// The base doubles from Min up to Max; the delay is drawn from the upper half
// of it, [base/2, base), so it is random enough to spread a fleet and never
// collapses to zero.
func (b Backoff) Delay(failures int, r float64) time.Duration {
	b = b.withDefaults()
	return backoff.Jitter(backoff.Base(b.Min, b.Max, failures), r)
}

// AfterLoss is the failure count after a connection that stayed up for upFor
// was lost: zero if it was stable, one more than before otherwise.
func (b Backoff) AfterLoss(failures int, upFor time.Duration) int {
	if upFor >= b.withDefaults().StableAfter {
		return 0
	}
	return failures + 1
}
