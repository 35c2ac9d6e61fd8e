//go:build cgo

package pkcs11store

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
)

// TestBuiltWithoutCgo runs this package's tests as a CGO_ENABLED=0 build would
// (TestOpenWithoutCgo in nocgo_test.go), so `make test`, which builds with cgo,
// also proves the message a cgo-less thingcert gives for a pkcs11: URI.
func TestBuiltWithoutCgo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the package again without cgo")
	}
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		testpeers.Missing(t, "no go command next to this test's toolchain: "+err.Error())
	}
	cmd := exec.Command(goTool, "test", "-count=1", "-run", "^TestOpenWithoutCgo$", "-v", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestOpenWithoutCgo") {
		t.Fatalf("CGO_ENABLED=0 go test -run TestOpenWithoutCgo: %v\n%s", err, out)
	}
}
