package emulator

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/thingcert/thingcert/emulator/iotpolicy"
)

// devPolicy is the policy of the enforcement tests: connect as the thing,
// publish its telemetry, subscribe to its commands and to the literal filter
// dt/+/x (whose messages it may not receive).
var devPolicy = strings.ReplaceAll(`{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:eu-west-1:*:client/${iot:Connection.Thing.ThingName}"},
  {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:eu-west-1:A:topic/dt/${iot:Connection.Thing.ThingName}/*"},
  {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": ["arn:aws:iot:eu-west-1:A:topicfilter/cmd/${iot:Connection.Thing.ThingName}/*", "arn:aws:iot:eu-west-1:A:topicfilter/dt/+/x"]},
  {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:eu-west-1:A:topic/cmd/${iot:Connection.Thing.ThingName}/*"}]}`, ":A:", ":"+accountID("A")+":")

func denial(t *testing.T, e *testEmu, certID, action, resource string) ConnectionEvent {
	t.Helper()
	return waitEvent(t, e, HistoryQuery{CertificateID: certID, Outcome: Denied}, func(ev ConnectionEvent) bool {
		return ev.Action == action && ev.Resource == resource
	})
}

func awaitLost(t *testing.T, c *mqttClient) {
	t.Helper()
	select {
	case <-c.lost:
	case <-time.After(20 * time.Second):
		t.Fatal("the emulator did not close the connection")
	}
}

func TestPoliciesEnforced(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	dev := issue(t, ca, "dev-1", certOpts{})
	if _, err := e.RegisterCertificate(ctx, "A", dev.pem, CertificateOptions{Thing: "dev-1"}); err != nil {
		t.Fatal(err)
	}

	// No policy: AWS IoT closes the connection at CONNECT.
	_, err := dial(t, e, dev, "dev-1", dialOpts{account: "A"})
	ev := expectRefused(t, e, dev, err, RulePolicy, e.Endpoint("A"))
	if ev.Action != iotpolicy.ActionConnect || ev.Resource != "arn:aws:iot:eu-west-1:"+accountID("A")+":client/dev-1" || !strings.Contains(ev.Reason, "implicit deny") {
		t.Fatalf("refusal %+v: want iot:Connect on the client ARN, implicit deny", ev)
	}

	if _, err := e.CreatePolicy(ctx, "A", "dev", devPolicy); err != nil {
		t.Fatal(err)
	}
	if err := e.AttachPolicy(ctx, "A", "dev", arnOf("eu-west-1", "A")+"cert/"+dev.id); err != nil {
		t.Fatal(err)
	}
	obs := issue(t, ca, "observer", certOpts{})
	register(t, e, "A", obs, CertificateOptions{}) // allow-all
	e.clock.Advance(2 * time.Second)
	c := mustDial(t, e, dev, "dev-1", dialOpts{account: "A"})
	o := mustDial(t, e, obs, "observer", dialOpts{account: "A"})

	// SUBSCRIBE: one SUBACK code per filter.
	tok := c.SubscribeMultiple(map[string]byte{"cmd/dev-1/#": 1, "dt/+/x": 1, "cmd/dev-2/#": 1}, func(_ paho.Client, m paho.Message) { c.add(m) })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	codes := tok.(*paho.SubscribeToken).Result()
	if codes["cmd/dev-1/#"] != 1 || codes["dt/+/x"] != 1 || codes["cmd/dev-2/#"] != 0x80 {
		t.Fatalf("SUBACK codes %v: want 1, 1 and 0x80 for cmd/dev-2/#", codes)
	}
	denial(t, e, dev.id, iotpolicy.ActionSubscribe, arnOf("eu-west-1", "A")+"topicfilter/cmd/dev-2/#")

	// iot:Receive is checked on each delivery: dt/other/x matches the
	// subscription but may not be received; cmd/dev-1/go may.
	o.publish(t, "dt/other/x", "dropped")
	o.publish(t, "cmd/dev-1/go", "delivered")
	c.await(t, "cmd/dev-1/go", nil)
	if got := c.topics(); len(got) != 0 {
		t.Fatalf("received %v despite iot:Receive", got)
	}
	denial(t, e, dev.id, iotpolicy.ActionReceive, arnOf("eu-west-1", "A")+"topic/dt/other/x")

	// Allowed PUBLISH reaches the observer.
	o.subscribe(t, "dt/#")
	c.publish(t, "dt/dev-1/temp", "21")
	o.await(t, "dt/dev-1/temp", nil)

	// An unauthorized PUBLISH closes the connection, and the history says
	// which permission was missing.
	c.Publish("dt/dev-2/temp", 1, false, "x")
	awaitLost(t, c)
	ev = denial(t, e, dev.id, iotpolicy.ActionPublish, arnOf("eu-west-1", "A")+"topic/dt/dev-2/temp")
	if ev.Rule != RulePolicy || !strings.Contains(ev.Reason, "implicit deny") {
		t.Fatalf("publish denial %+v", ev)
	}
	waitEvent(t, e, HistoryQuery{CertificateID: dev.id, Outcome: Disconnected}, func(ev ConnectionEvent) bool { return ev.Rule == RulePolicy })

	// Reserved topics: even allow-all may not publish AWS IoT's replies.
	o.Publish("$aws/things/dev-1/jobs/notify-next", 0, false, "{}")
	awaitLost(t, o)
	ev = waitEvent(t, e, HistoryQuery{CertificateID: obs.id, Outcome: Denied}, func(ev ConnectionEvent) bool { return ev.Rule == RuleReservedTopic })
	if ev.Action != iotpolicy.ActionPublish || !strings.Contains(ev.Resource, "notify-next") {
		t.Fatalf("reserved-topic denial %+v", ev)
	}

	// An explicit Deny in another policy wins over the Allow.
	deny := `{"Version":"2012-10-17","Statement":[{"Sid":"quarantine","Effect":"Deny","Action":"iot:Connect","Resource":"*"}]}`
	if _, err := e.CreatePolicy(ctx, "A", "quarantine", deny); err != nil {
		t.Fatal(err)
	}
	if err := e.AttachPolicy(ctx, "A", "quarantine", dev.id); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2 * time.Second)
	_, err = dial(t, e, dev, "dev-1", dialOpts{account: "A"})
	if err == nil {
		t.Fatal("connected despite an explicit Deny")
	}
	ev = waitEvent(t, e, HistoryQuery{CertificateID: dev.id, Outcome: Refused}, func(ev ConnectionEvent) bool {
		return strings.Contains(ev.Reason, "explicitly denied by policy quarantine, Statement[0] (Sid quarantine)")
	})
	if ev.Rule != RulePolicy {
		t.Fatalf("refusal %+v", ev)
	}
	got, err := e.AttachedPolicies(ctx, "A", dev.id)
	if err != nil || len(got) != 2 || got[0].Name != "dev" || got[1].Name != "quarantine" || got[1].ARN != arnOf("eu-west-1", "A")+"policy/quarantine" {
		t.Fatalf("AttachedPolicies: %+v, %v", got, err)
	}
}

