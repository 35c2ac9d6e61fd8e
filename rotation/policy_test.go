package rotation

import (
	"fmt"
	"testing"
	"time"
)

var (
	t0      = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	aws2049 = time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC)
	day     = 24 * time.Hour
	year    = 365 * day
)

// noJitter makes deadlines exact so the table can state them.
var noJitter = Policy{Jitter: -1}

func TestDecideTable(t *testing.T) {
	tests := []struct {
		name      string
		p         Policy
		nb, na    time.Time
		now       time.Time
		demanded  time.Time
		at        time.Time
		reason    Reason
		emergency bool
		due       bool
	}{
		{
			name: "1-year cert renews at 2/3 of its lifetime",
			p:    noJitter, nb: t0, na: t0.Add(year), now: t0.Add(day),
			at: t0.Add(scale(year, 2.0/3)), reason: ReasonLifetime,
		},
		{
			name: "1-year cert past 2/3: due",
			p:    noJitter, nb: t0, na: t0.Add(year), now: t0.Add(250 * day),
			at: t0.Add(scale(year, 2.0/3)), reason: ReasonLifetime, due: true,
		},
		{
			name: "1-year cert in the last tenth: emergency",
			p:    noJitter, nb: t0, na: t0.Add(year), now: t0.Add(360 * day),
			at: t0.Add(scale(year, 2.0/3)), reason: ReasonLifetime, emergency: true, due: true,
		},
		{
			name: "10-minute cert renews after 6m40s",
			p:    noJitter, nb: t0, na: t0.Add(10 * time.Minute), now: t0.Add(time.Minute),
			at: t0.Add(400 * time.Second), reason: ReasonLifetime,
		},
		{
			name: "10-minute cert: the emergency window is its last minute",
			p:    noJitter, nb: t0, na: t0.Add(10 * time.Minute), now: t0.Add(9 * time.Minute),
			at: t0.Add(400 * time.Second), reason: ReasonLifetime, emergency: true, due: true,
		},
		{
			name: "2049 cert: max age of one year wins",
			p:    noJitter, nb: t0, na: aws2049, now: t0.Add(day),
			at: t0.Add(year), reason: ReasonMaxAge,
		},
		{
			name: "2049 cert with max age 90 days",
			p:    Policy{Jitter: -1, MaxAge: 90 * day}, nb: t0, na: aws2049, now: t0.Add(91 * day),
			at: t0.Add(90 * day), reason: ReasonMaxAge, due: true,
		},
		{
			name: "2049 cert with max age off: 2/3 of 24 years",
			p:    Policy{Jitter: -1, MaxAge: -1}, nb: t0, na: aws2049, now: t0.Add(day),
			at: t0.Add(scale(aws2049.Sub(t0), 2.0/3)), reason: ReasonLifetime,
		},
		{
			name: "before-expiry earlier than the ratio",
			p:    Policy{Jitter: -1, BeforeExpiry: 200 * day}, nb: t0, na: t0.Add(year), now: t0,
			at: t0.Add(165 * day), reason: ReasonBeforeExpiry,
		},
		{
			name: "before-expiry inside the emergency window: the window starts first",
			p:    Policy{Jitter: -1, LifetimeRatio: -1, MaxAge: -1, BeforeExpiry: time.Hour}, nb: t0, na: t0.Add(year), now: t0,
			at: t0.Add(year - 7*day), reason: ReasonEmergency,
		},
		{
			name: "ratio 0.5",
			p:    Policy{Jitter: -1, LifetimeRatio: 0.5}, nb: t0, na: t0.Add(100 * day), now: t0,
			at: t0.Add(50 * day), reason: ReasonLifetime,
		},
		{
			name: "expired cert: renew now, emergency",
			p:    noJitter, nb: t0, na: t0.Add(time.Hour), now: t0.Add(2 * time.Hour),
			at: t0.Add(40 * time.Minute), reason: ReasonExpired, emergency: true, due: true,
		},
		{
			name: "expired cert with every window off still says expired",
			p:    Policy{Jitter: -1, LifetimeRatio: -1, MaxAge: -1, EmergencyWindow: -1}, nb: t0, na: t0.Add(time.Hour), now: t0.Add(time.Hour),
			at: t0.Add(time.Hour), reason: ReasonExpired, emergency: true, due: true,
		},
		{
			name: "not yet valid (clock behind): not due, no emergency",
			p:    noJitter, nb: t0, na: t0.Add(year), now: t0.Add(-time.Hour),
			at: t0.Add(scale(year, 2.0/3)), reason: ReasonLifetime,
		},
		{
			name: "a cert whose lifetime is empty is replaced at once",
			p:    noJitter, nb: t0, na: t0, now: t0,
			at: t0, reason: ReasonExpired, emergency: true, due: true,
		},
		{
			name: "on demand: now, whatever the certificate",
			p:    Policy{}, nb: t0, na: aws2049, now: t0.Add(day), demanded: t0.Add(day),
			at: t0.Add(day), reason: ReasonDemand, due: true,
		},
		{
			name: "a demand after the rule's time does not delay it",
			p:    noJitter, nb: t0, na: t0.Add(time.Hour), now: t0.Add(50 * time.Minute), demanded: t0.Add(55 * time.Minute),
			at: t0.Add(40 * time.Minute), reason: ReasonLifetime, due: true,
		},
		{
			name: "max age shorter than the age at issue is clamped to NotBefore",
			p:    Policy{Jitter: -1, MaxAge: time.Nanosecond}, nb: t0, na: t0.Add(year), now: t0,
			at: t0.Add(time.Nanosecond), reason: ReasonMaxAge, due: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.p.Decide(Input{NotBefore: tt.nb, NotAfter: tt.na, Now: tt.now, Seed: "dev-1\x00abc", Demanded: tt.demanded})
			if !d.At.Equal(tt.at) || d.Reason != tt.reason || d.Emergency != tt.emergency {
				t.Errorf("Decide = %v (at %s, reason %s, emergency %v); want at %s, reason %s, emergency %v",
					d, d.At, d.Reason, d.Emergency, tt.at, tt.reason, tt.emergency)
			}
			if got := d.Due(tt.now); got != tt.due {
				t.Errorf("Due(%s) = %v, want %v", tt.now, got, tt.due)
			}
		})
	}
}

