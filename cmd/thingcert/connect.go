package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/thingcert/thingcert/internal/cli"
	"github.com/thingcert/thingcert/iot"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
)

type connectFlags struct {
	endpoint, address, key, cert, ca, clientID, topic, message string
	port                                                       int
	json                                                       bool
}

func newConnectCmd(env *cliEnv) *cobra.Command {
	var f connectFlags
	c := &cobra.Command{
		Use:   "connect --endpoint HOST --key URI --cert FILE [--publish TOPIC --message TEXT]",
		Short: "Connect to AWS IoT with mutual TLS, optionally publish, and report how it went",
		Long: `Connect to an AWS IoT endpoint (or any MQTT broker) with the device's key and
certificate, optionally publish one QoS 1 message and wait for its PUBACK, then
disconnect. It prints what was negotiated (TLS version, cipher suite, SNI, ALPN,
the server's chain) and how long each step took; --json prints the same for
scripts.

The endpoint host name is always sent as SNI and checked against the server's
certificate; --address dials another HOST:PORT (a test broker, a tunnel) while
still presenting that name. Port 443 offers ALPN x-amzn-mqtt-ca, 8883 none.
The server is trusted through the built-in Amazon roots unless --ca is given.
The client ID defaults to the certificate's subject CN, which thingcert makes
the thing name.

When it fails it says why: server certificate not trusted, endpoint name
mismatch, client certificate refused, CONNECT refused (with the CONNACK code),
or the broker closing right after CONNECT (on AWS IoT: a policy that does not
allow iot:Connect for this client ID).`,
		Example: `  thingcert connect --endpoint abc123-ats.iot.eu-west-1.amazonaws.com \
      --key file:/var/lib/thingcert/keys/device.pem --cert /var/lib/thingcert/device.pem
  thingcert connect --endpoint abc123-ats.iot.eu-west-1.amazonaws.com --port 443 \
      --key 'tpm:blob=/var/lib/thingcert/keys/device.tpmkey' --cert device.pem \
      --publish dt/device-1/hello --message hi --json
  thingcert connect --endpoint broker.test --address 127.0.0.1:8883 --ca ca.pem \
      --key file:/tmp/k/device.pem --cert device.pem`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "endpoint", "key", "cert"); err != nil {
				return err
			}
			if c.Flags().Changed("publish") != c.Flags().Changed("message") {
				return cli.UsageError{Err: errors.New(c.CommandPath() + ": --publish TOPIC and --message TEXT go together")}
			}
			ep := iot.Endpoint{Host: f.endpoint, Port: f.port, Address: f.address}
			if err := ep.Validate(); err != nil {
				return cli.UsageError{Err: err}
			}
			return runConnect(c.Context(), env, f, ep)
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.endpoint, "endpoint", "", "endpoint host name, sent as SNI (aws iot describe-endpoint --endpoint-type iot:Data-ATS)")
	fl.IntVar(&f.port, "port", iot.PortMQTT, "endpoint port: 8883, or 443 (ALPN x-amzn-mqtt-ca)")
	fl.StringVar(&f.address, "address", "", "HOST:PORT to dial instead of the endpoint (SNI stays the endpoint name)")
	fl.StringVar(&f.key, "key", "", "device key URI (file:, pkcs11: or tpm:)")
	fl.StringVar(&f.cert, "cert", "", "device certificate PEM file (leaf first, then any intermediates)")
	fl.StringVar(&f.ca, "ca", "", "trusted root PEM file instead of the built-in Amazon roots")
	fl.StringVar(&f.clientID, "client-id", "", "MQTT client ID (default: the certificate's subject CN)")
	fl.StringVar(&f.topic, "publish", "", "publish one QoS 1 message to this topic and wait for the PUBACK")
	fl.StringVar(&f.message, "message", "", "the message to publish")
	fl.BoolVar(&f.json, "json", false, "print the result as JSON")
	return c
}

// connectReport is what `connect --json` prints; its fields are a contract for scripts.
type connectReport struct {
	Endpoint       string         `json:"endpoint"`
	Port           int            `json:"port"`
	Address        string         `json:"address"`
	ClientID       string         `json:"client_id"`
	TLS            *iot.TLSInfo   `json:"tls,omitempty"`
	SessionPresent bool           `json:"session_present"`
	Published      *publishReport `json:"published,omitempty"`
	TimingsMS      timings        `json:"timings_ms"`
	Error          *errorReport   `json:"error,omitempty"`
}

type publishReport struct {
	Topic string `json:"topic"`
	QoS   int    `json:"qos"`
	Bytes int    `json:"bytes"`
}

type timings struct {
	Dial    float64 `json:"dial"`
	TLS     float64 `json:"tls"`
	CONNACK float64 `json:"connack"`
	PUBACK  float64 `json:"puback,omitempty"`
	Total   float64 `json:"total"`
}

