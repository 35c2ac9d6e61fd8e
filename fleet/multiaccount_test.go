package fleet_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsiot "github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/fleet"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/jobs/certreport"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

// unregisteredCA is an owner's CA that is registered with no AWS account: its
// certificates reach AWS IoT only through RegisterCertificateWithoutCA.
type unregisteredCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newUnregisteredCA(t *testing.T, name string) *unregisteredCA {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &unregisteredCA{key: k, cert: c}
}

func (ca *unregisteredCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func (ca *unregisteredCA) sign(pub any, subject pkix.Name) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: subject,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(7 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// caIssuer signs a device's CSRs with an owner's CA, in process: the issuer
// of a device whose certificates come from a CA AWS does not know.
type caIssuer struct{ ca *unregisteredCA }

func (i caIssuer) Issue(_ context.Context, csrDER []byte) (*rotation.Issued, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil || csr.CheckSignature() != nil {
		return nil, rotation.NewFatal("issuing", errors.New("bad CSR"))
	}
	c, err := i.ca.sign(csr.PublicKey, csr.Subject)
	if err != nil {
		return nil, rotation.NewFatal("issuing", err)
	}
	return &rotation.Issued{Chain: []*x509.Certificate{c}}, nil
}

func accountClient(t testing.TB, e *emulator.Emulator, acct string) *awsiot.Client {
	t.Helper()
	key, err := e.AccessKey(acct)
	if err != nil {
		t.Fatal(err)
	}
	return awsiot.New(awsiot.Options{
		Region:       key.Region,
		BaseEndpoint: aws.String(e.APIURL()),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: key.AccessKeyID, SecretAccessKey: key.SecretAccessKey, Source: "emulator"}, nil
		}),
		HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.RootCAs(), MinVersion: tls.VersionTLS12}}},
	})
}

