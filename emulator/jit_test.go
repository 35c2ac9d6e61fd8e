package emulator

import (
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsiot "github.com/aws/aws-sdk-go-v2/service/iot"
	awstypes "github.com/aws/aws-sdk-go-v2/service/iot/types"
)

// jitpTemplate is the JITP template of AWS's documentation, in short: the
// thing named by the certificate's common name, an attribute from its
// organization, a policy made from the template, the certificate ACTIVE.
const jitpTemplateBody = `{
 "Parameters": {
  "AWS::IoT::Certificate::CommonName": {"Type": "String"},
  "AWS::IoT::Certificate::Organization": {"Type": "String"},
  "AWS::IoT::Certificate::Id": {"Type": "String"}},
 "Resources": {
  "thing": {"Type": "AWS::IoT::Thing", "Properties": {
    "ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"},
    "AttributePayload": {"version": "v1", "org": {"Ref": "AWS::IoT::Certificate::Organization"}}}},
  "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
    "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
  "policy": {"Type": "AWS::IoT::Policy", "Properties": {
    "PolicyDocument": "{\"Version\": \"2012-10-17\", \"Statement\": [{\"Effect\": \"Allow\", \"Action\": \"iot:Connect\", \"Resource\": \"arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}\"}]}"}}}}`

// jitEmu is an emulator whose account A has a CA with auto-registration, a
// JITP template when given, and an observer subscribed to the CA's
// certificate-registered events.
func jitEmu(t *testing.T, templateBody string) (*testEmu, *testCA, string, *mqttClient) {
	t.Helper()
	e := startEmu(t, Config{Accounts: []Account{{Name: "A", Prefix: "aaaa1111", Region: "eu-west-1"}}, ClientConnectInterval: -1})
	ca := newTestCA(t, "owner CA")
	opts := CAOptions{AutoRegistration: true}
	if templateBody != "" {
		opts.Registration = &CARegistrationConfig{TemplateBody: templateBody, RoleArn: "arn:aws:iam::123456789012:role/JITP"}
	}
	reg, err := e.RegisterCA(ctx, "A", ca.pem, opts)
	if err != nil {
		t.Fatal(err)
	}
	// The owner's program listening for registrations (its own certificate,
	// registered without a CA, with every permission).
	obs := issue(t, nil, "observer", certOpts{})
	register(t, e, "A", obs, CertificateOptions{WithoutCA: true})
	o := mustDial(t, e, obs, "observer", dialOpts{account: "A"})
	o.subscribe(t, "$aws/events/certificates/registered/"+reg.ID)
	return e, ca, reg.ID, o
}

func TestJITPProvisionsOnTheFirstConnection(t *testing.T) {
	e, ca, caID, obs := jitEmu(t, jitpTemplateBody)
	d := issue(t, ca, "gw-jitp-1", certOpts{org: "Acme"})
	_, err := dial(t, e, d, "gw-jitp-1", dialOpts{account: "A"})
	ev := expectRefused(t, e, d, err, RuleAutoRegistered, e.Endpoint("A"))
	if ev.Account != "A" {
		t.Errorf("the refusal names account %q", ev.Account)
	}
	var reg certificateRegisteredEvent
	obs.await(t, "$aws/events/certificates/registered/"+caID, &reg)
	if reg.CertificateID != d.id || reg.CACertificateID != caID || reg.CertificateStatus != StatusPendingActivation || reg.AWSAccountID != accountID("A") {
		t.Errorf("registered event %+v", reg)
	}
	c, err := e.Certificate(ctx, "A", d.id)
	if err != nil || c.Status != StatusActive || len(c.Things) != 1 || c.Things[0] != "gw-jitp-1" {
		t.Fatalf("after JITP: %+v, %v", c, err)
	}
	th, err := e.Thing(ctx, "A", "gw-jitp-1")
	if err != nil || th.Attributes["org"] != "Acme" {
		t.Fatalf("thing %+v, %v", th, err)
	}
	if ps, err := e.AttachedPolicies(ctx, "A", d.id); err != nil || len(ps) != 1 {
		t.Fatalf("policies %+v, %v", ps, err)
	}
	// The device's next attempt is accepted, under the template's policy.
	e.clock.Advance(2 * time.Second)
	mustDial(t, e, d, "gw-jitp-1", dialOpts{account: "A"}).Disconnect(0)
}

func TestJITRWaitsForActivation(t *testing.T) {
	e, ca, caID, obs := jitEmu(t, "")
	d := issue(t, ca, "gw-jitr-1", certOpts{})
	_, err := dial(t, e, d, "gw-jitr-1", dialOpts{account: "A"})
	expectRefused(t, e, d, err, RuleAutoRegistered, e.Endpoint("A"))
	var reg certificateRegisteredEvent
	obs.await(t, "$aws/events/certificates/registered/"+caID, &reg)
	if c, err := e.Certificate(ctx, "A", d.id); err != nil || c.Status != StatusPendingActivation {
		t.Fatalf("after JITR: %+v, %v", c, err)
	}
	e.clock.Advance(2 * time.Second)
	_, err = dial(t, e, d, "gw-jitr-1", dialOpts{account: "A"})
	expectRefused(t, e, d, err, RuleStatus, e.Endpoint("A"))
	// The owner's program activates it (and gives it a policy).
	if err := e.SetCertificateStatus(ctx, "A", d.id, StatusActive); err != nil {
		t.Fatal(err)
	}
	if err := e.AttachAllowAllPolicy(ctx, "A", d.id); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2 * time.Second)
	mustDial(t, e, d, "gw-jitr-1", dialOpts{account: "A"}).Disconnect(0)
}

