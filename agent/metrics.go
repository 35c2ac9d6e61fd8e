package agent

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/thingcert/thingcert/iot"

	"github.com/thingcert/thingcert/internal/promtext"
	"github.com/thingcert/thingcert/keystore"
)

// Metrics are the daemon's figures for fleets that scrape their devices:
// certificate expiry and age, the next renewal, rotations, the connection and
// signing errors, served in Prometheus's text format. They live in their own
// registry (nothing process-wide), so two daemons in one process, or tests,
// do not mix. All methods are safe for concurrent use, and do nothing on a
// nil *Metrics.
type Metrics struct {
	reg *promtext.Registry
	now func() time.Time

	mu                  sync.Mutex
	notBefore, notAfter time.Time

	certNotBefore    promtext.Value
	certNotAfter     promtext.Value
	certInfo         promtext.Vec
	nextRenewal      promtext.Value
	renewalEmergency promtext.Value
	rotating         promtext.Value
	rotationStarts   promtext.Vec
	rotationResults  promtext.Vec
	stepFailures     promtext.Vec
	connState        promtext.Vec
	connFailures     promtext.Vec
	connLosses       promtext.Value
	signErrors       promtext.Value
}

// Connection states as the thingcert_connection_state metric names them.
var metricStates = []iot.ConnState{iot.StateDisconnected, iot.StateConnecting, iot.StateConnected, iot.StateWaiting}

// NewMetrics makes the metrics, in a registry of their own that also writes
// the Go runtime's and the process's figures (resident memory, file
// descriptors). now is the clock for the certificate's age; nil is time.Now.
func NewMetrics(now func() time.Time) *Metrics {
	if now == nil {
		now = time.Now
	}
	r := promtext.NewRegistry()
	m := &Metrics{reg: r, now: now}
	const ns = "thingcert_"
	m.certNotBefore = r.Gauge(ns+"certificate_not_before_timestamp_seconds", "Start of the current device certificate's validity (Unix time).")
	m.certNotAfter = r.Gauge(ns+"certificate_not_after_timestamp_seconds", "Expiry of the current device certificate (Unix time).")
	m.certInfo = r.GaugeVec(ns+"certificate_info",
		"The current device certificate (value 1): its AWS IoT certificate ID and the key's backend.", "certificate_id", "backend")
	m.nextRenewal = r.Gauge(ns+"renewal_next_timestamp_seconds", "When the renewal policy starts the next rotation (Unix time).")
	m.renewalEmergency = r.Gauge(ns+"renewal_emergency", "1 when the certificate is inside its emergency window or expired.")
	m.rotating = r.Gauge(ns+"rotation_in_progress", "1 while a rotation is in progress.")
	m.rotationStarts = r.CounterVec(ns+"rotation_attempts_total", "Rotations started (or resumed after a restart), by trigger.", "trigger")
	m.rotationResults = r.CounterVec(ns+"rotation_results_total",
		"Rotations ended, by trigger and outcome (succeeded, rolled-back).", "trigger", "outcome")
	m.stepFailures = r.CounterVec(ns+"rotation_step_failures_total",
		"Failed attempts at a rotation step (retried or rolled back), by phase.", "phase")
	m.connState = r.GaugeVec(ns+"connection_state", "1 for the MQTT connection's current state, 0 for the others.", "state")
	m.connFailures = r.CounterVec(ns+"connection_failures_total",
		"Failed connection attempts and lost connections, by kind (the agent's diagnosis).", "kind")
	m.connLosses = r.Counter(ns+"connection_losses_total", "Established connections that ended without the daemon asking.")
	m.signErrors = r.Counter(ns+"signing_errors_total", "Signatures the device key failed to make (TLS handshakes, CSRs).")
	r.GaugeFunc(ns+"certificate_age_seconds", "Age of the current device certificate (now minus not-before).", func() float64 {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.notBefore.IsZero() {
			return 0
		}
		return m.now().Sub(m.notBefore).Seconds()
	})
	r.GaugeFunc(ns+"certificate_expires_in_seconds",
		"Time left until the current device certificate expires (negative once expired).", func() float64 {
			m.mu.Lock()
			defer m.mu.Unlock()
			if m.notAfter.IsZero() {
				return 0
			}
			return m.notAfter.Sub(m.now()).Seconds()
		})
	r.Collect(promtext.GoMetrics)
	r.Collect(promtext.ProcessMetrics(ns))
	for _, s := range metricStates {
		m.connState.With(s.String()).Set(0)
	}
	m.connState.With(iot.StateDisconnected.String()).Set(1)
	return m
}

// Handler serves the metrics in Prometheus's text format.
func (m *Metrics) Handler() http.Handler { return m.reg.Handler() }

