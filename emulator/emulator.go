package emulator

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/thingcert/thingcert/emulator/iotpolicy"
)

// Emulator is a running local AWS IoT Core for devices: an MQTT broker over
// mutual TLS that applies AWS IoT's certificate rules, routes connections to
// accounts by SNI, and answers the fleet-provisioning and Jobs MQTT APIs. It
// embeds its Registry, whose methods are the admin API (register a CA or a
// certificate, set a status, create a job, read a job execution or the
// connection history...). Use it from tests as httptest.Server:
//
//	emu, err := emulator.Start(ctx, emulator.Config{Accounts: []emulator.Account{{Name: "dev"}}})
//	defer emu.Close()
//	cfg := emu.ClientTLS("dev") // RootCAs and ServerName (SNI) set; add Certificates
type Emulator struct {
	*Registry
	cfg Config

	server       *mqtt.Server
	mqttLog      *slog.Logger
	baseTLS      *tls.Config
	serverKey    crypto.Signer
	serverCert   atomic.Pointer[tls.Certificate]
	connectLimit *limiter
	// accountConnects is the per-account CONNECT quota (AWS: 500/s).
	accountConnects *limiter
	listeners       []*tlsListener
	admin           *adminServer
	api             *apiServer

	startOnce sync.Once
	closeOnce sync.Once
	closeErr  error

	faultsOnce sync.Once // faults.go: InjectFault
	faults     *faultSet

	// The jobs ticker (AdvanceJobs every second) stops when stopJobs closes.
	stopJobs chan struct{}
	jobsDone chan struct{}
}

// New opens the state (see Open) and prepares an emulator; Start makes it listen.
func New(ctx context.Context, cfg Config) (*Emulator, error) {
	reg, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	acr := rateOr(cfg.AccountConnectRate, defaultAccountConnects)
	e := &Emulator{Registry: reg, cfg: cfg, connectLimit: intervalLimiter(cfg.connectInterval()), accountConnects: newLimiter(acr, acr)}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		reg.Close()
		return nil, fmt.Errorf("emulator: making the server key: %w", err)
	}
	e.serverKey = key
	if err := e.reissueServerCert(); err != nil {
		reg.Close()
		return nil, err
	}
	e.baseTLS = &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The trust decision is per account, so the emulator verifies the client
		// certificate itself (VerifyConnection), against the registry.
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return e.serverCert.Load(), nil
		},
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = maxPacketSize
	caps.MaximumQos = 1
	caps.MaximumSessionExpiryInterval = maxSessionExpiry
	// mochi allocates each client's outbound queue whole when the client
	// connects (8 bytes a slot): 1,024 slots were 8 KiB of every held
	// connection, which AWS IoT's per-connection limits never fill (100
	// unacknowledged QoS 1 messages, 100 publishes a second). A message
	// that finds the queue full is dropped, as AWS drops what a connection
	// cannot take.
	caps.MaximumClientWritesPending = maxClientWritesPending
	caps.MaximumInflight = 100
	caps.ReceiveMaximum = 100
	caps.MinimumProtocolVersion = 4 // MQTT 3.1.1 and 5, as AWS IoT
	e.mqttLog = reg.log.With("component", "mqtt")
	e.server = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		// crypto/tls already holds each decrypted record, so mochi's read
		// buffer only saves calls into it: 512 bytes hold every packet of an
		// idle device (PINGREQ, PUBACK) instead of mochi's 2 KiB, and
		// larger packets (up to the 128 KiB maxPacketSize, which mochi
		// enforces from the fixed header) are read straight into their own
		// buffer whatever this size.
		ClientNetReadBufferSize: clientReadBufferSize,
		Logger:                  slog.New(levelAtLeast{e.mqttLog.Handler(), slog.LevelError}),
	})
	if err := e.server.AddHook(&hook{e: e}, nil); err != nil {
		reg.Close()
		return nil, fmt.Errorf("emulator: %w", err)
	}
	reg.events = registryEvents{
		accountsChanged: func() {
			if err := e.reissueServerCert(); err != nil {
				reg.log.Error("emulator: re-issuing the server certificate", "error", err)
			}
			e.apiAccountsChanged()
		},
		statusChanged: e.certificateStatusChanged,
		notify:        e.notify,
	}
	return e, nil
}

// Start is New followed by Emulator.Start.
func Start(ctx context.Context, cfg Config) (*Emulator, error) {
	e, err := New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := e.Start(ctx); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// Start opens the listeners and, with a state folder, the admin socket. It
// returns once they accept connections; Close stops everything.
func (e *Emulator) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := errors.New("emulator: already started")
	e.startOnce.Do(func() { err = e.start() })
	return err
}

