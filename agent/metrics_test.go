package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/iot"

	"github.com/thingcert/thingcert/keystore"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: HTTP %d", rec.Code)
	}
	return rec.Body.String()
}

func wantLines(t *testing.T, body string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(body, "\n"+l+"\n") {
			t.Errorf("metrics lack %q", l)
		}
	}
}

func TestMetricsCertificateRotationConnection(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	m := NewMetrics(func() time.Time { return now })
	m.SetCertificate("abcd", "file", now.Add(-time.Hour), now.Add(2*time.Hour))
	m.SetNextRenewal(now.Add(30*time.Minute), false)
	m.RotationStarted("time")
	m.RotationStepFailed("csr-submitted")
	m.RotationEnded("time", "succeeded")
	m.RotationStarted("job")
	m.RotationEnded("job", "rolled-back")
	m.ConnectionChanged(iot.StateChange{State: iot.StateWaiting, Err: &iot.ConnectError{Kind: iot.ErrClientCertRefused, Endpoint: "e"}}, false)
	m.ConnectionChanged(iot.StateChange{State: iot.StateConnected}, false)
	m.ConnectionChanged(iot.StateChange{State: iot.StateWaiting, Err: &iot.ConnectError{Kind: iot.ErrConnectionLost, Endpoint: "e"}}, true)
	body := scrape(t, m)
	wantLines(t, body,
		"thingcert_certificate_age_seconds 3600",
		"thingcert_certificate_expires_in_seconds 7200",
		"thingcert_certificate_not_after_timestamp_seconds 1.8000072e+09",
		`thingcert_certificate_info{backend="file",certificate_id="abcd"} 1`,
		"thingcert_renewal_next_timestamp_seconds 1.8000018e+09",
		"thingcert_renewal_emergency 0",
		"thingcert_rotation_in_progress 0",
		`thingcert_rotation_attempts_total{trigger="time"} 1`,
		`thingcert_rotation_results_total{outcome="succeeded",trigger="time"} 1`,
		`thingcert_rotation_results_total{outcome="rolled-back",trigger="job"} 1`,
		`thingcert_rotation_step_failures_total{phase="csr-submitted"} 1`,
		`thingcert_connection_state{state="waiting to reconnect"} 1`,
		`thingcert_connection_state{state="connected"} 0`,
		`thingcert_connection_failures_total{kind="client-cert-refused"} 1`,
		`thingcert_connection_failures_total{kind="lost"} 1`,
		"thingcert_connection_losses_total 1",
		"thingcert_signing_errors_total 0",
	)
	if !strings.Contains(body, "thingcert_process_resident_memory_bytes") {
		t.Error("no process metrics (resident memory)")
	}
	// A new certificate replaces the old one's info series.
	m.SetCertificate("ef01", "tpm", now, now.Add(time.Hour))
	body = scrape(t, m)
	if strings.Contains(body, `certificate_id="abcd"`) {
		t.Error("the replaced certificate's info series remains")
	}
}

type failingKey struct {
	keystore.Key
	fail bool
}

func (k failingKey) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	if k.fail {
		return nil, errors.New("token removed")
	}
	return k.Key.Sign(r, d, o)
}

type metricsTestKey struct{ *ecdsa.PrivateKey }

func (metricsTestKey) URI() string                   { return "file:/k.pem" }
func (metricsTestKey) Algorithm() keystore.Algorithm { return keystore.ECDSAP256 }

func TestMetricsCountSigningErrors(t *testing.T) {
	m := NewMetrics(nil)
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := m.CountSigningErrors(failingKey{Key: metricsTestKey{priv}})
	bad := m.CountSigningErrors(failingKey{Key: metricsTestKey{priv}, fail: true})
	digest := make([]byte, 32)
	if _, err := good.Sign(rand.Reader, digest, crypto.SHA256); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := bad.Sign(rand.Reader, digest, crypto.SHA256); err == nil {
			t.Fatal("failing key signed")
		}
	}
	if good.URI() != "file:/k.pem" {
		t.Errorf("wrapped key URI %q", good.URI())
	}
	wantLines(t, scrape(t, m), "thingcert_signing_errors_total 2")
	var nilM *Metrics
	if k := nilM.CountSigningErrors(metricsTestKey{priv}); k.URI() != "file:/k.pem" {
		t.Error("nil metrics changed the key")
	}
}

func TestListenMetricsLoopbackOnly(t *testing.T) {
	ctx := context.Background()
	for _, addr := range []string{"0.0.0.0:0", "[::]:0", "192.0.2.1:9464", ":9464", "example.com:9464", "9464"} {
		l, err := listenMetrics(ctx, addr)
		if err == nil {
			l.Close()
			t.Errorf("listenMetrics(%q) accepted a non-loopback address", addr)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:0"} {
		l, err := listenMetrics(ctx, addr)
		if err != nil {
			t.Errorf("listenMetrics(%q): %v", addr, err)
			continue
		}
		l.Close()
	}
	l, err := listenMetrics(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(nil)
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Serve(sctx, l, slog.New(slog.DiscardHandler)) }()
	resp, err := http.Get(fmt.Sprintf("http://%s/metrics", l.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "thingcert_connection_state") {
		t.Errorf("served metrics lack the connection state:\n%s", body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve after cancel: %v", err)
	}
}
