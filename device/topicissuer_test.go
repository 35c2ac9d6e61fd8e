package device_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/fleetprov"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/rotation"
)

// ownerCA is the owner's certificate service: a client of the emulator that
// takes CSRs on certs/<thing>/csr, signs them with the owner's CA, registers
// the certificate with the cloud (attached to the thing) and answers on
// certs/<thing>/issued/accepted or /rejected.
type ownerCA struct {
	ca     *otherCA
	reject atomic.Bool
}

func startOwnerCA(t *testing.T, emu *emulator.Emulator) *ownerCA {
	t.Helper()
	ctx := context.Background()
	o := &ownerCA{ca: newOtherCA(t)}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: o.ca.cert.Raw})
	if _, err := emu.RegisterCA(ctx, account, caPEM, emulator.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	// The service's own identity, signed by the same CA.
	svc := ownerIdentity(t, o.ca, "owner-ca-service")
	svcCert, err := emu.RegisterCertificate(ctx, account, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: svc.Chain[0].Raw}), emulator.CertificateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.AttachAllowAllPolicy(ctx, account, svcCert.ID); err != nil {
		t.Fatal(err)
	}
	c, err := iot.New(iot.Config{Endpoint: iot.Endpoint{Host: emu.Endpoint(account), Address: emu.Addr()}, Roots: emu.RootCAs(),
		ClientID: "owner-ca-service", Identity: iot.NewIdentitySource(svc)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(context.Background()) })
	err = c.Subscribe(ctx, "certs/+/csr", iot.AtLeastOnce, func(m iot.Message) {
		thingName := strings.Split(m.Topic, "/")[1]
		var req struct {
			ClientToken string `json:"clientToken"`
			ThingName   string `json:"thingName"`
			CSR         string `json:"certificateSigningRequest"`
		}
		reply := func(ok bool, body map[string]any) {
			body["clientToken"] = req.ClientToken
			b, _ := json.Marshal(body)
			topic := "certs/" + thingName + "/issued/rejected"
			if ok {
				topic = "certs/" + thingName + "/issued/accepted"
			}
			_ = c.Publish(context.Background(), topic, iot.AtLeastOnce, b)
		}
		if err := json.Unmarshal(m.Payload, &req); err != nil || req.ThingName != thingName {
			reply(false, map[string]any{"statusCode": 400, "errorCode": "BadRequest", "errorMessage": "not a CSR request"})
			return
		}
		if o.reject.Load() {
			reply(false, map[string]any{"statusCode": 403, "errorCode": "NotEntitled", "errorMessage": "this device may not renew"})
			return
		}
		block, _ := pem.Decode([]byte(req.CSR))
		csr, err := x509.ParseCertificateRequest(block.Bytes)
		if err != nil || csr.CheckSignature() != nil {
			reply(false, map[string]any{"statusCode": 400, "errorCode": "BadCSR", "errorMessage": "bad CSR"})
			return
		}
		der := o.ca.issue(t, csr.PublicKey, time.Now().Add(-time.Minute), time.Now().Add(30*24*time.Hour), x509.ECDSAWithSHA256)
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		reg, err := emu.RegisterCertificate(context.Background(), account, certPEM, emulator.CertificateOptions{Thing: thingName})
		if err == nil {
			// The owner's topics are outside the least-privilege device policy.
			err = emu.AttachAllowAllPolicy(context.Background(), account, reg.ID)
		}
		if err != nil {
			reply(false, map[string]any{"statusCode": 500, "errorCode": "InternalError", "errorMessage": err.Error()})
			return
		}
		reply(true, map[string]any{"certificatePem": string(certPEM), "certificateId": reg.ID})
	})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func ownerIdentity(t *testing.T, ca *otherCA, cn string) *iot.Identity {
	t.Helper()
	store, _ := fileStores(t, t.TempDir())
	uri, _ := store.KeyURI(cn)
	k, err := store.Generate(context.Background(), uri, "ecdsa-p256")
	if err != nil {
		t.Fatal(err)
	}
	der := ca.issue(t, k.Public(), time.Now().Add(-time.Minute), time.Now().Add(24*time.Hour), x509.ECDSAWithSHA256)
	c, _ := x509.ParseCertificate(der)
	id, err := iot.NewIdentity(k, []*x509.Certificate{c})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestTopicIssuer: a device whose certificates come from the owner's own CA
// rotates through the owner's request/response topics, checks the chain
// against the owner's CA, and rolls back on the owner's refusal.
func TestTopicIssuer(t *testing.T) {
	emu := startEmulator(t, emulator.Config{})
	owner := startOwnerCA(t, emu)
	r := newRig(t, emu, fileStores)
	old := r.provision().Current
	if err := emu.AttachAllowAllPolicy(context.Background(), account, old.CertificateID); err != nil {
		t.Fatal(err)
	}
	r.runner.Issuer = &fleetprov.TopicIssuer{Conn: r.session, ThingName: thing, Request: "certs/{thing}/csr", Response: "certs/{thing}/issued", Timeout: 10 * time.Second}
	r.runner.Roots = owner.ca.pool()
	ctx := context.Background()

	s, err := r.runner.Rotate(ctx, rotation.Trigger{Kind: rotation.TriggerOperator})
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := r.runner.Identity(ctx, *s.Current)
	if s.Current.CertificateID == old.CertificateID || leaf.Chain[0].Issuer.CommonName != "not the issuer" {
		t.Fatalf("after rotation: %+v issued by %s", s.Current, leaf.Chain[0].Issuer)
	}
	r.publishes()

	owner.reject.Store(true)
	s, err = r.runner.Rotate(ctx, rotation.Trigger{Kind: rotation.TriggerOperator})
	if !errors.Is(err, rotation.ErrRolledBack) || !strings.Contains(err.Error(), "(403 NotEntitled)") {
		t.Fatalf("refused by the owner: %v", err)
	}
	r.publishes()

	// The owner's CA is not what the device trusts: refused.
	owner.reject.Store(false)
	r.runner.Roots = newOtherCA(t).pool()
	if _, err = r.runner.Rotate(ctx, rotation.Trigger{Kind: rotation.TriggerOperator}); !errors.Is(err, rotation.ErrRolledBack) || !strings.Contains(err.Error(), "does not chain") {
		t.Fatalf("untrusted owner CA: %v", err)
	}
	r.publishes()
}

func (ca *otherCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}
