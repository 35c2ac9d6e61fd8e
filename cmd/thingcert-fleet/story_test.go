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

	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/fleetprov"
	"github.com/thingcert/thingcert/rotation"
)

// fleetBinary builds thingcert-fleet once for the test.
func fleetBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "thingcert-fleet")
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/thingcert-fleet: %v\n%s", err, out)
	}
	return bin
}

// story runs bash steps with the emulator's credentials in the
// environment, thingcert-fleet as $FLEET and the aws CLI as `iot`.
type story struct {
	t       *testing.T
	dir     string
	env     []string
	prelude string
}

func (s *story) run(name, script string, wantOK bool) string {
	s.t.Helper()
	cmd := exec.Command("bash", "-c", s.prelude+script)
	cmd.Dir, cmd.Env = s.dir, s.env
	out, err := cmd.CombinedOutput()
	if (err == nil) != wantOK {
		s.t.Fatalf("step %s: exit %v, want success %v:\n%s", name, err, wantOK, out)
	}
	return string(out)
}

func (s *story) want(out string, subs ...string) {
	s.t.Helper()
	for _, sub := range subs {
		if !strings.Contains(out, sub) {
			s.t.Fatalf("output lacks %q:\n%s", sub, out)
		}
	}
}

// TestFleetStoryWithAWSCLI: thingcert-fleet sets up, audits, rotates and
// retires a small fleet of in-process devices on the emulator, and the aws
// CLI checks each step's result in the control plane.
func TestFleetStoryWithAWSCLI(t *testing.T) {
	aws := testpeers.Need(t, "aws")[0]
	bin := fleetBinary(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	emu, err := emulator.Start(ctx, emulator.Config{StateDir: filepath.Join(dir, "emu"), APIListen: "127.0.0.1:0",
		Accounts: []emulator.Account{{Name: "prod"}}, ClientConnectInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	cr, err := emulator.ReadCredentials(filepath.Join(dir, "emu"), "prod")
	if err != nil {
		t.Fatal(err)
	}
	s := &story{t: t, dir: dir}
	s.env = append(os.Environ(), "HOME="+dir, "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_PAGER=",
		"AWS_ACCESS_KEY_ID="+cr.AccessKeyID, "AWS_SECRET_ACCESS_KEY="+cr.SecretAccessKey, "AWS_REGION="+cr.Region,
		"AWS_DEFAULT_REGION="+cr.Region, "AWS_ENDPOINT_URL_IOT="+cr.EndpointURL, "AWS_CA_BUNDLE="+cr.CABundle,
		"FLEET="+bin, "AWS="+aws)
	// thingcert-fleet takes AWS_ENDPOINT_URL_IOT from the SDK's chain; the
	// aws CLI 2.9 needs --endpoint-url.
	s.prelude = `set -euo pipefail
iot() { "$AWS" iot --endpoint-url "$AWS_ENDPOINT_URL_IOT" --output json "$@"; }
field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); [d:=d[k] for k in sys.argv[2].split(".")]; print(d)' "$@"; }
`
	out := s.run("setup", `"$FLEET" setup --template fleet --thing-prefix gw- --provisioning-role-arn arn:aws:iam::123456789012:role/prov \
  --claim-key "file:$PWD/claim/claim.pem" --claim-cert-out claim.crt --json > setup1.json; cat setup1.json`, true)
	s.want(out, `"action": "created"`, `"name": "fleet-device"`, `"name": "fleet-claim"`)
	out = s.run("setup again", `"$FLEET" setup --template fleet --thing-prefix gw- --provisioning-role-arn arn:aws:iam::123456789012:role/prov \
  --claim-key "file:$PWD/claim/claim.pem" --claim-cert-out claim.crt`, true)
	if strings.Contains(out, "created") || strings.Count(out, "unchanged") != 5 {
		t.Fatalf("setup again changed something:\n%s", out)
	}
	out = s.run("aws sees the policies and template", `
iot get-policy --policy-name fleet-device --query policyName --output text
iot describe-provisioning-template --template-name fleet --query enabled --output text
iot list-attached-policies --target "$(iot describe-certificate --certificate-id "$(python3 -c 'import json;print([c["name"] for c in json.load(open("setup1.json"))["changes"] if c["kind"]=="claim-certificate"][0])')" --query certificateDescription.certificateArn --output text)" --query 'policies[].policyName' --output text`, true)
	s.want(out, "fleet-device", "True", "fleet-claim")

	// Three devices provision by claim with the claim setup made.
	var firsts []string
	var ms []*device.Manager
	done := make(chan error, 3)
	for _, serial := range []string{"1", "2", "3"} {
		thing := "gw-" + serial
		m, err := device.New(ctx, device.Options{
			Endpoint: iot.Endpoint{Host: emu.Endpoint("prod"), Address: emu.Addr()}, Roots: emu.RootCAs(), ThingName: thing,
			StateDir: filepath.Join(dir, thing, "state"), Store: "file:" + filepath.Join(dir, thing, "keys") + "/",
			Claim: &device.Claim{Credentials: device.Credentials{KeyURI: "file:" + filepath.Join(dir, "claim", "claim.pem"), CertFile: filepath.Join(dir, "claim.crt")}, ClientID: "claim-" + thing},
			Issuer: func(c iot.MQTT) rotation.Issuer {
				return &fleetprov.Issuer{Conn: c, Template: "fleet", Parameters: map[string]string{"SerialNumber": serial}, ThingName: thing}
			},
			Machine:            rotation.Machine{GracePeriod: time.Hour, Backoff: rotation.Backoff{Min: time.Second, Max: 2 * time.Second}},
			MinConnectInterval: -1,
		})
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
		go func() { done <- m.Run(ctx) }()
	}
	defer func() {
		cancel()
		for _, m := range ms {
			<-done
			m.Close(context.Background())
		}
	}()
	for _, m := range ms {
		for {
			st, err := m.Runner().Load()
			if err == nil && st.Current != nil && !st.Current.Claim && !st.InProgress() {
				firsts = append(firsts, st.Current.CertificateID)
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("a device did not provision: %+v, %v", st, err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "first.ids"), []byte(strings.Join(firsts, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	out = s.run("audit", `"$FLEET" audit --json > audit.json; "$FLEET" audit --csv; "$FLEET" audit --html audit.html; grep -c '<svg' audit.html`, true)
	s.want(out, "gw-1,", "gw-3,", "THINGCERT_ACTIVE_CERTIFICATE_UNATTACHED_CHECK", "\n2\n")

	s.run("thing group", `iot create-thing-group --thing-group-name gateways >/dev/null
for t in gw-1 gw-2 gw-3; do iot add-thing-to-thing-group --thing-group-name gateways --thing-name $t; done`, true)
	out = s.run("rotate", `"$FLEET" rotate --thing-group gateways --rate 60/min --timeout 10 --wait --poll 200ms | tee rotate.out
awk '/^created job/ {print $3}' rotate.out > job.id`, true)
	s.want(out, "created job thingcert-rotate-", "SUCCEEDED 3")
	out = s.run("rotate again", `"$FLEET" rotate --thing-group gateways --rate 60/min --timeout 10`, true)
	s.want(out, "exists already", strings.TrimSpace(s.file("job.id")))
	out = s.run("aws sees the executions", `iot list-job-executions-for-job --job-id "$(cat job.id)" --query 'executionSummaries[].jobExecutionSummary.status' --output text`, true)
	if strings.Count(out, "SUCCEEDED") != 3 {
		t.Fatalf("executions: %s", out)
	}

	out = s.run("retire dry run", `"$FLEET" retire --job "$(cat job.id)" --dry-run
for id in $(cat first.ids); do iot describe-certificate --certificate-id $id --query certificateDescription.status --output text; done`, true)
	s.want(out, "would deactivate")
	if strings.Count(out, "ACTIVE") != 3 || strings.Contains(out, "INACTIVE") {
		t.Fatalf("the dry run changed a certificate:\n%s", out)
	}
	out = s.run("retire", `"$FLEET" retire --job "$(cat job.id)"
for id in $(cat first.ids); do iot describe-certificate --certificate-id $id --query certificateDescription.status --output text; done`, true)
	s.want(out, "3 actions taken")
	if strings.Count(out, "INACTIVE") != 3 {
		t.Fatalf("old certificates after retire:\n%s", out)
	}
	out = s.run("retire again", `"$FLEET" retire --job "$(cat job.id)"`, true)
	s.want(out, "0 actions taken", "nothing to do")
	out = s.run("audit after", `"$FLEET" audit --thing-group gateways`, true)
	s.want(out, "3 things", "6 certificates")
	s.want(out, "THINGCERT_INACTIVE_CERTIFICATE_ATTACHED_CHECK")
	out = s.run("delete", `"$FLEET" retire --job "$(cat job.id)" --delete-after 1ns
for id in $(cat first.ids); do iot describe-certificate --certificate-id $id 2>&1 | grep -o ResourceNotFoundException || true; done
"$FLEET" audit --thing-group gateways`, true)
	s.want(out, "3 things, 3 certificates, 0 findings")
	if strings.Count(out, "ResourceNotFoundException") != 3 {
		t.Fatalf("old certificates not deleted:\n%s", out)
	}
	out = s.run("daemon status and one cycle", `cat > fleet.yaml <<'YAML'
interval: 1h
thing_group: gateways
policy: {lifetime_share: 0.5, max_age: 8760h}
wave: {size: 100, rate_per_minute: 600, timeout_minutes: 30}
retire: {grace: 0s, delete_after: 168h, workers: 2}
YAML
"$FLEET" status --config fleet.yaml --json > status.json
"$FLEET" run --config fleet.yaml --once > cycle.json 2> cycle.log
python3 -c 'import json; s=json.load(open("status.json")); c=json.load(open("cycle.json")); print("status", s["things"], len(s["due"]), s["dryRun"]); print("cycle", c["things"], len(c["due"]), len(c["jobs"]), c["jobs"][0]["counts"]["SUCCEEDED"])'
echo 'policy: {lifetime_share: 2}' > bad.yaml; "$FLEET" status --config bad.yaml || echo "exit $?"
echo 'polcy: {}' > typo.yaml; "$FLEET" status --config typo.yaml || echo "exit $?"`, true)
	s.want(out, "status 3 0 True", "cycle 3 0 1 3", "exit 2", "field polcy not found")
	out = s.run("usage error", `"$FLEET" rotate --things a --thing-group b || echo "exit $?"`, true)
	s.want(out, "exit 2", "one of --thing-group")
}

func (s *story) file(name string) string {
	s.t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil {
		s.t.Fatal(err)
	}
	return string(b)
}
