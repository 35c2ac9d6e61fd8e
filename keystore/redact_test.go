package keystore_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/keystore"
)

func TestRedactURIHidesAPINWithHash(t *testing.T) {
	for _, s := range []string{
		"pkcs11:token=a?module-path=/m.so&pin-value=ab#cd",
		"pkcs11:token=a;pin-value=ab#cd;object=k",
		"pkcs11:token=a?pin-value=ab#cd&module-path=/m.so",
	} {
		if got := keystore.RedactURI(s); strings.Contains(got, "cd") || strings.Contains(got, "#") {
			t.Errorf("RedactURI(%q) = %q: part of the PIN is left", s, got)
		}
	}
}

// TestFuzzTargetNamesAreDistinct: go test -fuzz refuses a name that matches
// two targets of a package, so no two may share one.
func TestFuzzTargetNamesAreDistinct(t *testing.T) {
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		testpeers.Missing(t, "no go command next to this test's toolchain: "+err.Error())
	}
	out, err := exec.Command(goTool, "test", "-list", "^Fuzz", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go test -list: %v\n%s", err, out)
	}
	seen := map[string]bool{}
	for _, name := range strings.Fields(string(out)) {
		if !strings.HasPrefix(name, "Fuzz") {
			continue
		}
		if seen[name] {
			t.Errorf("two fuzz targets are named %s: go test -fuzz=^%s$ refuses both", name, name)
		}
		seen[name] = true
	}
	if len(seen) == 0 {
		t.Fatalf("no fuzz targets listed:\n%s", out)
	}
}
