package iot

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// QoS is an MQTT quality of service. AWS IoT supports 0 and 1.
type QoS byte

const (
	AtMostOnce  QoS = 0
	AtLeastOnce QoS = 1
)

// Keep-alive limits AWS IoT accepts, and the default.
const (
	DefaultKeepAlive = 60 * time.Second
	MinKeepAlive     = 30 * time.Second
	MaxKeepAlive     = 1200 * time.Second
)

// MQTT is the part of a connection that AWS IoT's request/response APIs
// (fleet provisioning, Jobs) use. *Client implements it, and so does
// the device package's connection that follows rotation between identities.
type MQTT interface {
	Publish(ctx context.Context, topic string, qos QoS, payload []byte) error
	Subscribe(ctx context.Context, filter string, qos QoS, h MessageHandler) error
	Unsubscribe(ctx context.Context, filters ...string) error
}

// DefaultRequestTimeout bounds the wait for an answer to a request (fleet
// provisioning, Jobs) on /accepted or /rejected.
const DefaultRequestTimeout = 30 * time.Second

// DefaultConnectTimeout bounds one attempt: dial, TLS and CONNACK.
const DefaultConnectTimeout = 30 * time.Second

// Config configures a Client. Fields marked optional have a documented zero value.
type Config struct {
	// Endpoint is where to connect (required).
	Endpoint Endpoint
	// Identity serves the client certificate and key (required). Swap it and
	// call Reconnect to present a new identity.
	Identity *IdentitySource
	// Roots are the trusted roots. Nil means AmazonRoots.
	Roots *x509.CertPool
	// ThingName is the device's thing name. Optional.
	ThingName string
	// ClientID is the MQTT client ID. Empty means ThingName: AWS IoT policies
	// commonly allow iot:Connect only for a client ID equal to the thing name.
	ClientID string
	// KeepAlive is the MQTT keep-alive. Zero means 60 s; AWS IoT accepts
	// 30 s to 1200 s and disconnects after 1.5 times it without traffic.
	KeepAlive time.Duration
	// PersistentSession asks the broker to keep subscriptions and queued QoS 1
	// messages across connections (clean session off). AWS IoT keeps such a
	// session for an hour by default. Zero value: a clean session.
	PersistentSession bool
	// ConnectTimeout bounds each attempt. Zero means 30 s.
	ConnectTimeout time.Duration
	// Backoff spaces reconnects. The zero value is the documented default.
	Backoff Backoff
	// Dial opens TCP connections, e.g. through a proxy. Nil dials directly.
	Dial DialFunc
	// OnStateChange, if set, is told about every change of state, with the
	// reason for a failure or loss. It is called from the client's own
	// goroutine, one change at a time and in order: it must return quickly
	// and must not call the Client's methods (start a goroutine for that).
	OnStateChange func(StateChange)
	// Logger receives debug lines. Nil discards.
	Logger *slog.Logger
	// Now, After and Rand replace the clock, timers and the jitter source
	// (in [0, 1)), for tests. Nil means the real ones.
	Now   func() time.Time
	After func(time.Duration) <-chan time.Time
	Rand  func() float64
}

// ConnState is the client's connection state.
type ConnState int

const (
	// StateDisconnected: not connected and not trying (before Connect, after
	// Disconnect, or after a first Connect failed).
	StateDisconnected ConnState = iota
	// StateConnecting: an attempt is under way.
	StateConnecting
	// StateConnected: connected and subscriptions restored.
	StateConnected
	// StateWaiting: the connection was lost or an attempt failed; the next
	// attempt starts after StateChange.Retry.
	StateWaiting
)

func (s ConnState) String() string {
	switch s {
	case StateDisconnected:
		return "disconnected"
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateWaiting:
		return "waiting to reconnect"
	}
	return fmt.Sprintf("ConnState(%d)", int(s))
}

// StateChange is one transition reported to Config.OnStateChange.
type StateChange struct {
	State ConnState
	// Err is why an attempt failed or a connection ended (a *ConnectError).
	Err error
	// Info describes the connection, for StateConnected.
	Info *ConnectInfo
	// Failures counts consecutive failures (see Backoff.AfterLoss).
	Failures int
	// Retry is the wait before the next attempt, for StateWaiting.
	Retry time.Duration
}

