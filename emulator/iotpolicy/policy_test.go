package iotpolicy

import (
	"errors"
	"strings"
	"testing"
)

const arn = "arn:aws:iot:us-east-1:123456789012:"

// vars is a connection's policy variables for the tests.
func vars(m map[string][]string) Vars {
	return func(name string) ([]string, bool) {
		v, ok := m[name]
		return v, ok
	}
}

func one(kv ...string) Vars {
	m := map[string][]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = append(m[kv[i]], kv[i+1])
	}
	return vars(m)
}

// Documents from AWS IoT's developer guide (policy examples, thing and
// certificate policy variables), and the emulator's own least-privilege ones.
const (
	// "Registered devices (5)": connect as the thing name, publish under it.
	docThingPrefix = `{"Version": "2012-10-17", "Statement": [
	  {"Effect": "Allow", "Action": ["iot:Connect"], "Resource": ["arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"]},
	  {"Effect": "Allow", "Action": ["iot:Publish"], "Resource": ["arn:aws:iot:us-east-1:123456789012:topic/${iot:Connection.Thing.ThingName}/*"]}]}`
	// "Unregistered devices (6)": subscribe and receive under the client ID's room topics.
	docRooms = `{"Version": "2012-10-17", "Statement": [
	  {"Effect": "Allow", "Action": ["iot:Connect"], "Resource": ["arn:aws:iot:us-east-1:123456789012:client/client1", "arn:aws:iot:us-east-1:123456789012:client/client2"]},
	  {"Effect": "Allow", "Action": ["iot:Subscribe"], "Resource": ["arn:aws:iot:us-east-1:123456789012:topicfilter/${iot:ClientId}/room*"]},
	  {"Effect": "Allow", "Action": ["iot:Receive"], "Resource": ["arn:aws:iot:us-east-1:123456789012:topic/${iot:ClientId}/room*"]}]}`
	// "+" is literal in a policy: only the filter some/+/topic itself.
	docLiteralPlus = `{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:us-east-1:123456789012:topicfilter/some/+/topic"}}`
	// Thing policy example: connect only if the certificate is attached to the thing.
	docIsAttached = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["iot:Connect"],"Resource":["*"],"Condition":{"Bool":{"iot:Connection.Thing.IsAttached":["true"]}}}]}`
	// Thing policy example: publish if the thing has an attribute value.
	docAttribute = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["iot:Publish"],"Resource":"arn:aws:iot:us-east-1:123456789012:topic/device/stats","Condition":{"StringEquals":{"iot:Connection.Thing.Attributes[attributeName]":"attributeValue"},"Bool":{"iot:Connection.Thing.IsAttached":"true"}}}]}`
	// Certificate policy variables example: publish if the subject's
	// organizations are all in the list.
	docOrgList = `{"Version":"2012-10-17","Statement":[
	  {"Effect":"Allow","Action":["iot:Publish"],"Resource":["arn:aws:iot:us-east-1:123456789012:topic/my/topic/${iot:ClientId}"],
	   "Condition":{"ForAllValues:StringEquals":{"iot:Certificate.Subject.Organization.List":["Example Corp","AnyCompany"]}}}]}`
	docCommonName = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:*:*:client/${iot:Certificate.Subject.CommonName}"}]}`
	// Deny overrides: everything allowed but one topic tree.
	docDenyOverride = `{"Version":"2012-10-17","Statement":[
	  {"Effect":"Allow","Action":"iot:*","Resource":"*"},
	  {"Sid":"noadmin","Effect":"Deny","Action":["iot:Publish","iot:Receive"],"Resource":"arn:aws:iot:us-east-1:123456789012:topic/admin/*"}]}`
	docActionWildcard = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Pub*","Resource":"arn:aws:iot:us-east-1:123456789012:topic/t?"}]}`
	// Version 2008-10-17 takes ${...} literally.
	docOldVersion = `{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:123456789012:client/${iot:ClientId}"}]}`
	docEscapes    = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:us-east-1:123456789012:topic/lit${*}eral"}]}`
	// The emulator's least-privilege claim policy.
	docClaim = `{"Version":"2012-10-17","Statement":[
	  {"Effect":"Allow","Action":"iot:Connect","Resource":"*"},
	  {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":["arn:aws:iot:*:*:topic/$aws/certificates/create-from-csr/*","arn:aws:iot:*:*:topic/$aws/provisioning-templates/fleet/provision/*"]},
	  {"Effect":"Allow","Action":"iot:Subscribe","Resource":["arn:aws:iot:*:*:topicfilter/$aws/certificates/create-from-csr/*","arn:aws:iot:*:*:topicfilter/$aws/provisioning-templates/fleet/provision/*"]}]}`
	docNotEquals = `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"iot:Connect","Resource":"*","Condition":{"StringNotEquals":{"iot:Certificate.Subject.Organization":"Acme"}}},{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}`
	docIfExists  = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*","Condition":{"StringEqualsIfExists":{"iot:Connection.Thing.Attributes[site]":"north"}}}]}`
	docNull      = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*","Condition":{"Null":{"iot:Connection.Thing.ThingName":"false"}}}]}`
	docIP        = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":["127.0.0.0/8","::1"]}}}]}`
	docLike      = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*","Condition":{"StringLike":{"iot:ClientId":"sensor-*"},"ArnLike":{"iot:ClientId":"*"}}}]}`
)

