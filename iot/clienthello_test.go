package iot_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/iot"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/internal/testpki"
	"github.com/thingcert/thingcert/keystore"
)

// An independent witness: openssl s_server, a TLS server that is not MQTT,
// prints the ClientHello the client really sent. The endpoint name must be in
// SNI whatever address is dialed, and x-amzn-mqtt-ca in ALPN exactly when the
// endpoint's port is 443 (here dialed on an arbitrary loopback port).
func TestClientHelloSeenByOpenSSL(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	server := ca.NewServer(t, endpointName)
	id := newIdentity(t, ca, newMemKey(t, keystore.ECDSAP256), "device-1")
	for _, tc := range []struct {
		port     int
		wantALPN []string
	}{
		{443, []string{"x-amzn-mqtt-ca"}},
		{8883, nil},
	} {
		t.Run(fmt.Sprint("port-", tc.port), func(t *testing.T) {
			s := testpeers.StartSServer(t, server.CertPEM(), server.KeyPEM(), "-alpn", iot.ALPNMQTT)
			c := newClient(t, iot.Config{
				Endpoint: iot.Endpoint{Host: endpointName, Port: tc.port, Address: s.Addr},
				Identity: iot.NewIdentitySource(id), Roots: ca.Pool(), ThingName: "device-1",
			})
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { _, err := c.Connect(ctx); errc <- err }()
			// s_server never answers CONNECT: stop once it has printed the
			// ClientHello and its own reply.
			hello := ""
			for deadline := time.Now().Add(30 * time.Second); hello == ""; {
				hello = clientHello(s.Output())
				if time.Now().After(deadline) {
					t.Fatalf("s_server printed no ClientHello:\n%s", s.Output())
				}
				time.Sleep(10 * time.Millisecond)
			}
			cancel()
			if err := <-errc; err == nil {
				t.Error("connected to a server that is not MQTT")
			}
			if got := traceServerName(t, hello); got != endpointName {
				t.Errorf("ClientHello server_name %q, want %q", got, endpointName)
			}
			if got := traceALPN(hello); !slices.Equal(got, tc.wantALPN) {
				t.Errorf("ClientHello ALPN %q, want %q", got, tc.wantALPN)
			}
		})
	}
}

// clientHello is the ClientHello part of `openssl s_server -trace` output,
// once the server has answered it ("" before).
func clientHello(out string) string {
	i := strings.Index(out, "ClientHello")
	if i < 0 {
		return ""
	}
	rest := out[i:]
	j := strings.Index(rest, "Sent Record")
	if j < 0 {
		return ""
	}
	return rest[:j]
}

// traceExtension returns the lines under "extension_type=NAME(...)" up to the
// next extension.
func traceExtension(hello, name string) []string {
	var lines []string
	in := false
	for _, l := range strings.Split(hello, "\n") {
		tl := strings.TrimSpace(l)
		if strings.HasPrefix(tl, "extension_type=") {
			in = strings.HasPrefix(tl, "extension_type="+name+"(")
			continue
		}
		if in && tl != "" {
			lines = append(lines, tl)
		}
	}
	return lines
}

// traceServerName decodes the hex dump s_server prints for server_name:
// list length (2), name type (1), name length (2), name.
func traceServerName(t *testing.T, hello string) string {
	t.Helper()
	var raw []byte
	for _, l := range traceExtension(hello, "server_name") {
		// "0000 - 00 26 00 00 23 61 62 63-2d 61 74 73 2e 69 6f   .&..#abc-ats.io"
		_, dump, ok := strings.Cut(l, " - ")
		if !ok {
			continue
		}
		hexPart, _, _ := strings.Cut(dump, "   ")
		b, err := hex.DecodeString(strings.NewReplacer(" ", "", "-", "").Replace(hexPart))
		if err != nil {
			t.Fatalf("server_name dump %q: %v", l, err)
		}
		raw = append(raw, b...)
	}
	if len(raw) < 5 || raw[2] != 0 {
		t.Fatalf("no host_name in server_name extension:\n%s", hello)
	}
	n := int(raw[3])<<8 | int(raw[4])
	if len(raw) < 5+n {
		t.Fatalf("short server_name extension: %x", raw)
	}
	return string(raw[5 : 5+n])
}

func traceALPN(hello string) []string {
	return traceExtension(hello, "application_layer_protocol_negotiation")
}
