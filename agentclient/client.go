package agentclient

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
)

// maxLine bounds one frame: MaxPayload in base64, with JSON around it.
const maxLine = 512 * 1024

// Conn is a device program's connection to the agent. Safe for concurrent
// use.
type Conn struct {
	conn net.Conn

	wmu sync.Mutex // serializes writes
	enc *json.Encoder

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan Frame
	subs    map[string]MessageHandler
	err     error

	msgs chan Frame
	done chan struct{}
}

// Dial connects to the agent's local socket and says hello. The program's
// user must be allowed to use the socket (the agent's socket group).
func Dial(ctx context.Context, socket string) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("agentclient: connecting to the agent at %s (is the agent running, and may this user use its socket?): %w", socket, err)
	}
	a := &Conn{conn: c, enc: json.NewEncoder(c), pending: map[uint64]chan Frame{},
		subs: map[string]MessageHandler{}, msgs: make(chan Frame, 256), done: make(chan struct{})}
	go a.read()
	go a.deliver()
	r, err := a.call(ctx, Frame{Op: OpHello, Version: ProtocolVersion})
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("agentclient: hello to the agent at %s: %w", socket, err)
	}
	if r.Version != ProtocolVersion {
		a.Close()
		return nil, fmt.Errorf("agentclient: the agent at %s speaks protocol version %d, this program %d: %w", socket, r.Version, ProtocolVersion, ErrVersion)
	}
	return a, nil
}

func (a *Conn) fail(err error) {
	a.mu.Lock()
	if a.err == nil {
		a.err = err
	}
	a.mu.Unlock()
}

func (a *Conn) read() {
	defer close(a.done)
	sc := bufio.NewScanner(a.conn)
	sc.Buffer(make([]byte, 64*1024), maxLine)
	for sc.Scan() {
		var f Frame
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			// A frame this side cannot read means the two sides disagree
			// on the protocol: say so rather than lose replies quietly.
			a.fail(fmt.Errorf("agentclient: %w: unreadable frame from the agent: %v", ErrProtocol, err))
			a.conn.Close()
			return
		}
		if f.Op == OpMessage {
			select {
			case a.msgs <- f:
			case <-a.done:
				return
			}
			continue
		}
		if f.Op != "" && f.Op != OpHello {
			a.fail(fmt.Errorf("agentclient: %w: unknown frame %q from the agent", ErrProtocol, f.Op))
			a.conn.Close()
			return
		}
		a.mu.Lock()
		ch := a.pending[f.ID]
		delete(a.pending, f.ID)
		a.mu.Unlock()
		if ch == nil {
			a.fail(fmt.Errorf("agentclient: %w: reply %d to no request (error %q)", ErrProtocol, f.ID, f.Error))
			a.conn.Close()
			return
		}
		ch <- f
	}
	err := sc.Err()
	if err == nil {
		err = errors.New("end of stream")
	}
	a.fail(fmt.Errorf("agentclient: %w: %v", ErrAgentGone, err))
}

// deliver calls the handlers one message at a time, in order, apart from the
// reader so a slow handler does not hold up replies.
func (a *Conn) deliver() {
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

func (a *Conn) call(ctx context.Context, f Frame) (Frame, error) {
	ch := make(chan Frame, 1)
	a.mu.Lock()
	if a.err != nil {
		err := a.err
		a.mu.Unlock()
		return Frame{}, err
	}
	a.next++
	f.ID = a.next
	a.pending[f.ID] = ch
	a.mu.Unlock()
	a.wmu.Lock()
	err := a.enc.Encode(f)
	a.wmu.Unlock()
	if err != nil {
		return Frame{}, fmt.Errorf("agentclient: %w: %v", ErrAgentGone, err)
	}
	select {
	case r := <-ch:
		if r.Error != "" {
			if s := sentinelOf(r.Code); s != nil {
				return r, fmt.Errorf("%s (%w)", r.Error, s)
			}
			return r, errors.New(r.Error)
		}
		return r, nil
	case <-a.done:
		return Frame{}, a.Err()
	case <-ctx.Done():
		a.mu.Lock()
		delete(a.pending, f.ID)
		a.mu.Unlock()
		return Frame{}, context.Cause(ctx)
	}
}

// Publish publishes on the agent's connection; with QoS 1 it returns once AWS
// IoT acknowledged. While the agent reconnects it waits, up to ctx. The
// agent's own topics are refused with ErrReservedTopic; a payload over
// MaxPayload with ErrTooLarge.
func (a *Conn) Publish(ctx context.Context, topic string, qos QoS, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("agentclient: publishing %d bytes to %q: %w (AWS IoT's limit is %d)", len(payload), topic, ErrTooLarge, MaxPayload)
	}
	_, err := a.call(ctx, Frame{Op: OpPublish, Topic: topic, QoS: qos, Payload: payload})
	return err
}

// Subscribe subscribes to a topic filter; h gets the messages one at a time,
// in order. The agent keeps the subscription across its reconnects and
// rotations until Unsubscribe or Close.
func (a *Conn) Subscribe(ctx context.Context, filter string, qos QoS, h MessageHandler) error {
	if h == nil {
		return errors.New("agentclient: Subscribe without a handler")
	}
	a.mu.Lock()
	a.subs[filter] = h
	a.mu.Unlock()
	if _, err := a.call(ctx, Frame{Op: OpSubscribe, Filter: filter, QoS: qos}); err != nil {
		a.mu.Lock()
		delete(a.subs, filter)
		a.mu.Unlock()
		return err
	}
	return nil
}

// Unsubscribe ends subscriptions.
func (a *Conn) Unsubscribe(ctx context.Context, filters ...string) error {
	var errs []error
	for _, f := range filters {
		_, err := a.call(ctx, Frame{Op: OpUnsubscribe, Filter: f})
		errs = append(errs, err)
		a.mu.Lock()
		delete(a.subs, f)
		a.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Status asks the agent about the device's identity and connection.
func (a *Conn) Status(ctx context.Context) (*Status, error) {
	r, err := a.call(ctx, Frame{Op: OpStatus})
	if err != nil {
		return nil, err
	}
	if r.Status == nil {
		return nil, fmt.Errorf("agentclient: %w: status reply without a status", ErrProtocol)
	}
	return r.Status, nil
}

// Done is closed when the connection to the agent ends; Err says why.
func (a *Conn) Done() <-chan struct{} { return a.done }

// Err is why the connection ended, nil while it is open.
func (a *Conn) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// Close ends the connection; the agent drops its subscriptions.
func (a *Conn) Close() error {
	err := a.conn.Close()
	<-a.done
	return err
}
