package fleet_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsiot "github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/fleet"
	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/iot/stepca"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

// How the factory gives a kind-3 device its first certificate, which it
// then registers in every account: either way it comes from the owner's
// step-ca CA, and AWS IoT sees it only through RegisterCertificateWithoutCA.
type firstCert int

const (
	// firstByX5C: the factory station has step-ca issue it through the X5C
	// provisioner, the device's factory claim signing the token and its new
	// key the CSR (the step-ca certificate carries the provisioner's
	// extension).
	firstByX5C firstCert = iota
	// firstSignedOffline: the factory signs it with step-ca's intermediate
	// itself (openssl or step certificate sign; no provisioner extension,
	// which step-ca's rekey takes as well).
	firstSignedOffline
)

// runMultiAccountStepCA: a device of two accounts (SNI_ONLY, step-ca's CA
// registered with neither) configured as docs/config.md says (issuer:
// step-ca, accounts:, key and cert) rotates on a job of the primary: step-ca
// rekeys it over mutual TLS with the factory certificate, the device reports
// the new certificate and waits, the fleet tool checks it against step-ca's
// CA and registers it in both accounts, the device commits and connects to
// both by SNI, and retire deactivates the factory certificate in both.
func runMultiAccountStepCA(t *testing.T, storeURI string, how firstCert) {
	const prod, pre, thing = "prod", "preprod", "gw-1"
	emu, err := emulator.Start(context.Background(), emulator.Config{Accounts: []emulator.Account{{Name: prod}, {Name: pre}},
		APIListen: "127.0.0.1:0", ClientConnectInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	apis := map[string]*awsiot.Client{prod: accountClient(t, emu, prod), pre: accountClient(t, emu, pre)}
	accts := []string{prod, pre}
	factory := testpeers.NewFactoryCA(t)
	sca := testpeers.StartStepCA(t, testpeers.StepCAOptions{X5CRootsPEM: factory.PEM})
	roots, err := stepca.LoadRoot(sca.RootFile, stepca.Fingerprint(sca.Root))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, api := range apis {
		mustAPI(t)(api.CreatePolicy(ctx, &awsiot.CreatePolicyInput{PolicyName: aws.String("device"), PolicyDocument: aws.String(allowAll)}))
	}
	dir := t.TempDir()

	// The factory: the device's key in its store, its first certificate
	// from step-ca's CA, registered in both accounts without a CA.
	st, err := keystore.Open(ctx, storeURI, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	keyURI, _ := st.KeyURI("factory")
	key, err := st.Generate(ctx, keyURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	switch how {
	case firstByX5C:
		claimURI, _ := st.KeyURI("factory-claim")
		ck, err := st.Generate(ctx, claimURI, keystore.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(factory.Claim(t, ck.Public(), "factory-"+thing))
		claimCert, _ := x509.ParseCertificate(b.Bytes)
		csr, err := keystore.CreateCSR(key, "CN="+thing, keystore.CSROptions{})
		if err != nil {
			t.Fatal(err)
		}
		iss := &stepca.Issuer{URL: sca.URL, Roots: roots, Provisioner: sca.Provisioner}
		issued, err := iss.Sign(ctx, rotation.Identity{Record: rotation.IdentityRecord{Claim: true}, Key: ck, Chain: []*x509.Certificate{claimCert}}, csr)
		if err != nil {
			t.Fatalf("the factory's X5C request: %v\n%s", err, sca.Log())
		}
		chain = issued.Chain
	case firstSignedOffline:
		serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
		tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: thing, Organization: []string{"Owner"}},
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(365 * 24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, sca.Intermediate, key.Public(), sca.IntermediateKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		chain = []*x509.Certificate{c} // the leaf alone: step-ca knows its intermediate
	}
	st.Close()
	var certPEM []byte
	for _, c := range chain {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	certFile := filepath.Join(dir, thing+".pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	leafPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[0].Raw}))
	for _, a := range accts {
		api := apis[a]
		out, err := api.RegisterCertificateWithoutCA(ctx, &awsiot.RegisterCertificateWithoutCAInput{CertificatePem: &leafPEM, Status: types.CertificateStatusActive})
		if err != nil {
			t.Fatal(err)
		}
		mustAPI(t)(api.CreateThing(ctx, &awsiot.CreateThingInput{ThingName: aws.String(thing)}))
		mustAPI(t)(api.AttachThingPrincipal(ctx, &awsiot.AttachThingPrincipalInput{ThingName: aws.String(thing), Principal: out.CertificateArn}))
		mustAPI(t)(api.AttachPolicy(ctx, &awsiot.AttachPolicyInput{PolicyName: aws.String("device"), Target: out.CertificateArn}))
	}

	// The device, from its configuration; rotations come from jobs only.
	yaml := "endpoint: " + emu.Endpoint(prod) + "\naddress: " + emu.Addr() + "\n" +
		"accounts:\n  - endpoint: " + emu.Endpoint(pre) + "\n    address: " + emu.Addr() + "\n" +
		"thing_name: " + thing + "\nstore: " + storeURI + "\nkey: " + keyURI + "\ncert: " + certFile + "\n" +
		"state_dir: " + filepath.Join(dir, "state") + "\n" +
		"provisioning:\n  issuer: step-ca\n  ca_url: " + sca.URL + "\n  root: " + sca.RootFile + "\n" +
		"rotation:\n  lifetime_ratio: off\n  max_age: off\n  emergency_window: off\n  before_expiry: 1m\n  grace_period: 1h\n  retry_min: 1s\n  retry_max: 2s\n"
	cfgFile := filepath.Join(dir, "thingcert.yaml")
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	o, err := cfg.DeviceOptions()
	if err != nil {
		t.Fatal(err)
	}
	if o.JustInTime {
		t.Fatal("a device of several accounts expects just-in-time registration")
	}
	logs := &testpeers.Buffer{}
	o.Roots = emu.RootCAs()
	o.MinConnectInterval = -1
	o.Log = slog.New(slog.NewTextHandler(logs, nil))
	m, err := device.New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	d := &multiDevice{thing: thing, m: m, done: make(chan error, 1), keyURI: keyURI, certPEM: certPEM}
	go func() { d.done <- m.Run(ctx) }()
	defer func() {
		cancel()
		<-d.done
		m.Close(context.Background())
		if t.Failed() {
			t.Logf("device log:\n%s\nstep-ca log:\n%s", logs.String(), sca.Log())
		}
	}()
	d.first = waitState(t, ctx, m, func(s *rotation.State) bool { return !s.InProgress() }).Current
	if d.first.Claim || d.first.CertificateID != stepca.Fingerprint(chain[0]) {
		t.Fatalf("the device does not start on its factory certificate: %+v", d.first)
	}
	acceptedIn := func(certID, acct string) bool {
		evs, err := emu.Registry.History(ctx, emulator.HistoryQuery{CertificateID: certID})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if ev.Outcome == emulator.Accepted && ev.Account == acct {
				return true
			}
		}
		return false
	}
	if err := connectAs(ctx, emu, pre, d, *d.first); err != nil {
		t.Fatalf("the factory certificate does not connect to %s: %v", pre, err)
	}
	// The device connects in the background: wait for it in prod.
	for !acceptedIn(d.first.CertificateID, prod) {
		select {
		case <-ctx.Done():
			t.Fatalf("the device did not connect to %s with its factory certificate", prod)
		case <-time.After(50 * time.Millisecond):
		}
	}

	// A rotation job in the primary: step-ca rekeys, the device reports and
	// waits on its factory certificate, refused by both accounts.
	job, err := fleet.Rotate(ctx, apis[prod], fleet.RotateOptions{Things: []string{thing}})
	if err != nil {
		t.Fatal(err)
	}
	newID := reported(t, ctx, apis[prod], job.ID, thing)
	if !strings.Contains(sca.Log(), "/1.0/rekey") {
		t.Errorf("step-ca's log shows no rekey:\n%s", sca.Log())
	}
	if strings.Count(sca.Log(), "/1.0/sign") > map[firstCert]int{firstByX5C: 1, firstSignedOffline: 0}[how] {
		t.Errorf("the device asked step-ca to sign rather than rekey:\n%s", sca.Log())
	}
	waiting := waitState(t, ctx, m, func(s *rotation.State) bool {
		return s.Phase == rotation.PhaseVerified && s.Attempt >= 1 && strings.Contains(s.LastError, emu.Endpoint(pre))
	})
	if waiting.Current.CertificateID != d.first.CertificateID {
		t.Fatalf("the device moved to %s before any account registered it", waiting.Current.CertificateID)
	}

	// The fleet tool checks it against step-ca's CA and registers it in both.
	ownerCA := x509.NewCertPool()
	ownerCA.AddCert(sca.Intermediate)
	both := []fleet.Account{{Name: prod, API: apis[prod]}, {Name: pre, API: apis[pre]}}
	res, err := fleet.Register(ctx, apis[prod], job.ID, both, fleet.RegisterOptions{CA: ownerCA}, time.Now)
	if err != nil || res.Errors != 0 || res.Refused != 0 {
		t.Fatalf("register in both: %+v, %v", res, err)
	}
	registered := map[string]bool{}
	for _, dec := range res.Decisions {
		if dec.Step == fleet.RegisterRegister && dec.Executed {
			registered[dec.Account] = true
		}
	}
	if !registered[prod] || !registered[pre] {
		t.Fatalf("register decisions: %+v", res.Decisions)
	}
	st2 := waitState(t, ctx, m, func(s *rotation.State) bool { return !s.InProgress() && s.Current.CertificateID == newID })
	if st2.LastResult == nil || st2.LastResult.Outcome != rotation.Succeeded {
		t.Fatalf("the rotation: %+v", st2.LastResult)
	}
	id, err := m.Runner().Identity(ctx, *st2.Current)
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Chain[0].CheckSignatureFrom(sca.Intermediate); err != nil {
		t.Errorf("the new certificate is not step-ca's: %v", err)
	}
	if id.Chain[0].Subject.String() != chain[0].Subject.String() || id.Chain[0].PublicKeyAlgorithm != chain[0].PublicKeyAlgorithm {
		t.Errorf("the rekeyed certificate's subject %q, the factory's %q", id.Chain[0].Subject, chain[0].Subject)
	}
	if !acceptedIn(newID, prod) {
		t.Errorf("the device is not connected to %s with the new certificate", prod)
	}
	if err := connectAs(ctx, emu, pre, d, *st2.Current); err != nil {
		t.Errorf("the new certificate does not connect to %s by SNI: %v", pre, err)
	}
	for {
		out, err := apis[prod].DescribeJobExecution(ctx, &awsiot.DescribeJobExecutionInput{JobId: &job.ID, ThingName: aws.String(thing)})
		if err != nil {
			t.Fatal(err)
		}
		if out.Execution.Status == types.JobExecutionStatusSucceeded {
			if out.Execution.StatusDetails.DetailsMap["oldCertificateId"] != d.first.CertificateID || out.Execution.StatusDetails.DetailsMap["newCertificateId"] != newID {
				t.Fatalf("the execution's details: %v", out.Execution.StatusDetails.DetailsMap)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the job execution stays %s", out.Execution.Status)
		case <-time.After(50 * time.Millisecond):
		}
	}

	// Retire in both accounts: the factory certificate INACTIVE and refused
	// in each, the new one still connects to each.
	retiredEverywhere(t, ctx, emu, apis, prod, accts, job.ID, d, newID, *st2.Current)
	if err := m.Session().Jobs().List(ctx); err != nil {
		t.Errorf("the device's connection to %s after retire: %v", prod, err)
	}
}

// TestMultiAccountStepCAFile: the first certificate from step-ca's X5C
// provisioner at the factory, the keys in files.
func TestMultiAccountStepCAFile(t *testing.T) {
	runMultiAccountStepCA(t, "file:"+t.TempDir()+"/", firstByX5C)
}

// TestMultiAccountStepCASoftHSM: the first certificate signed by the
// factory with step-ca's intermediate, the keys in a PKCS#11 token.
func TestMultiAccountStepCASoftHSM(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{Label: "kind3"})
	runMultiAccountStepCA(t, h.StoreURI(), firstSignedOffline)
}