const allowAll = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}`

// multiDevice is a device registered in every account of accts with a
// certificate of ca, running in the background.
type multiDevice struct {
	thing   string
	m       *device.Manager
	first   *rotation.IdentityRecord
	done    chan error
	keyURI  string
	certPEM []byte
}

func startMultiDevice(t *testing.T, ctx context.Context, emu *emulator.Emulator, apis map[string]*awsiot.Client, accts []string,
	thing string, ca *unregisteredCA, issuer rotation.Issuer, alg keystore.Algorithm, dir string) *multiDevice {
	t.Helper()
	storeURI := "file:" + filepath.Join(dir, thing, "keys") + "/"
	st, err := keystore.Open(ctx, storeURI, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	uri, err := st.KeyURI("factory")
	if err != nil {
		t.Fatal(err)
	}
	k, err := st.Generate(ctx, uri, alg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.sign(k.Public(), pkix.Name{CommonName: thing, Organization: []string{"Owner"}})
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	certFile := filepath.Join(dir, thing+"-factory.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	p := string(certPEM)
	for _, a := range accts {
		api := apis[a]
		out, err := api.RegisterCertificateWithoutCA(ctx, &awsiot.RegisterCertificateWithoutCAInput{CertificatePem: &p, Status: types.CertificateStatusActive})
		if err != nil {
			t.Fatal(err)
		}
		mustAPI(t)(api.CreateThing(ctx, &awsiot.CreateThingInput{ThingName: &thing}))
		mustAPI(t)(api.AttachThingPrincipal(ctx, &awsiot.AttachThingPrincipalInput{ThingName: &thing, Principal: out.CertificateArn}))
		mustAPI(t)(api.AttachPolicy(ctx, &awsiot.AttachPolicyInput{PolicyName: aws.String("device"), Target: out.CertificateArn}))
	}
	var others []iot.Endpoint
	for _, a := range accts[1:] {
		others = append(others, iot.Endpoint{Host: emu.Endpoint(a), Address: emu.Addr()})
	}
	m, err := device.New(ctx, device.Options{
		Endpoint:           iot.Endpoint{Host: emu.Endpoint(accts[0]), Address: emu.Addr()},
		Accounts:           others,
		Roots:              emu.RootCAs(),
		ThingName:          thing,
		StateDir:           filepath.Join(dir, thing, "state"),
		Store:              storeURI,
		Identity:           &device.Credentials{KeyURI: uri, CertFile: certFile},
		Issuer:             func(iot.MQTT) rotation.Issuer { return issuer },
		Algorithm:          alg,
		Subject:            "CN=" + thing + ",O=Owner",
		Policy:             rotation.Policy{LifetimeRatio: -1, MaxAge: -1, EmergencyWindow: -1}, // rotations come from jobs
		Machine:            rotation.Machine{GracePeriod: time.Hour, Backoff: rotation.Backoff{Min: time.Second, Max: 2 * time.Second}},
		MinConnectInterval: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	d := &multiDevice{thing: thing, m: m, done: make(chan error, 1), keyURI: uri, certPEM: certPEM}
	go func() { d.done <- m.Run(ctx) }()
	d.first = waitState(t, ctx, m, func(s *rotation.State) bool { return !s.InProgress() }).Current
	return d
}

// connectAs makes one connection to an account's endpoint (the SNI picks the
// account) with an identity of the device. The emulator, like a policy keyed
// on the thing name, wants the thing name as client ID: in the primary
// account that would take the running device's connection over, so there
// the device's own connections (the history) show what is accepted.
func connectAs(ctx context.Context, emu *emulator.Emulator, acct string, d *multiDevice, rec rotation.IdentityRecord) error {
	id, err := d.m.Runner().Identity(ctx, rec)
	if err != nil {
		return err
	}
	aid, err := iot.NewIdentity(id.Key, id.Chain)
	if err != nil {
		return err
	}
	c, err := iot.New(iot.Config{Endpoint: iot.Endpoint{Host: emu.Endpoint(acct), Address: emu.Addr()}, Identity: iot.NewIdentitySource(aid),
		Roots: emu.RootCAs(), ThingName: d.thing, ClientID: d.thing})
	if err != nil {
		return err
	}
	_, err = c.Connect(ctx)
	c.Disconnect(ctx)
	return err
}

// retiredEverywhere retires job's old certificates in every account and
// checks each: the old one INACTIVE and refused at TLS, the new one ACTIVE;
// then the device's current identity still connects to the last account.
func retiredEverywhere(t *testing.T, ctx context.Context, emu *emulator.Emulator, apis map[string]*awsiot.Client, jobsAccount string, accts []string,
	jobID string, d *multiDevice, newID string, current rotation.IdentityRecord) {
	t.Helper()
	for _, a := range accts {
		r, err := fleet.RetireIn(ctx, apis[jobsAccount], apis[a], jobID, fleet.RetireOptions{}, time.Now, nil)
		if err != nil || r.Acted != 1 || r.Errors != 0 {
			t.Fatalf("retire in %s: %+v, %v", a, r, err)
		}
		if s := certStatus(t, ctx, apis[a], d.first.CertificateID); s != "INACTIVE" {
			t.Errorf("old certificate in %s: %s", a, s)
		}
		if s := certStatus(t, ctx, apis[a], newID); s != "ACTIVE" {
			t.Errorf("new certificate in %s: %s", a, s)
		}
		if err := connectAs(ctx, emu, a, d, *d.first); !errors.Is(err, iot.ErrClientCertRefused) {
			t.Errorf("the retired certificate connecting to %s: %v, want it refused", a, err)
		}
	}
	last := accts[len(accts)-1]
	if err := connectAs(ctx, emu, last, d, current); err != nil {
		t.Errorf("the new certificate after retire, %s: %v", last, err)
	}
}

func certStatus(t *testing.T, ctx context.Context, api *awsiot.Client, id string) string {
	t.Helper()
	out, err := api.DescribeCertificate(ctx, &awsiot.DescribeCertificateInput{CertificateId: &id})
	var nf *types.ResourceNotFoundException
	if errors.As(err, &nf) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out.CertificateDescription.Status)
}

// reported waits until the thing's execution of the job carries a
// certificate report, and returns the reported certificate's ID.
func reported(t *testing.T, ctx context.Context, api *awsiot.Client, jobID, thing string) string {
	t.Helper()
	for {
		out, err := api.DescribeJobExecution(ctx, &awsiot.DescribeJobExecutionInput{JobId: &jobID, ThingName: &thing})
		if err != nil {
			t.Fatal(err)
		}
		if e := out.Execution; e.StatusDetails != nil {
			if _, id, err := certreport.Decode(e.StatusDetails.DetailsMap); err == nil {
				return id
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never reported its new certificate to job %s", thing, jobID)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestMultiAccountRotation: a device whose certificate comes from an owner's
// CA that no account registered belongs to two accounts (SNI_ONLY). It
// rotates on a job of the primary account: it reports the new certificate in
// the job's statusDetails and does not commit while one account refuses it;
// the fleet tool checks it against the owner's CA and registers it in both;
// the device commits, connects to each account by SNI with it, and retire
// deactivates the old certificate in both. A second device reports a
// certificate from another CA: it is registered nowhere.
func TestMultiAccountRotation(t *testing.T) {
	const prod, pre = "prod", "preprod"
	emu, err := emulator.Start(context.Background(), emulator.Config{Accounts: []emulator.Account{{Name: prod}, {Name: pre}},
		APIListen: "127.0.0.1:0", ClientConnectInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	if emu.Endpoint(prod) == emu.Endpoint(pre) {
		t.Fatal("the two accounts share an endpoint")
	}
	apis := map[string]*awsiot.Client{prod: accountClient(t, emu, prod), pre: accountClient(t, emu, pre)}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, api := range apis {
		mustAPI(t)(api.CreatePolicy(ctx, &awsiot.CreatePolicyInput{PolicyName: aws.String("device"), PolicyDocument: aws.String(allowAll)}))
	}
	dir := t.TempDir()
	owner, rogue := newUnregisteredCA(t, "Owner Device CA"), newUnregisteredCA(t, "Not The Owner")
	accts := []string{prod, pre}
	// RSA-2048: its certificate needs two statusDetails values.
	dev := startMultiDevice(t, ctx, emu, apis, accts, "gw-1", owner, caIssuer{owner}, keystore.RSA2048, dir)
	bad := startMultiDevice(t, ctx, emu, apis, accts, "gw-2", owner, caIssuer{rogue}, keystore.ECDSAP256, dir)
	defer func() {
		cancel()
		for _, d := range []*multiDevice{dev, bad} {
			<-d.done
			d.m.Close(context.Background())
		}
	}()
	if err := connectAs(ctx, emu, pre, dev, *dev.first); err != nil {
		t.Fatalf("the factory certificate does not connect to %s: %v", pre, err)
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
	if !acceptedIn(dev.first.CertificateID, prod) {
		t.Fatalf("the device did not connect to %s with its factory certificate", prod)
	}

	// One rotation job, in the primary account.
	job, err := fleet.Rotate(ctx, apis[prod], fleet.RotateOptions{Things: []string{dev.thing, bad.thing}})
	if err != nil {
		t.Fatal(err)
	}
	newID := reported(t, ctx, apis[prod], job.ID, dev.thing)
	badID := reported(t, ctx, apis[prod], job.ID, bad.thing)

	// Registered in the primary only: the device waits, on its old certificate.
	prodOnly := []fleet.Account{{Name: prod, API: apis[prod]}}
	res, err := fleet.Register(ctx, apis[prod], job.ID, prodOnly, fleet.RegisterOptions{CA: owner.pool()}, time.Now)
	if err != nil || res.Acted != 1 || res.Refused != 1 || res.Errors != 0 {
		t.Fatalf("register in %s: %+v, %v", prod, res, err)
	}
	if certStatus(t, ctx, apis[prod], newID) != "ACTIVE" || certStatus(t, ctx, apis[pre], newID) != "" {
		t.Fatal("the new certificate is not registered in the primary only")
	}
	st := waitState(t, ctx, dev.m, func(s *rotation.State) bool {
		return s.Phase == rotation.PhaseVerified && s.Attempt >= 2 && strings.Contains(s.LastError, emu.Endpoint(pre))
	})
	if st.Current.CertificateID != dev.first.CertificateID {
		t.Fatalf("the device moved to %s while %s refuses it", st.Current.CertificateID, pre)
	}
	evs, err := emu.Registry.History(ctx, emulator.HistoryQuery{CertificateID: newID})
	if err != nil {
		t.Fatal(err)
	}
	refusedIn := false
	for _, ev := range evs {
		if ev.Account == pre && ev.Outcome == emulator.Refused && ev.Rule == emulator.RuleNotRegistered {
			refusedIn = true
		}
		if ev.Outcome == emulator.Accepted && ev.Account == prod {
			t.Errorf("the device connected to %s with the new certificate before every account accepted it", prod)
		}
	}
	if !refusedIn {
		t.Errorf("no refusal of the new certificate by %s in the history: %+v", pre, evs)
	}

	// Every account: the device commits and the job succeeds.
	both := []fleet.Account{{Name: prod, API: apis[prod]}, {Name: pre, API: apis[pre]}}
	res, err = fleet.Register(ctx, apis[prod], job.ID, both, fleet.RegisterOptions{CA: owner.pool()}, time.Now)
	if err != nil || res.Errors != 0 {
		t.Fatalf("register in both: %+v, %v", res, err)
	}
	for _, d := range res.Decisions {
		switch {
		case d.Thing == bad.thing:
			if d.Step != fleet.RegisterRefuse || !strings.Contains(d.Reason, "owner's CA") {
				t.Errorf("the rogue certificate: %+v", d)
			}
		case d.Account == prod && d.Step != fleet.RegisterNothing, d.Account == pre && (d.Step != fleet.RegisterRegister || !d.Executed):
			t.Errorf("decision: %+v", d)
		}
	}
	st = waitState(t, ctx, dev.m, func(s *rotation.State) bool { return !s.InProgress() && s.Current.CertificateID == newID })
	if !acceptedIn(newID, prod) {
		t.Errorf("the device is not connected to %s with the new certificate", prod)
	}
	if err := connectAs(ctx, emu, pre, dev, *st.Current); err != nil {
		t.Errorf("the new certificate does not connect to %s by SNI: %v", pre, err)
	}
	for {
		out, err := apis[prod].DescribeJobExecution(ctx, &awsiot.DescribeJobExecutionInput{JobId: &job.ID, ThingName: &dev.thing})
		if err != nil {
			t.Fatal(err)
		}
		if out.Execution.Status == types.JobExecutionStatusSucceeded {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the job execution stays %s", out.Execution.Status)
		case <-time.After(50 * time.Millisecond):
		}
	}
	// Registering again changes nothing.
	res, err = fleet.Register(ctx, apis[prod], job.ID, both, fleet.RegisterOptions{CA: owner.pool()}, time.Now)
	if err != nil || res.Acted != 0 || res.Errors != 0 {
		t.Fatalf("register again: %+v, %v", res, err)
	}

	// The rogue certificate is registered nowhere, and its device kept its old one.
	for _, a := range accts {
		if s := certStatus(t, ctx, apis[a], badID); s != "" {
			t.Errorf("the certificate the owner's CA did not sign is %s in %s", s, a)
		}
	}
	if s, _ := bad.m.Runner().Load(); s.Current.CertificateID != bad.first.CertificateID {
		t.Errorf("the device with the rogue certificate moved to %s", s.Current.CertificateID)
	}

	// Retire in each account: the old certificate is INACTIVE and refused in both.
	retiredEverywhere(t, ctx, emu, apis, prod, accts, job.ID, dev, newID, *st.Current)
	if err := dev.m.Session().Jobs().List(ctx); err != nil {
		t.Errorf("the device's connection to %s after retire: %v", prod, err)
	}

	// The daemon's cycle with the accounts does the same: the rogue report
	// refused, nothing else left to do.
	cr, err := fleet.Cycle(ctx, apis[prod], fleet.CycleOptions{Accounts: both, OwnerCA: owner.pool()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(cr.Jobs) != 1 || cr.Jobs[0].Errors != 0 || cr.Jobs[0].Registered != 0 || cr.Jobs[0].Retired != 0 {
		t.Errorf("cycle: %+v", cr.Jobs)
	}
	if len(cr.Refused) != 1 || cr.Refused[0].Thing != bad.thing || !strings.Contains(cr.Refused[0].Reason, "owner's CA") {
		t.Errorf("cycle refusals: %+v", cr.Refused)
	}
	for _, a := range accts {
		if s := certStatus(t, ctx, apis[a], badID); s != "" {
			t.Errorf("after the cycle the rogue certificate is %s in %s", s, a)
		}
	}

	// A rotation no job asked for has nowhere to report its certificate:
	// it rolls back, and the device keeps the one every account has.
	_, err = dev.m.Rotate(ctx, rotation.Trigger{Kind: rotation.TriggerOperator, Reason: "by hand"})
	if !errors.Is(err, rotation.ErrRolledBack) || !strings.Contains(err.Error(), "no job asked for") {
		t.Fatalf("a rotation without a job: %v", err)
	}
	if s, _ := dev.m.Runner().Load(); s.Current.CertificateID != newID {
		t.Errorf("after the refused rotation the device uses %s", s.Current.CertificateID)
	}
}
