package agent

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestIdentityRefused(t *testing.T) {
	ep := Endpoint{Host: "x-ats.iot.us-east-1.amazonaws.com"}
	refusedConnack := func(code byte) error {
		e := newErr(ep, StageMQTT, ErrConnectRefused, nil, "")
		e.Code = code
		return e
	}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{newErr(ep, StageTLS, ErrClientCertRefused, errors.New("bad certificate"), ""), true},
		{fmt.Errorf("switching: %w", newErr(ep, StageMQTT, ErrClosedAfterConnect, nil, "")), true},
		{refusedConnack(ConnackNotAuthorized), true},
		{refusedConnack(ConnackBadUserOrPassword), true},
		{refusedConnack(ConnackServerUnavailable), false},
		{refusedConnack(ConnackIDRejected), false},
		{newErr(ep, StageDial, ErrUnreachable, errors.New("connection refused"), ""), false},
		{newErr(ep, StageConnected, ErrConnectionLost, errors.New("EOF"), ""), false},
		{newErr(ep, StageTLS, ErrKey, errors.New("token gone"), ""), false},
		{ErrClientCertRefused, false}, // a bare sentinel is no diagnosis
		{nil, false},
	} {
		if got := IdentityRefused(c.err); got != c.want {
			t.Errorf("IdentityRefused(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

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