// ConnectInfo describes an established connection.
type ConnectInfo struct {
	Endpoint       string
	ClientID       string
	TLS            TLSInfo
	SessionPresent bool
	// Time taken by each step: TCP connect, TLS handshake, CONNECT to CONNACK.
	Dial, Handshake, CONNACK time.Duration
	ConnectedAt              time.Time
}

// Message is a message received on a subscription.
type Message struct {
	Topic     string
	Payload   []byte
	QoS       QoS
	Retained  bool
	Duplicate bool
}

// MessageHandler receives messages. Handlers may run concurrently with each
// other and with the caller's code; they may call Publish.
type MessageHandler func(Message)

// ErrNotConnected: the client is not running (Connect has not succeeded, or
// Disconnect was called).
var ErrNotConnected = errors.New("not connected")

// ErrSubscribeRefused: the broker answered SUBSCRIBE with a failure.
var ErrSubscribeRefused = errors.New("subscription refused")

// Client is an MQTT connection to AWS IoT that stays up: after Connect succeeds
// it reconnects on its own, with backoff, until Disconnect, restoring
// subscriptions after each reconnect. Safe for concurrent use.
type Client struct {
	cfg      Config
	ep       Endpoint
	clientID string
	tls      *tls.Config
	store    sharedStore
	now      func() time.Time
	after    func(time.Duration) <-chan time.Time
	rand     func() float64
	log      *slog.Logger

	opMu sync.Mutex // serializes Connect and Disconnect

	mu      sync.Mutex
	cur     *session // the current connection, nil between connections
	ready   chan struct{}
	subs    map[string]subscription
	running bool
	stop    context.CancelFunc
	done    chan struct{}
	gen     uint64

	lostc      chan lostEvent
	reconnectc chan reconnectReq
}

type subscription struct {
	qos     QoS
	handler MessageHandler
}

type lostEvent struct {
	gen uint64
	err error
}

type reconnectReq struct {
	ctx   context.Context
	reply chan connectResult
}

type connectResult struct {
	info *ConnectInfo
	err  error
}

// session is one MQTT connection.
type session struct {
	pc    paho.Client
	info  *ConnectInfo
	gen   uint64
	ready bool // subscriptions restored

	lostOnce sync.Once
	lost     chan struct{} // closed when the connection ends
	lostErr  error
}

func (s *session) markLost(err error) {
	s.lostOnce.Do(func() {
		s.lostErr = err
		close(s.lost)
	})
}

