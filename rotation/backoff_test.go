package rotation

import (
	"testing"
	"time"
)

func TestBackoffDelayTable(t *testing.T) {
	const long = 100 * 365 * 24 * time.Hour
	tests := []struct {
		name   string
		b      Backoff
		r      Retry
		lo, hi time.Duration // inclusive bounds
	}{
		{"first failure, defaults, r=0", Backoff{}, Retry{Failures: 1, Remaining: long}, 15 * time.Second, 15 * time.Second},
		{"first failure, defaults, r→1", Backoff{}, Retry{Failures: 1, Remaining: long, Random: 0.9999}, 29 * time.Second, 30 * time.Second},
		{"doubles per failure", Backoff{}, Retry{Failures: 3, Remaining: long}, 60 * time.Second, 60 * time.Second},
		{"capped at Max", Backoff{}, Retry{Failures: 40, Remaining: long, Random: 0.5}, 3 * time.Hour, 3 * time.Hour},
		{"custom min and max", Backoff{Min: 2 * time.Second, Max: 10 * time.Second}, Retry{Failures: 10, Remaining: long}, 5 * time.Second, 5 * time.Second},
		{"near expiry: an eighth of what remains", Backoff{}, Retry{Failures: 40, Remaining: 8 * time.Hour}, 30 * time.Minute, 30 * time.Minute},
		{"very near expiry: not below Min", Backoff{}, Retry{Failures: 40, Remaining: time.Minute}, 15 * time.Second, 15 * time.Second},
		{"expired: keeps trying at the cap", Backoff{}, Retry{Failures: 40, Remaining: -time.Hour}, 2 * time.Hour, 2 * time.Hour},
		{"throttle hint above the backoff is a floor", Backoff{}, Retry{Failures: 1, Remaining: long, Hint: 5 * time.Minute}, 5 * time.Minute, 5 * time.Minute},
		{"throttle hint is jittered upwards", Backoff{}, Retry{Failures: 1, Remaining: long, Hint: 4 * time.Minute, Random: 0.5}, 4*time.Minute + 30*time.Second, 4*time.Minute + 30*time.Second},
		{"throttle hint beats the near-expiry cap", Backoff{}, Retry{Failures: 1, Remaining: 8 * time.Minute, Hint: 5 * time.Minute}, 5 * time.Minute, 5 * time.Minute},
		{"a hint below the backoff changes nothing", Backoff{}, Retry{Failures: 3, Remaining: long, Hint: time.Second}, 60 * time.Second, 60 * time.Second},
		{"a tiny Min still waits a second", Backoff{Min: time.Millisecond}, Retry{Failures: 1, Remaining: long}, time.Second, time.Second},
		{"zero failures is treated as the first", Backoff{}, Retry{Remaining: long}, 15 * time.Second, 15 * time.Second},
		{"out-of-range random is clamped", Backoff{}, Retry{Failures: 1, Remaining: long, Random: 7}, 29 * time.Second, 30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.b.Delay(tt.r)
			if d < tt.lo || d > tt.hi {
				t.Errorf("Delay(%+v) = %s, want in [%s, %s]", tt.r, d, tt.lo, tt.hi)
			}
		})
	}
}

func TestBackoffNeverGivesUp(t *testing.T) {
	// Whatever the failure count, the delay is finite and, while the
	// certificate is valid, leaves room for more attempts before expiry.
	b := Backoff{}
	remaining := 30 * 24 * time.Hour
	attempts := 0
	for f := 1; remaining > 0; f++ {
		d := b.Delay(Retry{Failures: f, Remaining: remaining, Random: 0.99})
		if d <= 0 || d > DefaultRetryMax {
			t.Fatalf("failure %d: delay %s", f, d)
		}
		remaining -= d
		attempts++
		if attempts > 100000 {
			t.Fatal("no end")
		}
	}
	if attempts < 20 {
		t.Errorf("only %d attempts in the 30 days before expiry", attempts)
	}
}

func TestBackoffValidate(t *testing.T) {
	if err := (Backoff{Min: time.Minute, Max: time.Second}).Validate(); err == nil {
		t.Error("max below min accepted")
	}
	if err := (Backoff{Min: -1}).Validate(); err == nil {
		t.Error("negative min accepted")
	}
	if err := (Backoff{}).Validate(); err != nil {
		t.Error(err)
	}
}