func (e *Emulator) start() error {
	listen := e.cfg.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	e.listeners = append(e.listeners, &tlsListener{id: "mqtt-8883", addr: listen, emu: e})
	if e.cfg.ALPNListen != "" {
		e.listeners = append(e.listeners, &tlsListener{id: "mqtt-443-alpn", addr: e.cfg.ALPNListen, requireALPN: true, emu: e})
	}
	for _, l := range e.listeners {
		if err := e.server.AddListener(l); err != nil {
			return err
		}
	}
	if e.cfg.APIListen != "" {
		if err := e.startAPI(e.cfg.APIListen); err != nil {
			return err
		}
	}
	if e.dir != "" {
		a, err := serveAdmin(e.Registry, filepath.Join(e.dir, AdminSocketFile))
		if err != nil {
			return err
		}
		e.admin = a
	}
	if err := e.server.Serve(); err != nil {
		return fmt.Errorf("emulator: starting the MQTT server: %w", err)
	}
	attrs := []any{"mqtt", e.Addr(), "root_ca", e.RootCAFile()}
	if a := e.ALPNAddr(); a != "" {
		attrs = append(attrs, "mqtt_alpn", a)
	}
	if u := e.APIURL(); u != "" {
		attrs = append(attrs, "api", u)
	}
	e.log.Info("emulator: listening", attrs...)
	e.stopJobs, e.jobsDone = make(chan struct{}), make(chan struct{})
	go e.runJobs()
	return nil
}

// runJobs advances the jobs once a second of wall time, on the emulator's own
// clock, so rollouts, timeouts and aborts happen without anyone asking.
func (e *Emulator) runJobs() {
	defer close(e.jobsDone)
	t := time.NewTicker(jobsTick)
	defer t.Stop()
	for {
		select {
		case <-e.stopJobs:
			return
		case <-t.C:
			if err := e.AdvanceJobs(context.Background()); err != nil {
				e.log.Warn("emulator: advancing jobs", "error", err)
			}
		}
	}
}

// Close disconnects every device, stops the listeners and the admin socket and
// releases the state folder.
func (e *Emulator) Close() error {
	e.closeOnce.Do(func() {
		if e.stopJobs != nil {
			close(e.stopJobs)
			<-e.jobsDone
		}
		if e.admin != nil {
			e.admin.close()
		}
		if e.api != nil {
			e.api.close()
		}
		if e.server != nil {
			_ = e.server.Close()
		}
		for _, l := range e.listeners {
			l.wg.Wait()
		}
		e.closeErr = e.Registry.Close()
	})
	return e.closeErr
}

// Addr is the host:port of the MQTT listener (AWS's port 8883).
func (e *Emulator) Addr() string {
	if len(e.listeners) == 0 {
		return ""
	}
	return e.listeners[0].Address()
}

// ALPNAddr is the host:port of the port-443-style listener, "" when
// Config.ALPNListen was not set.
func (e *Emulator) ALPNAddr() string {
	for _, l := range e.listeners {
		if l.requireALPN {
			return l.Address()
		}
	}
	return ""
}

// Endpoint is an account's endpoint host name (the SNI its devices send), ""
// when there is no such account.
func (e *Emulator) Endpoint(account string) string {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if a, ok := e.st.Accounts[account]; ok {
		return a.Endpoint()
	}
	return ""
}

// RootCAFile is the path of the root CA PEM in the state folder ("" in memory).
func (e *Emulator) RootCAFile() string {
	if e.dir == "" {
		return ""
	}
	return filepath.Join(e.dir, RootCAFile)
}

// ClientTLS is a client TLS configuration for an account's devices: it trusts
// the emulator's root and sends the account's endpoint as SNI. Add the device's
// Certificates (or GetClientCertificate), and for the port-443-style listener
// NextProtos = []string{"x-amzn-mqtt-ca"}.
func (e *Emulator) ClientTLS(account string) *tls.Config {
	return &tls.Config{RootCAs: e.RootCAs(), ServerName: e.Endpoint(account), MinVersion: tls.VersionTLS12}
}

func (e *Emulator) reissueServerCert() error {
	e.mu.RLock()
	names := make([]string, 0, len(e.st.Accounts))
	for _, a := range e.st.Accounts {
		names = append(names, a.Endpoint())
	}
	e.mu.RUnlock()
	sort.Strings(names)
	cert, err := e.root.serverCertificate(e.serverKey, names)
	if err != nil {
		return err
	}
	e.serverCert.Store(cert)
	return nil
}

