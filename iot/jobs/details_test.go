package jobs

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestDetailsAreWhatAWSAccepts: keys 1–128 of [a-zA-Z0-9:_-], values 1–1,024
// characters without control characters, whatever the error text was.
func TestDetailsAreWhatAWSAccepts(t *testing.T) {
	in := map[string]string{
		"reason":                 "rotation: phase issued:\n\tverify: certificate expired\r\nand more\x00\x1b[31m",
		"empty":                  "",
		"long":                   strings.Repeat("é", 3000),
		"bad key/with ✓":         "x",
		strings.Repeat("k", 200): "y",
	}
	out := Details(in)
	if len(out) != len(in) {
		t.Fatalf("%d keys out of %d: %v", len(out), len(in), out)
	}
	for k, v := range out {
		if n := utf8.RuneCountInString(k); n < 1 || n > 128 || strings.Trim(k, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-") != "" {
			t.Errorf("key %q is not one AWS accepts", k)
		}
		if n := utf8.RuneCountInString(v); n < 1 || n > MaxDetailValue {
			t.Errorf("value of %q has %d characters", k, n)
		}
		for _, r := range v {
			if r < 0x20 || r == 0x7f {
				t.Errorf("value of %q holds control character %U", k, r)
			}
		}
	}
	if got := out["reason"]; got != "rotation: phase issued: verify: certificate expired and more [31m" {
		t.Errorf("reason became %q", got)
	}
	if out["empty"] != "-" || !strings.HasSuffix(out["long"], "…") || out["bad_key_with__"] != "x" {
		t.Errorf("details %q", out)
	}
}
