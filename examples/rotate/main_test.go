package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/filestore"
)

// TestProvisionAndRotate builds the example as a user would and runs it
// against the emulator: it provisions by claim, rotates once, and both
// certificates it prints are in the registry, the new one ACTIVE.
func TestProvisionAndRotate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "rotate")
	if out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/rotate: %v\n%s", err, out)
	}
	emu, err := emulator.Start(ctx, emulator.Config{Accounts: []emulator.Account{{Name: "a"}},
		Templates: []emulator.Template{{Name: "gw", Body: emulator.SimpleTemplate("", "SerialNumber")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	claimStore, err := filestore.Open(ctx, "file:"+filepath.Join(dir, "claim")+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	claimURI, _ := claimStore.KeyURI("claim")
	ck, err := claimStore.Generate(ctx, claimURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	claimPEM, _, err := emu.RegisterClaim(ctx, "a", ck, "claim")
	if err != nil {
		t.Fatal(err)
	}
	claimStore.Close()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cmd := exec.CommandContext(ctx, bin, "-endpoint", emu.Endpoint("a"), "-address", emu.Addr(),
		"-ca", write("root-ca.pem", emu.RootCAPEM()), "-thing", "gw-17",
		"-store", "file:"+filepath.Join(dir, "keys")+"/", "-state", filepath.Join(dir, "state"),
		"-claim-key", claimURI, "-claim-cert", write("claim.crt", claimPEM), "-template", "gw", "-once")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("example: %v\n%s", err, stderr.String())
	}
	ids := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if k, v, ok := strings.Cut(l, " "); ok {
			ids[k] = v
		}
	}
	if ids["provisioned"] == "" || ids["rotated"] == "" || ids["provisioned"] == ids["rotated"] {
		t.Fatalf("output %q: want two different certificate IDs", out)
	}
	c, err := emu.Certificate(ctx, "a", ids["rotated"])
	if err != nil || c.Status != emulator.StatusActive {
		t.Fatalf("rotated certificate in the registry: %+v, %v", c, err)
	}
	if _, err := emu.Certificate(ctx, "a", ids["provisioned"]); err != nil {
		t.Fatalf("provisioned certificate in the registry: %v", err)
	}
}
