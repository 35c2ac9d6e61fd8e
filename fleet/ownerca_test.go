package fleet_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/fleet"
	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/stepca"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

// OwnerCAJITPTemplate is the JITP template the owner puts in the CA's
// registration config: the thing named by the certificate's common name, a
// policy that lets it connect as itself and use its own topics (Jobs
// included), the certificate ACTIVE.
const OwnerCAJITPTemplate = `{
 "Parameters": {
  "AWS::IoT::Certificate::CommonName": {"Type": "String"},
  "AWS::IoT::Certificate::Id": {"Type": "String"}},
 "Resources": {
  "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}}},
  "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
  "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": "{\"Version\": \"2012-10-17\", \"Statement\": [{\"Effect\": \"Allow\", \"Action\": \"iot:Connect\", \"Resource\": \"arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}\"}, {\"Effect\": \"Allow\", \"Action\": [\"iot:Publish\", \"iot:Receive\"], \"Resource\": \"arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/*\"}, {\"Effect\": \"Allow\", \"Action\": \"iot:Subscribe\", \"Resource\": \"arn:aws:iot:*:*:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/*\"}]}"}}}}`

// ownerCA is an emulator account with the owner's step-ca registered as a
// CA with auto-registration and the JITP template, and the factory CA its
// X5C provisioner trusts.
type ownerCA struct {
	emu     *emulator.Emulator
	ca      *testpeers.StepCA
	factory *testpeers.FactoryCA
	caID    string
	roots   *x509.CertPool
}

func startOwnerCA(t *testing.T) *ownerCA {
	t.Helper()
	o := &ownerCA{emu: startEmu(t, emulator.Config{}), factory: testpeers.NewFactoryCA(t)}
	o.ca = testpeers.StartStepCA(t, testpeers.StepCAOptions{X5CRootsPEM: o.factory.PEM})
	reg, err := o.emu.RegisterCA(context.Background(), account, o.ca.IntermediatePEM, emulator.CAOptions{AutoRegistration: true,
		Registration: &emulator.CARegistrationConfig{TemplateBody: OwnerCAJITPTemplate, RoleArn: roleARN}})
	if err != nil {
		t.Fatal(err)
	}
	o.caID = reg.ID
	if o.roots, err = stepca.LoadRoot(o.ca.RootFile, stepca.Fingerprint(o.ca.Root)); err != nil {
		t.Fatal(err)
	}
	return o
}

// ownerDevice is a device whose new keys live in storeURI and its factory
// claim key in claimStoreURI.
type ownerDevice struct {
	thing string
	opts  device.Options
	log   *testpeers.Buffer
}