func TestEvaluate(t *testing.T) {
	attached := one("iot:ClientId", "thing1", "iot:Connection.Thing.ThingName", "thing1", "iot:Connection.Thing.IsAttached", "true", "iot:Connection.Thing.Attributes[attributeName]", "attributeValue")
	unattached := one("iot:ClientId", "thing1", "iot:Connection.Thing.IsAttached", "false")
	tests := []struct {
		name     string
		doc      string
		action   string
		resource string
		vars     Vars
		allowed  bool
		explicit bool // a statement decided
	}{
		{"thing name connects", docThingPrefix, ActionConnect, arn + "client/thing1", attached, true, true},
		{"other client ID refused", docThingPrefix, ActionConnect, arn + "client/thing2", attached, false, false},
		{"no thing: ThingName unresolved, connect refused", docThingPrefix, ActionConnect, arn + "client/thing1", unattached, false, false},
		{"unresolved variable is literal text", docThingPrefix, ActionConnect, arn + "client/${iot:Connection.Thing.ThingName}", unattached, true, true},
		{"publish under the thing name", docThingPrefix, ActionPublish, arn + "topic/thing1/a/b", attached, true, true},
		{"publish elsewhere refused", docThingPrefix, ActionPublish, arn + "topic/thing2/a", attached, false, false},
		{"subscribe is another action", docThingPrefix, ActionSubscribe, arn + "topicfilter/thing1/a", attached, false, false},
		{"other account's ARN refused", docThingPrefix, ActionPublish, "arn:aws:iot:us-east-1:999999999999:topic/thing1/a", attached, false, false},
		{"other region's ARN refused", docThingPrefix, ActionPublish, "arn:aws:iot:eu-west-1:123456789012:topic/thing1/a", attached, false, false},
		{"action names are case-insensitive", docThingPrefix, "IOT:PUBLISH", arn + "topic/thing1/a", attached, true, true},
		{"rooms: subscribe", docRooms, ActionSubscribe, arn + "topicfilter/client1/room1", one("iot:ClientId", "client1"), true, true},
		{"rooms: subscribe with a wildcard filter", docRooms, ActionSubscribe, arn + "topicfilter/client1/room/+", one("iot:ClientId", "client1"), true, true},
		{"rooms: receive", docRooms, ActionReceive, arn + "topic/client1/room9", one("iot:ClientId", "client1"), true, true},
		{"rooms: another client's rooms", docRooms, ActionReceive, arn + "topic/client2/room9", one("iot:ClientId", "client1"), false, false},
		{"rooms: client3 may not connect", docRooms, ActionConnect, arn + "client/client3", one("iot:ClientId", "client3"), false, false},
		{"+ literal: the filter itself", docLiteralPlus, ActionSubscribe, arn + "topicfilter/some/+/topic", nil, true, true},
		{"+ literal: not a concrete filter", docLiteralPlus, ActionSubscribe, arn + "topicfilter/some/x/topic", nil, false, false},
		{"IsAttached true connects", docIsAttached, ActionConnect, arn + "client/thing1", attached, true, true},
		{"IsAttached false refused", docIsAttached, ActionConnect, arn + "client/thing1", unattached, false, false},
		{"attribute condition holds", docAttribute, ActionPublish, arn + "topic/device/stats", attached, true, true},
		{"attribute missing: refused", docAttribute, ActionPublish, arn + "topic/device/stats", one("iot:ClientId", "thing1", "iot:Connection.Thing.IsAttached", "true"), false, false},
		{"organizations all listed", docOrgList, ActionPublish, arn + "topic/my/topic/c1", one("iot:ClientId", "c1", "iot:Certificate.Subject.Organization.List", "Example Corp", "iot:Certificate.Subject.Organization.List", "AnyCompany"), true, true},
		{"an organization not listed", docOrgList, ActionPublish, arn + "topic/my/topic/c1", one("iot:ClientId", "c1", "iot:Certificate.Subject.Organization.List", "Example Corp", "iot:Certificate.Subject.Organization.List", "Evil"), false, false},
		{"common name as client ID", docCommonName, ActionConnect, "arn:aws:iot:eu-west-1:42:client/dev-7", one("iot:Certificate.Subject.CommonName", "dev-7"), true, true},
		{"common name differs", docCommonName, ActionConnect, "arn:aws:iot:eu-west-1:42:client/dev-8", one("iot:Certificate.Subject.CommonName", "dev-7"), false, false},
		{"deny overrides allow", docDenyOverride, ActionPublish, arn + "topic/admin/reboot", nil, false, true},
		{"deny covers receive", docDenyOverride, ActionReceive, arn + "topic/admin/x", nil, false, true},
		{"deny leaves subscribe", docDenyOverride, ActionSubscribe, arn + "topicfilter/admin/#", nil, true, true},
		{"allow elsewhere", docDenyOverride, ActionPublish, arn + "topic/data", nil, true, true},
		{"iot:Pub* covers Publish", docActionWildcard, ActionPublish, arn + "topic/t1", nil, true, true},
		{"? is one character", docActionWildcard, ActionPublish, arn + "topic/t12", nil, false, false},
		{"iot:Pub* not Subscribe", docActionWildcard, ActionSubscribe, arn + "topic/t1", nil, false, false},
		{"2008 version: no substitution", docOldVersion, ActionConnect, arn + "client/c1", one("iot:ClientId", "c1"), false, false},
		{"2008 version: literal", docOldVersion, ActionConnect, arn + "client/${iot:ClientId}", one("iot:ClientId", "c1"), true, true},
		{"${*} is a literal star", docEscapes, ActionPublish, arn + "topic/lit*eral", nil, true, true},
		{"${*} is not a wildcard", docEscapes, ActionPublish, arn + "topic/litXeral", nil, false, false},
		{"claim: create-from-csr", docClaim, ActionPublish, arn + "topic/$aws/certificates/create-from-csr/json", nil, true, true},
		{"claim: replies", docClaim, ActionReceive, arn + "topic/$aws/certificates/create-from-csr/json/accepted", nil, true, true},
		{"claim: provision", docClaim, ActionSubscribe, arn + "topicfilter/$aws/provisioning-templates/fleet/provision/json/rejected", nil, true, true},
		{"claim: other template", docClaim, ActionPublish, arn + "topic/$aws/provisioning-templates/other/provision/json", nil, false, false},
		{"claim: no jobs", docClaim, ActionSubscribe, arn + "topicfilter/$aws/things/t/jobs/notify-next", nil, false, false},
		{"StringNotEquals denies another org", docNotEquals, ActionConnect, arn + "client/c", one("iot:Certificate.Subject.Organization", "Other"), false, true},
		{"StringNotEquals lets Acme through", docNotEquals, ActionConnect, arn + "client/c", one("iot:Certificate.Subject.Organization", "Acme"), true, true},
		{"StringNotEquals on a missing key holds", docNotEquals, ActionConnect, arn + "client/c", nil, false, true},
		{"IfExists: absent key holds", docIfExists, ActionConnect, arn + "client/c", nil, true, true},
		{"IfExists: present key must match", docIfExists, ActionConnect, arn + "client/c", one("iot:Connection.Thing.Attributes[site]", "south"), false, false},
		{"Null false: key required", docNull, ActionConnect, arn + "client/c", nil, false, false},
		{"Null false: key present", docNull, ActionConnect, arn + "client/c", one("iot:Connection.Thing.ThingName", "c"), true, true},
		{"IpAddress: loopback", docIP, ActionConnect, arn + "client/c", one("aws:SourceIp", "127.0.0.1"), true, true},
		{"IpAddress: ::1", docIP, ActionConnect, arn + "client/c", one("aws:SourceIp", "::1"), true, true},
		{"IpAddress: elsewhere", docIP, ActionConnect, arn + "client/c", one("aws:SourceIp", "10.0.0.1"), false, false},
		{"StringLike", docLike, ActionConnect, arn + "client/sensor-1", one("iot:ClientId", "sensor-1"), true, true},
		{"StringLike refuses", docLike, ActionConnect, arn + "client/pump-1", one("iot:ClientId", "pump-1"), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc, err := Parse(tt.doc)
			if err != nil {
				t.Fatal(err)
			}
			d := Evaluate([]Named{{Name: "p", Document: doc}}, Request{Action: tt.action, Resource: tt.resource, Vars: tt.vars})
			if d.Allowed != tt.allowed || d.Explicit() != tt.explicit {
				t.Fatalf("%s on %s: allowed=%v explicit=%v (%s), want allowed=%v explicit=%v", tt.action, tt.resource, d.Allowed, d.Explicit(), d, tt.allowed, tt.explicit)
			}
		})
	}
}

