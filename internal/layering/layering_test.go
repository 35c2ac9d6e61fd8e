// Package layering checks, with the go command, what each SDK package links:
// a program imports only what it uses, and these tests keep it so.
package layering

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
)

const module = "github.com/thingcert/thingcert"

// deps lists the packages pkg links (its own included), for goos (empty: the
// host's), without the standard library.
func deps(t *testing.T, goos, pkg string) []string {
	t.Helper()
	testpeers.Need(t, "go")
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg)
	cmd.Dir = "../.."
	if goos != "" {
		cmd.Env = append(cmd.Environ(), "GOOS="+goos)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	var list []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			list = append(list, l)
		}
	}
	return list
}

// TestConnectExampleLinksNoDaemon: a program that connects one device with a
// file key links neither the daemon's metrics, systemd, YAML, the emulator's
// broker nor a key store it does not use.
func TestConnectExampleLinksNoDaemon(t *testing.T) {
	forbidden := []string{"prometheus", "go-systemd", "yaml", "crypto11", "miekg/pkcs11", "go-tpm", "mochi-mqtt", "aws-sdk-go",
		module + "/agent", module + "/config", module + "/emulator", module + "/keystore/tpmstore", module + "/keystore/pkcs11store"}
	for _, pkg := range []string{"./examples/connect", "./iot", "./iot/fleetprov", "./iot/jobs", "./iot/stepca"} {
		list := deps(t, "", pkg)
		for _, d := range list {
			for _, f := range forbidden {
				if d == f || strings.Contains(d, f+"/") || strings.HasSuffix(d, f) || strings.Contains(d, f) && !strings.HasPrefix(f, module) {
					t.Errorf("%s links %s", pkg, d)
				}
			}
		}
	}
}

// TestAgentClientIsStandardLibraryOnly: the local socket's client links
// nothing but the standard library (and itself).
func TestAgentClientIsStandardLibraryOnly(t *testing.T) {
	list := deps(t, "", "./agentclient")
	if len(list) != 1 || list[0] != module+"/agentclient" {
		t.Fatalf("agentclient links %q", list)
	}
}

// TestDeviceLinksOnlyItsLayers: device.Manager links the connection, the
// AWS clients, rotation and the key store interface, and no backend unless a
// program imports one.
func TestDeviceLinksOnlyItsLayers(t *testing.T) {
	for _, d := range deps(t, "", "./device") {
		for _, f := range []string{"/agent", "/config", "/emulator", "/keystore/", "prometheus", "go-systemd", "yaml"} {
			if strings.Contains(d, f) {
				t.Errorf("device links %s", d)
			}
		}
	}
}

// TestSDKBuildsOnOtherSystems: the portable part of the SDK builds for
// Windows and macOS (the daemon, TPM and PKCS#11 stores stay Linux-only).
func TestSDKBuildsOnOtherSystems(t *testing.T) {
	testpeers.Need(t, "go")
	for _, goos := range []string{"windows", "darwin"} {
		cmd := exec.Command("go", "build", "./keystore", "./keystore/filestore", "./iot/...", "./rotation", "./device", "./agentclient")
		cmd.Dir = "../.."
		cmd.Env = append(cmd.Environ(), "GOOS="+goos, "GOARCH=amd64", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("GOOS=%s: %v\n%s", goos, err, out)
		}
	}
}

// TestDeviceBinaryLinksNoAWSSDK: the device binary talks to AWS IoT over
// MQTT only; the control plane's SDK (aws-sdk-go-v2, smithy) and the
// operator's fleet package are linked by thingcert-fleet alone.
func TestDeviceBinaryLinksNoAWSSDK(t *testing.T) {
	for _, d := range deps(t, "", "./cmd/thingcert") {
		if strings.Contains(d, "aws-sdk-go") || strings.Contains(d, "aws/smithy-go") || d == module+"/fleet" {
			t.Errorf("cmd/thingcert links %s", d)
		}
	}
	// The check can fail: the operator's binary does link them.
	found := false
	for _, d := range deps(t, "", "./cmd/thingcert-fleet") {
		found = found || strings.Contains(d, "aws-sdk-go-v2/service/iot")
	}
	if !found {
		t.Error("cmd/thingcert-fleet does not link aws-sdk-go-v2/service/iot: the check above proves nothing")
	}
}

// TestThingcertLinksNoEmulator: the device binary does not link the
// emulator, its broker or a metrics library whose packages initialise
// themselves in every run of every subcommand (thingcert-emulator runs
// `thingcert emulator` and `thingcert demo`; bench/startup measures it).
func TestThingcertLinksNoEmulator(t *testing.T) {
	for _, d := range deps(t, "", "./cmd/thingcert") {
		for _, f := range []string{module + "/emulator", "mochi-mqtt", "rs/xid", "prometheus", "protobuf", "aws-sdk-go"} {
			if strings.Contains(d, f) {
				t.Errorf("cmd/thingcert links %s", d)
			}
		}
	}
	// The check can fail: the emulator's binary does link the broker.
	found := false
	for _, d := range deps(t, "", "./cmd/thingcert-emulator") {
		found = found || strings.Contains(d, "mochi-mqtt")
	}
	if !found {
		t.Error("cmd/thingcert-emulator does not link mochi-mqtt: the check above proves nothing")
	}
}
