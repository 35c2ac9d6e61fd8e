// Package ownerca_bench measures, in one run against the in-process emulator,
// a rotation by the owner's step-ca (rekey over mutual TLS, then just-in-time
// provisioning of the new certificate: its first connection closed, the next
// accepted) beside a rotation by fleet provisioning (CreateCertificateFromCsr
// and RegisterThing over MQTT). Each reports the whole rotation (ns/op) and
// the time from the rotation's start to the connection accepted on the new
// certificate (ns-to-connected/op). Not asserted; see bench/README.md.
//
//	go test -run '^$' -bench . -benchtime 5x ./bench/ownerca/
package ownerca_bench

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/fleetprov"
	"github.com/thingcert/thingcert/iot/jobs"
	"github.com/thingcert/thingcert/iot/stepca"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/filestore"
	"github.com/thingcert/thingcert/rotation"
)

const (
	account  = "bench"
	template = "fleet"
)

// jitp names the thing by the certificate's common name and lets it use
// its Jobs topics (the rotation's confirmation).
const jitp = `{"Parameters": {"AWS::IoT::Certificate::CommonName": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
 "Resources": {
  "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}}},
  "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
  "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": "{\"Version\": \"2012-10-17\", \"Statement\": [{\"Effect\": \"Allow\", \"Action\": [\"iot:Connect\", \"iot:Publish\", \"iot:Receive\", \"iot:Subscribe\"], \"Resource\": \"*\"}]}"}}}}`

// timedConnector notes when the connection moved to a certificate other
// than the one it started from.
type timedConnector struct {
	*device.Session
	mu        sync.Mutex
	from      string
	connected time.Time
}

func (c *timedConnector) Switch(ctx context.Context, id rotation.Identity) error {
	err := c.Session.Switch(ctx, id)
	c.mu.Lock()
	if err == nil && id.Record.CertificateID != c.from && c.connected.IsZero() {
		c.connected = time.Now()
	}
	c.mu.Unlock()
	return err
}

func (c *timedConnector) start(from string) {
	c.mu.Lock()
	c.from, c.connected = from, time.Time{}
	c.mu.Unlock()
}

type benchDevice struct {
	runner *rotation.Runner
	conn   *timedConnector
}

func newDevice(b *testing.B, emu *emulator.Emulator, thing string, issuer func(iot.MQTT) rotation.Issuer, jit bool) (*benchDevice, keystore.Store, string) {
	b.Helper()
	dir := b.TempDir()
	store, err := filestore.Open(context.Background(), "file:"+filepath.Join(dir, "keys")+"/", keystore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	s := &device.Session{
		Config:             iot.Config{Endpoint: iot.Endpoint{Host: emu.Endpoint(account), Address: emu.Addr()}, Roots: emu.RootCAs(), ThingName: thing},
		ClaimClientID:      "claim-" + thing,
		MinConnectInterval: -1,
		JustInTime:         jit,
	}
	b.Cleanup(func() { s.Close(context.Background()) })
	conn := &timedConnector{Session: s}
	r := &rotation.Runner{
		Machine:   rotation.Machine{GracePeriod: -1},
		DeviceID:  thing,
		State:     rotation.StateStore{Dir: filepath.Join(dir, "state")},
		Store:     store,
		Subject:   "CN=" + thing,
		Issuer:    issuer(s),
		Connector: conn,
		Reporter:  jobs.Reporter{Client: s.Jobs()},
	}
	return &benchDevice{runner: r, conn: conn}, store, dir
}

// provision adopts the claim (connecting with it unless offline) and
// provisions.
func (d *benchDevice) provision(b *testing.B, claim rotation.IdentityRecord, offline bool) {
	ctx := context.Background()
	s, err := d.runner.Adopt(ctx, claim)
	if err != nil {
		b.Fatal(err)
	}
	if !offline {
		id, err := d.runner.Identity(ctx, *s.Current)
		if err != nil {
			b.Fatal(err)
		}
		if err := d.conn.Session.Switch(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := d.runner.Provision(ctx, claim); err != nil {
		b.Fatal(err)
	}
}

func (d *benchDevice) measure(b *testing.B) {
	ctx := context.Background()
	var toConnected time.Duration
	for b.Loop() {
		s, err := d.runner.Load()
		if err != nil {
			b.Fatal(err)
		}
		d.conn.start(s.Current.CertificateID)
		start := time.Now()
		if _, err := d.runner.Rotate(ctx, rotation.Trigger{Kind: rotation.TriggerOperator}); err != nil {
			b.Fatal(err)
		}
		d.conn.mu.Lock()
		toConnected += d.conn.connected.Sub(start)
		d.conn.mu.Unlock()
	}
	b.ReportMetric(float64(toConnected.Nanoseconds())/float64(b.N), "ns-to-connected/op")
}

func BenchmarkRotationByIssuer(b *testing.B) {
	ctx := context.Background()
	emu, err := emulator.Start(ctx, emulator.Config{
		Accounts:              []emulator.Account{{Name: account}},
		Templates:             []emulator.Template{{Name: template, Body: emulator.SimpleTemplate("dev-", "SerialNumber")}},
		ClientConnectInterval: -1, CreateCertificateRate: -1, RegisterThingRate: -1,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer emu.Close()

	// Fleet provisioning: a claim AWS knows.
	fp, store, dir := newDevice(b, emu, "dev-0001", func(c iot.MQTT) rotation.Issuer {
		return &fleetprov.Issuer{Conn: c, Template: template, Parameters: map[string]string{"SerialNumber": "0001"}, ThingName: "dev-0001"}
	}, false)
	claimURI, _ := store.KeyURI("claim")
	ck, err := store.Generate(ctx, claimURI, keystore.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	claimPEM, _, err := emu.RegisterClaim(ctx, account, ck, "claim")
	if err != nil {
		b.Fatal(err)
	}
	claimFile := filepath.Join(dir, "claim.crt")
	if err := os.WriteFile(claimFile, claimPEM, 0o644); err != nil {
		b.Fatal(err)
	}
	fp.provision(b, rotation.IdentityRecord{KeyURI: claimURI, CertFile: claimFile, Claim: true}, false)

	// step-ca: a factory claim only step-ca knows, JITP in AWS IoT.
	factory := testpeers.NewFactoryCA(b)
	ca := testpeers.StartStepCA(b, testpeers.StepCAOptions{X5CRootsPEM: factory.PEM})
	if _, err := emu.RegisterCA(ctx, account, ca.IntermediatePEM, emulator.CAOptions{AutoRegistration: true,
		Registration: &emulator.CARegistrationConfig{TemplateBody: jitp, RoleArn: "arn:aws:iam::123456789012:role/JITP"}}); err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root)
	sc, store2, dir2 := newDevice(b, emu, "owner-0001", func(iot.MQTT) rotation.Issuer {
		return &stepca.Issuer{URL: ca.URL, Roots: roots, Provisioner: ca.Provisioner}
	}, true)
	sc.runner.Roots = roots
	claimURI2, _ := store2.KeyURI("factory")
	fk, err := store2.Generate(ctx, claimURI2, keystore.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	claimFile2 := filepath.Join(dir2, "factory.crt")
	if err := os.WriteFile(claimFile2, factory.Claim(b, fk.Public(), "factory-0001"), 0o644); err != nil {
		b.Fatal(err)
	}
	sc.provision(b, rotation.IdentityRecord{KeyURI: claimURI2, CertFile: claimFile2, Claim: true}, true)

	b.Run("fleet-provisioning", fp.measure)
	b.Run("step-ca-rekey-jitp", sc.measure)
}
