package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/thingcert/thingcert/rotation"
)

// MQTT is the part of a connection that AWS IoT's request/response APIs
// (fleet provisioning, Jobs) use. *Client and *Session implement it.
type MQTT interface {
	Publish(ctx context.Context, topic string, qos QoS, payload []byte) error
	Subscribe(ctx context.Context, filter string, qos QoS, h MessageHandler) error
	Unsubscribe(ctx context.Context, filters ...string) error
}

// DefaultRequestTimeout bounds the wait for an answer on /accepted or /rejected.
const DefaultRequestTimeout = 30 * time.Second

// answer is a reply to a request.
type answer struct {
	accepted bool
	payload  []byte
}

// exchange does one request of AWS IoT's request/response pattern: subscribe
// to <topic>/accepted and <topic>/rejected first (AWS says a reply may be
// lost otherwise), publish, and wait for the first reply. With a token, a
// reply whose clientToken differs (a late answer to an earlier request) is
// skipped. Failures are classified for rotation: no answer, a lost
// connection or a refused publish are transient; a refused subscription is
// fatal (the policy forbids the API).
func exchange(ctx context.Context, m MQTT, op, topic string, payload []byte, token string, timeout time.Duration) (answer, error) {
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	replies := make(chan answer, 8)
	handler := func(accepted bool) MessageHandler {
		return func(msg Message) {
			if token != "" {
				var t struct {
					ClientToken string `json:"clientToken"`
				}
				if json.Unmarshal(msg.Payload, &t) == nil && t.ClientToken != "" && t.ClientToken != token {
					return
				}
			}
			select {
			case replies <- answer{accepted: accepted, payload: msg.Payload}:
			default:
			}
		}
	}
	acc, rej := topic+"/accepted", topic+"/rejected"
	for _, s := range []struct {
		filter string
		ok     bool
	}{{acc, true}, {rej, false}} {
		if err := m.Subscribe(ctx, s.filter, AtLeastOnce, handler(s.ok)); err != nil {
			return answer{}, classifyRequestErr(ctx, op, "subscribing to "+s.filter, err)
		}
	}
	defer func() {
		// Unsubscribing is housekeeping (AWS IoT allows 50 subscriptions per
		// connection); it must not outlive the caller's patience.
		uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer ucancel()
		_ = m.Unsubscribe(uctx, acc, rej)
	}()
	if err := m.Publish(ctx, topic, AtLeastOnce, payload); err != nil {
		return answer{}, classifyRequestErr(ctx, op, "publishing to "+topic, err)
	}
	select {
	case a := <-replies:
		return a, nil
	case <-ctx.Done():
		return answer{}, classifyRequestErr(ctx, op, "waiting for the answer on "+acc, ctx.Err())
	}
}

func classifyRequestErr(ctx context.Context, op, what string, err error) error {
	switch {
	case errors.Is(err, ErrSubscribeRefused):
		return rotation.NewFatal(op, fmt.Errorf("%s: %w", what, err))
	case errors.Is(err, context.Canceled) && context.Cause(ctx) == context.Canceled:
		return err // the caller stopped: not a failure
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		return rotation.NewTransient(op, fmt.Errorf("%s: no answer in time (the request may have been lost with the connection, or the service is slow): %w", what, err), 0)
	}
	return rotation.NewTransient(op, fmt.Errorf("%s: %w", what, err), 0)
}

// snippet is the start of a payload, for an error message about it.
func snippet(b []byte) string {
	const n = 120
	if len(b) > n {
		return fmt.Sprintf("%q…", b[:n])
	}
	return fmt.Sprintf("%q", b)
}
