package exchange

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thingcert/thingcert/iot"
)

// broker is an in-memory MQTT connection that records the calls made to it
// and answers each request on <topic>/accepted. It checks the exchange's
// order of calls (subscribed before publishing, one SUBSCRIBE for several
// requests); the MQTT itself is tested against brokers in package iot.
type broker struct {
	mu    sync.Mutex
	calls []string
	subs  map[string]iot.MessageHandler
	late  map[string]string // topic -> a stale reply delivered before the answer
	multi bool              // offers SubscribeMultiple and UnsubscribeNoWait
}

func (b *broker) record(format string, a ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, fmt.Sprintf(format, a...))
}

func (b *broker) Publish(_ context.Context, topic string, _ iot.QoS, payload []byte) error {
	b.record("PUBLISH %s", topic)
	b.mu.Lock()
	acc, late := b.subs[topic+"/accepted"], b.late[topic]
	b.mu.Unlock()
	if acc == nil {
		return errors.New("nobody listens for the answer")
	}
	go func() {
		if late != "" {
			acc(iot.Message{Topic: topic + "/accepted", Payload: []byte(late)})
		}
		acc(iot.Message{Topic: topic + "/accepted", Payload: append([]byte("answer to "), payload...)})
	}()
	return nil
}

func (b *broker) Subscribe(_ context.Context, filter string, _ iot.QoS, h iot.MessageHandler) error {
	b.record("SUBSCRIBE %s", filter)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subs[filter] = h
	return nil
}

func (b *broker) Unsubscribe(_ context.Context, filters ...string) error {
	b.record("UNSUBSCRIBE %s", strings.Join(filters, " "))
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, f := range filters {
		delete(b.subs, f)
	}
	return nil
}

type multiBroker struct{ *broker }

func (b multiBroker) SubscribeMultiple(_ context.Context, subs ...iot.Subscription) error {
	var fs []string
	for _, s := range subs {
		fs = append(fs, s.Filter)
	}
	b.record("SUBSCRIBE %s", strings.Join(fs, " "))
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range subs {
		b.subs[s.Filter] = s.Handler
	}
	return nil
}

func (b multiBroker) UnsubscribeNoWait(filters ...string) {
	b.record("UNSUBSCRIBE-NOWAIT %s", strings.Join(filters, " "))
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, f := range filters {
		delete(b.subs, f)
	}
}

// Two requests share one SUBSCRIBE of their four answer topics, made before
// the first publish; each gets its own answer; a reply that was waiting on a
// topic before its request is not taken for the answer; one UNSUBSCRIBE at
// the end. On a connection without SubscribeMultiple the same happens one
// filter at a time.
func TestRequestsShareOneSubscribe(t *testing.T) {
	for _, multi := range []bool{true, false} {
		t.Run(fmt.Sprint("multi=", multi), func(t *testing.T) {
			b := &broker{subs: map[string]iot.MessageHandler{}, late: map[string]string{}}
			var m iot.MQTT = b
			if multi {
				m = multiBroker{b}
			}
			ctx := context.Background()
			r, err := Subscribe(ctx, m, "op", time.Minute, "a", "b")
			if err != nil {
				t.Fatal(err)
			}
			for _, topic := range []string{"a", "b"} {
				got, err := r.Do(ctx, "op", topic, []byte(topic), "")
				if err != nil {
					t.Fatal(err)
				}
				if want := "answer to " + topic; !got.Accepted || string(got.Payload) != want {
					t.Errorf("%s: got %+v, want accepted %q", topic, got, want)
				}
				if topic == "a" {
					// Stale, for the next request on a: arrives before the
					// answer and must be skipped by token.
					b.late["a"] = `{"clientToken":"old"}`
				}
			}
			got, err := r.Do(ctx, "op", "a", []byte("again"), "new")
			if err != nil {
				t.Fatal(err)
			}
			if string(got.Payload) != "answer to again" {
				t.Errorf("got %q: a reply with another clientToken was taken", got.Payload)
			}
			r.Close()
			want := []string{"SUBSCRIBE a/accepted a/rejected b/accepted b/rejected", "PUBLISH a", "PUBLISH b", "PUBLISH a", "UNSUBSCRIBE-NOWAIT a/accepted a/rejected b/accepted b/rejected"}
			if !multi {
				want = slices.Concat([]string{"SUBSCRIBE a/accepted", "SUBSCRIBE a/rejected", "SUBSCRIBE b/accepted", "SUBSCRIBE b/rejected"},
					want[1:4], []string{"UNSUBSCRIBE a/accepted a/rejected b/accepted b/rejected"})
			}
			if !slices.Equal(b.calls, want) {
				t.Errorf("calls:\n%q\nwant\n%q", b.calls, want)
			}
			if len(b.subs) != 0 {
				t.Errorf("left subscribed: %v", b.subs)
			}
		})
	}
}
