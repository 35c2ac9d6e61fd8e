package emulator_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log"
	"math/big"
	"time"

	"github.com/thingcert/thingcert/emulator"
)

// A test starts an emulator in memory, registers a device certificate and
// connects with the account's SNI; the history says what the emulator decided.
func ExampleStart() {
	ctx := context.Background()
	emu, err := emulator.Start(ctx, emulator.Config{Accounts: []emulator.Account{{Name: "dev", Prefix: "example"}}})
	if err != nil {
		log.Fatal(err)
	}
	defer emu.Close()

	// A device certificate registered without a CA (SNI_ONLY) and attached
	// to thing sensor-1.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sensor-1"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	cert, err := emu.RegisterCertificate(ctx, "dev", certPEM, emulator.CertificateOptions{WithoutCA: true, Thing: "sensor-1"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(emu.Endpoint("dev"), cert.Mode)
	// AWS IoT refuses a CONNECT that no policy of the certificate allows:
	// give it the least-privilege device policy (connect as its thing name,
	// its own Jobs and rotation topics).
	if _, err := emu.CreatePolicy(ctx, "dev", "device", emulator.DevicePolicy("*")); err != nil {
		log.Fatal(err)
	}
	if err := emu.AttachPolicy(ctx, "dev", "device", cert.ID); err != nil {
		log.Fatal(err)
	}

	cfg := emu.ClientTLS("dev")
	cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}
	conn, err := tls.Dial("tcp", emu.Addr(), cfg)
	if err != nil {
		log.Fatal(err)
	}
	// MQTT 3.1.1 CONNECT with client ID sensor-1, then the CONNACK.
	conn.Write([]byte{0x10, 20, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 8, 's', 'e', 'n', 's', 'o', 'r', '-', '1'})
	ack := make([]byte, 4)
	if _, err := conn.Read(ack); err != nil {
		log.Fatal(err)
	}
	conn.Close()

	evs, _ := emu.History(ctx, emulator.HistoryQuery{CertificateID: cert.ID, Outcome: emulator.Accepted})
	fmt.Println(evs[0].Outcome, evs[0].Account, evs[0].ClientID)
	// Output:
	// example-ats.iot.us-east-1.amazonaws.com SNI_ONLY
	// accepted dev sensor-1
}
