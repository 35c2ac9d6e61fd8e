package emulator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/thingcert/thingcert/internal/pemcert"
)

func TestRegisterClaim(t *testing.T) {
	e := startEmu(t, Config{Accounts: []Account{{Name: "fleet", Prefix: "fleet0001"}}})
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, reg, err := e.RegisterClaim(ctx, "fleet", key, "factory claim")
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pemcert.Parse(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	c := certs[0]
	if c.Subject.CommonName != "factory claim" || !key.PublicKey.Equal(c.PublicKey) {
		t.Errorf("claim certificate %s carries another name or key", c.Subject)
	}
	now := e.cfg.Now()
	if !c.NotBefore.Before(now) || !c.NotAfter.After(now) {
		t.Errorf("claim certificate not valid now (%v): %v to %v", now, c.NotBefore, c.NotAfter)
	}
	got, err := e.Certificate(ctx, "fleet", reg.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusActive || got.CAID != "" || got.Mode != ModeSNIOnly {
		t.Errorf("registered as %+v; want ACTIVE, without a CA, SNI_ONLY", got)
	}
}
