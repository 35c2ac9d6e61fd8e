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
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsiot "github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/fleet"
	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/fleetprov"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
	"github.com/thingcert/thingcert/rotation"
)

const (
	account  = "fleet-test"
	template = "fleet-tmpl"
	prefix   = "dev-"
	roleARN  = "arn:aws:iam::123456789012:role/thingcert-provisioning"
)

func startEmu(t *testing.T, cfg emulator.Config) *emulator.Emulator {
	t.Helper()
	cfg.Accounts = []emulator.Account{{Name: account}}
	cfg.APIListen = "127.0.0.1:0"
	if cfg.ClientConnectInterval == 0 {
		cfg.ClientConnectInterval = -1
	}
	emu, err := emulator.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	return emu
}

// apiClient is an aws-sdk-go-v2 IoT client for the emulator's account, with
// the SDK's standard retries (throttling is retried, as an operator's is).
func apiClient(t testing.TB, e *emulator.Emulator) *awsiot.Client {
	t.Helper()
	key, err := e.AccessKey(account)
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

// failing is an issuer that fails once told to: a device whose rotation fails.
type failing struct {
	inner rotation.Issuer
	fail  *atomic.Bool
}

func (f failing) Issue(ctx context.Context, csr []byte) (*rotation.Issued, error) {
	if f.fail.Load() {
		return nil, rotation.NewFatal("issuing", errors.New("the test's issuer refuses"))
	}
	return f.inner.Issue(ctx, csr)
}

type simDevice struct {
	thing    string
	m        *device.Manager
	first    *rotation.IdentityRecord
	firstPEM []byte
	fail     *atomic.Bool
	done     chan error
}

// TestFleetRotationEndToEnd is the operator's story against the emulator's
// control plane: setup (twice: no change), devices provisioning by claim
// with file and SoftHSM keys, an audit that finds planted problems, one
// rotation job at a rollout rate, retire (interrupted, then run again),
// the old certificates refused, every device still connected, and a
// device whose rotation failed left with its certificate.
func TestFleetRotationEndToEnd(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{Label: "factory"})
	const nFile, nHSM = 17, 3
	var hsmLabels []string
	for i := range nHSM {
		l := fmt.Sprintf("dev%d", i)
		h.AddToken(t, l)
		hsmLabels = append(hsmLabels, l)
	}
	emu := startEmu(t, emulator.Config{})
	api := apiClient(t, emu)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// Setup, twice; the claim key in the factory's HSM.
	so := fleet.SetupOptions{Template: template, ThingPrefix: prefix, RoleARN: roleARN,
		ClaimKey: h.KeyURI("claim"), ClaimCertFile: filepath.Join(dir, "claim.crt")}
	dry := so
	dry.DryRun = true
	changes, err := fleet.Setup(ctx, api, dry)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range changes {
		if c.Action != fleet.ActionWouldCreate {
			t.Errorf("dry run on an empty account: %+v", c)
		}
	}
	if _, err := os.Stat(so.ClaimCertFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the dry run wrote %s", so.ClaimCertFile)
	}
	first, err := fleet.Setup(ctx, api, so)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != 5 {
		t.Fatalf("setup: %+v", first)
	}
	for _, c := range first {
		if c.Action != fleet.ActionCreated {
			t.Errorf("first setup: %+v", c)
		}
	}
	claimPEM, err := os.ReadFile(so.ClaimCertFile)
	if err != nil {
		t.Fatal(err)
	}
	again, err := fleet.Setup(ctx, api, so)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range again {
		if c.Action != fleet.ActionUnchanged {
			t.Errorf("second setup changed %+v", c)
		}
	}
	if b, _ := os.ReadFile(so.ClaimCertFile); string(b) != string(claimPEM) {
		t.Fatal("the second setup replaced the claim certificate")
	}

	// The fleet: devices provisioning by claim through the template setup made.
	var devs []*simDevice
	for i := range nFile + nHSM {
		serial := fmt.Sprintf("%04d", i)
		thing := prefix + serial
		store := "file:" + filepath.Join(dir, thing, "keys") + "/"
		if i >= nFile {
			store = strings.Replace(h.StoreURI(), "token="+h.Label, "token="+hsmLabels[i-nFile], 1)
		}
		fail := &atomic.Bool{}
		m, err := device.New(ctx, device.Options{
			Endpoint:  iot.Endpoint{Host: emu.Endpoint(account), Address: emu.Addr()},
			Roots:     emu.RootCAs(),
			ThingName: thing,
			StateDir:  filepath.Join(dir, thing, "state"),
			Store:     store,
			Claim:     &device.Claim{Credentials: device.Credentials{KeyURI: so.ClaimKey, CertFile: so.ClaimCertFile}, ClientID: "claim-" + thing},
			Issuer: func(c iot.MQTT) rotation.Issuer {
				return failing{&fleetprov.Issuer{Conn: c, Template: template, Parameters: map[string]string{fleet.ThingNameParameter: serial}, ThingName: thing}, fail}
			},
			Machine:            rotation.Machine{GracePeriod: time.Hour, Backoff: rotation.Backoff{Min: time.Second, Max: 2 * time.Second}},
			MinConnectInterval: -1,
		})
		if err != nil {
			t.Fatal(err)
		}
		d := &simDevice{thing: thing, m: m, fail: fail, done: make(chan error, 1)}
		go func() { d.done <- m.Run(ctx) }()
		devs = append(devs, d)
	}
	defer func() {
		cancel()
		for _, d := range devs {
			<-d.done
			d.m.Close(context.Background())
		}
	}()
	for _, d := range devs {
		st := waitState(t, ctx, d.m, func(s *rotation.State) bool { return !s.Current.Claim && !s.InProgress() })
		d.first = st.Current
		if d.firstPEM, err = os.ReadFile(st.Current.CertFile); err != nil {
			t.Fatal(err)
		}
	}

	// Planted problems beside the fleet: an old certificate about to
	// expire, and one certificate shared by two things.
	now := time.Now()
	plant(t, ctx, api, "planted-old", now.Add(-400*24*time.Hour), now.Add(5*24*time.Hour))
	shared := plant(t, ctx, api, "shared-a", now.Add(-time.Hour), now.Add(300*24*time.Hour))
	mustAPI(t)(api.CreateThing(ctx, &awsiot.CreateThingInput{ThingName: aws.String("shared-b")}))
	mustAPI(t)(api.AttachThingPrincipal(ctx, &awsiot.AttachThingPrincipalInput{ThingName: aws.String("shared-b"), Principal: &shared}))

	rep, err := fleet.Audit(ctx, api, fleet.AuditOptions{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		fleet.CheckDeviceCertExpiring: "planted-old", fleet.CheckDeviceCertAge: "planted-old",
		fleet.CheckDeviceCertShared: "shared-a", fleet.CheckActiveUnattached: "",
	}
	for _, f := range rep.Findings {
		if th, ok := want[f.Check]; ok && th == f.Thing {
			delete(want, f.Check)
			continue
		}
		if strings.HasPrefix(f.Thing, prefix) {
			t.Errorf("a freshly provisioned device has a finding: %+v", f)
		}
	}
	if len(want) > 0 {
		t.Errorf("audit missed %v; found %+v", want, rep.Findings)
	}
	if len(rep.Things) != len(devs)+3 {
		t.Errorf("audit lists %d things, want %d", len(rep.Things), len(devs)+3)
	}

	// One rotation job for the fleet's thing group, at a rollout rate; one
	// device will fail its rotation.
	group := "fleet-all"
	mustAPI(t)(api.CreateThingGroup(ctx, &awsiot.CreateThingGroupInput{ThingGroupName: &group}))
	for _, d := range devs {
		mustAPI(t)(api.AddThingToThingGroup(ctx, &awsiot.AddThingToThingGroupInput{ThingGroupName: &group, ThingName: aws.String(d.thing)}))
	}
	bad := devs[3]
	bad.fail.Store(true)
	ro := fleet.RotateOptions{ThingGroup: group, MaxPerMinute: 600, AbortFailedPercent: 50, AbortMinExecuted: 10, TimeoutMinutes: 10}
	job, err := fleet.Rotate(ctx, api, ro)
	if err != nil || !job.Created {
		t.Fatalf("rotate: %+v, %v", job, err)
	}
	if j2, err := fleet.Rotate(ctx, api, ro); err != nil || j2.Created || j2.ID != job.ID {
		t.Fatalf("rotate again: %+v, %v; want the same job %s, not created", j2, err, job.ID)
	}
	started := time.Now()
	var p fleet.Progress
	for {
		if p, err = fleet.JobProgress(ctx, api, job.ID, started, time.Now()); err != nil {
			t.Fatal(err)
		}
		if p.Finished() && p.Total == len(devs) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("job not finished: %s", p.Line())
		case <-time.After(200 * time.Millisecond):
		}
	}
	if p.Counts["SUCCEEDED"] != len(devs)-1 || p.Counts["FAILED"] != 1 {
		t.Fatalf("job ended %s; want all but one SUCCEEDED, one FAILED", p.Line())
	}

	// Retire, interrupted after a few actions, then again to the end.
	var acts atomic.Int32
	part, err := fleet.Retire(ctx, api, job.ID, fleet.RetireOptions{}, time.Now, func() bool { return acts.Add(1) > 5 })
	if err != nil || part.Acted != 5 {
		t.Fatalf("interrupted retire: acted %d, %v", part.Acted, err)
	}
	res, err := fleet.Retire(ctx, api, job.ID, fleet.RetireOptions{Workers: 4}, time.Now, nil)
	if err != nil || res.Errors != 0 {
		t.Fatalf("retire: %+v, %v", res, err)
	}
	if res.Acted != len(devs)-1-5 || res.Counts[string(fleet.StepReport)] != 1 {
		t.Fatalf("retire after the interruption: %+v", res.Counts)
	}
	for _, d := range res.Decisions {
		if d.Thing == bad.thing && (d.Step != fleet.StepReport || !strings.Contains(d.Reason, "FAILED") || !strings.Contains(d.Reason, "refuses")) {
			t.Errorf("the failed device's decision: %+v", d)
		}
	}
	for _, d := range devs {
		c, err := api.DescribeCertificate(ctx, &awsiot.DescribeCertificateInput{CertificateId: &d.first.CertificateID})
		if err != nil {
			t.Fatal(err)
		}
		want := types.CertificateStatusInactive
		if d == bad {
			want = types.CertificateStatusActive
		}
		if c.CertificateDescription.Status != want {
			t.Errorf("%s: first certificate %s, want %s", d.thing, c.CertificateDescription.Status, want)
		}
		// Every device is still connected, on its new identity (the bad one on its old).
		if err := d.m.Session().Jobs().List(ctx); err != nil {
			t.Errorf("%s: not connected after retire: %v", d.thing, err)
		}
	}
	// An old certificate is refused at the TLS handshake.
	refused(t, ctx, emu, devs[0])
	refused(t, ctx, emu, devs[len(devs)-1]) // a SoftHSM key

	// Again: nothing to do.
	res, err = fleet.Retire(ctx, api, job.ID, fleet.RetireOptions{}, time.Now, nil)
	if err != nil || res.Acted != 0 || res.Counts[string(fleet.StepDeactivate)] != 0 {
		t.Fatalf("retire again: %+v, %v", res, err)
	}

	// Delete after the delete-after period (the clock moved on): detached and gone.
	later := func() time.Time { return time.Now().Add(2 * time.Hour) }
	res, err = fleet.Retire(ctx, api, job.ID, fleet.RetireOptions{DeleteAfter: time.Hour}, later, nil)
	if err != nil || res.Acted != len(devs)-1 || res.Errors != 0 {
		t.Fatalf("retire with deletion: %+v, %v", res, err)
	}
	if _, err := api.DescribeCertificate(ctx, &awsiot.DescribeCertificateInput{CertificateId: &devs[0].first.CertificateID}); err == nil {
		t.Fatalf("%s: old certificate still there after deletion", devs[0].thing)
	}
	res, err = fleet.Retire(ctx, api, job.ID, fleet.RetireOptions{DeleteAfter: time.Hour}, later, nil)
	if err != nil || res.Acted != 0 {
		t.Fatalf("retire with deletion again: %+v, %v", res, err)
	}
	for _, d := range devs {
		if err := d.m.Session().Jobs().List(ctx); err != nil {
			t.Errorf("%s: not connected after deletion: %v", d.thing, err)
		}
	}
}

