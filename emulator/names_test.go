package emulator

import "testing"

func TestNameChecks(t *testing.T) {
	for _, c := range []struct {
		f    func(string) bool
		in   string
		want bool
	}{
		{isRegion, "eu-west-1", true}, {isRegion, "us-gov-east-1", true}, {isRegion, "ap-southeast-12", true},
		{isRegion, "eu-west", false}, {isRegion, "eu-west-123", false}, {isRegion, "EU-west-1", false}, {isRegion, "e-west-1", false}, {isRegion, "eu--1", false},
		{isPrefix, "abc123", true}, {isPrefix, "ABC", false}, {isPrefix, "", false}, {isPrefix, "a-b", false},
		{isThingName, "gw:17_a-b", true}, {isThingName, "gw 17", false}, {isThingName, "+", false},
		{isJobID, "rotate-1", true}, {isJobID, "a/b", false},
		{isAccountName, "prod.eu", true}, {isTemplateName, "fleet.tmpl", false},
	} {
		if got := c.f(c.in); got != c.want {
			t.Errorf("%q: got %t, want %t", c.in, got, c.want)
		}
	}
}

func TestSubstitute(t *testing.T) {
	vals := map[string]string{"SerialNumber": "42", "Prefix": "gw"}
	for in, want := range map[string]string{
		"${Prefix}-${SerialNumber}": "gw-42",
		"plain":                     "plain",
		"${} and ${Prefix}":         "${} and gw",
		"open ${Prefix":             "open ${Prefix",
	} {
		got, err := substitute(in, vals)
		if err != nil || got != want {
			t.Errorf("substitute(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := substitute("${Missing}", vals); err == nil {
		t.Errorf("a missing parameter was accepted")
	}
}
