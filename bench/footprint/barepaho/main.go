// Command barepaho is the reference for thingcert's footprint figures: the
// smallest useful AWS IoT device client — paho over mutual TLS with a PEM key
// file, connect, publish, stay connected — built the same way as thingcert.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func main() {
	broker := flag.String("broker", "tls://127.0.0.1:8883", "broker URL")
	sni := flag.String("sni", "", "TLS server name")
	ca := flag.String("ca", "", "CA file")
	cert := flag.String("cert", "", "client certificate")
	key := flag.String("key", "", "client key")
	id := flag.String("client-id", "barepaho", "client ID")
	topic := flag.String("topic", "bench/footprint", "topic")
	flag.Parse()

	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	if pem, err := os.ReadFile(*ca); err == nil {
		pool.AppendCertsFromPEM(pem)
	}
	opts := mqtt.NewClientOptions().AddBroker(*broker).SetClientID(*id).
		SetTLSConfig(&tls.Config{ServerName: *sni, RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})
	c := mqtt.NewClient(opts)
	if t := c.Connect(); t.Wait() && t.Error() != nil {
		log.Fatal(t.Error())
	}
	if t := c.Publish(*topic, 1, false, "hello"); t.Wait() && t.Error() != nil {
		log.Fatal(t.Error())
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	c.Disconnect(250)
}
