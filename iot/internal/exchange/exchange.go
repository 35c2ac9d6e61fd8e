// Package exchange is AWS IoT's MQTT request/response pattern (fleet
// provisioning, Jobs, an owner's issuer topics), with its failures classified
// for rotation: which are worth retrying and which are not.
package exchange

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/rotation"
)

// Answer is a reply to a request.
type Answer struct {
	// Accepted is true for a reply on <topic>/accepted.
	Accepted bool
	Payload  []byte
}

// Do does one request of AWS IoT's request/response pattern: subscribe
// to <topic>/accepted and <topic>/rejected first (AWS says a reply may be
// lost otherwise; one SUBSCRIBE for both where the connection is an
// iot.MultiSubscriber), publish, wait for the first reply, and unsubscribe
// without waiting for the UNSUBACK where it is an iot.NoWaitUnsubscriber.
// With a token, a reply whose clientToken differs (a late answer to an
// earlier request) is skipped. Failures are classified for rotation: no
// answer, a lost connection or a refused publish are transient; a refused
// subscription is fatal (the policy forbids the API).
func Do(ctx context.Context, m iot.MQTT, op, topic string, payload []byte, token string, timeout time.Duration) (Answer, error) {
	r, err := Subscribe(ctx, m, op, timeout, topic)
	if err != nil {
		return Answer{}, err
	}
	defer r.Close()
	return r.Do(ctx, op, topic, payload, token)
}

// Requests are the answer topics of requests made one after the other on
// one connection, subscribed together before the first: fleet provisioning's
// CreateCertificateFromCsr and RegisterThing cost one SUBSCRIBE, not two.
// A Requests is for one goroutine.
type Requests struct {
	m       iot.MQTT
	timeout time.Duration
	filters []string
	replies map[string]chan Answer // by request topic

	mu    sync.Mutex
	token string // the request waiting, whose clientToken a reply must carry
}

// Subscribe subscribes to <topic>/accepted and <topic>/rejected of every
// topic, in one SUBSCRIBE where the connection can, and waits for the
// SUBACK: publishing comes after, as AWS documents. Close unsubscribes.
func Subscribe(ctx context.Context, m iot.MQTT, op string, timeout time.Duration, topics ...string) (*Requests, error) {
	if timeout <= 0 {
		timeout = iot.DefaultRequestTimeout
	}
	r := &Requests{m: m, timeout: timeout, replies: make(map[string]chan Answer, len(topics))}
	var subs []iot.Subscription
	for _, topic := range topics {
		ch := make(chan Answer, 8)
		r.replies[topic] = ch
		for _, accepted := range []bool{true, false} {
			f := topic + "/rejected"
			if accepted {
				f = topic + "/accepted"
			}
			r.filters = append(r.filters, f)
			subs = append(subs, iot.Subscription{Filter: f, QoS: iot.AtLeastOnce, Handler: r.handler(ch, accepted)})
		}
	}
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := iot.SubscribeAll(sctx, m, subs...); err != nil {
		return nil, classifyRequestErr(sctx, op, "subscribing to "+strings.Join(r.filters, " and "), err)
	}
	return r, nil
}

func (r *Requests) handler(ch chan Answer, accepted bool) iot.MessageHandler {
	return func(msg iot.Message) {
		r.mu.Lock()
		token := r.token
		r.mu.Unlock()
		if token != "" {
			var t struct {
				ClientToken string `json:"clientToken"`
			}
			if json.Unmarshal(msg.Payload, &t) == nil && t.ClientToken != "" && t.ClientToken != token {
				return
			}
		}
		select {
		case ch <- Answer{Accepted: accepted, Payload: msg.Payload}:
		default:
		}
	}
}

// Do publishes one request on topic (one of those subscribed) and waits for
// the first reply, as the package's Do.
func (r *Requests) Do(ctx context.Context, op, topic string, payload []byte, token string) (Answer, error) {
	replies, ok := r.replies[topic]
	if !ok {
		return Answer{}, rotation.NewFatal(op, fmt.Errorf("exchange: no subscription to the answers of %s", topic))
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	r.mu.Lock()
	r.token = token
	r.mu.Unlock()
	// A late reply to an earlier request on this topic is not this one's.
	for len(replies) > 0 {
		<-replies
	}
	if err := r.m.Publish(ctx, topic, iot.AtLeastOnce, payload); err != nil {
		what := "publishing to " + topic
		if errors.Is(err, iot.ErrConnectionLost) {
			// AWS IoT closes the connection on a PUBLISH the policy does not
			// allow, without saying why: name the likely cause.
			what += " (the connection closed on the request: on AWS IoT the policy may not allow iot:Publish on topic/" + topic + ")"
		}
		return Answer{}, classifyRequestErr(ctx, op, what, err)
	}
	select {
	case a := <-replies:
		return a, nil
	case <-ctx.Done():
		return Answer{}, classifyRequestErr(ctx, op, "waiting for the answer on "+topic+"/accepted", ctx.Err())
	}
}

// Close unsubscribes. Unsubscribing is housekeeping (AWS IoT allows 50
// subscriptions per connection): nothing waits for its UNSUBACK where the
// connection can say so, and otherwise it must not take long.
func (r *Requests) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	iot.UnsubscribeNoWait(ctx, r.m, r.filters...)
}

func classifyRequestErr(ctx context.Context, op, what string, err error) error {
	switch {
	case errors.Is(err, iot.ErrSubscribeRefused):
		return rotation.NewFatal(op, fmt.Errorf("%s: %w", what, err))
	case errors.Is(err, context.Canceled) && context.Cause(ctx) == context.Canceled:
		return err // the caller stopped: not a failure
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		return rotation.NewTransient(op, fmt.Errorf("%s: no answer in time (the request may have been lost with the connection, or the service is slow): %w", what, err), 0)
	}
	return rotation.NewTransient(op, fmt.Errorf("%s: %w", what, err), 0)
}

// secretFields are reply fields whose values are secrets: the ownership
// token lets whoever holds it register the certificate as a thing, a private
// key is a private key. A snippet reaches logs, the state folder and the
// FAILED reason sent to a job, so their values never appear in one.
var secretFields = []string{"certificateOwnershipToken", "privateKey"}

// Snippet is the start of a payload, for an error message about it, with the
// values of secret fields left out (valid JSON or not: a truncated or
// malformed reply may carry them too).
func Snippet(b []byte) string {
	b = redactFields(b)
	const n = 120
	if len(b) > n {
		return fmt.Sprintf("%q…", b[:n])
	}
	return fmt.Sprintf("%q", b)
}

// redactFields replaces the string value after each "<secret field>": with
// REDACTED, up to its closing quote or the end of b.
func redactFields(b []byte) []byte {
	out := append([]byte(nil), b...)
	for _, f := range secretFields {
		key := []byte(`"` + f + `"`)
		for from := 0; ; {
			i := bytes.Index(out[from:], key)
			if i < 0 {
				break
			}
			j := from + i + len(key)
			// Skip blanks and the colon to the value's opening quote.
			for j < len(out) && (out[j] == ' ' || out[j] == '\t' || out[j] == '\n' || out[j] == '\r' || out[j] == ':') {
				j++
			}
			if j >= len(out) || out[j] != '"' {
				from = j
				continue
			}
			start := j + 1
			end := start
			for end < len(out) && out[end] != '"' {
				if out[end] == '\\' {
					end++
				}
				end++
			}
			end = min(end, len(out))
			out = append(out[:start], append([]byte("REDACTED"), out[end:]...)...)
			from = start + len("REDACTED")
		}
	}
	return out
}
