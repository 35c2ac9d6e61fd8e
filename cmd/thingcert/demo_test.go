package main

import (
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
)

// demoSteps are the timeline's steps, in order.
var demoSteps = []string{"emulator", "claim", "device", "provision", "publish", "rotate/time", "restart", "rotate/job", "deactivate", "unaffected", "stop", "refused"}

// runDemoProcess runs `thingcert demo` as a user does and checks its exit
// code, its timeline and that it cleaned up after itself.
func runDemoProcess(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(thingcertBinary(t), append([]string{"demo"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("thingcert demo %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, out, stderr.String())
	}
	text := string(out)
	// Each step once, in order, each line with its time and duration.
	line := regexp.MustCompile(`(?m)^ *([0-9]+\.[0-9]{2})s +([0-9]+\.[0-9]{2})s  (\S+) +(.+)$`)
	var got []string
	for _, m := range line.FindAllStringSubmatch(text, -1) {
		got = append(got, m[3])
	}
	if strings.Join(got, " ") != strings.Join(demoSteps, " ") &&
		strings.Join(without(got, "swtpm", "softhsm"), " ") != strings.Join(demoSteps, " ") {
		t.Errorf("timeline steps %q, want %q\n%s", got, demoSteps, text)
	}
	for _, want := range []string{"job SUCCEEDED", "INACTIVE", `emulator rule "status"`, "demo finished in"} {
		if !strings.Contains(text, want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, text)
		}
	}
	dir := regexp.MustCompile(`temporary folder (\S+),`).FindStringSubmatch(text)
	if dir == nil {
		t.Fatalf("the demo did not say where it worked:\n%s", text)
	}
	if _, err := os.Stat(dir[1]); !os.IsNotExist(err) {
		t.Errorf("the demo left %s behind (%v)", dir[1], err)
	}
	return text
}

func without(s []string, drop ...string) []string {
	var out []string
	for _, x := range s {
		keep := true
		for _, d := range drop {
			keep = keep && x != d
		}
		if keep {
			out = append(out, x)
		}
	}
	return out
}

func TestDemo(t *testing.T) {
	runDemoProcess(t)
}

func TestDemoTPM(t *testing.T) {
	testpeers.Need(t, "swtpm")
	if out := runDemoProcess(t, "--key-store", "tpm"); !strings.Contains(out, "keys in tpm:") {
		t.Errorf("the TPM demo did not use a TPM store:\n%s", out)
	}
}

// TestDemoRefusesUnknownKeyStore: through thingcert, which runs
// thingcert-emulator, a usage error keeps its message and its exit code.
func TestDemoRefusesUnknownKeyStore(t *testing.T) {
	cmd := exec.Command(thingcertBinary(t), "demo", "--key-store", "vault")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(stderr.String(), "want file, tpm or pkcs11") ||
		strings.Count(stderr.String(), "thingcert: ") != 1 {
		t.Errorf("demo --key-store vault: %v, %q", err, stderr.String())
	}
}

func TestDemoPKCS11(t *testing.T) {
	testpeers.Need(t, "softhsm2-util")
	testpeers.NeedFile(t, testpeers.SoftHSMModule, "the SoftHSM2 PKCS#11 module")
	if out := runDemoProcess(t, "--key-store", "pkcs11"); !strings.Contains(out, "keys in pkcs11:token=demo") {
		t.Errorf("the PKCS#11 demo did not use the token:\n%s", out)
	}
}