func TestJitterMovesEarlierWithinWindow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		p      Policy
		na     time.Time
		window time.Duration
		rule   time.Time
	}{
		{"1-year cert, default window = age/10 capped at 7 days", Policy{}, t0.Add(year), DefaultMaxJitter, t0.Add(scale(year, 2.0/3))},
		{"2049 cert, default window 7 days", Policy{}, aws2049, DefaultMaxJitter, t0.Add(year)},
		{"10-minute cert, default window 40 s", Policy{}, t0.Add(10 * time.Minute), 40 * time.Second, t0.Add(400 * time.Second)},
		{"100-day cert, default window = age/10", Policy{}, t0.Add(100 * day), scale(100*day, 2.0/3) / 10, t0.Add(scale(100*day, 2.0/3))},
		{"explicit window", Policy{Jitter: time.Hour}, t0.Add(year), time.Hour, t0.Add(scale(year, 2.0/3))},
		{"explicit window capped at half the age", Policy{Jitter: time.Hour}, t0.Add(30 * time.Minute), 10 * time.Minute, t0.Add(20 * time.Minute)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lo, hi := tc.rule, tc.rule.Add(-tc.window)
			spread := map[time.Duration]bool{}
			for i := range 200 {
				seed := JitterSeed(fmt.Sprintf("dev-%d", i), "cert")
				d := tc.p.Decide(Input{NotBefore: t0, NotAfter: tc.na, Now: t0, Seed: seed})
				if !d.Deadline.Equal(tc.rule) {
					t.Fatalf("deadline %s, want %s", d.Deadline, tc.rule)
				}
				if d.At.After(lo) || d.At.Before(hi) {
					t.Fatalf("seed %q: at %s outside [%s, %s]", seed, d.At, hi, lo)
				}
				again := tc.p.Decide(Input{NotBefore: t0, NotAfter: tc.na, Now: t0.Add(time.Minute), Seed: seed})
				if !again.At.Equal(d.At) {
					t.Fatalf("seed %q: a later clock moved the renewal from %s to %s", seed, d.At, again.At)
				}
				spread[tc.rule.Sub(d.At)*10/tc.window] = true
			}
			// 200 devices over 10 buckets: a fleet must not bunch up.
			if len(spread) < 8 {
				t.Errorf("200 devices fell in only %d of 10 buckets of the window", len(spread))
			}
		})
	}
}

func TestEmergencySkipsJitter(t *testing.T) {
	// The rule fires inside the emergency window: no jitter, start at the window.
	p := Policy{LifetimeRatio: 0.95, MaxAge: -1}
	na := t0.Add(100 * time.Hour)
	for i := range 50 {
		d := p.Decide(Input{NotBefore: t0, NotAfter: na, Now: t0, Seed: fmt.Sprint(i)})
		if d.Reason != ReasonEmergency || !d.At.Equal(t0.Add(90*time.Hour)) {
			t.Fatalf("seed %d: %v, want emergency at 90h", i, d)
		}
	}
}

func TestSeedChangesWithCertificate(t *testing.T) {
	in := Input{NotBefore: t0, NotAfter: t0.Add(year), Now: t0}
	in.Seed = JitterSeed("dev-1", "cert-a")
	a := Policy{}.Decide(in)
	in.Seed = JitterSeed("dev-1", "cert-b")
	b := Policy{}.Decide(in)
	if a.At.Equal(b.At) {
		t.Errorf("two certificates of one device got the same jittered time %s", a.At)
	}
}

func TestPolicyValidate(t *testing.T) {
	for _, tc := range []struct {
		p  Policy
		ok bool
	}{
		{Policy{}, true},
		{Policy{LifetimeRatio: 1}, true},
		{Policy{LifetimeRatio: 1.5}, false},
		{Policy{LifetimeRatio: -1, MaxAge: -1, EmergencyWindow: -1}, false},
		{Policy{LifetimeRatio: -1, MaxAge: -1, EmergencyWindow: -1, BeforeExpiry: time.Hour}, true},
	} {
		if err := tc.p.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: Validate() = %v, want ok=%v", tc.p, err, tc.ok)
		}
	}
}
