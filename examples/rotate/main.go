// Command rotate is a device program that keeps its own AWS IoT identity, with
// no agent: it embeds a device.Manager, which provisions the device by claim
// (fleet provisioning), stays connected, and renews the certificate before it
// ages out or when a rotation job asks. The device key is made inside the
// store and never leaves it.
//
//	go run ./examples/rotate -endpoint abc123-ats.iot.eu-west-1.amazonaws.com \
//	    -thing gw-17 -store file:/var/lib/gw/keys/ -state /var/lib/gw/state \
//	    -claim-key file:/etc/gw/claim.pem -claim-cert /etc/gw/claim.crt -template GatewayTemplate
//
// With -once it provisions if needed, renews once at once, prints the
// certificate IDs and exits: what a factory test station or a CI job does.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/fleetprov"
	_ "github.com/thingcert/thingcert/keystore/filestore" // file: keys
	_ "github.com/thingcert/thingcert/keystore/tpmstore"  // tpm: keys
	"github.com/thingcert/thingcert/rotation"
)

func main() {
	var o device.Options
	var claim device.Claim
	var template, caFile string
	var once bool
	flag.StringVar(&o.Endpoint.Host, "endpoint", "", "AWS IoT endpoint host name")
	flag.StringVar(&o.Endpoint.Address, "address", "", "HOST:PORT to dial instead (optional)")
	flag.StringVar(&caFile, "ca", "", "root CA PEM (default: the built-in Amazon roots)")
	flag.StringVar(&o.ThingName, "thing", "", "thing name")
	flag.StringVar(&o.Store, "store", "", "store URI new keys are made in (file:/dir/ or tpm:?device=/dev/tpmrm0)")
	flag.StringVar(&o.StateDir, "state", "", "state folder")
	flag.StringVar(&claim.KeyURI, "claim-key", "", "claim key URI")
	flag.StringVar(&claim.CertFile, "claim-cert", "", "claim certificate PEM")
	flag.StringVar(&template, "template", "", "fleet-provisioning template")
	flag.BoolVar(&once, "once", false, "provision, renew once now, print and exit")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o.Claim = &claim
	o.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	o.Issuer = func(conn iot.MQTT) rotation.Issuer {
		return &fleetprov.Issuer{Conn: conn, Template: template, ThingName: o.ThingName,
			Parameters: map[string]string{"SerialNumber": o.ThingName}}
	}
	if err := run(ctx, o, caFile, once); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, o device.Options, caFile string, once bool) (err error) {
	if caFile != "" {
		if o.Roots, err = iot.LoadCAFile(caFile); err != nil {
			return err
		}
	}
	m, err := device.New(ctx, o)
	if err != nil {
		return err
	}
	defer m.Close(context.WithoutCancel(ctx))
	if !once {
		return m.Run(ctx) // for the device's life
	}
	st, err := m.Connect(ctx)
	if err == nil && st.Current.Claim {
		st, err = m.Provision(ctx)
	}
	if err != nil {
		return err
	}
	fmt.Println("provisioned", st.Current.CertificateID)
	if st, err = m.Rotate(ctx, rotation.Trigger{Kind: rotation.TriggerOperator, Reason: "once"}); err != nil {
		return err
	}
	fmt.Println("rotated", st.Current.CertificateID)
	return nil
}
