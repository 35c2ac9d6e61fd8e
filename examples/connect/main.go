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

	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/filestore" // file: key URIs
)

func main() {
	var ep iot.Endpoint
	flag.StringVar(&ep.Host, "endpoint", "", "AWS IoT endpoint host name (sent as SNI)")
	flag.StringVar(&ep.Address, "address", "", "HOST:PORT to dial instead (optional)")
	keyURI := flag.String("key", "", "device key URI")
	certFile := flag.String("cert", "", "device certificate PEM")
	caFile := flag.String("ca", "", "root CA PEM (default: the built-in Amazon roots)")
	thing := flag.String("thing", "", "thing name, used as the MQTT client ID")
	once := flag.Bool("once", false, "disconnect after publishing")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, ep, *keyURI, *certFile, *caFile, *thing, *once); err != nil {
		log.Fatal(err) // a *iot.ConnectError says what went wrong and what to do
	}
}

func run(ctx context.Context, ep iot.Endpoint, keyURI, certFile, caFile, thing string, once bool) error {
	store, key, err := keystore.OpenKey(ctx, keyURI, keystore.Options{}) // a handle; the key stays in its store
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
	cfg := iot.Config{Endpoint: ep, Identity: iot.NewIdentitySource(id), ThingName: thing}
	if caFile != "" {
		if cfg.Roots, err = iot.LoadCAFile(caFile); err != nil {
			return err
		}
	}
	client, err := iot.New(cfg)
	if err != nil {
		return err
	}
	if _, err := client.Connect(ctx); err != nil {
		return err
	}
	topic := "dt/" + client.ClientID() + "/hello"
	if err := client.Publish(ctx, topic, iot.AtLeastOnce, []byte(`{"hello":"world"}`)); err != nil {
		return err
	}
	fmt.Println("published to", topic)
	if !once {
		<-ctx.Done() // stay connected; the client reconnects by itself
	}
	return client.Disconnect(context.WithoutCancel(ctx))
}
