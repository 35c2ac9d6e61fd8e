package certreport

import (
	"crypto/rand"
	"errors"
	"regexp"
	"strconv"
	"testing"
	"unicode"
)

// keyPattern and the value rules are AWS IoT Jobs' for statusDetails.
var keyPattern = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)

func TestRoundTripWithinLimits(t *testing.T) {
	for _, size := range []int{1, 500, 767, 768, 769, 1400, 4608} {
		der := make([]byte, size)
		_, _ = rand.Read(der)
		m, err := Encode(der, "abc")
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		if len(m) > 10 {
			t.Errorf("%d bytes: %d pairs, more than 10", size, len(m))
		}
		for k, v := range m {
			if !keyPattern.MatchString(k) {
				t.Errorf("key %q breaks AWS's pattern", k)
			}
			if n := len([]rune(v)); n < 1 || n > MaxValue {
				t.Errorf("%s: %d characters", k, n)
			}
			for _, r := range v {
				if unicode.Is(unicode.C, r) {
					t.Errorf("%s holds %U", k, r)
				}
			}
		}
		got, id, err := Decode(m)
		if err != nil || string(got) != string(der) || id != m[KeyNewID] {
			t.Fatalf("%d bytes: decode: %v", size, err)
		}
	}
	if _, err := Encode(make([]byte, 4609), ""); err == nil {
		t.Error("a DER too long for six parts was encoded")
	}
}

func TestDecodeRefusesTampering(t *testing.T) {
	der := make([]byte, 1500)
	_, _ = rand.Read(der)
	good, _ := Encode(der, "")
	if _, _, err := Decode(map[string]string{"step": "rotating"}); !errors.Is(err, ErrNoReport) {
		t.Errorf("no report: %v", err)
	}
	cases := map[string]func(m map[string]string){
		"part missing": func(m map[string]string) { delete(m, KeyPartPrefix+"1") },
		"wrong id":     func(m map[string]string) { m[KeyNewID] = "00" },
		"bad base64":   func(m map[string]string) { m[KeyPartPrefix+"0"] = "!!!!" },
		"bad count":    func(m map[string]string) { m[KeyParts] = strconv.Itoa(MaxParts + 1) },
		"changed part": func(m map[string]string) {
			p := []byte(m[KeyPartPrefix+"0"])
			p[10] ^= 'A' ^ 'B'
			m[KeyPartPrefix+"0"] = string(p)
		},
	}
	for name, change := range cases {
		m := map[string]string{}
		for k, v := range good {
			m[k] = v
		}
		change(m)
		if _, _, err := Decode(m); !errors.Is(err, ErrBadReport) {
			t.Errorf("%s: %v, want ErrBadReport", name, err)
		}
	}
}
