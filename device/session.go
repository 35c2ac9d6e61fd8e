package device

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/jobs"

	"github.com/thingcert/thingcert/rotation"
)

// Session is the device's connection as rotation moves it between
// identities: one iot.Client at a time, presenting either the claim identity
// (with the claim's client ID) or the device's own. It implements
// rotation.Connector, and iot.MQTT for the issuers and the Jobs client, always
// over the connection of the moment.
type Session struct {
	// Config is the template of every client: endpoint, roots, thing name,
	// the device's client ID, backoff, logger. Its Identity is not used.
	Config iot.Config
	// ClaimClientID is the client ID of a claim identity's connection; empty
	// means the device's.
	ClaimClientID string
	// ConfirmFunc, if set, replaces the default confirmation (ConfirmJob over
	// this session's thing Jobs API).
	ConfirmFunc func(ctx context.Context, s *Session, t rotation.Trigger) error
	// MinConnectInterval spaces two CONNECTs with one client ID: AWS IoT
	// refuses more than one per second, and a rotation connects twice in quick
	// succession (the new identity, or the old one again). Zero means 1 s;
	// negative, no spacing (an emulator with the limit off).
	MinConnectInterval time.Duration
	// JustInTime: a new certificate's first connection may be refused while
	// AWS IoT registers it (JITR/JITP); Switch to the device's own identity
	// tries again after such a refusal (see Options.JustInTime).
	JustInTime bool

	switchMu    sync.Mutex // one Switch at a time
	lastConnect time.Time  // under switchMu
	lastID      string     // the client ID of lastConnect

	jobsMu sync.Mutex // one Jobs request at a time (see jobs.Client.Serial)

	mu     sync.Mutex // guards the fields below
	client *iot.Client
	ids    *iot.IdentitySource
	claim  bool
}

var (
	_ rotation.Connector = (*Session)(nil)
	_ iot.MQTT           = (*Session)(nil)
)

// Client is the current client, nil before the first Switch.
func (s *Session) Client() *iot.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.client
}

// Switch connects presenting id, replacing the current connection (AWS IoT
// refuses one client ID twice, so the old connection ends first). Within one
// kind of identity the client stays and reconnects with the new identity;
// between the claim and the device's own a new client with the other client
// ID replaces it.
func (s *Session) Switch(ctx context.Context, id rotation.Identity) error {
	err := s.switchOnce(ctx, id)
	if !s.JustInTime || id.Record.Claim {
		return err
	}
	for attempt := 1; err != nil && attempt <= jitRetries && closedForRegistration(err) && ctx.Err() == nil; attempt++ {
		s.logger().Info("device: AWS IoT closed the connection of certificate "+shortID(id.Record.CertificateID)+
			": a certificate of a CA with auto-registration is registered on its first connection (just-in-time registration or provisioning); connecting again",
			"attempt", attempt+1, "of", jitRetries+1, "error", err)
		if werr := sleep(ctx, time.Duration(attempt)*time.Second); werr != nil {
			return err
		}
		if err = s.switchOnce(ctx, id); err == nil {
			s.logger().Info("device: certificate " + shortID(id.Record.CertificateID) + " accepted after its just-in-time registration")
		}
	}
	return err
}

// jitRetries is how many times a refused first connection is tried again:
// AWS IoT's template runs within a second or two; a JITR program of the
// owner's may take longer, which the rotation's own retries cover.
const jitRetries = 3

// closedForRegistration reports whether err is how AWS IoT ends the first
// connection of a certificate it has just registered: the handshake or the
// first read refused, or the connection closed before CONNACK.
func closedForRegistration(err error) bool {
	return errors.Is(err, iot.ErrClientCertRefused) || errors.Is(err, iot.ErrClosedAfterConnect) || errors.Is(err, iot.ErrTLS)
}

func (s *Session) logger() *slog.Logger {
	if s.Config.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Config.Logger
}