func TestPolicyRegistry(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(ctx, Config{StateDir: dir, Accounts: []Account{{Name: "A"}}})
	if err != nil {
		t.Fatal(err)
	}
	d := issue(t, nil, "dev", certOpts{})
	if _, err := r.RegisterCertificate(ctx, "A", d.pem, CertificateOptions{WithoutCA: true, Status: StatusInactive}); err != nil {
		t.Fatal(err)
	}
	_, err = r.CreatePolicy(ctx, "A", "bad", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Resource":"*"}}`)
	if !errors.Is(err, ErrInvalid) || !errors.Is(err, iotpolicy.ErrMalformed) || !strings.Contains(err.Error(), "no Action") {
		t.Fatalf("malformed document: %v", err)
	}
	if _, err := r.CreatePolicy(ctx, "A", "bad name!", AllowAllPolicy); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad name: %v", err)
	}
	p, err := r.CreatePolicy(ctx, "A", "p1", DevicePolicy("fleet"))
	if err != nil || p.ARN != arnOf("us-east-1", "A")+"policy/p1" || p.DefaultVersionID != "1" {
		t.Fatalf("CreatePolicy: %+v, %v", p, err)
	}
	if _, err := r.CreatePolicy(ctx, "A", "p1", AllowAllPolicy); !errors.Is(err, ErrExists) {
		t.Fatalf("again: %v", err)
	}
	if err := r.AttachPolicy(ctx, "A", "nope", d.id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("attach a missing policy: %v", err)
	}
	if err := r.AttachPolicy(ctx, "A", "p1", arnOf("us-east-1", "A")+"thing/x"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("attach to a thing ARN: %v", err)
	}
	if err := r.AttachPolicy(ctx, "A", "p1", d.id); err != nil {
		t.Fatal(err)
	}
	if err := r.DeletePolicy(ctx, "A", "p1"); !errors.Is(err, ErrConflict) {
		t.Fatalf("deleting an attached policy: %v, want ErrConflict", err)
	}
	if err := r.DeleteCertificate(ctx, "A", d.id); !errors.Is(err, ErrConflict) {
		t.Fatalf("deleting a certificate with a policy: %v, want ErrConflict", err)
	}
	r.Close()

	// Saved: a new process sees the policy and the attachment.
	r, err = Open(ctx, Config{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := r.AttachedPolicies(ctx, "A", d.id)
	if err != nil || len(got) != 1 || got[0].Document != DevicePolicy("fleet") {
		t.Fatalf("after reopening: %+v, %v", got, err)
	}
	if all, err := r.Policies(ctx, "A"); err != nil || len(all) != 1 {
		t.Fatalf("Policies: %+v, %v", all, err)
	}
	if err := r.DetachPolicy(ctx, "A", "p1", d.id); err != nil {
		t.Fatal(err)
	}
	if err := r.DeletePolicy(ctx, "A", "p1"); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteCertificate(ctx, "A", d.id); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Policy(ctx, "A", "p1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted policy: %v", err)
	}
}

// The least-privilege policies are valid documents within AWS's size limit.
func TestLeastPrivilegePolicies(t *testing.T) {
	for name, doc := range map[string]string{"claim": ClaimPolicy("fleet"), "device": DevicePolicy("*"), "allow-all": AllowAllPolicy} {
		if _, err := iotpolicy.Parse(doc); err != nil {
			t.Errorf("%s policy: %v", name, err)
		}
	}
}

// A template's AWS::IoT::Policy is attached to the new certificate; a template
// without one gives a certificate AWS IoT refuses at CONNECT.
func TestTemplatePolicies(t *testing.T) {
	named := json.RawMessage(`{"Parameters": {"SerialNumber": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
	  "Resources": {
	    "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "SerialNumber"}}},
	    "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
	    "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "fleet-device"}}}}`)
	bare := json.RawMessage(`{"Parameters": {"SerialNumber": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
	  "Resources": {
	    "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "SerialNumber"}}},
	    "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}}}}`)
	e, claim := claimSetup(t, Config{})
	for _, tm := range []Template{{Name: "named", Body: named}, {Name: "bare", Body: bare}} {
		if err := e.CreateTemplate(ctx, "fleet", tm); err != nil {
			t.Fatal(err)
		}
	}
	both := json.RawMessage(`{"Resources": {"certificate": {"Type": "AWS::IoT::Certificate"}, "p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "x", "PolicyDocument": "{}"}}}}`)
	if err := e.CreateTemplate(ctx, "fleet", Template{Name: "both", Body: both}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PolicyName and PolicyDocument: %v", err)
	}
	badDoc := json.RawMessage(`{"Resources": {"certificate": {"Type": "AWS::IoT::Certificate"}, "p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": "{\"Statement\": []}"}}}}`)
	if err := e.CreateTemplate(ctx, "fleet", Template{Name: "baddoc", Body: badDoc}); !errors.Is(err, iotpolicy.ErrMalformed) {
		t.Fatalf("malformed PolicyDocument: %v", err)
	}

	c := mustDial(t, e, claim, "provisioner", dialOpts{account: "fleet"})
	c.subscribe(t, topicCreateFromCSR+"/+", "$aws/provisioning-templates/+/provision/json/+")
	provision := func(template, serial string) (*device, *rejected) {
		t.Helper()
		key, csr := newCSR(t)
		var created struct {
			Token string `json:"certificateOwnershipToken"`
			ID    string `json:"certificateId"`
			PEM   string `json:"certificatePem"`
		}
		c.publish(t, topicCreateFromCSR, map[string]string{"certificateSigningRequest": csr})
		c.await(t, topicCreateFromCSR+"/accepted", &created)
		topic := "$aws/provisioning-templates/" + template + "/provision/json"
		c.publish(t, topic, map[string]any{"certificateOwnershipToken": created.Token, "parameters": map[string]string{"SerialNumber": serial}})
		var rej rejected
		for _, m := range c.wait(t, topic+"/accepted", topic+"/rejected") {
			if strings.HasSuffix(m.Topic(), "/rejected") {
				_ = json.Unmarshal(m.Payload(), &rej)
				return nil, &rej
			}
		}
		cert, err := parseOneCert([]byte(created.PEM))
		if err != nil {
			t.Fatal(err)
		}
		return &device{cert: cert, pem: []byte(created.PEM), key: key, id: created.ID}, nil
	}

	// PolicyName of a policy that does not exist: RegisterThing is refused.
	if _, rej := provision("named", "n-1"); rej == nil || rej.StatusCode != 400 || !strings.Contains(rej.ErrorMessage, "fleet-device") {
		t.Fatalf("missing policy: %+v", rej)
	}
	if _, err := e.CreatePolicy(ctx, "fleet", "fleet-device", DevicePolicy("named")); err != nil {
		t.Fatal(err)
	}
	dev, rej := provision("named", "n-2")
	if rej != nil {
		t.Fatalf("RegisterThing: %+v", rej)
	}
	if got, err := e.AttachedPolicies(ctx, "fleet", dev.id); err != nil || len(got) != 1 || got[0].Name != "fleet-device" {
		t.Fatalf("attached: %+v, %v", got, err)
	}
	e.clock.Advance(2 * time.Second)
	mustDial(t, e, dev, "n-2", dialOpts{account: "fleet"})

	// SimpleTemplate's inline document becomes a policy named by its hash.
	simple, rej := provision("sensors", "7")
	if rej != nil {
		t.Fatalf("RegisterThing: %+v", rej)
	}
	got, err := e.AttachedPolicies(ctx, "fleet", simple.id)
	if err != nil || len(got) != 1 || len(got[0].Name) != 64 || got[0].Document != DevicePolicy("*") {
		t.Fatalf("SimpleTemplate's policy: %+v, %v", got, err)
	}

	// No policy in the template: TLS accepts the certificate, CONNECT does not.
	plain, rej := provision("bare", "b-1")
	if rej != nil {
		t.Fatalf("RegisterThing: %+v", rej)
	}
	_, err = dial(t, e, plain, "b-1", dialOpts{account: "fleet"})
	expectRefused(t, e, plain, err, RulePolicy, e.Endpoint("fleet"))
}

// wait returns the first message on any of the topics.
func (c *mqttClient) wait(t *testing.T, topics ...string) []paho.Message {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		c.mu.Lock()
		for i, m := range c.msgs {
			for _, topic := range topics {
				if m.Topic() == topic {
					c.msgs = append(c.msgs[:i:i], c.msgs[i+1:]...)
					c.mu.Unlock()
					return []paho.Message{m}
				}
			}
		}
		c.mu.Unlock()
		select {
		case <-c.got:
		case <-deadline:
			t.Fatalf("no message on %v", topics)
		}
	}
}

