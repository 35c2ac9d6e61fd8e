package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestVersionsFromDescribe(t *testing.T) {
	commit := "abcdef0123456789abcdef0123456789abcdef01"
	at := time.Date(2026, 11, 30, 10, 40, 5, 0, time.FixedZone("CET", 3600))
	for _, c := range []struct{ describe, goV, file, deb string }{
		{"v1.2.3", "v1.2.3", "1.2.3", "1.2.3"},
		{"v1.2.3-dirty", "v1.2.3+dirty", "1.2.3+dirty", "1.2.3+dirty"},
		{"v1.2.3-4-gabcdef0", "v1.2.3-4-gabcdef0", "1.2.3-4-gabcdef0", "1.2.3+4.gabcdef0"},
		{"v1.3.0-rc.1", "v1.3.0-rc.1", "1.3.0-rc.1", "1.3.0~rc.1"},
		{"v1.3.0-rc.1-2-gabcdef0", "v1.3.0-rc.1-2-gabcdef0", "1.3.0-rc.1-2-gabcdef0", "1.3.0~rc.1+2.gabcdef0"},
		{"abcdef0", "v0.0.0-20261130094005-abcdef012345", "0.0.0-20261130094005-abcdef012345", "0.0.0~20261130094005.abcdef012345"},
		{"abcdef0-dirty\n", "v0.0.0-20261130094005-abcdef012345+dirty", "0.0.0-20261130094005-abcdef012345+dirty", "0.0.0~20261130094005.abcdef012345+dirty"},
	} {
		v, err := versionsFrom(c.describe, commit, at)
		if err != nil {
			t.Errorf("%q: %v", c.describe, err)
			continue
		}
		if v.Go != c.goV || v.File != c.file || v.Deb != c.deb {
			t.Errorf("%q → %+v, want %s %s %s", c.describe, v, c.goV, c.file, c.deb)
		}
	}
	for _, bad := range []string{"release-1", "1.2.3", "1234567"} {
		if v, err := versionsFrom(bad, commit, at); err == nil {
			t.Errorf("%q accepted as %+v", bad, v)
		}
	}
}

// TestDebVersionsSortAsReleases asks dpkg itself: a pseudo-version before the
// first tag, a release candidate before its release, later commits after it.
func TestDebVersionsSortAsReleases(t *testing.T) {
	dpkg := needTool(t, "dpkg")
	order := []string{"0.0.0~20261130094005.abcdef012345", "0.1.0~rc.1", "0.1.0", "0.1.0+3.gabcdef0", "0.1.0+3.gabcdef0+rpi1", "0.1.1"}
	for i := 0; i+1 < len(order); i++ {
		if out, err := exec.Command(dpkg, "--compare-versions", order[i], "lt", order[i+1]).CombinedOutput(); err != nil {
			t.Errorf("dpkg: %s is not older than %s (%v %s)", order[i], order[i+1], err, strings.TrimSpace(string(out)))
		}
	}
}
