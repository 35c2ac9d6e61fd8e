package config

import (
	"strings"
	"testing"
	"time"
)

func TestDurationsOutOfRangeAreRefused(t *testing.T) {
	for _, v := range []string{"106752d", "1e300d", "NaNd", "nand", "+Infd", "200000d", "36501d", "36500d1h", "3000000h", "9999999999999999999h"} {
		if d, err := ParseDuration(v); err == nil {
			t.Errorf("ParseDuration(%q) = %v; want an error", v, d)
		} else if !strings.Contains(err.Error(), "36500d") {
			t.Errorf("ParseDuration(%q): %v; want the allowed range named", v, err)
		}
	}
	for v, want := range map[string]time.Duration{"36500d": MaxDuration, "90d": 90 * 24 * time.Hour, "1d12h": 36 * time.Hour, "30m": 30 * time.Minute, "off": Off} {
		if d, err := ParseDuration(v); err != nil || d != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", v, d, err, want)
		}
	}
}

func TestConfigNamesTheKeyOfAnOversizedDuration(t *testing.T) {
	base := minimal
	for _, v := range []string{"200000d", "NaNd", "1e300d"} {
		_, err := Parse([]byte(base+"rotation:\n  grace_period: "+v+"\n"), "/etc/thingcert/thingcert.yaml")
		if err == nil {
			t.Fatalf("grace_period: %s was accepted", v)
		}
		if !strings.Contains(err.Error(), "grace_period") || !strings.Contains(err.Error(), "36500d") {
			t.Errorf("grace_period: %s: %v; want the key and the allowed range named", v, err)
		}
	}
}
