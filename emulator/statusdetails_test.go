package emulator

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestStatusDetailsLimits: a device's job update is held to AWS IoT Jobs'
// statusDetails rules, so a device that reports a certificate must fit it
// (package certreport): a PEM, with its line breaks, is refused, as is a
// value over 1,024 characters or a key outside [a-zA-Z0-9:_-]; 1,024
// characters of base64 under "newCertificate:0" are accepted.
func TestStatusDetailsLimits(t *testing.T) {
	r, err := Open(ctx, Config{Accounts: []Account{{Name: "A"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.CreateThing(ctx, "A", "gw", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateJob(ctx, "A", Job{ID: "j1", Document: json.RawMessage(`{"operation":"rotate-certificate"}`), Things: []string{"gw"}}); err != nil {
		t.Fatal(err)
	}
	update := func(details map[string]string) jobsReply {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"status": "IN_PROGRESS", "statusDetails": details})
		m, ok := r.handleJobs("A", "gw", "j1/update", body)
		if !ok {
			t.Fatal("not handled")
		}
		var out jobsReply
		if err := json.Unmarshal(m.Payload, &out); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(m.Topic, "/accepted") {
			out.Code = "accepted"
		}
		return out
	}
	b64 := strings.Repeat("QUJD", 256) // 1,024 characters
	pemText := "-----BEGIN CERTIFICATE-----\n" + b64[:64] + "\n-----END CERTIFICATE-----\n"
	for _, tc := range []struct {
		name    string
		details map[string]string
		code    string
	}{
		{"a PEM", map[string]string{"newCertificate": pemText}, "InvalidRequest"},
		{"1,025 characters", map[string]string{"newCertificate:0": b64 + "A"}, "InvalidRequest"},
		{"a key with a dot", map[string]string{"newCertificate.0": "x"}, "InvalidRequest"},
		{"an empty value", map[string]string{"newCertificate:0": ""}, "InvalidRequest"},
		{"1,024 characters of base64", map[string]string{"newCertificate:0": b64, "newCertificate:1": b64[:10]}, "accepted"},
	} {
		if got := update(tc.details); got.Code != tc.code {
			t.Errorf("%s: %s (%s), want %s", tc.name, got.Code, got.Message, tc.code)
		}
	}
	ex, err := r.JobExecution(ctx, "A", "gw", "j1")
	if err != nil || ex.StatusDetails["newCertificate:0"] != b64 {
		t.Fatalf("the accepted details were not kept: %v", err)
	}
}
