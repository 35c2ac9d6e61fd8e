package emulator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"
)

type csrAccepted struct {
	CertificateOwnershipToken string `json:"certificateOwnershipToken"`
	CertificateID             string `json:"certificateId"`
	CertificatePEM            string `json:"certificatePem"`
	PrivateKey                string `json:"privateKey"`
}

type rejected struct {
	StatusCode   int    `json:"statusCode"`
	ErrorCode    string `json:"errorCode"`
	ErrorMessage string `json:"errorMessage"`
}

type registerAccepted struct {
	DeviceConfiguration map[string]string `json:"deviceConfiguration"`
	ThingName           string            `json:"thingName"`
}

// claimSetup starts an emulator with account "fleet", a provisioning template
// and a claim certificate registered under a DEFAULT-mode CA.
func claimSetup(t *testing.T, cfg Config) (*testEmu, *device) {
	t.Helper()
	cfg.Accounts = []Account{{Name: "fleet", Prefix: "fleet0001"}}
	cfg.Templates = []Template{{Name: "sensors", Body: SimpleTemplate("sensor-", "SerialNumber")}}
	e := startEmu(t, cfg)
	ca := newTestCA(t, "claim CA")
	if _, err := e.RegisterCA(ctx, "fleet", ca.pem, CAOptions{}); err != nil {
		t.Fatal(err)
	}
	claim := issue(t, ca, "claim", certOpts{})
	if _, err := e.RegisterCertificate(ctx, "fleet", claim.pem, CertificateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The least-privilege claim policy of AWS's documentation: these tests
	// prove it is enough to provision.
	if _, err := e.CreatePolicy(ctx, "fleet", "claim", ClaimPolicy("*")); err != nil {
		t.Fatal(err)
	}
	if err := e.AttachPolicy(ctx, "fleet", "claim", claim.id); err != nil {
		t.Fatal(err)
	}
	return e, claim
}

func newCSR(t *testing.T) (*ecdsa.PrivateKey, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "sensor"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func TestFleetProvisioningByCSR(t *testing.T) {
	e, claim := claimSetup(t, Config{})
	c := mustDial(t, e, claim, "provisioner-42", dialOpts{account: "fleet"})
	c.subscribe(t, topicCreateFromCSR+"/accepted", topicCreateFromCSR+"/rejected",
		"$aws/provisioning-templates/sensors/provision/json/accepted", "$aws/provisioning-templates/sensors/provision/json/rejected")

	key, csr := newCSR(t)
	c.publish(t, topicCreateFromCSR, map[string]string{"certificateSigningRequest": csr})
	var acc csrAccepted
	c.await(t, topicCreateFromCSR+"/accepted", &acc)
	cert, err := parseOneCert([]byte(acc.CertificatePEM))
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Fatal("the issued certificate does not carry the CSR's public key")
	}
	if acc.CertificateID != CertificateID(cert.Raw) || acc.CertificateOwnershipToken == "" {
		t.Fatalf("accepted reply: %+v", acc)
	}
	if !cert.NotAfter.Equal(AWSCertificateNotAfter) {
		t.Errorf("NotAfter %s, want AWS's %s", cert.NotAfter, AWSCertificateNotAfter)
	}
	got, err := e.Certificate(ctx, "fleet", acc.CertificateID)
	if err != nil || got.Status != StatusPendingActivation {
		t.Fatalf("new certificate: %+v, %v; want PENDING_ACTIVATION", got, err)
	}

	// The new certificate cannot connect before RegisterThing activates it.
	dev := &device{cert: cert, pem: []byte(acc.CertificatePEM), key: key, id: acc.CertificateID}
	e.clock.Advance(2 * time.Second)
	_, err = dial(t, e, dev, "sensor-42", dialOpts{account: "fleet"})
	expectRefused(t, e, dev, err, RuleStatus, e.Endpoint("fleet"))

	c.publish(t, "$aws/provisioning-templates/sensors/provision/json", map[string]any{
		"certificateOwnershipToken": acc.CertificateOwnershipToken,
		"parameters":                map[string]string{"SerialNumber": "42"},
	})
	var reg registerAccepted
	c.await(t, "$aws/provisioning-templates/sensors/provision/json/accepted", &reg)
	if reg.ThingName != "sensor-42" || reg.DeviceConfiguration == nil {
		t.Fatalf("RegisterThing accepted: %+v", reg)
	}
	got, _ = e.Certificate(ctx, "fleet", acc.CertificateID)
	if got.Status != StatusActive || len(got.Things) != 1 || got.Things[0] != "sensor-42" {
		t.Fatalf("after RegisterThing: %+v", got)
	}
	// The token is spent.
	c.publish(t, "$aws/provisioning-templates/sensors/provision/json", map[string]any{"certificateOwnershipToken": acc.CertificateOwnershipToken, "parameters": map[string]string{"SerialNumber": "42"}})
	var rej rejected
	c.await(t, "$aws/provisioning-templates/sensors/provision/json/rejected", &rej)
	if rej.StatusCode != 400 || rej.ErrorCode != "InvalidCertificateOwnershipToken" {
		t.Fatalf("reusing the token: %+v", rej)
	}

	e.clock.Advance(2 * time.Second)
	mustDial(t, e, dev, "sensor-42", dialOpts{account: "fleet"})
}

func TestFleetProvisioningErrors(t *testing.T) {
	e, claim := claimSetup(t, Config{CreateCertificateRate: 1})
	c := mustDial(t, e, claim, "provisioner", dialOpts{account: "fleet"})
	c.subscribe(t, topicCreateFromCSR+"/+", "$aws/provisioning-templates/+/provision/json/+")
	var rej rejected

	c.publish(t, topicCreateFromCSR, `{"certificateSigningRequest": "not a CSR"}`)
	c.await(t, topicCreateFromCSR+"/rejected", &rej)
	if rej.StatusCode != 400 || rej.ErrorMessage == "" {
		t.Fatalf("bad CSR: %+v", rej)
	}
	// The clock has not moved: a second request in the same second is over
	// the configured rate of 1/s.
	_, csr := newCSR(t)
	c.publish(t, topicCreateFromCSR, map[string]string{"certificateSigningRequest": csr})
	c.await(t, topicCreateFromCSR+"/rejected", &rej)
	if rej.StatusCode != 429 || rej.ErrorCode != "ThrottlingException" {
		t.Fatalf("over the rate: %+v", rej)
	}
	e.clock.Advance(time.Second)
	c.publish(t, topicCreateFromCSR, map[string]string{"certificateSigningRequest": csr})
	var acc csrAccepted
	c.await(t, topicCreateFromCSR+"/accepted", &acc)

	// An RSA-1024 CSR is refused as AWS refuses it.
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "weak"}}, weak)
	e.clock.Advance(time.Second)
	c.publish(t, topicCreateFromCSR, map[string]string{"certificateSigningRequest": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	c.await(t, topicCreateFromCSR+"/rejected", &rej)
	if rej.StatusCode != 400 || !strings.Contains(rej.ErrorMessage, "2048") {
		t.Fatalf("RSA-1024 CSR: %+v", rej)
	}

	provision := "$aws/provisioning-templates/sensors/provision/json"
	c.publish(t, provision, `{"certificateOwnershipToken": "", "parameters": {}}`)
	c.await(t, provision+"/rejected", &rej)
	if rej.StatusCode != 400 || rej.ErrorCode != "InvalidCertificateOwnershipToken" || rej.ErrorMessage != "Certificate ownership token cannot be empty." {
		t.Fatalf("empty token: %+v", rej)
	}
	c.publish(t, "$aws/provisioning-templates/nope/provision/json", map[string]any{"certificateOwnershipToken": acc.CertificateOwnershipToken, "parameters": map[string]string{"SerialNumber": "1"}})
	c.await(t, "$aws/provisioning-templates/nope/provision/json/rejected", &rej)
	if rej.StatusCode != 404 {
		t.Fatalf("unknown template: %+v", rej)
	}
	c.publish(t, provision, map[string]any{"certificateOwnershipToken": acc.CertificateOwnershipToken, "parameters": map[string]string{}})
	c.await(t, provision+"/rejected", &rej)
	if rej.StatusCode != 400 || !strings.Contains(rej.ErrorMessage, "SerialNumber") {
		t.Fatalf("missing parameter: %+v", rej)
	}

	// After an hour the token has expired and the certificate, never
	// activated, is gone.
	e.clock.Advance(time.Hour)
	c.publish(t, provision, map[string]any{"certificateOwnershipToken": acc.CertificateOwnershipToken, "parameters": map[string]string{"SerialNumber": "1"}})
	c.await(t, provision+"/rejected", &rej)
	if rej.ErrorCode != "InvalidCertificateOwnershipToken" {
		t.Fatalf("expired token: %+v", rej)
	}
	if _, err := e.Certificate(ctx, "fleet", acc.CertificateID); err == nil {
		t.Fatal("a certificate whose token expired before activation was kept")
	}
}

func TestCreateKeysAndCertificate(t *testing.T) {
	e, claim := claimSetup(t, Config{CertificateLifetime: 10 * time.Minute})
	// AWS's example claim policy also allows CreateKeysAndCertificate; the
	// emulator's least-privilege one does not.
	keys := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":"arn:aws:iot:*:*:topic/$aws/certificates/create/*"},{"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws:iot:*:*:topicfilter/$aws/certificates/create/*"}]}`
	if _, err := e.CreatePolicy(ctx, "fleet", "create-keys", keys); err != nil {
		t.Fatal(err)
	}
	if err := e.AttachPolicy(ctx, "fleet", "create-keys", claim.id); err != nil {
		t.Fatal(err)
	}
	c := mustDial(t, e, claim, "provisioner", dialOpts{account: "fleet"})
	c.subscribe(t, topicCreateKeys+"/accepted", topicCreateKeys+"/rejected")
	c.publish(t, topicCreateKeys, []byte{})
	var acc csrAccepted
	c.await(t, topicCreateKeys+"/accepted", &acc)
	cert, err := parseOneCert([]byte(acc.CertificatePEM))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(acc.PrivateKey))
	if b == nil || b.Type != "RSA PRIVATE KEY" {
		t.Fatalf("privateKey is not an RSA PEM key: %q", acc.PrivateKey)
	}
	key, err := x509.ParsePKCS1PrivateKey(b.Bytes)
	if err != nil || !key.PublicKey.Equal(cert.PublicKey) {
		t.Fatalf("the private key does not match the certificate: %v", err)
	}
	if want := e.clock.Now().Add(10 * time.Minute); !cert.NotAfter.Equal(want) {
		t.Errorf("NotAfter %s, want the configured lifetime: %s", cert.NotAfter, want)
	}
}

func TestProvisioningRepliesReachOnlyTheRequester(t *testing.T) {
	e, claim := claimSetup(t, Config{})
	// The spy may also use the topic "probe", for the round trip below.
	probe := `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":["iot:Publish","iot:Subscribe","iot:Receive"],"Resource":["arn:aws:iot:*:*:topic/probe","arn:aws:iot:*:*:topicfilter/probe"]}}`
	if _, err := e.CreatePolicy(ctx, "fleet", "probe", probe); err != nil {
		t.Fatal(err)
	}
	if err := e.AttachPolicy(ctx, "fleet", "probe", claim.id); err != nil {
		t.Fatal(err)
	}
	asker := mustDial(t, e, claim, "asker", dialOpts{account: "fleet"})
	spy := mustDial(t, e, claim, "spy", dialOpts{account: "fleet"})
	spy.subscribe(t, topicCreateFromCSR+"/accepted", topicCreateFromCSR)
	asker.subscribe(t, topicCreateFromCSR+"/accepted")
	_, csr := newCSR(t)
	asker.publish(t, topicCreateFromCSR, map[string]string{"certificateSigningRequest": csr})
	asker.await(t, topicCreateFromCSR+"/accepted", nil)
	// A round trip on the spy's own connection: anything sent to it before
	// has arrived by now.
	spy.subscribe(t, "probe")
	spy.publish(t, "probe", "x")
	spy.await(t, "probe", nil)
	if got := spy.topics(); len(got) != 0 {
		t.Fatalf("another client received %v", got)
	}
	// And the claim policy lets no client subscribe to a thing's topics.
	tok := spy.Subscribe("$aws/things/asker/jobs/notify-next", 1, nil)
	tok.Wait()
	if code := tok.(interface{ Result() map[string]byte }).Result()["$aws/things/asker/jobs/notify-next"]; code != 0x80 {
		t.Fatalf("subscribing to another thing's jobs topic: SUBACK code %#x, want 0x80", code)
	}
}

func TestTemplateEvaluation(t *testing.T) {
	body := json.RawMessage(`{
	  "Parameters": {"Serial": {"Type": "String"}, "Site": {"Type": "String", "Default": "lab"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
	  "Resources": {
	    "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::Sub": "${Site}-${Serial}"},
	      "AttributePayload": {"version": "v1", "attributes": {"serial": {"Ref": "Serial"}}}}},
	    "cert": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Inactive"}},
	    "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "p"}}
	  },
	  "DeviceConfiguration": {"site": {"Ref": "Site"}, "greeting": {"Fn::Join": [" ", ["hello", {"Ref": "Serial"}]]}}
	}`)
	doc, err := parseTemplate(body)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := evalTemplate(doc, map[string]string{"Serial": "9"}, "abc", nil)
	if err != nil {
		t.Fatal(err)
	}
	if plan.ThingName != "lab-9" || plan.CertificateStatus != StatusInactive || plan.ThingAttributes["serial"] != "9" ||
		plan.DeviceConfiguration["site"] != "lab" || plan.DeviceConfiguration["greeting"] != "hello 9" {
		t.Fatalf("plan: %+v", plan)
	}
	if _, err := evalTemplate(doc, nil, "abc", nil); err == nil || !strings.Contains(err.Error(), "Serial") {
		t.Fatalf("missing parameter: %v", err)
	}
	for _, bad := range []string{`{}`, `{"Resources": {"x": {"Type": "AWS::S3::Bucket"}}}`, `{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "x"}}}}`, `not json`} {
		if _, err := parseTemplate(json.RawMessage(bad)); err == nil {
			t.Errorf("template %s was accepted", bad)
		}
	}
}