// Accounts are isolated: topics, retained messages and client IDs.
func TestAccountIsolation(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	devA, devB := issue(t, ca, "a", certOpts{}), issue(t, ca, "b", certOpts{})
	register(t, e, "A", devA, CertificateOptions{})
	register(t, e, "B", devB, CertificateOptions{})
	a := mustDial(t, e, devA, "same", dialOpts{account: "A"})
	// The same client ID in account B is another client: A's stays connected.
	b := mustDial(t, e, devB, "same", dialOpts{account: "B"})
	a.subscribe(t, "t/#", "$share/g/s/#")

	b.publish(t, "t/from-b", "b")
	b.publish(t, "s/from-b", "b")
	a.publish(t, "t/from-a", "a")
	a.await(t, "t/from-a", nil)
	if got := a.topics(); len(got) != 0 {
		t.Fatalf("account A received %v published in account B", got)
	}
	select {
	case err := <-a.lost:
		t.Fatalf("account B's client ID took over account A's connection: %v", err)
	default:
	}
	if evs, _ := e.History(ctx, HistoryQuery{Account: "A", Outcome: Disconnected}); len(evs) != 0 {
		t.Fatalf("account A's connection ended: %+v", evs)
	}

	// Retained messages are per account.
	b.Publish("r", 1, true, "from-b").Wait()
	a.Publish("r", 1, true, "from-a").Wait()
	b2 := mustDial(t, e, devB, "reader", dialOpts{account: "B"})
	b2.subscribe(t, "r")
	var m []paho.Message
	m = b2.wait(t, "r")
	if string(m[0].Payload()) != "from-b" {
		t.Fatalf("account B's retained message is %q", m[0].Payload())
	}
	a2 := mustDial(t, e, devA, "reader", dialOpts{account: "A"})
	a2.subscribe(t, "r")
	if m = a2.wait(t, "r"); string(m[0].Payload()) != "from-a" {
		t.Fatalf("account A's retained message is %q", m[0].Payload())
	}
	// Topics come back to devices without the namespace.
	if m[0].Topic() != "r" {
		t.Fatalf("topic %q", m[0].Topic())
	}
}

// MQTT: # and + at the first level do not match $ topics, although the broker
// sees every topic under the account's namespace.
func TestWildcardsSkipReservedTopics(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	d := issue(t, ca, "d", certOpts{})
	register(t, e, "A", d, CertificateOptions{})
	all := mustDial(t, e, d, "all", dialOpts{account: "A"})
	shadow := mustDial(t, e, d, "shadow", dialOpts{account: "A"})
	all.subscribe(t, "#", "+/things/d/shadow/update")
	shadow.subscribe(t, "$aws/things/d/shadow/update")
	pub := mustDial(t, e, d, "pub", dialOpts{account: "A"})
	pub.publish(t, "$aws/things/d/shadow/update", "{}")
	pub.publish(t, "plain", "x")
	shadow.await(t, "$aws/things/d/shadow/update", nil)
	all.await(t, "plain", nil)
	if got := all.topics(); len(got) != 0 {
		t.Fatalf("a first-level wildcard received %v", got)
	}
}

// arnOf is the start of an ARN in an emulator account (its 12-digit ID).
func arnOf(region, account string) string {
	return "arn:aws:iot:" + region + ":" + accountID(account) + ":"
}