// New checks cfg and makes a Client. It does not connect.
func New(cfg Config) (*Client, error) {
	if err := cfg.Endpoint.Validate(); err != nil {
		return nil, err
	}
	if cfg.Identity == nil {
		return nil, errors.New("iot: no device identity: give a key and its certificate")
	}
	id := cfg.ClientID
	if id == "" {
		id = cfg.ThingName
	}
	if err := ValidateClientID(id); err != nil {
		return nil, err
	}
	ka, err := keepAlive(cfg.KeepAlive)
	if err != nil {
		return nil, err
	}
	cfg.KeepAlive = ka
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if err := cfg.Backoff.Validate(); err != nil {
		return nil, err
	}
	tc, err := NewTLSConfig(cfg.Endpoint, cfg.Roots, cfg.Identity)
	if err != nil {
		return nil, err
	}
	c := &Client{
		cfg: cfg, ep: cfg.Endpoint, clientID: id, tls: tc,
		now: cfg.Now, after: cfg.After, rand: cfg.Rand, log: cfg.Logger,
		ready:      make(chan struct{}),
		subs:       map[string]subscription{},
		lostc:      make(chan lostEvent, 1),
		reconnectc: make(chan reconnectReq),
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.after == nil {
		c.after = time.After
	}
	if c.rand == nil {
		c.rand = rand.Float64
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.cfg.Dial == nil {
		d := &net.Dialer{}
		c.cfg.Dial = d.DialContext
	}
	ms := paho.NewMemoryStore()
	ms.Open()
	c.store = sharedStore{ms}
	return c, nil
}

// ValidateClientID checks a client ID against AWS IoT's rules.
func ValidateClientID(id string) error {
	switch {
	case id == "":
		return errors.New("iot: no client ID: give the thing name or a client ID (AWS IoT policies usually allow iot:Connect only for the thing name)")
	case len(id) > 128:
		return fmt.Errorf("iot: client ID %q is %d bytes; AWS IoT allows at most 128", id, len(id))
	case strings.HasPrefix(id, "$"):
		return fmt.Errorf("iot: client ID %q: AWS IoT reserves IDs starting with $", id)
	}
	return nil
}

func keepAlive(d time.Duration) (time.Duration, error) {
	if d == 0 {
		return DefaultKeepAlive, nil
	}
	if d < MinKeepAlive || d > MaxKeepAlive || d%time.Second != 0 {
		return 0, fmt.Errorf("iot: keep-alive %s: AWS IoT accepts whole seconds from %s to %s", d, MinKeepAlive, MaxKeepAlive)
	}
	return d, nil
}

// ClientID is the MQTT client ID in use.
func (c *Client) ClientID() string { return c.clientID }

// Endpoint is the endpoint the client connects to.
func (c *Client) Endpoint() Endpoint { return c.ep }

func (c *Client) notify(ch StateChange) {
	c.log.Debug("mqtt state", "endpoint", c.ep.String(), "state", ch.State.String(), "err", ch.Err, "retry", ch.Retry)
	if c.cfg.OnStateChange != nil {
		c.cfg.OnStateChange(ch)
	}
}

// Connect makes one attempt to connect and returns why it failed, as a
// *ConnectError. Once connected, the client keeps the connection up on its own
// until Disconnect. ctx bounds this attempt only.
func (c *Client) Connect(ctx context.Context) (*ConnectInfo, error) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	c.mu.Lock()
	running := c.running
	c.mu.Unlock()
	if running {
		return nil, fmt.Errorf("iot: %s: already connected", c.ep)
	}
	c.notify(StateChange{State: StateConnecting})
	s, err := c.dial(ctx)
	if err != nil {
		c.notify(StateChange{State: StateDisconnected, Err: err})
		return nil, err
	}
	// The connection outlives ctx: it is ended by Disconnect.
	loopCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	c.mu.Lock()
	c.running, c.stop, c.done = true, stop, done
	c.mu.Unlock()
	c.establish(loopCtx, s)
	go c.supervise(loopCtx, done)
	return s.info, nil
}

// Reconnect drops the current connection and connects again at once,
// presenting the identity now current in the IdentitySource. It returns the
// result of that one attempt; if it fails, the client keeps retrying with
// backoff, so a caller that swapped in a new identity should swap the old one
// back and call Reconnect again.
func (c *Client) Reconnect(ctx context.Context) (*ConnectInfo, error) {
	c.mu.Lock()
	running, done := c.running, c.done
	c.mu.Unlock()
	if !running {
		return nil, fmt.Errorf("iot: %s: %w: call Connect first", c.ep, ErrNotConnected)
	}
	req := reconnectReq{ctx: ctx, reply: make(chan connectResult, 1)}
	select {
	case c.reconnectc <- req:
	case <-done:
		return nil, fmt.Errorf("iot: %s: %w", c.ep, ErrNotConnected)
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	r := <-req.reply // the supervisor answers every request it takes
	return r.info, r.err
}

// Disconnect sends DISCONNECT, closes the connection and stops reconnecting.
// ctx bounds the wait for DISCONNECT to be written. The client may Connect
// again afterwards.
func (c *Client) Disconnect(ctx context.Context) error {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	c.mu.Lock()
	if !c.running {
		c.mu.Unlock()
		return nil
	}
	stop, done := c.stop, c.done
	c.mu.Unlock()
	stop()
	<-done
	c.mu.Lock()
	s := c.cur
	c.cur, c.running = nil, false
	c.mu.Unlock()
	if s != nil {
		c.closeSession(ctx, s)
	}
	c.notify(StateChange{State: StateDisconnected})
	return nil
}

func (c *Client) closeSession(ctx context.Context, s *session) {
	quiesce := time.Second
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < quiesce {
			quiesce = max(left, 0)
		}
	}
	s.markLost(fmt.Errorf("iot: %s: connection closed by this client", c.ep))
	s.pc.Disconnect(uint(quiesce / time.Millisecond))
}

// supervise owns reconnection: it waits for the connection to be lost or for a
// Reconnect request, and brings the connection back.
func (c *Client) supervise(ctx context.Context, done chan struct{}) {
	defer close(done)
	failures := 0
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-c.lostc:
			c.mu.Lock()
			s := c.cur
			if s == nil || s.gen != ev.gen {
				c.mu.Unlock()
				continue
			}
			c.cur = nil
			c.mu.Unlock()
			upFor := c.now().Sub(s.info.ConnectedAt)
			failures = c.cfg.Backoff.AfterLoss(failures, upFor)
			d := c.cfg.Backoff.Delay(failures, c.rand())
			retry = c.after(d)
			c.notify(StateChange{State: StateWaiting, Err: lostError(c.ep, c.clientID, upFor, ev.err), Failures: failures, Retry: d})
		case <-retry:
			retry = nil
			c.notify(StateChange{State: StateConnecting, Failures: failures})
			s, err := c.dial(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				failures++
				d := c.cfg.Backoff.Delay(failures, c.rand())
				retry = c.after(d)
				c.notify(StateChange{State: StateWaiting, Err: err, Failures: failures, Retry: d})
				continue
			}
			c.establish(ctx, s)
		case req := <-c.reconnectc:
			retry = nil
			c.mu.Lock()
			old := c.cur
			c.cur = nil
			c.mu.Unlock()
			if old != nil {
				c.closeSession(req.ctx, old)
			}
			rctx, cancel := context.WithCancel(req.ctx)
			unlink := context.AfterFunc(ctx, cancel)
			c.notify(StateChange{State: StateConnecting, Failures: failures})
			s, err := c.dial(rctx)
			unlink()
			cancel()
			if err != nil {
				req.reply <- connectResult{err: err}
				if ctx.Err() != nil {
					return
				}
				failures++
				d := c.cfg.Backoff.Delay(failures, c.rand())
				retry = c.after(d)
				c.notify(StateChange{State: StateWaiting, Err: err, Failures: failures, Retry: d})
				continue
			}
			c.establish(ctx, s)
			req.reply <- connectResult{info: s.info}
		}
	}
}

