package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thingcert/thingcert/internal/testpeers"
)

// awsCLI is the aws CLI the story runs: $THINGCERT_AWS_CLI, else aws on PATH
// (Debian's awscli under `make test`).
func awsCLI(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("THINGCERT_AWS_CLI"); p != "" {
		return p
	}
	return testpeers.Need(t, "aws")[0]
}

// awsStory runs shell steps against `thingcert emulator serve --api-listen`,
// each in bash with the environment `thingcert emulator credentials` prints
// and a function iot that runs `aws iot` against the emulator. Files a step
// writes in the working folder are there for the next.
type awsStory struct {
	t       *testing.T
	dir     string
	env     []string
	prelude string
}

func newAWSStory(t *testing.T) *awsStory {
	t.Helper()
	aws := awsCLI(t)
	bin := thingcertBinary(t)
	dir := t.TempDir()
	emu := exec.Command(bin, "emulator", "serve", "--state", filepath.Join(dir, "emu"), "--account", "prod",
		"--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0")
	stdout, err := emu.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &testpeers.Buffer{}
	emu.Stderr = stderr
	if err := emu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = emu.Process.Signal(os.Interrupt)
		_ = emu.Wait()
		if t.Failed() {
			t.Logf("emulator log:\n%s", stderr.String())
		}
	})
	lines := map[string]string{}
	var mu sync.Mutex
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		var once sync.Once
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), " ")
			mu.Lock()
			lines[k] = v
			mu.Unlock()
			if k == "endpoint" {
				once.Do(func() { close(ready) })
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		t.Fatalf("the emulator did not start:\n%s", stderr.String())
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.HasPrefix(lines["api"], "https://127.0.0.1:") {
		t.Fatalf("serve printed no api line: %v", lines)
	}
	_, endpoint, _ := strings.Cut(lines["endpoint"], " ")
	s := &awsStory{t: t, dir: dir}
	s.env = append(os.Environ(),
		"HOME="+dir, "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_PAGER=",
		"THINGCERT="+bin, "AWS="+aws, "EMU_STATE="+filepath.Join(dir, "emu"), "MQTT_ADDR="+lines["mqtt"], "MQTT_ENDPOINT="+endpoint,
	)
	// Debian 12's aws 2.9 predates AWS_ENDPOINT_URL_IOT (aws 2.13), hence
	// --endpoint-url; AWS_CA_BUNDLE it honours.
	s.prelude = `set -euo pipefail
set -a; eval "$("$THINGCERT" emulator credentials --state "$EMU_STATE" --account prod)"; set +a
iot() { "$AWS" iot --endpoint-url "$AWS_ENDPOINT_URL_IOT" --output json "$@"; }
field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); [d:=d[k] for k in sys.argv[2].split(".")]; print(d)' "$@"; }
connect() { "$THINGCERT" connect --endpoint "$MQTT_ENDPOINT" --address "$MQTT_ADDR" --ca "$AWS_CA_BUNDLE" --key "file:$PWD/$1.key" --cert "$1.crt" --client-id "$2"; }
`
	return s
}

// want fails the test unless out holds every one of subs.
func (s *awsStory) want(out string, subs ...string) {
	s.t.Helper()
	for _, sub := range subs {
		if !strings.Contains(out, sub) {
			s.t.Fatalf("output lacks %q:\n%s", sub, out)
		}
	}
}

// run runs one step and returns its output; wantOK says whether it must
// succeed or fail.
func (s *awsStory) run(name, script string, wantOK bool) string {
	s.t.Helper()
	cmd := exec.Command("bash", "-c", s.prelude+script)
	cmd.Dir, cmd.Env = s.dir, s.env
	out, err := cmd.CombinedOutput()
	if (err == nil) != wantOK {
		s.t.Fatalf("step %s: exit %v, want success %v:\n%s", name, err, wantOK, out)
	}
	return string(out)
}