// refused connects with a device's first identity and wants it refused
// (its certificate is INACTIVE).
func refused(t *testing.T, ctx context.Context, emu *emulator.Emulator, d *simDevice) {
	t.Helper()
	st, key, err := keystore.OpenKey(ctx, d.first.KeyURI, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b, _ := pem.Decode(d.firstPEM)
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	id, err := iot.NewIdentity(key, []*x509.Certificate{cert})
	if err != nil {
		t.Fatal(err)
	}
	c, err := iot.New(iot.Config{Endpoint: iot.Endpoint{Host: emu.Endpoint(account), Address: emu.Addr()}, Identity: iot.NewIdentitySource(id),
		Roots: emu.RootCAs(), ThingName: d.thing, ClientID: d.thing + "-old"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Connect(ctx)
	c.Disconnect(ctx)
	if !errors.Is(err, iot.ErrClientCertRefused) {
		t.Errorf("%s: connecting with the retired certificate: %v, want it refused", d.thing, err)
	}
}

// plant registers a certificate with the given validity (no CA) on a new
// thing and returns its ARN.
func plant(t *testing.T, ctx context.Context, api *awsiot.Client, thing string, nb, na time.Time) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: thing}, NotBefore: nb, NotAfter: na}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	p := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	out, err := api.RegisterCertificateWithoutCA(ctx, &awsiot.RegisterCertificateWithoutCAInput{CertificatePem: &p, Status: types.CertificateStatusActive})
	if err != nil {
		t.Fatal(err)
	}
	mustAPI(t)(api.CreateThing(ctx, &awsiot.CreateThingInput{ThingName: &thing}))
	mustAPI(t)(api.AttachThingPrincipal(ctx, &awsiot.AttachThingPrincipalInput{ThingName: &thing, Principal: out.CertificateArn}))
	return *out.CertificateArn
}

func mustAPI(t *testing.T) func(any, error) {
	return func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

func waitState(t *testing.T, ctx context.Context, m *device.Manager, ok func(*rotation.State) bool) *rotation.State {
	t.Helper()
	for {
		if s, err := m.Runner().Load(); err == nil && s.Current != nil && ok(s) {
			return s
		}
		select {
		case <-ctx.Done():
			s, err := m.Runner().Load()
			t.Fatalf("state not reached: %+v, %v", s, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
