package iot

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeAlert stands for crypto/tls's unexported alert type: a uint8 error.
type fakeAlert uint8

func (a fakeAlert) Error() string { return fmt.Sprintf("tls: alert %d", uint8(a)) }

func remote(code uint8) error { return &net.OpError{Op: "remote error", Err: fakeAlert(code)} }

func TestClassify(t *testing.T) {
	ep := Endpoint{Host: "abc123-ats.iot.eu-west-1.amazonaws.com", Address: "127.0.0.1:8883"}
	ctx := context.Background()
	expired := &x509.Certificate{NotBefore: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)}
	cases := []struct {
		name  string
		err   error
		kind  error
		code  byte
		wants []string
	}{
		{"expired server certificate", classifyTLS(ctx, ep, x509.CertificateInvalidError{Cert: expired, Reason: x509.Expired}, nil),
			ErrServerUntrusted, 0, []string{"2021-01-01T00:00:00Z", "device clock"}},
		{"alert bad_certificate", classifyTLS(ctx, ep, remote(42), nil), ErrClientCertRefused, 0, []string{"registered and ACTIVE"}},
		{"alert certificate_required", classifyMQTT(ctx, ep, "d", connackNetworkError, errors.New("paho"), remote(116), true), ErrClientCertRefused, 0, nil},
		{"alert unrecognized_name", classifyTLS(ctx, ep, remote(112), nil), ErrTLS, 0, []string{"does not serve the name"}},
		{"alert no_application_protocol", classifyTLS(ctx, ep, remote(120), nil), ErrTLS, 0, []string{"x-amzn-mqtt-ca", "port 8883 (Endpoint.Port)"}},
		{"key failed to sign", classifyTLS(ctx, ep, errors.New("tls: failed to sign handshake: token removed"), errors.New("token removed")), ErrKey, 0, []string{"token removed", "token or TPM is present"}},
		{"closed before CONNECT was written", classifyMQTT(ctx, ep, "d", connackNetworkError, errors.New("paho"), io.EOF, false), ErrTLS, 0, nil},
		{"closed after CONNECT", classifyMQTT(ctx, ep, "d", connackNetworkError, errors.New("paho"), io.EOF, true), ErrClosedAfterConnect, 0, []string{"iot:Connect", `"d"`}},
		{"identifier rejected", classifyMQTT(ctx, ep, "d", ConnackIDRejected, errors.New("paho"), nil, true), ErrConnectRefused, 2, []string{"code 2", "(ClientID)"}},
		{"server unavailable", classifyMQTT(ctx, ep, "d", ConnackServerUnavailable, errors.New("paho"), nil, true), ErrConnectRefused, 3, []string{"retry later"}},
		{"no such host", classifyDial(ctx, ep, &net.DNSError{Err: "no such host", Name: ep.Host, IsNotFound: true}), ErrUnreachable, 0, []string{"does not resolve"}},
		{"connection lost", lostError(ep, "d", 1500*time.Millisecond, io.EOF), ErrConnectionLost, 0, []string{"up for 1.5s", "same client ID"}},
	}
	for _, tc := range cases {
		var ce *ConnectError
		if !errors.As(tc.err, &ce) || !errors.Is(tc.err, tc.kind) {
			t.Errorf("%s: %v, want kind %v", tc.name, tc.err, tc.kind)
			continue
		}
		if ce.Code != tc.code {
			t.Errorf("%s: code %d, want %d", tc.name, ce.Code, tc.code)
		}
		msg := tc.err.Error()
		if !strings.Contains(msg, ep.Host+":8883 via 127.0.0.1:8883") {
			t.Errorf("%s: %q does not name the endpoint and address", tc.name, msg)
		}
		for _, w := range tc.wants {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: %q lacks %q", tc.name, msg, w)
			}
		}
		// Every setting the hint names is listed, for a CLI to word.
		for _, s := range []string{"Endpoint.Address", "Endpoint.Port", "Roots", "ClientID", "Identity"} {
			if strings.Contains(ce.Hint, s) != slices.Contains(ce.HintSettings(), s) {
				t.Errorf("%s: hint %q and settings %q disagree on %s", tc.name, ce.Hint, ce.HintSettings(), s)
			}
		}
	}
	// A cancelled context is the caller's doing, not a diagnosis.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := classifyDial(cctx, ep, errors.New("dial")); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled dial: %v", err)
	}
}

func TestIdentityRefused(t *testing.T) {
	ep := Endpoint{Host: "x-ats.iot.us-east-1.amazonaws.com"}
	refusedConnack := func(code byte) error {
		e := newErr(ep, StageMQTT, ErrConnectRefused, nil, "")
		e.Code = code
		return e
	}
	for _, c := range []struct {
		err  error
		want bool
	}{
		// An alert read during the handshake may come from anyone on the
		// path (before ServerHello it is plaintext): it does not count.
		{newErr(ep, StageTLS, ErrClientCertRefused, errors.New("bad certificate"), ""), false},
		// After the handshake it came from the verified server.
		{newErr(ep, StageMQTT, ErrClientCertRefused, errors.New("bad certificate"), ""), true},
		{fmt.Errorf("switching: %w", newErr(ep, StageConnected, ErrClientCertRefused, errors.New("certificate revoked"), "")), true},
		// A reset or close after CONNECT proves nothing about who sent it.
		{fmt.Errorf("switching: %w", newErr(ep, StageMQTT, ErrClosedAfterConnect, nil, "")), false},
		{refusedConnack(ConnackNotAuthorized), true},
		{refusedConnack(ConnackBadUserOrPassword), true},
		{refusedConnack(ConnackServerUnavailable), false},
		{refusedConnack(ConnackIDRejected), false},
		{newErr(ep, StageDial, ErrUnreachable, errors.New("connection refused"), ""), false},
		{newErr(ep, StageConnected, ErrConnectionLost, errors.New("EOF"), ""), false},
		{newErr(ep, StageTLS, ErrKey, errors.New("token gone"), ""), false},
		{ErrClientCertRefused, false}, // a bare sentinel is no diagnosis
		{nil, false},
	} {
		if got := IdentityRefused(c.err); got != c.want {
			t.Errorf("IdentityRefused(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