// establish makes s the current connection, restores subscriptions the broker
// does not remember, and only then calls the client connected.
func (c *Client) establish(ctx context.Context, s *session) {
	c.mu.Lock()
	c.cur = s
	subs := make(map[string]subscription, len(c.subs))
	for f, sub := range c.subs {
		subs[f] = sub
	}
	c.mu.Unlock()
	var errs []error
	if !s.info.SessionPresent && len(subs) > 0 {
		// Restored maxFiltersPerSubscribe at a time: one round trip for the
		// usual handful rather than one per filter.
		filters := slices.Sorted(maps.Keys(subs))
		for chunk := range slices.Chunk(filters, maxFiltersPerSubscribe) {
			batch := make(map[string]subscription, len(chunk))
			for _, f := range chunk {
				batch[f] = subs[f]
			}
			sctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
			if err := c.subscribeOn(sctx, s, batch); err != nil {
				errs = append(errs, err)
			}
			cancel()
		}
	}
	c.mu.Lock()
	if c.cur == s {
		s.ready = true
		close(c.ready)
		c.ready = make(chan struct{})
	}
	c.mu.Unlock()
	c.notify(StateChange{State: StateConnected, Info: s.info, Err: errors.Join(errs...)})
}

// dial makes one attempt: TCP, TLS, CONNECT, CONNACK.
func (c *Client) dial(ctx context.Context) (*session, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	defer cancel()
	c.mu.Lock()
	c.gen++
	gen := c.gen
	subs := make(map[string]subscription, len(c.subs))
	for f, sub := range c.subs {
		subs[f] = sub
	}
	c.mu.Unlock()

	a := &attempt{}
	var (
		tlsInfo *TLSInfo
		openErr error
	)
	o := paho.NewClientOptions()
	// The URL is only a label: the connection is opened by the function below.
	o.AddBroker((&url.URL{Scheme: "tls", Host: c.ep.DialAddress()}).String())
	o.SetClientID(c.clientID)
	o.SetProtocolVersion(4) // explicit, or paho retries a refused CONNECT as MQTT 3.1
	o.SetCleanSession(!c.cfg.PersistentSession)
	o.SetKeepAlive(c.cfg.KeepAlive)
	o.SetConnectTimeout(c.cfg.ConnectTimeout)
	o.SetWriteTimeout(c.cfg.ConnectTimeout)
	// Reconnection is ours: paho's has no jitter and cannot be told the
	// identity changed.
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetOrderMatters(false)
	o.SetStore(c.store)
	o.SetCustomOpenConnectionFn(func(*url.URL, paho.ClientOptions) (net.Conn, error) {
		conn, info, err := dialTLS(ctx, c.ep, c.tls, c.cfg.Dial, c.now, a)
		if err != nil {
			openErr = err
			return nil, err
		}
		tlsInfo = info
		return tracedConn{Conn: conn, a: a}, nil
	})
	o.SetConnectionLostHandler(func(_ paho.Client, err error) { c.connectionLost(gen, err) })
	pc := paho.NewClient(o)
	for f, sub := range subs {
		pc.AddRoute(f, route(sub.handler))
	}

	unlink := context.AfterFunc(ctx, a.abort)
	tok := pc.Connect()
	<-tok.Done()
	aborted := !unlink()
	if err := tok.Error(); err != nil {
		if openErr != nil {
			return nil, openErr
		}
		rc := connackNetworkError
		if ct, ok := tok.(*paho.ConnectToken); ok {
			rc = ct.ReturnCode()
		}
		return nil, classifyMQTT(ctx, c.ep, c.clientID, rc, err, a.firstReadErr(), a.wrote.Load())
	}
	if aborted {
		pc.Disconnect(0)
		return nil, classifyMQTT(ctx, c.ep, c.clientID, connackNetworkError, context.Cause(ctx), nil, true)
	}
	a.established.Store(true)
	connected := c.now()
	ct := tok.(*paho.ConnectToken)
	info := &ConnectInfo{
		Endpoint:       c.ep.String(),
		ClientID:       c.clientID,
		TLS:            *tlsInfo,
		SessionPresent: ct.SessionPresent(),
		Dial:           a.dialed.Sub(a.start),
		Handshake:      a.handshaken.Sub(a.dialed),
		CONNACK:        connected.Sub(a.handshaken),
		ConnectedAt:    connected,
	}
	return &session{pc: pc, info: info, gen: gen, lost: make(chan struct{})}, nil
}

