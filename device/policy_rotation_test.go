package device_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/rotation"
)

// TestRotationDeniedByPolicy: on AWS a device's everyday policy often lacks
// the fleet-provisioning topics. Its rotation must fail, say which permission
// is missing, and leave the device its working identity.
func TestRotationDeniedByPolicy(t *testing.T) {
	const arn = "arn:aws:iot:*:*:"
	const thingVar = "${iot:Connection.Thing.ThingName}"
	everyday := []string{"$aws/things/" + thingVar + "/jobs/*", "$aws/provisioning-templates/*/provision/*", "dt/" + thingVar + "/*"}
	doc := func(subscribeCSR, publishCSR bool) string {
		var pub, sub []string
		for _, t := range everyday {
			pub = append(pub, `"`+arn+`topic/`+t+`"`)
			sub = append(sub, `"`+arn+`topicfilter/`+t+`"`)
		}
		csr := "$aws/certificates/create-from-csr/*"
		if subscribeCSR {
			sub = append(sub, `"`+arn+`topicfilter/`+csr+`"`, `"`+arn+`topic/`+csr+`"`)
		}
		if publishCSR {
			pub = append(pub, `"`+arn+`topic/`+csr+`"`)
		}
		return `{"Version":"2012-10-17","Statement":[
		  {"Effect":"Allow","Action":"iot:Connect","Resource":"` + arn + `client/` + thingVar + `"},
		  {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":[` + strings.Join(pub, ",") + `]},
		  {"Effect":"Allow","Action":["iot:Subscribe","iot:Receive"],"Resource":[` + strings.Join(sub, ",") + `]}]}`
	}
	for _, tc := range []struct {
		name                     string
		subscribeCSR, publishCSR bool
		action, resource         string // the denial the emulator records
	}{
		// SUBACK 0x80 for …/create-from-csr/json/accepted.
		{"no create-from-csr at all", false, false, "iot:Subscribe", "topicfilter/$aws/certificates/create-from-csr/json/"},
		// Subscribed, but the request itself closes the connection.
		{"subscribe but not publish", true, false, "iot:Publish", "topic/$aws/certificates/create-from-csr/json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			emu := startEmulator(t, emulator.Config{})
			r := newRig(t, emu, fileStores)
			old := r.provision().Current
			ctx := context.Background()
			// The device's policy becomes the everyday one, without (part of)
			// the CreateCertificateFromCsr topics.
			attached, err := emu.AttachedPolicies(ctx, account, old.CertificateID)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range attached {
				if err := emu.DetachPolicy(ctx, account, p.Name, old.CertificateID); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := emu.CreatePolicy(ctx, account, "everyday", doc(tc.subscribeCSR, tc.publishCSR)); err != nil {
				t.Fatal(err)
			}
			if err := emu.AttachPolicy(ctx, account, "everyday", old.CertificateID); err != nil {
				t.Fatal(err)
			}

			rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			_, err = r.runner.Rotate(rctx, rotation.Trigger{Kind: rotation.TriggerOperator})
			if err == nil {
				t.Fatal("rotated without permission to use CreateCertificateFromCsr")
			}
			t.Logf("the agent's error: %v", err)
			ev := waitEvent(t, emu, emulator.HistoryQuery{CertificateID: old.CertificateID, Outcome: emulator.Denied})
			if ev.Action != tc.action || !strings.Contains(ev.Resource, tc.resource) {
				t.Fatalf("emulator recorded %s on %s; want %s on …%s…", ev.Action, ev.Resource, tc.action, tc.resource)
			}
			// The agent's error names the permission the policy lacks (for a
			// closed connection, the likely one: AWS says nothing more).
			if !strings.Contains(err.Error(), "create-from-csr") || !strings.Contains(err.Error(), tc.action) {
				t.Errorf("the agent's error does not name %s on the CreateCertificateFromCsr topics: %v", tc.action, err)
			}

			// The device keeps its identity, and it still works.
			s, err := r.runner.Load()
			if err != nil {
				t.Fatal(err)
			}
			if s.Current.CertificateID != old.CertificateID {
				t.Fatalf("current identity %s, want the old one %s", s.Current.CertificateID[:12], old.CertificateID[:12])
			}
			if st := r.certStatus(old.CertificateID); st != emulator.StatusActive {
				t.Fatalf("old certificate is %s", st)
			}
			r.connectCurrent()
			r.publishes()
		})
	}
}
