// Command connect is the smallest program that connects a device to AWS IoT
// with a key that stays in its store, publishes one message and stays
// connected until interrupted, reconnecting on its own.
//
//	go run ./examples/connect -endpoint abc123-ats.iot.eu-west-1.amazonaws.com \
//	    -key file:/var/lib/thingcert/keys/device.pem -cert device.pem -thing device-1
//
// This program links only the file key store (keystore/filestore): a key in a
// TPM or a PKCS#11 token needs keystore/tpmstore or keystore/pkcs11store
// imported instead, or keystore/all for any.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/filestore" // file: key URIs
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
	store, key, err := keystore.OpenKey(ctx, keyURI, keystore.Options{})
	if err != nil {
		return err
	}
	defer store.Close()
	chain, err := iot.LoadCertificateChain(certFile)
	if err != nil {
		return err
	}
	id, err := iot.NewIdentity(key, chain)
	if err != nil {
		return err
	}
	cfg := iot.Config{
		Endpoint:  iot.Endpoint{Host: endpoint, Address: address},
		Identity:  iot.NewIdentitySource(id),
		ThingName: thing,
		OnStateChange: func(c iot.StateChange) {
			if c.Err != nil {
				log.Printf("%s: %v", c.State, c.Err)
			} else {
				log.Printf("%s", c.State)
			}
		},
	}
	if caFile != "" {
		if cfg.Roots, err = iot.LoadCAFile(caFile); err != nil {
			return err
		}
	}
	client, err := iot.New(cfg)
	if err != nil {
		return err
	}
	info, err := client.Connect(ctx)
	if err != nil {
		return err // a *iot.ConnectError: it says what went wrong and what to do
	}
	fmt.Printf("connected with %s, %s\n", info.TLS.Version, info.TLS.CipherSuite)

	if topic == "" {
		topic = "dt/" + client.ClientID() + "/hello"
	}
	if err := client.Publish(ctx, topic, iot.AtLeastOnce, []byte(`{"hello":"world"}`)); err != nil {
		return err
	}
	fmt.Printf("published to %s\n", topic)
	if !once {
		<-ctx.Done() // stay connected; the client reconnects by itself
	}
	return client.Disconnect(context.WithoutCancel(ctx))
}