// connectionLost is paho's report that connection gen ended by itself.
func (c *Client) connectionLost(gen uint64, err error) {
	c.mu.Lock()
	s, done := c.cur, c.done
	c.mu.Unlock()
	if s == nil || s.gen != gen {
		return // closed by us, or already replaced
	}
	s.markLost(err)
	select {
	case c.lostc <- lostEvent{gen: gen, err: err}:
	case <-done:
	}
}

// waitReady returns the current connection once it is up and its
// subscriptions are restored.
func (c *Client) waitReady(ctx context.Context) (*session, error) {
	for {
		c.mu.Lock()
		s, ready, running, done := c.cur, c.ready, c.running, c.done
		c.mu.Unlock()
		if !running {
			return nil, fmt.Errorf("iot: %s: %w: call Connect first", c.ep, ErrNotConnected)
		}
		if s != nil && s.ready {
			select {
			case <-s.lost:
			default:
				return s, nil
			}
		}
		select {
		case <-ready:
		case <-done:
		case <-ctx.Done():
			return nil, fmt.Errorf("iot: %s: waiting for the connection: %w", c.ep, context.Cause(ctx))
		}
	}
}

// Publish sends a message and, for QoS 1, waits for the PUBACK. While the
// client is reconnecting it waits for the connection, up to ctx. If the
// connection is lost before the PUBACK the message may or may not have been
// delivered; the error says so.
func (c *Client) Publish(ctx context.Context, topic string, qos QoS, payload []byte) error {
	if err := ValidateTopic(topic, false); err != nil {
		return err
	}
	if qos > AtLeastOnce {
		return fmt.Errorf("iot: QoS %d: AWS IoT supports QoS 0 and 1", qos)
	}
	s, err := c.waitReady(ctx)
	if err != nil {
		return err
	}
	tok := s.pc.Publish(topic, byte(qos), false, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			// paho fails a pending publish with its own words when the
			// connection drops under it ("connection lost before Publish
			// completed"): that is a lost connection, and callers test for it.
			if strings.Contains(err.Error(), "connection lost") {
				return fmt.Errorf("iot: %s: publish to %q: %w before the PUBACK (the message may or may not have been delivered): %v", c.ep, topic, ErrConnectionLost, err)
			}
			return fmt.Errorf("iot: %s: publish to %q: %w", c.ep, topic, err)
		}
		return nil
	case <-s.lost:
		return fmt.Errorf("iot: %s: publish to %q: %w before the PUBACK (the message may or may not have been delivered): %v", c.ep, topic, ErrConnectionLost, s.lostErr)
	case <-ctx.Done():
		return fmt.Errorf("iot: %s: publish to %q: no PUBACK: %w", c.ep, topic, context.Cause(ctx))
	}
}