func (s *Session) switchOnce(ctx context.Context, id rotation.Identity) error {
	aid, err := iot.NewIdentity(id.Key, id.Chain)
	if err != nil {
		return rotation.NewFatal("switching identity", err)
	}
	s.switchMu.Lock()
	defer s.switchMu.Unlock()
	s.mu.Lock()
	cur, ids, claim := s.client, s.ids, s.claim
	s.mu.Unlock()
	if cur != nil && claim == id.Record.Claim {
		if err := s.pace(ctx, cur.ClientID()); err != nil {
			return err
		}
		ids.Swap(aid)
		_, err := cur.Reconnect(ctx)
		s.attempted(cur.ClientID())
		return err
	}
	if cur != nil {
		s.mu.Lock()
		s.client = nil
		s.mu.Unlock()
		_ = cur.Disconnect(ctx)
	}
	cfg := s.Config
	cfg.Identity = iot.NewIdentitySource(aid)
	if id.Record.Claim && s.ClaimClientID != "" {
		cfg.ClientID = s.ClaimClientID
	}
	c, err := iot.New(cfg)
	if err != nil {
		return rotation.NewFatal("switching identity", err)
	}
	if err := s.pace(ctx, c.ClientID()); err != nil {
		return err
	}
	_, err = c.Connect(ctx)
	s.attempted(c.ClientID())
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.client, s.ids, s.claim = c, cfg.Identity, id.Record.Claim
	s.mu.Unlock()
	return nil
}

// pace waits until a CONNECT with clientID keeps to MinConnectInterval. The
// interval is counted from the end of the previous attempt (see connected),
// which is after the broker counted it.
func (s *Session) pace(ctx context.Context, clientID string) error {
	interval := s.MinConnectInterval
	if interval == 0 {
		interval = time.Second
	}
	if interval <= 0 || clientID != s.lastID {
		return nil
	}
	wait := time.Until(s.lastConnect.Add(interval))
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// attempted records a CONNECT attempt that has just ended, accepted or not.
func (s *Session) attempted(clientID string) {
	s.lastConnect, s.lastID = time.Now(), clientID
}

// Confirm asks the cloud over the current connection to show it accepts it.
func (s *Session) Confirm(ctx context.Context, t rotation.Trigger) error {
	if s.ConfirmFunc != nil {
		return s.ConfirmFunc(ctx, s, t)
	}
	return jobs.Confirm(ctx, s.Jobs(), t)
}

// Jobs is a Jobs client for the thing over this session.
func (s *Session) Jobs() *jobs.Client {
	return &jobs.Client{Conn: s, ThingName: s.Config.ThingName, Serial: &s.jobsMu}
}

// Close ends the connection.
func (s *Session) Close(ctx context.Context) error {
	s.mu.Lock()
	c := s.client
	s.client = nil
	s.mu.Unlock()
	if c == nil {
		return nil
	}
	return c.Disconnect(ctx)
}

func (s *Session) current() (*iot.Client, error) {
	c := s.Client()
	if c == nil {
		return nil, fmt.Errorf("device: %w: no connection yet", iot.ErrNotConnected)
	}
	return c, nil
}

// Publish publishes on the current connection.
func (s *Session) Publish(ctx context.Context, topic string, qos iot.QoS, payload []byte) error {
	c, err := s.current()
	if err != nil {
		return err
	}
	return c.Publish(ctx, topic, qos, payload)
}

// Subscribe subscribes on the current connection. A subscription does not
// move to the client of another kind of identity.
func (s *Session) Subscribe(ctx context.Context, filter string, qos iot.QoS, h iot.MessageHandler) error {
	c, err := s.current()
	if err != nil {
		return err
	}
	return c.Subscribe(ctx, filter, qos, h)
}

// SubscribeMultiple subscribes to several filters in one SUBSCRIBE on the
// current connection (iot.Client.SubscribeMultiple).
func (s *Session) SubscribeMultiple(ctx context.Context, subs ...iot.Subscription) error {
	c, err := s.current()
	if err != nil {
		return err
	}
	return c.SubscribeMultiple(ctx, subs...)
}

// UnsubscribeNoWait unsubscribes on the current connection without waiting
// for the UNSUBACK (iot.Client.UnsubscribeNoWait).
func (s *Session) UnsubscribeNoWait(filters ...string) {
	if c := s.Client(); c != nil {
		c.UnsubscribeNoWait(filters...)
	}
}

// Unsubscribe unsubscribes on the current connection.
func (s *Session) Unsubscribe(ctx context.Context, filters ...string) error {
	c, err := s.current()
	if errors.Is(err, iot.ErrNotConnected) {
		return nil
	}
	return c.Unsubscribe(ctx, filters...)
}
