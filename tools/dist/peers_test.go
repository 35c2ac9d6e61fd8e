package main

import (
	"os"
	"os/exec"
	"testing"
)

// needTool is internal/testpeers.Need for this separate module (which does
// not import the main one): a missing program fails the test under
// THINGCERT_REQUIRE_PEERS=1, as `make test` sets, and skips otherwise.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		why := name + " is not installed (run `make test`, which installs the test peers)"
		if os.Getenv("THINGCERT_REQUIRE_PEERS") == "1" {
			t.Fatalf("test peer missing: %s", why)
		}
		t.Skipf("test peer missing: %s (set THINGCERT_REQUIRE_PEERS=1 to make this a failure)", why)
	}
	return p
}
