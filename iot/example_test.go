package iot_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/thingcert/thingcert/iot"

	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
)

func ExampleClient() {
	ctx := context.Background()
	store, key, err := keystore.OpenKey(ctx, "file:/var/lib/thingcert/keys/device.pem", keystore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	chain, err := iot.LoadCertificateChain("/var/lib/thingcert/device.pem")
	if err != nil {
		log.Fatal(err)
	}
	id, err := iot.NewIdentity(key, chain)
	if err != nil {
		log.Fatal(err)
	}
	client, err := iot.New(iot.Config{
		Endpoint:  iot.Endpoint{Host: "abc123-ats.iot.eu-west-1.amazonaws.com"},
		Identity:  iot.NewIdentitySource(id),
		ThingName: "device-1",
	})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := client.Connect(ctx); err != nil {
		if errors.Is(err, iot.ErrClosedAfterConnect) {
			log.Fatal("check the policy attached to the certificate: ", err)
		}
		log.Fatal(err)
	}
	defer client.Disconnect(ctx)
	err = client.Subscribe(ctx, "cmd/device-1/#", iot.AtLeastOnce, func(m iot.Message) {
		fmt.Printf("%s: %s\n", m.Topic, m.Payload)
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := client.Publish(ctx, "dt/device-1/hello", iot.AtLeastOnce, []byte("hi")); err != nil {
		log.Fatal(err)
	}
}

// Rotation presents a new identity on a running client and goes back to the
// old one if the server refuses it.
func ExampleIdentitySource_Swap() {
	ctx := context.Background()
	var (
		client *iot.Client
		source *iot.IdentitySource // the one in client's Config
		newID  *iot.Identity       // the new key and the certificate issued for it
	)
	old := source.Swap(newID)
	if _, err := client.Reconnect(ctx); err != nil {
		source.Swap(old)
		if _, err := client.Reconnect(ctx); err != nil {
			log.Print("the old identity fails too; the client keeps retrying: ", err)
		}
		return
	}
	// Connected with the new identity: now tell the cloud, then retire the old key.
}
