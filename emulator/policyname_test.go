package emulator

import (
	"regexp"
	"strings"
	"testing"
)

// TestValidPolicyNameIsAWSPattern: the hand-written check accepts exactly
// what AWS's pattern [\w+=,.@-]{1,128} does.
func TestValidPolicyNameIsAWSPattern(t *testing.T) {
	aws := regexp.MustCompile(`^[\w+=,.@-]{1,128}$`)
	names := []string{"", "device", "Device_Policy-1", "a+b=c,d.e@f", strings.Repeat("x", 128), strings.Repeat("x", 129),
		"with space", "slash/no", "é", "tab\t", "colon:", "star*", "x\n"}
	for c := 0; c < 256; c++ {
		names = append(names, "p"+string(rune(c)), string([]byte{byte(c)}))
	}
	for _, n := range names {
		if got, want := validPolicyName(n), aws.MatchString(n); got != want {
			t.Errorf("validPolicyName(%q) = %v, AWS's pattern says %v", n, got, want)
		}
	}
}
