package exchange

import (
	"strings"
	"testing"
)

// A snippet of a reply never carries the value of a secret field, whether
// the reply is valid JSON, malformed or cut short.
func TestSnippetLeavesSecretsOut(t *testing.T) {
	const tok = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-Pw"
	for _, p := range []string{
		`{"certificateOwnershipToken":"` + tok + `","certificateId":"abc"}`,
		`{"certificateId": "abc", "certificateOwnershipToken" : "` + tok + `"`,  // cut short
		`{"certificateOwnershipToken": "` + tok[:40] + `\"` + tok[40:] + `", }`, // an escaped quote, malformed
		`{"certificateOwnershipToken":"` + tok,                                  // cut inside the value
		`{"privateKey":"-----BEGIN EC PRIVATE KEY-----\n` + tok + `"}`,
	} {
		s := Snippet([]byte(p))
		if strings.Contains(s, tok[:20]) || strings.Contains(s, tok[40:60]) || !strings.Contains(s, "REDACTED") {
			t.Errorf("Snippet(%s) = %s", p, s)
		}
	}
	if s := Snippet([]byte(`{"certificateId":"abc"}`)); s != `"{\"certificateId\":\"abc\"}"` {
		t.Errorf("a reply without secrets: %s", s)
	}
}