// Subscribe subscribes to a topic filter and waits for the SUBACK. The
// subscription is restored after every reconnect until Unsubscribe.
func (c *Client) Subscribe(ctx context.Context, filter string, qos QoS, h MessageHandler) error {
	return c.SubscribeMultiple(ctx, Subscription{Filter: filter, QoS: qos, Handler: h})
}

// Subscription is one topic filter of a SubscribeMultiple.
type Subscription struct {
	Filter  string
	QoS     QoS
	Handler MessageHandler
}

// maxFiltersPerSubscribe is AWS IoT's limit on the topic filters of one
// SUBSCRIBE.
const maxFiltersPerSubscribe = 8

// MultiSubscriber is an MQTT connection that can subscribe to several topic
// filters in one SUBSCRIBE packet: one round trip instead of one per filter
// (a request/response exchange subscribes to /accepted and /rejected).
// SubscribeAll uses it where a connection has it.
type MultiSubscriber interface {
	SubscribeMultiple(ctx context.Context, subs ...Subscription) error
}

// SubscribeAll subscribes m to every filter of subs, in one SUBSCRIBE where m
// is a MultiSubscriber and one after the other otherwise. On a failure none
// of them is left subscribed.
func SubscribeAll(ctx context.Context, m MQTT, subs ...Subscription) error {
	if ms, ok := m.(MultiSubscriber); ok {
		return ms.SubscribeMultiple(ctx, subs...)
	}
	for i, s := range subs {
		if err := m.Subscribe(ctx, s.Filter, s.QoS, s.Handler); err != nil {
			if i > 0 {
				done := make([]string, i)
				for j := range done {
					done[j] = subs[j].Filter
				}
				UnsubscribeNoWait(ctx, m, done...)
			}
			return err
		}
	}
	return nil
}

// NoWaitUnsubscriber is an MQTT connection that can end subscriptions
// without waiting for the broker's UNSUBACK.
type NoWaitUnsubscriber interface {
	UnsubscribeNoWait(filters ...string)
}

// UnsubscribeNoWait ends m's subscriptions to filters without waiting for the
// UNSUBACK where m is a NoWaitUnsubscriber, and with Unsubscribe, its error
// ignored, otherwise.
func UnsubscribeNoWait(ctx context.Context, m MQTT, filters ...string) {
	if nw, ok := m.(NoWaitUnsubscriber); ok {
		nw.UnsubscribeNoWait(filters...)
		return
	}
	_ = m.Unsubscribe(ctx, filters...)
}

// SubscribeMultiple subscribes to up to eight topic filters (AWS IoT's limit
// per SUBSCRIBE) in one SUBSCRIBE packet and waits for its SUBACK. The
// subscriptions are restored after every reconnect until Unsubscribe. If the
// broker refuses any filter, none of them stays subscribed and the error is
// ErrSubscribeRefused.
func (c *Client) SubscribeMultiple(ctx context.Context, subs ...Subscription) error {
	if len(subs) == 0 {
		return nil
	}
	if len(subs) > maxFiltersPerSubscribe {
		return fmt.Errorf("iot: %d topic filters in one SUBSCRIBE; AWS IoT allows %d", len(subs), maxFiltersPerSubscribe)
	}
	batch := make(map[string]subscription, len(subs))
	for _, sub := range subs {
		if err := ValidateTopic(sub.Filter, true); err != nil {
			return err
		}
		if sub.QoS > AtLeastOnce {
			return fmt.Errorf("iot: QoS %d: AWS IoT supports QoS 0 and 1", sub.QoS)
		}
		if sub.Handler == nil {
			return errors.New("iot: Subscribe without a handler")
		}
		if _, dup := batch[sub.Filter]; dup {
			return fmt.Errorf("iot: topic filter %q twice in one SUBSCRIBE", sub.Filter)
		}
		batch[sub.Filter] = subscription{qos: sub.QoS, handler: sub.Handler}
	}
	c.mu.Lock()
	if !c.running {
		c.mu.Unlock()
		return fmt.Errorf("iot: %s: %w: call Connect first", c.ep, ErrNotConnected)
	}
	maps.Copy(c.subs, batch)
	c.mu.Unlock()
	for {
		s, err := c.waitReady(ctx)
		if err == nil {
			err = c.subscribeOn(ctx, s, batch)
			if errors.Is(err, ErrConnectionLost) {
				continue // the next connection restores them; wait for that
			}
		}
		if err != nil {
			c.mu.Lock()
			for f := range batch {
				delete(c.subs, f)
			}
			c.mu.Unlock()
			if s != nil && errors.Is(err, ErrSubscribeRefused) && len(batch) > 1 {
				// Those granted beside the refused one go too: the caller
				// asked for all of them or none.
				s.pc.Unsubscribe(slices.Collect(maps.Keys(batch))...)
			}
		}
		return err
	}
}

