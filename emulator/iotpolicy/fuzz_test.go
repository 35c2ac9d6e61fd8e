package iotpolicy

import (
	"strings"
	"testing"
)

// FuzzParseAndEvaluate: any policy document, valid or not, either is refused
// by Parse or evaluates every kind of request without panicking; an explicit
// Deny statement is never reported as an allow; and a document that parsed
// once parses the same way again (no hidden state).
func FuzzParseAndEvaluate(f *testing.F) {
	for _, seed := range []string{
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}`,
		`{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":["iot:Publish"],"Resource":"arn:aws:iot:*:*:topic/$aws/*"}}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}","Condition":{"Bool":{"iot:Connection.Thing.IsAttached":"true"}}}]}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Sub?cribe","Resource":"arn:aws:iot:*:*:topicfilter/cmd/${iot:ClientId}/*","Condition":{"StringLike":{"iot:Certificate.Subject.Organization":["Acme*"]}}}]}`,
		`{"Version":"2012-10-17","Statement":[]}`,
		`{"Statement":"x"}`,
		`[]`,
	} {
		f.Add(seed, "dev-1", "cmd/dev-1/led")
	}
	f.Fuzz(func(t *testing.T, doc, clientID, topic string) {
		d, err := Parse(doc)
		if err != nil {
			return
		}
		if _, err := Parse(doc); err != nil {
			t.Fatalf("parsed once, refused the second time: %v", err)
		}
		vars := func(name string) ([]string, bool) {
			switch name {
			case "iot:ClientId", "iot:Connection.Thing.ThingName":
				return []string{clientID}, true
			case "iot:Connection.Thing.IsAttached":
				return []string{"true"}, true
			}
			return nil, false
		}
		arn := "arn:aws:iot:us-east-1:123456789012:"
		for _, req := range []Request{
			{Action: ActionConnect, Resource: arn + "client/" + clientID, Vars: vars},
			{Action: ActionPublish, Resource: arn + "topic/" + topic, Vars: vars},
			{Action: ActionSubscribe, Resource: arn + "topicfilter/" + topic, Vars: vars},
			{Action: ActionReceive, Resource: arn + "topic/" + topic, Vars: vars},
		} {
			dec := Evaluate([]Named{{Name: "p", Document: d}}, req)
			if dec.Allowed && dec.Effect == Deny {
				t.Fatalf("%s on %s: allowed by a Deny statement: %+v", req.Action, req.Resource, dec)
			}
			if dec.Allowed && strings.TrimSpace(doc) == "" {
				t.Fatalf("an empty document allowed %s", req.Action)
			}
		}
	})
}
