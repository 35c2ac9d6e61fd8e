package main

import (
	"encoding/json"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/keystore/pkcs11store"
)

// TestBuildFactsPreferLinkedValues: the values the release build links in win
// over the go command's records; without them the records are used.
func TestBuildFactsPreferLinkedValues(t *testing.T) {
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/thingcert/thingcert", Version: "v0.9.0"},
		Settings: []debug.BuildSetting{
			{Key: "CGO_ENABLED", Value: "0"},
			{Key: "GOARM", Value: "6"},
			{Key: "vcs.revision", Value: "from-vcs"},
			{Key: "vcs.time", Value: "2026-01-02T03:04:05Z"},
		},
	}
	f := collectBuildFacts("v1.2.3", "0123abcd", "2026-11-30T10:00:00Z", bi, "linux", "arm", []string{"file", "tpm"})
	if f.Version != "v1.2.3" || f.Commit != "0123abcd" || f.Date != "2026-11-30T10:00:00Z" {
		t.Errorf("linked values lost: %+v", f)
	}
	if f.Platform != "linux/arm/v6" || f.Cgo || f.GoVersion != "go1.26.8" {
		t.Errorf("build settings misread: %+v", f)
	}
	g := collectBuildFacts("", "", "", bi, "linux", "amd64", nil)
	if g.Version != "v0.9.0" || g.Commit != "from-vcs" || g.Date != "2026-01-02T03:04:05Z" || g.Platform != "linux/amd64" {
		t.Errorf("fallback to build info: %+v", g)
	}
	if h := collectBuildFacts("", "", "", nil, "linux", "amd64", nil); h.Version != "(devel)" || h.GoVersion == "" {
		t.Errorf("no build info: %+v", h)
	}
	var sb strings.Builder
	f.writeText(&sb)
	if !strings.Contains(sb.String(), "cgo:        off") || !strings.Contains(sb.String(), "pkcs11 needs a build with CGO_ENABLED=1") {
		t.Errorf("text output:\n%s", sb.String())
	}
}

// TestVersionJSONDescribesThisBinary: cgo on/off as the test binary was built
// (on under make test, which runs -race), and pkcs11 among the key stores
// exactly when cgo is on.
func TestVersionJSONDescribesThisBinary(t *testing.T) {
	out, errOut, code := run(t, "version", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var f buildFacts
	if err := json.Unmarshal([]byte(out), &f); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := []string{"file", "tpm"}
	if f.Cgo {
		want = append(want, "pkcs11")
	}
	if f.Cgo != pkcs11store.Available || !slices.Equal(f.KeyStores, want) || !strings.HasPrefix(f.GoVersion, "go") {
		t.Errorf("version --json = %+v", f)
	}
}
