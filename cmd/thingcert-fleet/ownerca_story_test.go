package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/iot"
	_ "github.com/thingcert/thingcert/keystore/filestore"
	"github.com/thingcert/thingcert/rotation"
)

// TestOwnerCAMultiAccountStory runs docs/owner-ca.md's Kind 3 story: its
// shell blocks in order, with the aws CLI and thingcert-fleet against the
// emulator's accounts prod and preprod and a real step-ca, and the device
// started from the configuration the story writes. The factory signs the
// device's first certificate with step-ca's intermediate and registers it in
// both accounts; the device rotates on a job of prod by step-ca's rekey, the
// fleet tool registers its new certificate in both accounts, the device
// commits and connects to both by SNI, and retire deactivates the factory
// certificate in both.
func TestOwnerCAMultiAccountStory(t *testing.T) {
	// Debian's aws CLI 2 (an older v1 may come first on PATH).
	awsCLI := "/usr/bin/aws"
	if _, err := os.Stat(awsCLI); err != nil {
		awsCLI = testpeers.Need(t, "aws")[0]
	}
	testpeers.Need(t, "openssl")
	// The owner's step-ca (its X5C provisioner unused here: renewals are
	// rekeys, and the factory signs the first certificate).
	sca := testpeers.StartStepCA(t, testpeers.StepCAOptions{X5CRootsPEM: testpeers.NewFactoryCA(t).PEM})
	doc, err := os.ReadFile("../../docs/owner-ca.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(doc)
	i := strings.Index(section, "## Kind 3: a CA not registered with AWS IoT (multi-account)")
	if i < 0 {
		t.Fatal("docs/owner-ca.md has no Kind 3 section")
	}
	section = section[i+3:]
	if j := strings.Index(section, "\n## "); j >= 0 {
		section = section[:j]
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(section, -1) {
		blocks = append(blocks, m[1])
	}
	if len(blocks) != 6 {
		t.Fatalf("the story has %d shell blocks; this test knows 6", len(blocks))
	}

	bin := fleetBinary(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const prod, pre = "prod", "preprod"
	emu, err := emulator.Start(ctx, emulator.Config{StateDir: filepath.Join(dir, "emu"), APIListen: "127.0.0.1:0",
		Accounts: []emulator.Account{{Name: prod}, {Name: pre}}, ClientConnectInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	var profiles strings.Builder
	for _, a := range []string{prod, pre} {
		k, err := emu.AccessKey(a)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&profiles, "[profile %s]\naws_access_key_id = %s\naws_secret_access_key = %s\nregion = %s\n\n", a, k.AccessKeyID, k.SecretAccessKey, k.Region)
	}
	awsConfig := filepath.Join(dir, "aws-config")
	if err := os.WriteFile(awsConfig, []byte(profiles.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(dir, "work")
	if err := os.Mkdir(work, 0o700); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "AWS_CONFIG_FILE=" + awsConfig, "AWS_SHARED_CREDENTIALS_FILE=/dev/null",
		"AWS_PAGER=", "AWS_EC2_METADATA_DISABLED=true", "AWS_ENDPOINT_URL_IOT=" + emu.APIURL(), "AWS_CA_BUNDLE=" + emu.RootCAFile(),
		"AWS=" + awsCLI, "FLEET=" + bin, "STEPCA=" + sca.Dir, "STEPCA_URL=" + sca.URL}
	// The aws CLI 2.9 wants --endpoint-url; thingcert-fleet reads
	// AWS_ENDPOINT_URL_IOT through the SDK. Against AWS neither is needed.
	prelude := `set -euo pipefail
aws() { "$AWS" --endpoint-url "$AWS_ENDPOINT_URL_IOT" "$@"; }
thingcert-fleet() { "$FLEET" "$@"; }
`
	step := func(n int) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, "bash", "-c", prelude+blocks[n])
		cmd.Dir, cmd.Env = work, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("block %d failed: %v\n%s\n--- the block:\n%s", n+1, err, out, blocks[n])
		}
		return string(out)
	}
	step(0) // the factory key and its certificate from step-ca's CA
	step(1) // both accounts
	step(2) // the device's configuration

	cfg, err := config.Load(filepath.Join(work, "gw-1.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Endpoint != emu.Endpoint(prod) || len(cfg.Accounts) != 1 || cfg.Accounts[0].Endpoint != emu.Endpoint(pre) {
		t.Fatalf("the story's configuration names %s and %+v", cfg.Endpoint, cfg.Accounts)
	}
	// The emulator listens on one local address for every endpoint.
	cfg.Address = emu.Addr()
	cfg.Accounts[0].Address = emu.Addr()
	o, err := cfg.DeviceOptions()
	if err != nil {
		t.Fatal(err)
	}
	if o.JustInTime {
		t.Fatal("the story's device of two accounts expects just-in-time registration")
	}
	o.Roots = emu.RootCAs()
	o.MinConnectInterval = -1
	o.Machine.Backoff = rotation.Backoff{Min: time.Second, Max: 2 * time.Second}
	m, err := device.New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		m.Close(context.Background())
		if t.Failed() {
			t.Logf("step-ca log:\n%s", sca.Log())
		}
	}()

	step(3) // rotate, and wait for the report
	st, err := m.Runner().Load()
	if err != nil || !st.InProgress() {
		t.Fatalf("the device reported, but its rotation is not in progress: %+v, %v", st, err)
	}
	if !strings.Contains(sca.Log(), "/1.0/rekey") {
		t.Fatalf("the device reported a certificate step-ca did not rekey:\n%s", sca.Log())
	}
	out := step(4) // register in both, follow the job to its end
	t.Logf("register and follow:\n%s", out)
	for _, want := range []string{"in prod", "in preprod", "SUCCEEDED 1"} {
		if !strings.Contains(out, want) {
			t.Fatalf("register and follow: no %q in\n%s", want, out)
		}
	}
	for {
		if st, err = m.Runner().Load(); err == nil && !st.InProgress() && st.LastResult != nil && st.LastResult.Outcome == rotation.Succeeded {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the device did not commit: %+v, %v", st, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	out = step(5) // retire in both
	t.Logf("retire:\n%s", out)
	if strings.Count(out, "INACTIVE") != 2 {
		t.Fatalf("the factory certificate after retire:\n%s", out)
	}
	factory, err := os.ReadFile(filepath.Join(work, "gw-1.pem"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(factory)
	sum := sha256.Sum256(b.Bytes)
	if st.Current.CertificateID == hex.EncodeToString(sum[:]) {
		t.Fatal("the device still uses its factory certificate")
	}
	// The new certificate, by SNI, in the other account (in prod the device is connected with it).
	id, err := m.Runner().Identity(ctx, *st.Current)
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Chain[0].CheckSignatureFrom(sca.Intermediate); err != nil {
		t.Fatalf("the new certificate is not step-ca's: %v", err)
	}
	aid, err := iot.NewIdentity(id.Key, id.Chain)
	if err != nil {
		t.Fatal(err)
	}
	c, err := iot.New(iot.Config{Endpoint: iot.Endpoint{Host: emu.Endpoint(pre), Address: emu.Addr()}, Roots: emu.RootCAs(),
		ThingName: "gw-1", Identity: iot.NewIdentitySource(aid)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connect(ctx); err != nil {
		t.Fatalf("the new certificate connecting to %s: %v", pre, err)
	}
	c.Disconnect(ctx)
	if err := m.Session().Jobs().List(ctx); err != nil {
		t.Fatalf("the device's connection to %s: %v", prod, err)
	}
}
