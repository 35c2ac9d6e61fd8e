package config

import (
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/agent"
)

// claim.recover_refusals and claim.recover_after make the agent's recovery
// rule; unset, the agent's default; out of range, refused by name. The
// topics issuer's topics are reserved for the agent.
func TestRecoveryRuleAndReservedTopics(t *testing.T) {
	claim := "provisioning:\n  template: T\nclaim:\n  key: file:/etc/thingcert/claim/claim.key\n  cert: /etc/thingcert/claim/claim.pem\n  recover: true\n"
	for _, c := range []struct {
		extra string
		want  agent.RecoveryRule
	}{
		{"", agent.RecoveryRule{Span: agent.DefaultRecoverSpan}},
		{"  recover_refusals: 5\n  recover_after: 1h\n", agent.RecoveryRule{Refusals: 5, Span: time.Hour}},
		{"  recover_after: 0s\n", agent.RecoveryRule{}},
	} {
		cfg, err := Parse([]byte(minimal+claim+c.extra), "/etc/thingcert/thingcert.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.recoveryRule(); got != c.want {
			t.Errorf("%q: rule %+v, want %+v", c.extra, got, c.want)
		}
	}
	if _, err := Parse([]byte(minimal+claim+"  recover_refusals: -1\n"), "/etc/thingcert/thingcert.yaml"); err == nil || !strings.Contains(err.Error(), "claim.recover_refusals") {
		t.Errorf("a negative count: %v", err)
	}
	cfg, err := Parse([]byte(minimal+"provisioning:\n  issuer: topics\n  topics:\n    request: owner/{thing}/csr\n"), "/etc/thingcert/thingcert.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.issuerTopics(); len(got) != 1 || got[0] != "owner/{thing}/csr" {
		t.Errorf("issuer topics %q", got)
	}
}