type errorReport struct {
	Message string `json:"message"`
	Kind    string `json:"kind,omitempty"`
	Stage   string `json:"stage,omitempty"`
	Code    *int   `json:"connack_code,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func runConnect(ctx context.Context, env *cliEnv, f connectFlags, ep iot.Endpoint) error {
	chain, err := iot.LoadCertificateChain(f.cert)
	if err != nil {
		return err
	}
	clientID := f.clientID
	if clientID == "" {
		if clientID = chain[0].Subject.CommonName; clientID == "" {
			return cli.UsageError{Err: fmt.Errorf("certificate %s has no subject CN to use as client ID: give --client-id", f.cert)}
		}
	}
	// Open the key while the connection is set up: a token login or a TPM
	// load then overlaps the TCP and TLS round trips, and only the handshake's
	// CertificateVerify waits for it.
	ids := iot.NewPendingIdentitySource()
	key := openKeyAsync(ctx, env, f.key, chain, ids)
	defer key.close()

	var roots *x509.CertPool // nil: the built-in Amazon roots, parsed only then
	if f.ca != "" {
		if roots, err = iot.LoadCAFile(f.ca); err != nil {
			return err
		}
	}
	client, err := iot.New(iot.Config{
		Endpoint: ep,
		Identity: ids,
		Roots:    roots,
		ClientID: clientID,
		Logger:   env.log,
	})
	if err != nil {
		return err
	}

	rep := connectReport{Endpoint: ep.Host, Port: f.port, Address: ep.DialAddress(), ClientID: clientID}
	info, err := client.Connect(ctx)
	if err != nil {
		if kerr := key.wait(); kerr != nil {
			err = kerr // the key's own error says more than the handshake's
		}
		return reportFailure(env, f, rep, err)
	}
	rep.TLS, rep.SessionPresent = &info.TLS, info.SessionPresent
	rep.TimingsMS = timings{Dial: ms(info.Dial), TLS: ms(info.Handshake), CONNACK: ms(info.CONNACK)}
	total := info.Dial + info.Handshake + info.CONNACK
	if f.topic != "" {
		start := time.Now()
		err := client.Publish(ctx, f.topic, iot.AtLeastOnce, []byte(f.message))
		if err != nil {
			client.Disconnect(ctx)
			return reportFailure(env, f, rep, err)
		}
		puback := time.Since(start)
		total += puback
		rep.TimingsMS.PUBACK = ms(puback)
		rep.Published = &publishReport{Topic: f.topic, QoS: 1, Bytes: len(f.message)}
	}
	rep.TimingsMS.Total = ms(total)
	if err := client.Disconnect(ctx); err != nil {
		return err
	}
	if f.json {
		return writeJSON(env.stdout, rep)
	}
	// One write: the report is one block, not a dozen small writes.
	var out bytes.Buffer
	printConnect(&out, ep, rep)
	_, err = env.stdout.Write(out.Bytes())
	return err
}

// reportFailure prints, with --json, the failure as JSON on stdout for
// scripts, and returns the error for the one-line message on stderr.
func reportFailure(env *cliEnv, f connectFlags, rep connectReport, err error) error {
	if f.json {
		e := &errorReport{Message: forShell(err)}
		var ce *iot.ConnectError
		if errors.As(err, &ce) {
			e.Kind, e.Stage = ce.Kind.Error(), string(ce.Stage)
			if errors.Is(err, iot.ErrConnectRefused) {
				code := int(ce.Code)
				e.Code = &code
			}
		}
		rep.Error = e
		if werr := writeJSON(env.stdout, rep); werr != nil {
			return errors.Join(err, werr)
		}
	}
	return err
}

func printConnect(w io.Writer, ep iot.Endpoint, rep connectReport) {
	t := rep.TLS
	fmt.Fprintf(w, "connected to %s as client ID %q\n", ep, rep.ClientID)
	fmt.Fprintf(w, "  TLS           %s, %s\n", t.Version, t.CipherSuite)
	fmt.Fprintf(w, "  SNI           %s\n", t.ServerName)
	switch {
	case len(t.ALPNOffered) == 0:
		fmt.Fprintf(w, "  ALPN          none offered (port %d)\n", rep.Port)
	case t.ALPN == "":
		fmt.Fprintf(w, "  ALPN          offered %s, server chose none\n", strings.Join(t.ALPNOffered, ", "))
	default:
		fmt.Fprintf(w, "  ALPN          %s\n", t.ALPN)
	}
	if c := t.ClientCertificate; c != nil {
		fmt.Fprintf(w, "  client cert   %s (ID %s)\n", c.Subject, c.ID)
	}
	for i, c := range t.ServerChain {
		label := ""
		if i == 0 {
			label = "server chain"
		}
		fmt.Fprintf(w, "  %-13s %d: %s (issuer %s)\n", label, i, c.Subject, c.Issuer)
	}
	if rep.SessionPresent {
		fmt.Fprintln(w, "  session       present (the broker kept a persistent session)")
	}
	if p := rep.Published; p != nil {
		fmt.Fprintf(w, "published %d bytes to %q with QoS 1: PUBACK received\n", p.Bytes, p.Topic)
	}
	tm := rep.TimingsMS
	fmt.Fprintf(w, "timings: dial %.2f ms, TLS %.2f ms, CONNACK %.2f ms", tm.Dial, tm.TLS, tm.CONNACK)
	if rep.Published != nil {
		fmt.Fprintf(w, ", PUBACK %.2f ms", tm.PUBACK)
	}
	fmt.Fprintf(w, " (total %.2f ms)\n", tm.Total)
}

// asyncKey is a device key being opened in the background.
type asyncKey struct {
	done  chan struct{}
	store keystore.Store
	err   error
}

func openKeyAsync(ctx context.Context, env *cliEnv, uri string, chain []*x509.Certificate, ids *iot.IdentitySource) *asyncKey {
	k := &asyncKey{done: make(chan struct{})}
	go func() {
		defer close(k.done)
		store, key, err := keystore.OpenKey(ctx, uri, keystore.Options{Logger: env.log})
		if err == nil {
			var id *iot.Identity
			if id, err = iot.NewIdentity(key, chain); err == nil {
				k.store = store
				ids.Swap(id)
				return
			}
			store.Close()
		}
		k.err = err
		ids.Fail(err)
	}()
	return k
}

// wait waits for the key and returns why it could not be opened, if it could not.
func (k *asyncKey) wait() error {
	<-k.done
	return k.err
}

func (k *asyncKey) close() {
	if k.wait() == nil {
		k.store.Close()
	}
}
