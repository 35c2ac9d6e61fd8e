package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/internal/testpeers"
)

// TestAWSCLIRotationStory is the cloud half of rotation scripted with the
// real aws CLI against the emulator, with a real agent on the device side:
// least-privilege policies and a provisioning template, a claim certificate,
// a device that provisions by claim, a thing group, a rotation job with a
// rollout rate on the group, the device rotating, the job's SUCCEEDED
// statusDetails naming the old certificate, that certificate set INACTIVE,
// and a connection with it refused.
func TestAWSCLIRotationStory(t *testing.T) {
	s := newAWSStory(t)
	want := s.want
	// The policy documents an operator writes (the gateway guide's, kept
	// equal to these by the emulator's tests).
	for name, doc := range map[string]string{"device-policy.json": emulator.DevicePolicy("fleet"), "claim-policy.json": emulator.ClaimPolicy("fleet")} {
		if err := os.WriteFile(filepath.Join(s.dir, name), []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s.run("create-policy", `
iot create-policy --policy-name gw-device --policy-document file://device-policy.json > /dev/null
iot create-policy --policy-name gw-claim --policy-document file://claim-policy.json > /dev/null`, true)
	out := s.run("get-policy", `iot get-policy --policy-name gw-device --query policyArn --output text`, true)
	want(out, ":policy/gw-device")
	s.run("create-provisioning-template", `cat > fleet.json <<'JSON'
{"Parameters": {"SerialNumber": {"Type": "String"}},
 "Resources": {
  "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::Join": ["", ["gw-", {"Ref": "SerialNumber"}]]}}},
  "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
  "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "gw-device"}}}}
JSON
iot create-provisioning-template --template-name fleet --template-body file://fleet.json --enabled \
  --provisioning-role-arn arn:aws:iam::123456789012:role/provisioning > /dev/null`, true)
	// The factory's claim: a key and certificate AWS makes, with the claim
	// policy; the key goes into the device's file store.
	s.run("claim certificate", `
iot create-keys-and-certificate --set-as-active --certificate-pem-outfile claim.crt --private-key-outfile claim.key > claim.json
field claim.json certificateArn > claim.arn
iot attach-policy --policy-name gw-claim --target "$(cat claim.arn)"
"$THINGCERT" key import --key "file:$PWD/claim/claim.pem" --from claim.key > /dev/null`, true)
	out = s.run("list-attached-policies", `iot list-attached-policies --target "$(cat claim.arn)" --query policies[].policyName --output text`, true)
	want(out, "gw-claim")

	// The device: the agent provisions by claim, then waits for jobs.
	cfg := fmt.Sprintf(`endpoint: %s
address: %s
ca: emu/root-ca.pem
thing_name: gw-0007
store: file:%s/keys/
claim:
  key: file:%s/claim/claim.pem
  cert: claim.crt
  client_id: claim-0007
provisioning:
  template: fleet
  parameters:
    SerialNumber: "0007"
state_dir: state
log:
  level: info
`, envValue(s.env, "MQTT_ENDPOINT"), envValue(s.env, "MQTT_ADDR"), s.dir, s.dir)
	if err := os.WriteFile(filepath.Join(s.dir, "thingcert.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	agentLog := &testpeers.Buffer{}
	agent := exec.Command(envValue(s.env, "THINGCERT"), "run", "--config", "thingcert.yaml", "--socket", "none")
	agent.Dir, agent.Stderr, agent.Stdout = s.dir, agentLog, agentLog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = agent.Process.Signal(syscall.SIGTERM)
		_ = agent.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", agentLog.String())
		}
	})
	s.run("the device provisions", `for i in $(seq 1 120); do
  n=$(iot list-thing-principals --thing-name gw-0007 --query 'length(principals)' --output text 2>/dev/null || echo 0)
  [ "$n" = 1 ] && exit 0; sleep 0.5
done; exit 1`, true)
	out = s.run("the device's certificate", `iot list-thing-principals --thing-name gw-0007 --query principals[0] --output text | sed 's#.*cert/##' | tee first.id
iot describe-certificate --certificate-id "$(cat first.id)" --query certificateDescription.status --output text
iot list-attached-policies --target "$(iot list-thing-principals --thing-name gw-0007 --query principals[0] --output text)" --query policies[].policyName --output text`, true)
	want(out, "ACTIVE", "gw-device")

	// The operator rolls a rotation out to the group.
	s.run("thing group", `
iot create-thing-group --thing-group-name gateways > group.json
iot add-thing-to-thing-group --thing-group-name gateways --thing-name gw-0007`, true)
	out = s.run("create-job", `iot create-job --job-id rotate-2026-11 --targets "$(field group.json thingGroupArn)" \
  --document '{"operation":"rotate-certificate"}' \
  --job-executions-rollout-config '{"maximumPerMinute":100}' \
  --abort-config '{"criteriaList":[{"failureType":"FAILED","action":"CANCEL","thresholdPercentage":10,"minNumberOfExecutedThings":1}]}' \
  --timeout-config '{"inProgressTimeoutInMinutes":30}'`, true)
	want(out, `"jobId": "rotate-2026-11"`)
	s.run("the device rotates", `for i in $(seq 1 240); do
  st=$(iot describe-job-execution --job-id rotate-2026-11 --thing-name gw-0007 --query execution.status --output text 2>/dev/null || true)
  [ "$st" = SUCCEEDED ] && exit 0
  case "$st" in FAILED|TIMED_OUT|CANCELED|REJECTED) echo "$st"; exit 1;; esac
  sleep 0.5
done; exit 1`, true)
	out = s.run("statusDetails", `iot describe-job-execution --job-id rotate-2026-11 --thing-name gw-0007 > ex.json
field ex.json execution.statusDetails.detailsMap.oldCertificateId | tee old.id
field ex.json execution.statusDetails.detailsMap.newCertificateId | tee new.id
test "$(cat old.id)" = "$(cat first.id)"
iot describe-job --job-id rotate-2026-11 --query job.jobProcessDetails.numberOfSucceededThings --output text`, true)
	want(out, "1")

	// The operator retires the old certificate; a connection with it is
	// refused (the agent keeps the old key for its grace period).
	s.run("update-certificate INACTIVE", `iot update-certificate --certificate-id "$(cat old.id)" --new-status INACTIVE`, true)
	out = s.run("old certificate refused", `python3 - > old.txt <<'PY'
import json
s = json.load(open("state/state.json"))
old = open("old.id").read().strip()
for p in s.get("previous") or []:
    if p["certificate_id"] == old:
        print(p["key_uri"]); print(p["cert_file"]); break
PY
test -s old.txt
"$THINGCERT" connect --endpoint "$MQTT_ENDPOINT" --address "$MQTT_ADDR" --ca "$AWS_CA_BUNDLE" \
  --key "$(sed -n 1p old.txt)" --cert "$(sed -n 2p old.txt)" --client-id gw-0007-old 2>&1`, false)
	want(out, "refused")
	s.run("new certificate ACTIVE", `test "$(iot describe-certificate --certificate-id "$(cat new.id)" --query certificateDescription.status --output text)" = ACTIVE`, true)
	out = s.run("wrong secret", `AWS_SECRET_ACCESS_KEY=wrong iot describe-job --job-id rotate-2026-11 2>&1`, false)
	want(out, "InvalidSignatureException")
}

func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], key+"="); ok {
			return v
		}
	}
	return ""
}
