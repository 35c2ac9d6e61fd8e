package emulator

import (
	"sync"
	"time"
)

// limiter is a token bucket per key (an account, a client ID) on the injected
// clock: rate tokens per second, at most burst saved up. A zero rate allows all.
type limiter struct {
	rate, burst float64
	mu          sync.Mutex
	buckets     map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// pruneAt is the number of buckets above which full ones are forgotten, so
// millions of client IDs over a long run do not pile up.
const pruneAt = 10000

func newLimiter(rate, burst float64) *limiter {
	if burst < 1 {
		burst = 1
	}
	return &limiter{rate: rate, burst: burst, buckets: map[string]*bucket{}}
}

// intervalLimiter allows one event per interval and key; zero allows all.
func intervalLimiter(interval time.Duration) *limiter {
	if interval <= 0 {
		return newLimiter(0, 1)
	}
	return newLimiter(float64(time.Second)/float64(interval), 1)
}

func (l *limiter) allow(key string, now time.Time) bool {
	if l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= pruneAt {
			l.prune(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	if elapsed := now.Sub(b.last); elapsed > 0 {
		b.tokens = min(l.burst, b.tokens+elapsed.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (l *limiter) prune(now time.Time) {
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, k)
		}
	}
}

// OpStats counts one rate-limited operation's requests since the emulator
// started: those let through and those throttled.
type OpStats struct {
	Allowed   int64 `json:"allowed"`
	Throttled int64 `json:"throttled"`
}

// count records one request of op (CONNECT, CreateCertificateFromCsr,
// RegisterThing, api:<Operation> when APIRate is set).
func (r *Registry) count(op string, throttled bool) {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	s := r.stats[op]
	if s == nil {
		s = &OpStats{}
		r.stats[op] = s
	}
	if throttled {
		s.Throttled++
	} else {
		s.Allowed++
	}
}

// RateStats is a copy of the counts of every rate-limited operation, by
// name: what a benchmark reads to report peak rates and throttling.
func (r *Registry) RateStats() map[string]OpStats {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	out := make(map[string]OpStats, len(r.stats))
	for k, v := range r.stats {
		out[k] = *v
	}
	return out
}
