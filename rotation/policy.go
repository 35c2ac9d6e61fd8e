package rotation

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// Policy says when a device certificate is renewed. Every rule that is on gives
// a time; the earliest wins. The zero value is the recommended policy: renew at
// 2/3 of the lifetime or at one year of age, whichever comes first, spread over
// a jitter window, and at once (no jitter) in the last tenth of the lifetime.
type Policy struct {
	// LifetimeRatio renews once this share of the lifetime (NotBefore to
	// NotAfter) has passed. Zero means 2/3 (DefaultLifetimeRatio); a negative
	// value turns the rule off; above 1 is refused by Validate.
	LifetimeRatio float64
	// MaxAge renews a certificate once it is this old, counted from NotBefore,
	// whatever its expiry. Certificates AWS IoT issues expire on 2049-12-31, so
	// for them age is the rule that matters. Zero means 365 days (DefaultMaxAge,
	// Device Defender's DEVICE_CERTIFICATE_AGE_CHECK default); negative: off.
	MaxAge time.Duration
	// BeforeExpiry renews this long before NotAfter. Zero or negative: off (the
	// lifetime ratio already renews well before expiry).
	BeforeExpiry time.Duration
	// Jitter is the width of the window before the renewal time in which each
	// device picks its own moment, so a fleet whose certificates were issued
	// together does not renew together (AWS IoT allows 15 CreateCertificateFromCsr
	// per second per account). Zero means a tenth of the certificate's age at the
	// renewal time, at most 7 days (DefaultMaxJitter); negative: off. It never
	// exceeds half the age at the renewal time, and only ever moves renewal
	// earlier, never past the rule's time.
	Jitter time.Duration
	// EmergencyWindow is the last stretch before NotAfter in which renewal
	// starts at once, without jitter, and failures are retried at short
	// intervals. Zero means a tenth of the lifetime, at most 7 days
	// (DefaultMaxEmergencyWindow); negative: off.
	EmergencyWindow time.Duration
}

// Defaults of the zero Policy.
const (
	DefaultLifetimeRatio      = 2.0 / 3.0
	DefaultMaxAge             = 365 * 24 * time.Hour
	DefaultMaxJitter          = 7 * 24 * time.Hour
	DefaultMaxEmergencyWindow = 7 * 24 * time.Hour
)

// Reason names the rule that set a renewal time.
type Reason string

// The reasons a Decision can give.
const (
	ReasonLifetime     Reason = "lifetime"      // LifetimeRatio of the lifetime has passed
	ReasonMaxAge       Reason = "max-age"       // the certificate reached MaxAge
	ReasonBeforeExpiry Reason = "before-expiry" // BeforeExpiry before NotAfter
	ReasonEmergency    Reason = "emergency"     // inside the emergency window
	ReasonExpired      Reason = "expired"       // past NotAfter (or a certificate with no lifetime)
	ReasonDemand       Reason = "demand"        // an operator or a job asked
)

// Input is what a renewal decision depends on, and nothing else.
type Input struct {
	// NotBefore and NotAfter are the current certificate's validity.
	NotBefore, NotAfter time.Time
	// Now is the clock.
	Now time.Time
	// Seed spreads the fleet: the same seed always gives the same point in the
	// jitter window, so a restart does not reshuffle it. Use JitterSeed.
	Seed string
	// Demanded, if set, is when an operator or a job asked for a renewal.
	Demanded time.Time
}

// Decision is when to renew and why.
type Decision struct {
	// At is when renewal should start: Deadline moved earlier by this device's
	// jitter. It may be in the past: renew now.
	At time.Time
	// Deadline is when the earliest rule fires, before jitter.
	Deadline time.Time
	// Reason names that rule (ReasonExpired once the certificate has expired).
	Reason Reason
	// Emergency is set when Now is inside the emergency window or past expiry:
	// renew now, without jitter, and retry failures at short intervals.
	Emergency bool
}

// Due reports whether renewal should start at now.
func (d Decision) Due(now time.Time) bool { return !now.Before(d.At) }

// String is the decision in words, for logs and `thingcert status`.
func (d Decision) String() string {
	s := fmt.Sprintf("renew at %s (%s", d.At.UTC().Format(time.RFC3339), d.Reason)
	if !d.At.Equal(d.Deadline) {
		s += fmt.Sprintf(", jittered from %s", d.Deadline.UTC().Format(time.RFC3339))
	}
	if d.Emergency {
		s += ", emergency"
	}
	return s + ")"
}

// JitterSeed is the seed for a device and one of its certificates: a device's
// point in the window is stable while it keeps a certificate and moves with
// the next one, and two devices differ.
func JitterSeed(deviceID, certificateID string) string {
	return deviceID + "\x00" + certificateID
}