// TestAWSCLIControlPlaneStory drives the emulator's control plane with the
// real aws CLI, as a fleet operator's script would drive AWS IoT. Steps can
// be appended (policies, provisioning, jobs).
func TestAWSCLIControlPlaneStory(t *testing.T) {
	s := newAWSStory(t)
	want := s.want
	out := s.run("version", `"$AWS" --version`, true)
	t.Logf("aws CLI: %s", strings.TrimSpace(out))

	out = s.run("describe-endpoint", `iot describe-endpoint --endpoint-type iot:Data-ATS --query endpointAddress --output text`, true)
	want(out, "-ats.iot.us-east-1.amazonaws.com")

	out = s.run("create-thing", `iot create-thing --thing-name gw-1 --attribute-payload '{"attributes":{"site":"berlin"}}'`, true)
	want(out, `"thingName": "gw-1"`, ":thing/gw-1")

	s.run("create-keys-and-certificate", `
iot create-keys-and-certificate --set-as-active > kc.json
field kc.json certificatePem > gw-1.crt
(umask 077; field kc.json keyPair.PrivateKey > gw-1.key)
field kc.json certificateId > cert.id
field kc.json certificateArn > cert.arn`, true)

	s.run("attach-thing-principal", `iot attach-thing-principal --thing-name gw-1 --principal "$(cat cert.arn)"`, true)
	out = s.run("list-thing-principals", `iot list-thing-principals --thing-name gw-1`, true)
	want(out, strings.TrimSpace(s.file("cert.arn")))

	out = s.run("describe-certificate", `iot describe-certificate --certificate-id "$(cat cert.id)" --query certificateDescription.[status,certificateMode] --output text`, true)
	want(out, "ACTIVE", "DEFAULT")

	// Without a policy AWS accepts TLS and refuses CONNECT; with one, the
	// device connects.
	out = s.run("device without a policy", `connect gw-1 gw-1 2>&1`, false)
	want(out, "iot:Connect")
	s.run("create-policy, attach-policy", `cat > gw-policy.json <<'JSON'
{"Version": "2012-10-17", "Statement": [
 {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"}]}
JSON
iot create-policy --policy-name gw --policy-document file://gw-policy.json > /dev/null
iot attach-policy --policy-name gw --target "$(cat cert.arn)"
sleep 2 # AWS IoT allows one CONNECT per second per client ID`, true)
	out = s.run("device connects", `connect gw-1 gw-1`, true)
	want(out, "connected")

	s.run("update-certificate INACTIVE", `iot update-certificate --certificate-id "$(cat cert.id)" --new-status INACTIVE`, true)
	out = s.run("describe-certificate", `iot describe-certificate --certificate-id "$(cat cert.id)" --query certificateDescription.status --output text`, true)
	want(out, "INACTIVE")

	s.run("device refused", `connect gw-1 gw-1`, false)
	out = s.run("history", `"$THINGCERT" emulator history --state "$EMU_STATE"`, true)
	want(out, "refused rule=status", "cert="+strings.TrimSpace(s.file("cert.id")))

	out = s.run("create-provisioning-template", `cat > fleet.json <<'JSON'
{"Parameters": {"SerialNumber": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
 "Resources": {
  "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::Join": ["", ["gw-", {"Ref": "SerialNumber"}]]}}},
  "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}}}}
JSON
iot create-provisioning-template --template-name fleet --enabled --template-body file://fleet.json \
    --provisioning-role-arn arn:aws:iam::123456789012:role/IoTProvisioning --query templateArn --output text`, true)
	want(out, ":provisioningtemplate/fleet")
	out = s.run("describe-provisioning-template", `iot describe-provisioning-template --template-name fleet --query [enabled,type] --output text`, true)
	want(out, "True", "FLEET_PROVISIONING")

	out = s.run("wrong secret", `AWS_SECRET_ACCESS_KEY=wrong-secret iot list-things`, false)
	want(out, "InvalidSignatureException")
}

func (s *awsStory) file(name string) string {
	s.t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil {
		s.t.Fatal(err)
	}
	return string(b)
}