func TestJITPTemplateNeedsASubjectFieldTheCertificateLacks(t *testing.T) {
	e, ca, _, _ := jitEmu(t, jitpTemplateBody)
	d := issue(t, ca, "gw-no-org", certOpts{}) // no Organization
	_, err := dial(t, e, d, "gw-no-org", dialOpts{account: "A"})
	ev := expectRefused(t, e, d, err, RuleAutoRegistered, e.Endpoint("A"))
	c, cerr := e.Certificate(ctx, "A", d.id)
	if cerr != nil || c.Status != StatusPendingActivation || len(c.Things) != 0 {
		t.Fatalf("after a JITP template that cannot run: %+v, %v", c, cerr)
	}
	if _, err := e.Thing(ctx, "A", "gw-no-org"); err == nil {
		t.Error("the failed template made a thing")
	}
	if !strings.Contains(ev.Reason, "Organization") {
		t.Errorf("the refusal does not say which subject field is missing: %s", ev.Reason)
	}
}

func TestNoAutoRegistrationWithoutTheCAsConsent(t *testing.T) {
	e := startEmu(t, Config{Accounts: []Account{{Name: "A", Prefix: "aaaa1111", Region: "eu-west-1"}}, ClientConnectInterval: -1})
	ca := newTestCA(t, "CA without auto-registration")
	if _, err := e.RegisterCA(ctx, "A", ca.pem, CAOptions{}); err != nil {
		t.Fatal(err)
	}
	unknownCA := newTestCA(t, "a CA nobody registered")
	for _, d := range []*device{issue(t, ca, "gw-1", certOpts{}), issue(t, unknownCA, "gw-2", certOpts{})} {
		_, err := dial(t, e, d, "gw-x", dialOpts{account: "A"})
		expectRefused(t, e, d, err, RuleNotRegistered, e.Endpoint("A"))
		if _, err := e.Certificate(ctx, "A", d.id); err == nil {
			t.Errorf("certificate %s was registered", d.id[:12])
		}
		e.clock.Advance(2 * time.Second)
	}
}

// TestAutoRegistrationNeedsSNI: an SNI that names no endpoint does not tell
// the account, so nothing is registered.
func TestAutoRegistrationNeedsSNI(t *testing.T) {
	e, ca, _, _ := jitEmu(t, jitpTemplateBody)
	d := issue(t, ca, "gw-nosni", certOpts{org: "Acme"})
	_, err := dial(t, e, d, "gw-nosni", dialOpts{serverSNI: "localhost"})
	if err == nil {
		t.Fatal("connected without an endpoint's SNI")
	}
	if _, err := e.Certificate(ctx, "A", d.id); err == nil {
		t.Error("registered without SNI")
	}
}

// TestJITRActivatedThroughTheControlPlane: a CA registered through the
// control plane (SigV4, aws-sdk-go-v2) with auto-registration and no
// template; its device's certificate stays PENDING_ACTIVATION, refused,
// until the owner's program activates it and attaches a policy through the
// same API (UpdateCertificate, AttachPolicy).
func TestJITRActivatedThroughTheControlPlane(t *testing.T) {
	e := startAPIEmu(t, Config{ClientConnectInterval: -1}, "A")
	c := newAPIClient(t, e.Emulator, "A")
	ca := newTestCA(t, "owner CA (JITR)")
	code, err := c.GetRegistrationCode(ctx, &awsiot.GetRegistrationCodeInput{})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := c.RegisterCACertificate(ctx, &awsiot.RegisterCACertificateInput{CaCertificate: aws.String(string(ca.pem)),
		VerificationCertificate: aws.String(verificationCert(t, ca, aws.ToString(code.RegistrationCode))),
		SetAsActive:             true, AllowAutoRegistration: true})
	if err != nil {
		t.Fatal(err)
	}
	d := issue(t, ca, "gw-jitr-api", certOpts{})
	_, err = dial(t, e, d, "gw-jitr-api", dialOpts{account: "A"})
	expectRefused(t, e, d, err, RuleAutoRegistered, e.Endpoint("A"))
	desc, err := c.DescribeCertificate(ctx, &awsiot.DescribeCertificateInput{CertificateId: aws.String(d.id)})
	if err != nil || desc.CertificateDescription.Status != awstypes.CertificateStatusPendingActivation ||
		aws.ToString(desc.CertificateDescription.CaCertificateId) != aws.ToString(reg.CertificateId) {
		t.Fatalf("DescribeCertificate after JITR: %+v, %v", desc, err)
	}
	e.clock.Advance(2 * time.Second)
	_, err = dial(t, e, d, "gw-jitr-api", dialOpts{account: "A"})
	expectRefused(t, e, d, err, RuleStatus, e.Endpoint("A"))

	if _, err := c.UpdateCertificate(ctx, &awsiot.UpdateCertificateInput{CertificateId: aws.String(d.id), NewStatus: awstypes.CertificateStatusActive}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreatePolicy(ctx, &awsiot.CreatePolicyInput{PolicyName: aws.String("jitr-device"),
		PolicyDocument: aws.String(`{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AttachPolicy(ctx, &awsiot.AttachPolicyInput{PolicyName: aws.String("jitr-device"), Target: desc.CertificateDescription.CertificateArn}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2 * time.Second)
	mustDial(t, e, d, "gw-jitr-api", dialOpts{account: "A"}).Disconnect(0)
}
