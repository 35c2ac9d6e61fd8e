// Command connect is the smallest program that connects a device to AWS IoT
// with a key that stays in its store, publishes one message and stays
// connected until interrupted, reconnecting on its own.
//
//	go run ./examples/connect -endpoint abc123-ats.iot.eu-west-1.amazonaws.com \
//	    -key file:/var/lib/thingcert/keys/device.pem -cert device.pem -thing device-1
//
// The key may be any thingcert key URI: file:, pkcs11: or tpm:.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/thingcert/thingcert/agent"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/backends"
)

func main() {
	endpoint := flag.String("endpoint", "", "AWS IoT endpoint host name")
	address := flag.String("address", "", "HOST:PORT to dial instead (optional)")
	keyURI := flag.String("key", "", "device key URI")
	certFile := flag.String("cert", "", "device certificate PEM")
	caFile := flag.String("ca", "", "root CA PEM (default: the built-in Amazon roots)")
	thing := flag.String("thing", "", "thing name, used as the MQTT client ID")
	topic := flag.String("topic", "", "topic to publish to (default dt/<thing>/hello)")
	once := flag.Bool("once", false, "disconnect after publishing instead of staying connected")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *endpoint, *address, *keyURI, *certFile, *caFile, *thing, *topic, *once); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, endpoint, address, keyURI, certFile, caFile, thing, topic string, once bool) error {
	// The key stays in its store; only a handle to it is opened here.
	store, key, err := backends.OpenKey(ctx, keyURI, keystore.Options{})
	if err != nil {
		return err
	}
	defer store.Close()
	chain, err := agent.LoadCertificateChain(certFile)
	if err != nil {
		return err
	}
	id, err := agent.NewIdentity(key, chain)
	if err != nil {
		return err
	}
	cfg := agent.Config{
		Endpoint:  agent.Endpoint{Host: endpoint, Address: address},
		Identity:  agent.NewIdentitySource(id),
		ThingName: thing,
		OnStateChange: func(c agent.StateChange) {
			if c.Err != nil {
				log.Printf("%s: %v", c.State, c.Err)
			} else {
				log.Printf("%s", c.State)
			}
		},
	}
	if caFile != "" {
		if cfg.Roots, err = agent.LoadCAFile(caFile); err != nil {
			return err
		}
	}
	client, err := agent.New(cfg)
	if err != nil {
		return err
	}
	info, err := client.Connect(ctx)
	if err != nil {
		return err // a *agent.ConnectError: it says what went wrong and what to do
	}
	fmt.Printf("connected with %s, %s\n", info.TLS.Version, info.TLS.CipherSuite)

	if topic == "" {
		topic = "dt/" + client.ClientID() + "/hello"
	}
	if err := client.Publish(ctx, topic, agent.AtLeastOnce, []byte(`{"hello":"world"}`)); err != nil {
		return err
	}
	fmt.Printf("published to %s\n", topic)
	if !once {
		<-ctx.Done() // stay connected; the client reconnects by itself
	}
	return client.Disconnect(context.WithoutCancel(ctx))
}
