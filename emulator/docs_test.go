package emulator

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
)

// The gateway guide's claim and device policies are the ones the demo and
// these tests run on.
func TestGatewayGuidePolicies(t *testing.T) {
	guide, err := os.ReadFile("../docs/gateway-guide.md")
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{"`claim-policy.json`": ClaimPolicy("GatewayTemplate"), "`device-policy.json`": DevicePolicy("GatewayTemplate")} {
		_, rest, ok := strings.Cut(string(guide), file)
		if !ok {
			t.Fatalf("the guide does not name %s", file)
		}
		_, rest, _ = strings.Cut(rest, "```json")
		block, _, ok := strings.Cut(rest, "```")
		if !ok {
			t.Fatalf("no JSON block after %s", file)
		}
		var got, exp any
		if err := json.Unmarshal([]byte(block), &got); err != nil {
			t.Fatalf("%s in the guide: %v", file, err)
		}
		_ = json.Unmarshal([]byte(want), &exp)
		if !reflect.DeepEqual(got, exp) {
			t.Errorf("%s in the guide differs from the code's:\n%s\nwant\n%s", file, block, want)
		}
	}
}
