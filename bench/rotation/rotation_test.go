// Package rotation_bench measures one certificate rotation end to end against
// the emulator beside one plain connect of the same device in the same run:
// how many connects' worth a rotation costs. Run with bench/ratio.sh (see
// bench/README.md and docs/rotation.md).
package rotation_bench

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/fleetprov"
	"github.com/thingcert/thingcert/iot/jobs"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/filestore"
	"github.com/thingcert/thingcert/rotation"
)

const (
	account  = "bench"
	template = "fleet"
	thing    = "dev-0001"
)

// benchDevice is a provisioned device (file key, ECDSA P-256) on an in-process
// emulator whose rate limits are off, so that the loop measures work, not
// AWS IoT's quotas (one CONNECT per second per client ID, 500 CONNECTs per
// second per account, 15 and 10 TPS for the two provisioning calls).
type benchDevice struct {
	emu     *emulator.Emulator
	store   keystore.Store
	session *device.Session
	runner  *rotation.Runner
}

func setup(b testing.TB) *benchDevice {
	b.Helper()
	ctx := context.Background()
	emu, err := emulator.Start(ctx, emulator.Config{
		Accounts:              []emulator.Account{{Name: account}},
		Templates:             []emulator.Template{{Name: template, Body: emulator.SimpleTemplate("dev-", "SerialNumber")}},
		ClientConnectInterval: -1, CreateCertificateRate: -1, RegisterThingRate: -1, AccountConnectRate: -1,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { emu.Close() })
	dir := b.TempDir()
	store, err := filestore.Open(ctx, "file:"+filepath.Join(dir, "keys")+"/", keystore.Options{})
	if err != nil {
		b.Fatal(err)
	}
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
	session := &device.Session{
		Config:             iot.Config{Endpoint: iot.Endpoint{Host: emu.Endpoint(account), Address: emu.Addr()}, Roots: emu.RootCAs(), ThingName: thing},
		ClaimClientID:      "claim",
		MinConnectInterval: -1,
	}
	b.Cleanup(func() { session.Close(context.Background()) })
	runner := &rotation.Runner{
		// Replaced keys are deleted at once, so a long run does not pile them up;
		// the deletion is part of the measured rotation.
		Machine:   rotation.Machine{GracePeriod: -1},
		DeviceID:  thing,
		State:     rotation.StateStore{Dir: filepath.Join(dir, "state")},
		Store:     store,
		Subject:   "CN=" + thing,
		Issuer:    &fleetprov.Issuer{Conn: session, Template: template, Parameters: map[string]string{"SerialNumber": "0001"}, ThingName: thing},
		Connector: session,
		Reporter:  jobs.Reporter{Client: session.Jobs()},
	}
	claim := rotation.IdentityRecord{KeyURI: claimURI, CertFile: claimFile, Claim: true}
	s, err := runner.Adopt(ctx, claim)
	if err != nil {
		b.Fatal(err)
	}
	id, err := runner.Identity(ctx, *s.Current)
	if err != nil {
		b.Fatal(err)
	}
	if err := session.Switch(ctx, id); err != nil {
		b.Fatal(err)
	}
	if _, err := runner.Provision(ctx, claim); err != nil {
		b.Fatal(err)
	}
	return &benchDevice{emu: emu, store: store, session: session, runner: runner}
}

// BenchmarkRotation: reference is one plain connect (TCP, TLS 1.3 with the
// device's file key, CONNECT, CONNACK, DISCONNECT); thingcert is one whole
// rotation (new key, CSR, CreateCertificateFromCsr, RegisterThing, checks,
// reconnect with the new identity, confirmation on it, the state made durable
// before each of those effects (rotation.Needs) and written at the end, the old
// key deleted).
func BenchmarkRotation(b *testing.B) {
	d := setup(b)
	ctx := context.Background()
	b.Run("file-ecdsa-p256/reference", func(b *testing.B) {
		s, err := d.runner.Load()
		if err != nil {
			b.Fatal(err)
		}
		id, err := d.runner.Identity(ctx, *s.Current)
		if err != nil {
			b.Fatal(err)
		}
		aid, err := iot.NewIdentity(id.Key, id.Chain)
		if err != nil {
			b.Fatal(err)
		}
		// The device's own connection steps aside: one client ID, one connection.
		if err := d.session.Close(ctx); err != nil {
			b.Fatal(err)
		}
		c, err := iot.New(iot.Config{Endpoint: d.session.Config.Endpoint, Roots: d.emu.RootCAs(), ThingName: thing, Identity: iot.NewIdentitySource(aid)})
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := c.Connect(ctx); err != nil {
				b.Fatal(err)
			}
			if err := c.Disconnect(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("file-ecdsa-p256/thingcert", func(b *testing.B) {
		s, err := d.runner.Load()
		if err != nil {
			b.Fatal(err)
		}
		id, err := d.runner.Identity(ctx, *s.Current)
		if err != nil {
			b.Fatal(err)
		}
		if err := d.session.Switch(ctx, id); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := d.runner.Rotate(ctx, rotation.Trigger{Kind: rotation.TriggerOperator}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
