// Package testpeers finds and starts the real programs thingcert is tested
// against: openssl, SoftHSM2, swtpm, tpm2-tools, mosquitto and step-ca.
//
// When THINGCERT_REQUIRE_PEERS=1 (set by `make test` and CI) a missing peer fails
// the test, so a broken install cannot pass as a green run of skipped tests.
// Without it a missing peer skips, so `go test ./...` works on a bare laptop.
package testpeers

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// RequireEnv is the variable that turns a missing peer from a skip into a failure.
const RequireEnv = "THINGCERT_REQUIRE_PEERS"

// Required reports whether missing peers must fail tests.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// Need returns the path of each program, or stops the test: a failure when peers
// are required, a skip otherwise.
func Need(t testing.TB, programs ...string) []string {
	t.Helper()
	paths := make([]string, 0, len(programs))
	for _, p := range programs {
		path, err := exec.LookPath(p)
		if err != nil {
			Missing(t, p+" is not installed (run `make test`, which installs the test peers)")
		}
		paths = append(paths, path)
	}
	return paths
}

// NeedFile is Need for a file such as a PKCS#11 module.
func NeedFile(t testing.TB, path, what string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		Missing(t, what+" not found at "+path+" (run `make test`, which installs the test peers)")
	}
}

// Missing fails or skips the test, as RequireEnv says.
func Missing(t testing.TB, why string) {
	t.Helper()
	if Required() {
		t.Fatalf("test peer missing: %s", why)
	}
	t.Skipf("test peer missing: %s (set %s=1 to make this a failure)", why, RequireEnv)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreePortPair returns two consecutive free ports P, P+1 (swtpm's data and
// control ports).
func FreePortPair(t testing.TB) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		p := FreePort(t)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		if err != nil {
			continue
		}
		l.Close()
		return p
	}
	t.Fatalf("no two consecutive free ports on 127.0.0.1")
	return 0
}