func (o *ownerCA) newDevice(t *testing.T, thing, storeURI, claimStoreURI string) *ownerDevice {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := keystore.Open(ctx, claimStoreURI, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	claimURI, _ := st.KeyURI("factory-claim")
	ck, err := st.Generate(ctx, claimURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	claimFile := filepath.Join(dir, "claim.crt")
	if err := os.WriteFile(claimFile, o.factory.Claim(t, ck.Public(), "factory-"+thing), 0o644); err != nil {
		t.Fatal(err)
	}
	st.Close()
	logs := &testpeers.Buffer{}
	return &ownerDevice{thing: thing, log: logs, opts: device.Options{
		Endpoint:  iot.Endpoint{Host: o.emu.Endpoint(account), Address: o.emu.Addr()},
		Roots:     o.emu.RootCAs(),
		ThingName: thing,
		StateDir:  filepath.Join(dir, "state"),
		Store:     storeURI,
		Claim:     &device.Claim{Credentials: device.Credentials{KeyURI: claimURI, CertFile: claimFile}, IssuerOnly: true},
		Issuer: func(iot.MQTT) rotation.Issuer {
			return &stepca.Issuer{URL: o.ca.URL, Roots: o.roots, Provisioner: o.ca.Provisioner}
		},
		JustInTime: true,
		Trust:      o.roots,
		Machine:    rotation.Machine{GracePeriod: time.Hour, Backoff: rotation.Backoff{Min: time.Second, Max: 2 * time.Second}},
		// AWS IoT's 1 s between CONNECTs of one client ID, kept: the JITP
		// retry must live with it.
		Log: slog.New(slog.NewTextHandler(logs, nil)),
	}}
}

// connections are the emulator's connection events for a certificate, oldest first.
func (o *ownerCA) connections(t *testing.T, certID string) []emulator.ConnectionEvent {
	t.Helper()
	evs, err := o.emu.History(context.Background(), emulator.HistoryQuery{Account: account, CertificateID: certID})
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// firstClosedThenAccepted checks a certificate's connections: the first
// refused by auto-registration, an accepted one after it.
func (o *ownerCA) firstClosedThenAccepted(t *testing.T, certID string) {
	t.Helper()
	evs := o.connections(t, certID)
	if len(evs) < 2 || evs[0].Rule != emulator.RuleAutoRegistered {
		t.Fatalf("connections of %s: %+v; want the first refused by auto-registration", certID[:12], evs)
	}
	for _, e := range evs[1:] {
		if e.Outcome == emulator.Accepted {
			return
		}
	}
	t.Fatalf("connections of %s: %+v; want one accepted after the first", certID[:12], evs)
}

func (o *ownerCA) issuedByStepCA(t *testing.T, certFile string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckSignatureFrom(o.ca.Intermediate); err != nil {
		t.Errorf("%s is not signed by step-ca's intermediate: %v", certFile, err)
	}
	return c
}

// runOwnerCAStory is the kind-2 story for one key store: the device
// provisions from step-ca by its factory claim, connects through JITP (the
// first connection closed, the next accepted), rotates by rekey when a
// rotate-certificate job asks, and the fleet tool retires the old
// certificate.
func runOwnerCAStory(t *testing.T, storeURI, claimStoreURI string) {
	o := startOwnerCA(t)
	thing := "owner-ca-dev-1"
	d := o.newDevice(t, thing, storeURI, claimStoreURI)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m, err := device.New(ctx, d.opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		m.Close(context.Background())
		if t.Failed() {
			t.Logf("device log:\n%s\nstep-ca log:\n%s", d.log.String(), o.ca.Log())
		}
	}()

	first := waitState(t, ctx, m, func(s *rotation.State) bool { return !s.Current.Claim && !s.InProgress() })
	if r := first.LastResult; r == nil || r.Outcome != rotation.Succeeded || r.Trigger.Kind != rotation.TriggerProvision {
		t.Fatalf("provisioning: %+v", first.LastResult)
	}
	o.issuedByStepCA(t, first.Current.CertFile)
	o.firstClosedThenAccepted(t, first.Current.CertificateID)
	c, err := o.emu.Certificate(ctx, account, first.Current.CertificateID)
	if err != nil || c.Status != emulator.StatusActive || c.CAID != o.caID || len(c.Things) != 1 || c.Things[0] != thing {
		t.Fatalf("after JITP: %+v, %v", c, err)
	}
	if !strings.Contains(d.log.String(), "connecting again") || !strings.Contains(d.log.String(), "accepted after its just-in-time registration") {
		t.Errorf("the device log does not say the first connection was closed for registration and the next accepted:\n%s", d.log.String())
	}
	// The claim never went to AWS IoT.
	if evs, _ := o.emu.History(ctx, emulator.HistoryQuery{Account: account, ClientID: thing}); len(evs) == 0 {
		t.Fatal("no connection recorded")
	} else {
		for _, e := range evs {
			if e.CertificateID != "" && e.CertificateID != first.Current.CertificateID {
				t.Errorf("a connection with certificate %s, not the device's: %+v", e.CertificateID[:12], e)
			}
		}
	}

	api := apiClient(t, o.emu)
	job, err := fleet.Rotate(ctx, api, fleet.RotateOptions{Things: []string{thing}})
	if err != nil {
		t.Fatal(err)
	}
	rotated := waitState(t, ctx, m, func(s *rotation.State) bool {
		return s.LastResult != nil && s.LastResult.Trigger.JobID == job.ID && !s.InProgress()
	})
	if rotated.LastResult.Outcome != rotation.Succeeded || rotated.Current.CertificateID == first.Current.CertificateID {
		t.Fatalf("job rotation: %+v", rotated.LastResult)
	}
	o.issuedByStepCA(t, rotated.Current.CertFile)
	o.firstClosedThenAccepted(t, rotated.Current.CertificateID)
	if !strings.Contains(o.ca.Log(), "/1.0/rekey") {
		t.Errorf("step-ca's log shows no rekey:\n%s", o.ca.Log())
	}
	var ex emulator.JobExecution
	for ctx.Err() == nil {
		if ex, err = o.emu.JobExecution(ctx, account, thing, job.ID); err == nil && ex.Status == emulator.JobSucceeded {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ex.StatusDetails["oldCertificateId"] != first.Current.CertificateID || ex.StatusDetails["newCertificateId"] != rotated.Current.CertificateID {
		t.Fatalf("job execution: %+v", ex)
	}

	res, err := fleet.Retire(ctx, api, job.ID, fleet.RetireOptions{}, time.Now, nil)
	if err != nil || res.Acted != 1 {
		t.Fatalf("retire: %+v, %v", res, err)
	}
	if c, err := o.emu.Certificate(ctx, account, first.Current.CertificateID); err != nil || c.Status != emulator.StatusInactive {
		t.Fatalf("the old certificate after retire: %+v, %v", c, err)
	}
	if c, err := o.emu.Certificate(ctx, account, rotated.Current.CertificateID); err != nil || c.Status != emulator.StatusActive {
		t.Fatalf("the new certificate after retire: %+v, %v", c, err)
	}
	if err := m.Publish(ctx, "$aws/things/"+thing+"/shadow/get", iot.AtLeastOnce, []byte("{}")); err != nil {
		t.Fatalf("publishing on the new certificate after retire: %v", err)
	}
}

func TestOwnerCAStoryFile(t *testing.T) {
	runOwnerCAStory(t, "file:"+t.TempDir()+"/", "file:"+t.TempDir()+"/")
}

func TestOwnerCAStorySoftHSM(t *testing.T) {
	h := testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{Label: "owner-ca"})
	runOwnerCAStory(t, h.StoreURI(), h.StoreURI())
}

func TestOwnerCAStoryTPM(t *testing.T) {
	tpm := testpeers.StartSWTPM(t)
	keys := t.TempDir()
	// The claim key in a file: swtpm has no resource manager, and the
	// claim, the current key and the new key loaded at once are one too many
	// (a device with /dev/tpmrm0 keeps its claim in the TPM too).
	runOwnerCAStory(t, "tpm:blob-dir="+keys+"?device="+tpm.Device(), "file:"+t.TempDir()+"/")
}

// TestOwnerCAWithoutJustInTime: a device not told that AWS IoT registers its
// certificates just in time takes the closed first connection for a
// refusal: its renewal rolls back (and a provisioning, with nothing to fall
// back on, is only retried later). What JustInTime is for.
func TestOwnerCAWithoutJustInTime(t *testing.T) {
	o := startOwnerCA(t)
	d := o.newDevice(t, "owner-ca-dev-2", "file:"+t.TempDir()+"/", "file:"+t.TempDir()+"/")
	d.opts.JustInTime = false
	d.opts.MinConnectInterval = -1
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m, err := device.New(ctx, d.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	if _, err := m.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := m.Provision(ctx)
	if err != nil || s.Current.Claim {
		t.Fatalf("provision: %v\n%s", err, d.log.String())
	}
	if !strings.Contains(d.log.String(), "nothing to fall back on") {
		t.Errorf("the provisioning's closed first connection was not retried for want of a fallback:\n%s", d.log.String())
	}
	_, err = m.Rotate(ctx, rotation.Trigger{Kind: rotation.TriggerOperator})
	if !errors.Is(err, rotation.ErrRolledBack) {
		t.Fatalf("rotate without JustInTime: %v, want a rollback", err)
	}
}