func TestDenyInOnePolicyWinsOverAllowInAnother(t *testing.T) {
	allow, err := Parse(`{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:*","Resource":"*"}}`)
	if err != nil {
		t.Fatal(err)
	}
	deny, err := Parse(`{"Version":"2012-10-17","Statement":[{"Sid":"x","Effect":"Allow","Action":"iot:Connect","Resource":"*"},{"Sid":"nocsr","Effect":"Deny","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/$aws/certificates/*"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	d := Evaluate([]Named{{"all", allow}, {"fence", deny}}, Request{Action: ActionPublish, Resource: arn + "topic/$aws/certificates/create-from-csr/json"})
	if d.Allowed || d.Policy != "fence" || d.Statement != 1 || d.Sid != "nocsr" {
		t.Fatalf("decision %+v, want the Deny of fence Statement[1]", d)
	}
	if !strings.Contains(d.String(), "explicitly denied by policy fence, Statement[1] (Sid nocsr)") {
		t.Fatalf("String() = %q", d.String())
	}
	if d := Evaluate(nil, Request{Action: ActionConnect, Resource: arn + "client/c"}); d.Allowed || d.Explicit() {
		t.Fatalf("no policy: %+v, want an implicit deny", d)
	}
}

func TestParseRefusesMalformed(t *testing.T) {
	long := `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/` + strings.Repeat("a", 2100) + `"}}`
	tests := []struct {
		name, doc, says string
	}{
		{"not JSON", `{"Version":`, "not a JSON object"},
		{"an array", `[]`, "not a JSON object"},
		{"trailing text", `{"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}} x`, "after the JSON object"},
		{"bad version", `{"Version":"2020-01-01","Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}`, `Version "2020-01-01"`},
		{"no statement", `{"Version":"2012-10-17"}`, "no Statement"},
		{"empty statement", `{"Version":"2012-10-17","Statement":[]}`, "Statement is empty"},
		{"statement a string", `{"Version":"2012-10-17","Statement":"x"}`, "object or an array"},
		{"unknown top element", `{"Version":"2012-10-17","Statment":[]}`, `unknown element "Statment"`},
		{"no effect", `{"Version":"2012-10-17","Statement":{"Action":"*","Resource":"*"}}`, "Statement[0] has no Effect"},
		{"bad effect", `{"Version":"2012-10-17","Statement":{"Effect":"allow","Action":"*","Resource":"*"}}`, "Effect must be"},
		{"no action", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},{"Effect":"Deny","Resource":"*"}]}`, "Statement[1] has no Action"},
		{"no resource", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Connect"}}`, "has no Resource"},
		{"empty action list", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":[],"Resource":"*"}}`, "empty array"},
		{"action not a string", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":7,"Resource":"*"}}`, "string or an array"},
		{"action without service", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"Publish","Resource":"*"}}`, `Action "Publish" is not an action`},
		{"resource not an ARN", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Publish","Resource":"topic/x"}}`, `Resource "topic/x" must be an ARN`},
		{"NotAction", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","NotAction":"iot:Publish","Resource":"*"}}`, "NotAction"},
		{"unknown statement element", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Resources":"*"}}`, `unknown element "Resources"`},
		{"unknown operator", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringSortOf":{"iot:ClientId":"x"}}}}`, `operator "StringSortOf"`},
		{"bad qualifier", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"ForSome:StringEquals":{"iot:ClientId":"x"}}}}`, "ForAllValues or ForAnyValue"},
		{"condition value an object", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"iot:ClientId":{"a":1}}}}}`, `Condition StringEquals "iot:ClientId"`},
		{"condition not an object", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":"x"}}`, "Condition must be an object"},
		{"too long", long, "AWS IoT allows 2048"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.doc)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse: %v, want ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("Parse: %q does not say %q", err, tt.says)
			}
		})
	}
}

func TestPatternMatch(t *testing.T) {
	tests := []struct {
		pat, s string
		want   bool
	}{
		{"*", "", true}, {"*", "a/b/c", true}, {"a*c", "abbbc", true}, {"a*c", "abbb", false},
		{"a?c", "abc", true}, {"a?c", "ac", false}, {"a?c", "aéc", true}, {"*a*a*a*a*a*b", strings.Repeat("a", 200), false},
		{"topic/$aws/things/*/jobs/*", "topic/$aws/things/t1/jobs/notify-next", true}, {"", "", true}, {"", "x", false},
	}
	for _, tt := range tests {
		if got := compile(tt.pat, nil).match(tt.s); got != tt.want {
			t.Errorf("%q matches %q: %v, want %v", tt.pat, tt.s, got, tt.want)
		}
	}
}