// SetCertificate records the current certificate.
func (m *Metrics) SetCertificate(certID, backend string, notBefore, notAfter time.Time) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.notBefore, m.notAfter = notBefore, notAfter
	m.mu.Unlock()
	m.certNotBefore.Set(unixSeconds(notBefore))
	m.certNotAfter.Set(unixSeconds(notAfter))
	m.certInfo.Reset()
	if certID != "" {
		m.certInfo.With(certID, backend).Set(1)
	}
}

// SetNextRenewal records when the policy renews next.
func (m *Metrics) SetNextRenewal(at time.Time, emergency bool) {
	if m == nil {
		return
	}
	m.nextRenewal.Set(unixSeconds(at))
	m.renewalEmergency.Set(boolFloat(emergency))
}

// RotationStarted counts a rotation starting (or resuming) for trigger.
func (m *Metrics) RotationStarted(trigger string) {
	if m == nil {
		return
	}
	m.rotating.Set(1)
	m.rotationStarts.With(trigger).Inc()
}

// RotationStepFailed counts a failed attempt at phase's action.
func (m *Metrics) RotationStepFailed(phase string) {
	if m == nil {
		return
	}
	m.stepFailures.With(phase).Inc()
}

// RotationEnded counts a rotation's outcome; an empty outcome means it
// stopped without ending (the daemon is shutting down).
func (m *Metrics) RotationEnded(trigger, outcome string) {
	if m == nil {
		return
	}
	m.rotating.Set(0)
	if outcome != "" {
		m.rotationResults.With(trigger, outcome).Inc()
	}
}

// ConnectionChanged records a change of the connection's state, counting
// failures by their diagnosis.
func (m *Metrics) ConnectionChanged(ch iot.StateChange, lost bool) {
	if m == nil {
		return
	}
	for _, s := range metricStates {
		m.connState.With(s.String()).Set(boolFloat(s == ch.State))
	}
	if lost {
		m.connLosses.Inc()
	}
	if ch.Err != nil {
		m.connFailures.With(FailureKind(ch.Err)).Inc()
	}
}

// SigningError counts a signature the device key failed to make.
func (m *Metrics) SigningError() {
	if m == nil {
		return
	}
	m.signErrors.Inc()
}

// FailureKind names a connection failure in a few words, for metrics and the
// status file: "unreachable", "server-untrusted", "client-cert-refused", ...
func FailureKind(err error) string {
	for _, k := range []struct {
		err  error
		name string
	}{
		{iot.ErrUnreachable, "unreachable"}, {iot.ErrServerUntrusted, "server-untrusted"}, {iot.ErrServerName, "server-name"},
		{iot.ErrClientCertRefused, "client-cert-refused"}, {iot.ErrKey, "key"}, {iot.ErrTLS, "tls"},
		{iot.ErrConnectRefused, "connect-refused"}, {iot.ErrClosedAfterConnect, "closed-after-connect"},
		{iot.ErrTimeout, "timeout"}, {iot.ErrConnectionLost, "lost"},
	} {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return "other"
}

func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ErrNotLoopback: a metrics address that is not on the loopback interface.
var ErrNotLoopback = errors.New("metrics listen address is not a loopback address")

// listenMetrics opens the metrics listener. Only loopback addresses are
// accepted (127.0.0.0/8, ::1, localhost): a device's metrics are for a local
// scraper or an SSH tunnel, never for the network. The check is made on the
// address actually bound, so a name that resolves elsewhere is refused too.
func listenMetrics(ctx context.Context, addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("agent: metrics address %q: want HOST:PORT such as 127.0.0.1:9464", addr)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("agent: metrics address %q: %w; use 127.0.0.1:PORT or [::1]:PORT and scrape through an SSH tunnel or a local agent", addr, ErrNotLoopback)
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("agent: metrics: %w", err)
	}
	if ta, ok := l.Addr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
		l.Close()
		return nil, fmt.Errorf("agent: metrics address %q bound %s: %w", addr, l.Addr(), ErrNotLoopback)
	}
	return l, nil
}

// Serve serves /metrics on l until ctx ends.
func (m *Metrics) Serve(ctx context.Context, l net.Listener, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	})
	defer stop()
	err := srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// CountSigningErrors wraps a key so that its failed signatures are counted.
// The wrapper is a keystore.Key; it keeps the key's protection report.
func (m *Metrics) CountSigningErrors(k keystore.Key) keystore.Key {
	if m == nil || k == nil {
		return k
	}
	return countingKey{Key: k, m: m}
}

type countingKey struct {
	keystore.Key
	m *Metrics
}

func (k countingKey) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := k.Key.Sign(r, digest, opts)
	if err != nil {
		k.m.SigningError()
	}
	return sig, err
}

func (k countingKey) Protection(ctx context.Context) (keystore.Protection, error) {
	if p, ok := k.Key.(keystore.ProtectionReporter); ok {
		return p.Protection(ctx)
	}
	return keystore.Protection{}, keystore.ErrUnsupported
}

// Registry is the metrics' own registry, for tests or to serve them elsewhere.
func (m *Metrics) Registry() *promtext.Registry { return m.reg }