// Validate reports a policy that makes no sense, naming the setting.
func (p Policy) Validate() error {
	var errs []error
	if math.IsNaN(p.LifetimeRatio) || p.LifetimeRatio > 1 {
		errs = append(errs, fmt.Errorf("rotation: lifetime ratio %v: want a share of the lifetime between 0 and 1 (e.g. 0.667), or negative to turn the rule off", p.LifetimeRatio))
	}
	if p.LifetimeRatio < 0 && p.MaxAge < 0 && p.BeforeExpiry <= 0 && p.EmergencyWindow < 0 {
		errs = append(errs, errors.New("rotation: every renewal rule is off (lifetime ratio, max age, before expiry, emergency window): the certificate would never be renewed; turn at least one on"))
	}
	return errors.Join(errs...)
}

func (p Policy) ratio() float64 {
	if p.LifetimeRatio == 0 {
		return DefaultLifetimeRatio
	}
	return p.LifetimeRatio
}

func (p Policy) maxAge() time.Duration {
	if p.MaxAge == 0 {
		return DefaultMaxAge
	}
	return p.MaxAge
}

// emergencyWindow is the effective window for a certificate of this lifetime;
// zero means none.
func (p Policy) emergencyWindow(lifetime time.Duration) time.Duration {
	switch {
	case p.EmergencyWindow < 0:
		return 0
	case p.EmergencyWindow > 0:
		return p.EmergencyWindow
	}
	return min(lifetime/10, DefaultMaxEmergencyWindow)
}

// jitterWindow is the effective window for a renewal that fires at age.
func (p Policy) jitterWindow(age time.Duration) time.Duration {
	if p.Jitter < 0 || age <= 0 {
		return 0
	}
	w := p.Jitter
	if w == 0 {
		w = min(age/10, DefaultMaxJitter)
	}
	return min(w, age/2)
}

// Decide says when to renew the certificate. It is a pure function of its
// inputs: the same certificate, policy, clock and seed give the same answer.
func (p Policy) Decide(in Input) Decision {
	lifetime := in.NotAfter.Sub(in.NotBefore)
	if lifetime <= 0 {
		// A certificate that was never valid cannot be kept: replace it now.
		return Decision{At: in.NotBefore, Deadline: in.NotBefore, Reason: ReasonExpired, Emergency: true}
	}
	type rule struct {
		at     time.Time
		reason Reason
		jitter bool
	}
	var rules []rule
	if r := p.ratio(); r > 0 {
		rules = append(rules, rule{in.NotBefore.Add(scale(lifetime, r)), ReasonLifetime, true})
	}
	if a := p.maxAge(); a > 0 {
		rules = append(rules, rule{in.NotBefore.Add(a), ReasonMaxAge, true})
	}
	if p.BeforeExpiry > 0 {
		rules = append(rules, rule{in.NotAfter.Add(-p.BeforeExpiry), ReasonBeforeExpiry, true})
	}
	emergencyStart := in.NotAfter
	if w := p.emergencyWindow(lifetime); w > 0 {
		emergencyStart = in.NotAfter.Add(-w)
		rules = append(rules, rule{emergencyStart, ReasonEmergency, false})
	} else {
		rules = append(rules, rule{in.NotAfter, ReasonExpired, false})
	}
	if !in.Demanded.IsZero() {
		rules = append(rules, rule{in.Demanded, ReasonDemand, false})
	}
	// The earliest rule wins; on a tie the rule without jitter does, since it
	// is the more urgent one (a demand, the emergency window).
	best := rules[0]
	for _, r := range rules[1:] {
		if r.at.Before(best.at) || r.at.Equal(best.at) && !r.jitter {
			best = r
		}
	}
	if best.at.Before(in.NotBefore) {
		best.at = in.NotBefore // a rule set shorter than the certificate's age at issue
	}
	d := Decision{At: best.at, Deadline: best.at, Reason: best.reason}
	if best.jitter {
		w := p.jitterWindow(best.at.Sub(in.NotBefore))
		d.At = best.at.Add(-scale(w, seedFraction(in.Seed)))
	}
	if !in.Now.Before(emergencyStart) {
		d.Emergency = true
	}
	if !in.Now.Before(in.NotAfter) {
		d.Reason = ReasonExpired
		d.Emergency = true
	}
	return d
}

// scale is d×f without float64's loss of nanoseconds on long durations.
func scale(d time.Duration, f float64) time.Duration {
	return time.Duration(math.Round(float64(d) * f))
}

// seedFraction maps a seed to [0, 1) uniformly.
func seedFraction(seed string) float64 {
	sum := sha256.Sum256([]byte(seed))
	return float64(binary.BigEndian.Uint64(sum[:8])>>11) / (1 << 53)
}