// record adds an event to the history and logs it; refusals are warnings that
// name the rule, the certificate ID and the SNI.
func (e *Emulator) record(ev ConnectionEvent, v verdict) {
	ev.Rule, ev.Reason = v.Rule, v.Reason
	// Logged first: whoever sees the event in the history finds its log line.
	defer e.history.add(ev)
	attrs := []any{"rule", ev.Rule, "reason", ev.Reason, "cert_id", ev.CertificateID, "sni", ev.SNI, "account", ev.Account, "client_id", ev.ClientID, "remote", ev.Remote, "listener", ev.Listener}
	switch ev.Outcome {
	case Refused:
		e.log.Warn("emulator: connection refused", append(attrs, "action", ev.Action, "resource", ev.Resource)...)
	case Denied:
		e.log.Warn("emulator: action denied", append(attrs, "action", ev.Action, "resource", ev.Resource)...)
	case Accepted:
		e.log.Info("emulator: connection accepted", "cert_id", ev.CertificateID, "sni", ev.SNI, "account", ev.Account, "client_id", ev.ClientID, "remote", ev.Remote, "listener", ev.Listener, "tls", ev.TLS)
	default:
		e.log.Info("emulator: connection ended", attrs...)
	}
}

// denied records an action of an accepted connection that its policies (or
// AWS IoT's reserved-topic rules) refused: which action, on which resource ARN.
func (e *Emulator) denied(sess *session, rule Rule, action, resource, reason string) {
	ev := sess.event(Denied, e.cfg.now())
	ev.Action, ev.Resource = action, resource
	e.record(ev, verdict{Rule: rule, Reason: reason})
}

// send writes a reply to one client only, bypassing the broker, so no other
// client can see it. Like every delivery it needs iot:Receive on its topic.
func (e *Emulator) send(cl *mqtt.Client, m message) {
	if sess := sessionOf(cl); sess != nil {
		account, certID, clientID, remote := sess.connInfo()
		d, resource := e.authorize(request{account: account, certID: certID, clientID: clientID, remote: remote, action: iotpolicy.ActionReceive, kind: "topic", name: m.Topic})
		if !d.Allowed {
			e.denied(sess, RulePolicy, iotpolicy.ActionReceive, resource, fmt.Sprintf("iot:Receive on %s: %s; the reply was not delivered", resource, d))
			return
		}
	}
	err := cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   m.Topic,
		Payload:     m.Payload,
	})
	if err != nil {
		e.log.Info("emulator: reply not delivered", "client_id", cl.ID, "topic", m.Topic, "error", err)
	}
}

// notify sends a message to the connections of an account subscribed to its
// topic. Thing names are per account, so a broker-wide publish could reach a
// thing of the same name in another account.
func (e *Emulator) notify(account, topic string, payload []byte) {
	// The broker's topic index names the few clients whose filters match;
	// walking every connection instead made a fleet-wide job's notifications
	// cost connections × things. subscribed still decides, with the rules
	// the index does not know ($ topics and wildcards, the account's
	// namespace).
	subs := e.server.Topics.Subscribers(toBroker(account, topic))
	ids := make(map[string]struct{}, len(subs.Subscriptions))
	for id := range subs.Subscriptions {
		ids[id] = struct{}{}
	}
	for _, group := range subs.Shared {
		for id := range group {
			ids[id] = struct{}{}
		}
	}
	for id := range ids {
		cl, ok := e.server.Clients.Get(id)
		if !ok {
			continue
		}
		sess := sessionOf(cl)
		if sess == nil || cl.Closed() {
			continue
		}
		sess.mu.Lock()
		mine := sess.verdict.Account == account
		sess.mu.Unlock()
		if mine && subscribed(cl, topic) {
			e.send(cl, message{Topic: topic, Payload: payload})
		}
	}
}

// certificateStatusChanged disconnects a certificate's connections in an
// account once it is no longer ACTIVE.
func (e *Emulator) certificateStatusChanged(account, certID string, status CertificateStatus) {
	if status == StatusActive {
		return
	}
	for _, cl := range e.server.Clients.GetAll() {
		sess := sessionOf(cl)
		if sess == nil || cl.Closed() {
			continue
		}
		sess.mu.Lock()
		match := sess.verdict.Account == account && sess.verdict.CertID == certID
		if match {
			sess.endRule, sess.endReason = RuleStatusChanged, fmt.Sprintf("the certificate became %s in account %s", status, account)
		}
		sess.mu.Unlock()
		if match {
			_ = e.server.DisconnectClient(cl, packets.ErrNotAuthorized)
		}
	}
}

// levelAtLeast drops records below a level: mochi logs every client's EOF as
// a warning, which the emulator's own connection log already covers.
type levelAtLeast struct {
	slog.Handler
	min slog.Level
}

func (h levelAtLeast) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h levelAtLeast) WithAttrs(a []slog.Attr) slog.Handler {
	return levelAtLeast{h.Handler.WithAttrs(a), h.min}
}

func (h levelAtLeast) WithGroup(n string) slog.Handler {
	return levelAtLeast{h.Handler.WithGroup(n), h.min}
}