// subscribeOn sends one SUBSCRIBE for every filter of batch on s and waits
// for the SUBACK.
func (c *Client) subscribeOn(ctx context.Context, s *session, batch map[string]subscription) error {
	filters := make(map[string]byte, len(batch))
	for f, sub := range batch {
		filters[f] = byte(sub.qos)
		s.pc.AddRoute(f, route(sub.handler))
	}
	names := slices.Sorted(maps.Keys(batch))
	what := fmt.Sprintf("%q", names[0])
	if len(names) > 1 {
		what = fmt.Sprintf("%q", names)
	}
	tok := s.pc.SubscribeMultiple(filters, nil)
	select {
	case <-tok.Done():
	case <-s.lost:
		return fmt.Errorf("iot: %s: subscribe to %s: %w", c.ep, what, ErrConnectionLost)
	case <-ctx.Done():
		return fmt.Errorf("iot: %s: subscribe to %s: no SUBACK: %w", c.ep, what, context.Cause(ctx))
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("iot: %s: subscribe to %s: %w", c.ep, what, err)
	}
	if st, ok := tok.(*paho.SubscribeToken); ok {
		res := st.Result()
		for _, f := range names {
			if code, ok := res[f]; ok && code >= 0x80 {
				return fmt.Errorf("iot: %s: subscribe to %q: %w: on AWS IoT the policy must allow iot:Subscribe on topicfilter/%s and iot:Receive on the matching topics",
					c.ep, f, ErrSubscribeRefused, f)
			}
		}
	}
	return nil
}

// Unsubscribe ends subscriptions and stops restoring them.
func (c *Client) Unsubscribe(ctx context.Context, filters ...string) error {
	s := c.unsubscribe(filters)
	if s == nil {
		return nil // the next connection will not restore them
	}
	tok := s.pc.Unsubscribe(filters...)
	select {
	case <-tok.Done():
		return tok.Error()
	case <-s.lost:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// UnsubscribeNoWait ends subscriptions and stops restoring them, without
// waiting for the UNSUBACK: in MQTT 3.1.1 it carries no result, and messages
// on the filters stop reaching their handlers once the UNSUBSCRIBE is queued,
// ahead of any later SUBSCRIBE on this connection.
func (c *Client) UnsubscribeNoWait(filters ...string) {
	if s := c.unsubscribe(filters); s != nil {
		s.pc.Unsubscribe(filters...)
	}
}

// unsubscribe forgets filters and returns the connection to send the
// UNSUBSCRIBE on, or nil when there is none ready.
func (c *Client) unsubscribe(filters []string) *session {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range filters {
		delete(c.subs, f)
	}
	if s := c.cur; s != nil && s.ready {
		return s
	}
	return nil
}

func route(h MessageHandler) paho.MessageHandler {
	return func(_ paho.Client, m paho.Message) {
		h(Message{Topic: m.Topic(), Payload: m.Payload(), QoS: QoS(m.Qos()), Retained: m.Retained(), Duplicate: m.Duplicate()})
	}
}

func ValidateTopic(t string, filter bool) error {
	switch {
	case t == "":
		return errors.New("iot: empty topic")
	case len(t) > 256:
		return fmt.Errorf("iot: topic %q is %d bytes; AWS IoT allows 256", t, len(t))
	case !filter && strings.ContainsAny(t, "+#"):
		return fmt.Errorf("iot: topic %q: wildcards are for subscriptions, not publishing", t)
	}
	return nil
}

// sharedStore keeps a persistent session's in-flight messages across the
// paho clients the Client makes, one per connection. Open and Close are no-ops
// because an old paho client closing must not close the store the new one uses.
type sharedStore struct{ *paho.MemoryStore }

func (sharedStore) Open()  {}
func (sharedStore) Close() {}
