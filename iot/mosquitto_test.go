package iot_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/iot"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/internal/testpki"
)

// Against a real broker with require_certificate: mosquitto (OpenSSL) judges
// the device certificate, and use_identity_as_username shows which one it saw.
func TestMosquitto(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	otherCA := testpki.NewCA(t, "someone else's root")
	server := ca.NewServer(t, endpointName)
	m := testpeers.StartMosquitto(t, testpeers.MosquittoConfig{CAPEM: ca.PEM(), CertPEM: server.CertPEM(), KeyPEM: server.KeyPEM()})
	ctx := context.Background()
	connect := func(t *testing.T, cfg iot.Config) *iot.Client {
		t.Helper()
		c := newClient(t, cfg)
		if _, err := c.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		return c
	}

	for _, ks := range keySources() {
		t.Run(ks.name, func(t *testing.T) {
			key := ks.keys(t)
			pubKey, subKey := key("pub"), key("sub")
			for _, port := range []int{8883, 443} {
				pubName, subName := ks.name+"-pub", ks.name+"-sub"
				pub := connect(t, iot.Config{
					Endpoint: iot.Endpoint{Host: endpointName, Port: port, Address: m.Addr},
					Identity: iot.NewIdentitySource(newIdentity(t, ca, pubKey, pubName)),
					Roots:    ca.Pool(), ThingName: pubName,
				})
				sub := connect(t, iot.Config{
					Endpoint: iot.Endpoint{Host: endpointName, Address: m.Addr},
					Identity: iot.NewIdentitySource(newIdentity(t, ca, subKey, subName)),
					Roots:    ca.Pool(), ThingName: subName,
				})
				got := make(chan iot.Message, 1)
				topic := "dt/" + pubName + "/telemetry"
				if err := sub.Subscribe(ctx, "dt/+/telemetry", iot.AtLeastOnce, func(m iot.Message) { got <- m }); err != nil {
					t.Fatal(err)
				}
				if err := pub.Publish(ctx, topic, iot.AtLeastOnce, []byte("21.5")); err != nil {
					t.Fatal(err)
				}
				select {
				case msg := <-got:
					if msg.Topic != topic || string(msg.Payload) != "21.5" {
						t.Errorf("received %q on %q", msg.Payload, msg.Topic)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("message not delivered through mosquitto")
				}
				pub.Disconnect(ctx)
				sub.Disconnect(ctx)
				// mosquitto names each client by the CN of the certificate it verified.
				for _, cn := range []string{pubName, subName} {
					if !strings.Contains(m.Log(), "u'"+cn+"'") {
						t.Errorf("mosquitto did not log a client authenticated as %q", cn)
					}
				}
			}
		})
	}

	ks := keySources()[0]
	for _, tc := range []struct {
		name    string
		host    string
		roots   *testpki.CA
		certCA  *testpki.CA
		kind    error
		stage   iot.Stage
		wantMsg []string
	}{
		{"client certificate refused", endpointName, ca, otherCA, iot.ErrClientCertRefused, iot.StageMQTT, []string{"unknown certificate authority", "registered and ACTIVE"}},
		{"untrusted server", endpointName, otherCA, ca, iot.ErrServerUntrusted, iot.StageTLS, []string{"give its CA in Roots"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, iot.Config{
				Endpoint: iot.Endpoint{Host: tc.host, Address: m.Addr},
				Identity: iot.NewIdentitySource(newIdentity(t, tc.certCA, ks.keys(t)("device"), "device-1")),
				Roots:    tc.roots.Pool(), ThingName: "device-1",
			})
			_, err := c.Connect(ctx)
			checkConnectError(t, err, tc.kind, tc.stage, tc.wantMsg...)
		})
	}
}
