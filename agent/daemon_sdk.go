package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
)

// AgentConn is a device program's connection to the running agent (`thingcert
// run`): it publishes and subscribes on the agent's MQTT connection, so the
// program needs neither the device's key nor its own connection to AWS IoT,
// and keeps working across reconnects and certificate rotations. It speaks
// to the agent over the agent's local socket. Safe for concurrent use.
//
// The agent's own topics (certificates, provisioning, the thing's jobs) are
// refused with ErrReservedTopic.
type AgentConn struct {
	conn net.Conn

	wmu sync.Mutex // serializes writes
	enc *json.Encoder

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan localFrame
	subs    map[string]MessageHandler
	err     error

	msgs chan localFrame
	done chan struct{}
}

var _ MQTT = (*AgentConn)(nil)

// ErrAgentGone: the agent closed the connection (it stopped or restarted).
var ErrAgentGone = errors.New("connection to the agent closed")

// DialAgent connects to the agent's local socket (DefaultSocket under
// systemd; the program's user must be in the agent's group).
func DialAgent(ctx context.Context, socket string) (*AgentConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("agent: connecting to the agent at %s (is `thingcert run` running, and may this user use its socket?): %w", socket, err)
	}
	a := &AgentConn{conn: c, enc: json.NewEncoder(c), pending: map[uint64]chan localFrame{},
		subs: map[string]MessageHandler{}, msgs: make(chan localFrame, 256), done: make(chan struct{})}
	go a.read()
	go a.deliver()
	return a, nil
}

func (a *AgentConn) read() {
	sc := bufio.NewScanner(a.conn)
	sc.Buffer(make([]byte, 64*1024), 512*1024)
	for sc.Scan() {
		var f localFrame
		if json.Unmarshal(sc.Bytes(), &f) != nil {
			continue
		}
		if f.Op == "message" {
			select {
			case a.msgs <- f:
			case <-a.done:
				return
			}
			continue
		}
		a.mu.Lock()
		ch := a.pending[f.ID]
		delete(a.pending, f.ID)
		a.mu.Unlock()
		if ch != nil {
			ch <- f
		}
	}
	err := sc.Err()
	if err == nil {
		err = ErrAgentGone
	}
	a.mu.Lock()
	if a.err == nil {
		a.err = fmt.Errorf("agent: %w: %v", ErrAgentGone, err)
	}
	a.mu.Unlock()
	close(a.done)
}

// deliver calls the handlers one message at a time, in order, apart from the
// reader so a slow handler does not hold up replies.
func (a *AgentConn) deliver() {
	for {
		select {
		case <-a.done:
			return
		case f := <-a.msgs:
			a.mu.Lock()
			h := a.subs[f.Filter]
			a.mu.Unlock()
			if h != nil {
				h(Message{Topic: f.Topic, Payload: f.Payload, QoS: f.QoS, Retained: f.Retained})
			}
		}
	}
}

func (a *AgentConn) call(ctx context.Context, f localFrame) (localFrame, error) {
	ch := make(chan localFrame, 1)
	a.mu.Lock()
	if a.err != nil {
		err := a.err
		a.mu.Unlock()
		return localFrame{}, err
	}
	a.next++
	f.ID = a.next
	a.pending[f.ID] = ch
	a.mu.Unlock()
	a.wmu.Lock()
	err := a.enc.Encode(f)
	a.wmu.Unlock()
	if err != nil {
		return localFrame{}, fmt.Errorf("agent: %w: %v", ErrAgentGone, err)
	}
	select {
	case r := <-ch:
		if r.Error != "" {
			return r, errors.New(r.Error)
		}
		return r, nil
	case <-a.done:
		return localFrame{}, a.Err()
	case <-ctx.Done():
		a.mu.Lock()
		delete(a.pending, f.ID)
		a.mu.Unlock()
		return localFrame{}, context.Cause(ctx)
	}
}

// Publish publishes on the agent's connection; with QoS 1 it returns once AWS
// IoT acknowledged. While the agent reconnects it waits, up to ctx.
func (a *AgentConn) Publish(ctx context.Context, topic string, qos QoS, payload []byte) error {
	_, err := a.call(ctx, localFrame{Op: "publish", Topic: topic, QoS: qos, Payload: payload})
	return err
}

// Subscribe subscribes to a topic filter; h gets the messages one at a time,
// in order. The agent keeps the subscription across its reconnects and
// rotations until Unsubscribe or Close.
func (a *AgentConn) Subscribe(ctx context.Context, filter string, qos QoS, h MessageHandler) error {
	if h == nil {
		return errors.New("agent: Subscribe without a handler")
	}
	a.mu.Lock()
	a.subs[filter] = h
	a.mu.Unlock()
	if _, err := a.call(ctx, localFrame{Op: "subscribe", Filter: filter, QoS: qos}); err != nil {
		a.mu.Lock()
		delete(a.subs, filter)
		a.mu.Unlock()
		return err
	}
	return nil
}

// Unsubscribe ends subscriptions.
func (a *AgentConn) Unsubscribe(ctx context.Context, filters ...string) error {
	var errs []error
	for _, f := range filters {
		_, err := a.call(ctx, localFrame{Op: "unsubscribe", Filter: f})
		errs = append(errs, err)
		a.mu.Lock()
		delete(a.subs, f)
		a.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Status asks the agent about the device's identity and connection.
func (a *AgentConn) Status(ctx context.Context) (*LocalStatus, error) {
	r, err := a.call(ctx, localFrame{Op: "status"})
	if err != nil {
		return nil, err
	}
	if r.Status == nil {
		return nil, errors.New("agent: status reply without a status")
	}
	return r.Status, nil
}

// Done is closed when the connection to the agent ends; Err says why.
func (a *AgentConn) Done() <-chan struct{} { return a.done }

// Err is why the connection ended, nil while it is open.
func (a *AgentConn) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// Close ends the connection; the agent drops its subscriptions.
func (a *AgentConn) Close() error {
	err := a.conn.Close()
	<-a.done
	return err
}
