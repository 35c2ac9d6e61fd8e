package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/rotation"
)

const minimal = `
endpoint: abc-ats.iot.eu-west-1.amazonaws.com
thing_name: dev-1
store: file:/var/lib/thingcert/keys/
`

func TestSampleConfig(t *testing.T) {
	// The sample in the repository must stay valid: it is what users copy.
	c, err := Load(filepath.Join("..", "examples", "config", "thingcert.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if c.ThingName != "gateway-0042" || c.Claim == nil || c.Provisioning.Parameters["SerialNumber"] != "0042" {
		t.Errorf("sample: %+v", c)
	}
	p := c.Policy()
	want := rotation.Policy{LifetimeRatio: 2.0 / 3, MaxAge: 365 * 24 * time.Hour, BeforeExpiry: Off, Jitter: 7 * 24 * time.Hour, EmergencyWindow: 7 * 24 * time.Hour}
	if p != want {
		t.Errorf("policy %+v, want %+v", p, want)
	}
	if m := c.Machine(); m.GracePeriod != 24*time.Hour || m.Backoff.Min != 30*time.Second || m.Backoff.Max != 4*time.Hour {
		t.Errorf("machine %+v", m)
	}
	if !c.JobsEnabled() || c.Metrics.Listen != "127.0.0.1:9464" {
		t.Errorf("jobs %v metrics %q", c.JobsEnabled(), c.Metrics.Listen)
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse([]byte(minimal), "/etc/thingcert/thingcert.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != 8883 || c.ClientID != "dev-1" || c.StateDir != DefaultStateDir || c.KeyAlgorithm != "ecdsa-p256" ||
		c.Subject != "CN=dev-1" || c.Provisioning.Issuer != IssuerFleetProvisioning || c.Log.Format != "text" || c.Log.Level != "info" {
		t.Errorf("defaults: %+v", c)
	}
	if c.Policy() != (rotation.Policy{}) || !c.JobsEnabled() || c.DialAddress() != "abc-ats.iot.eu-west-1.amazonaws.com:8883" {
		t.Errorf("default policy %+v, dial %s", c.Policy(), c.DialAddress())
	}
}

func TestRelativePaths(t *testing.T) {
	c, err := Parse([]byte(minimal+"ca: ca.pem\nstate_dir: state\nclaim:\n  key: file:/k/claim.pem\n  cert: claim/c.pem\nprovisioning:\n  template: T\n"), "/etc/tc/thingcert.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.CA != "/etc/tc/ca.pem" || c.StateDir != "/etc/tc/state" || c.Claim.Cert != "/etc/tc/claim/c.pem" || c.Claim.ClientID != "dev-1" {
		t.Errorf("paths: ca %s state %s claim %s", c.CA, c.StateDir, c.Claim.Cert)
	}
}

func TestValues(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want rotation.Policy
	}{
		{"rotation:\n  lifetime_ratio: 0.5\n", rotation.Policy{LifetimeRatio: 0.5}},
		{"rotation:\n  lifetime_ratio: 75%\n", rotation.Policy{LifetimeRatio: 0.75}},
		{"rotation:\n  lifetime_ratio: 3/4\n  max_age: off\n", rotation.Policy{LifetimeRatio: 0.75, MaxAge: Off}},
		{"rotation:\n  max_age: 1d12h\n  jitter: 90s\n", rotation.Policy{MaxAge: 36 * time.Hour, Jitter: 90 * time.Second}},
		{"rotation:\n  before_expiry: 30d\n  emergency_window: 0.5d\n", rotation.Policy{BeforeExpiry: 30 * 24 * time.Hour, EmergencyWindow: 12 * time.Hour}},
	} {
		c, err := Parse([]byte(minimal+tc.yaml), "x.yaml")
		if err != nil {
			t.Errorf("%q: %v", tc.yaml, err)
			continue
		}
		if c.Policy() != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.yaml, c.Policy(), tc.want)
		}
	}
}

func TestErrorsNameKeyAndLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{"unknown top-level key", minimal + "endpont: x\n", []string{`line 5: unknown key "endpont" at the top level`, `did you mean "endpoint"?`, "allowed: endpoint, port"}},
		{"unknown nested key", minimal + "rotation:\n  max_ag: 30d\n", []string{`line 6: unknown key "max_ag" in rotation`, `did you mean "max_age"`}},
		{"unknown key deeper", minimal + "provisioning:\n  topics:\n    requests: a/b\n", []string{`line 7: unknown key "requests" in provisioning.topics`}},
		{"duplicate key", minimal + "thing_name: dev-2\n", []string{`line 5: key "thing_name" given twice (first on line 3)`}},
		{"wrong type", minimal + "port: eighty\n", []string{"line 5 (port): cannot unmarshal", "eighty"}},
		{"bad duration", minimal + "rotation:\n  max_age: 5 days\n", []string{"line 6 (rotation.max_age)", `"5 days" is not a duration`}},
		{"bad ratio", minimal + "rotation:\n  lifetime_ratio: 1.5\n", []string{"line 6 (rotation.lifetime_ratio)", "not a share of the lifetime"}},
		{"missing required", "port: 443\n", []string{"endpoint: missing", "thing_name: missing", "store: missing"}},
		{"endpoint with scheme", strings.Replace(minimal, "abc-ats", "https://abc-ats", 1), []string{"endpoint: \"https://abc-ats", "bare host name"}},
		{"bad store URI", strings.Replace(minimal, "file:/var", "disk:/var", 1), []string{"store:", "unknown scheme"}},
		{"key without cert", minimal + "key: file:/k/a.pem\n", []string{"cert: missing: key is set"}},
		{"claim without template", minimal + "claim:\n  key: file:/k/c.pem\n  cert: c.pem\n", []string{"provisioning.template: missing"}},
		{"topics issuer without request", minimal + "provisioning:\n  issuer: topics\n", []string{"provisioning.topics.request: missing"}},
		{"unknown issuer", minimal + "provisioning:\n  issuer: acme\n", []string{`provisioning.issuer: "acme"`, "step-ca"}},
		{"step-ca without its settings", minimal + "claim:\n  key: file:/k/c.pem\n  cert: c.pem\nprovisioning:\n  issuer: step-ca\n",
			[]string{"provisioning.ca_url: missing", "provisioning.root: missing", "provisioning.provisioner: missing"}},
		{"step-ca URL not https", minimal + "claim:\n  key: file:/k/c.pem\n  cert: c.pem\nprovisioning:\n  issuer: step-ca\n  ca_url: http://ca:9000\n  root: r.crt\n  provisioner: factory\n",
			[]string{`provisioning.ca_url: "http://ca:9000": want https://HOST[:PORT]`}},
		{"step-ca bad fingerprint", minimal + "claim:\n  key: file:/k/c.pem\n  cert: c.pem\nprovisioning:\n  issuer: step-ca\n  ca_url: https://ca:9000\n  root: r.crt\n  root_fingerprint: abc\n  provisioner: factory\n",
			[]string{"provisioning.root_fingerprint", "SHA-256 in hex"}},
		{"step-ca with a template", minimal + "claim:\n  key: file:/k/c.pem\n  cert: c.pem\nprovisioning:\n  issuer: step-ca\n  ca_url: https://ca:9000\n  root: r.crt\n  provisioner: factory\n  template: T\n",
			[]string{"provisioning.template: only used with issuer: fleet-provisioning", "JITP"}},
		{"step-ca without claim or key", minimal + "provisioning:\n  issuer: step-ca\n  ca_url: https://ca:9000\n  root: r.crt\n",
			[]string{"claim: missing", "claim.key"}},
		{"step-ca with accounts and a claim", minimal + "accounts:\n  - endpoint: pre-ats.iot.eu-west-1.amazonaws.com\nclaim:\n  key: file:/k/c.pem\n  cert: c.pem\nprovisioning:\n  issuer: step-ca\n  ca_url: https://ca:9000\n  root: r.crt\n  provisioner: factory\n",
			[]string{"claim: not used with accounts", "registered in every account", "key and cert"}},
		{"step-ca with accounts and no key", minimal + "accounts:\n  - endpoint: pre-ats.iot.eu-west-1.amazonaws.com\nprovisioning:\n  issuer: step-ca\n  ca_url: https://ca:9000\n  root: r.crt\n",
			[]string{"key: missing; with accounts"}},
		{"step-ca with accounts and a provisioner", minimal + "accounts:\n  - endpoint: pre-ats.iot.eu-west-1.amazonaws.com\nkey: file:/k/d.pem\ncert: d.pem\nprovisioning:\n  issuer: step-ca\n  ca_url: https://ca:9000\n  root: r.crt\n  provisioner: factory\n",
			[]string{"provisioning.provisioner: not used with accounts"}},
		{"step-ca settings with another issuer", minimal + "provisioning:\n  ca_url: https://ca:9000\n",
			[]string{"provisioning.ca_url: only used with issuer: step-ca"}},
		{"every rule off", minimal + "rotation:\n  lifetime_ratio: off\n  max_age: off\n  emergency_window: off\n", []string{"rotation:", "never be renewed"}},
		{"retry max below min", minimal + "rotation:\n  retry_min: 1h\n  retry_max: 1m\n", []string{"rotation.retry_min/retry_max", "below retry min"}},
		{"metrics on the network", minimal + "metrics:\n  listen: 0.0.0.0:9464\n", []string{"metrics.listen", "loopback"}},
		{"bad algorithm", minimal + "key_algorithm: rsa-1024\n", []string{"key_algorithm", "at least 2048 bits"}},
		{"bad log level", minimal + "log:\n  level: loud\n", []string{"log.level"}},
		{"account without endpoint", minimal + "accounts:\n  - address: 127.0.0.1:8883\n", []string{"accounts[0].endpoint: missing"}},
		{"account is the primary", minimal + "accounts:\n  - endpoint: abc-ats.iot.eu-west-1.amazonaws.com\n", []string{"accounts[0].endpoint", "is the primary endpoint"}},
		{"account twice", minimal + "accounts:\n  - endpoint: b-ats.iot.eu-west-1.amazonaws.com\n  - endpoint: b-ats.iot.eu-west-1.amazonaws.com\n", []string{"accounts[1].endpoint", "listed twice"}},
		{"account bad port", minimal + "accounts:\n  - endpoint: b-ats.iot.eu-west-1.amazonaws.com\n    port: 70000\n", []string{"accounts[0].port: 70000"}},
		{"account unknown key", minimal + "accounts:\n  - endpoint: b-ats.iot.eu-west-1.amazonaws.com\n    sni: x\n", []string{`line 7: unknown key "sni" in accounts[0]`}},
		{"not a mapping", "- a\n- b\n", []string{"want a mapping"}},
		{"empty", "", []string{"is empty"}},
		{"syntax", "endpoint: [\n", []string{"config x.yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), "x.yaml")
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), "config x.yaml") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "none.yaml"))
	if err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("Load of a missing file: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func TestAccounts(t *testing.T) {
	c, err := Parse([]byte(minimal+"accounts:\n  - endpoint: pre-ats.iot.eu-west-1.amazonaws.com\n  - endpoint: other-ats.iot.us-east-1.amazonaws.com\n    port: 443\n    address: 127.0.0.1:9443\n"), "x.yaml")
	if err != nil {
		t.Fatal(err)
	}
	o, err := c.DeviceOptions()
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Accounts) != 2 || o.Accounts[0].Host != "pre-ats.iot.eu-west-1.amazonaws.com" || o.Accounts[0].Port != DefaultPort ||
		o.Accounts[1].Port != 443 || o.Accounts[1].Address != "127.0.0.1:9443" {
		t.Fatalf("accounts: %+v", o.Accounts)
	}
}

// TestStepCADeviceOptions: the step-ca issuer makes a claim that never
// connects to AWS IoT, expects just-in-time registration, and checks new
// certificates against the CA's root; a root file that is missing or does
// not match its fingerprint is an error naming provisioning.root.
func TestStepCADeviceOptions(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err := os.WriteFile(filepath.Join(dir, "root_ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "claim.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	yaml := func(fp string) string {
		return minimal + "claim:\n  key: file:" + dir + "/claim.pem\n  cert: claim.crt\nprovisioning:\n  issuer: step-ca\n  ca_url: https://ca.example.com:9000\n  root: root_ca.crt\n  root_fingerprint: " + fp + "\n  provisioner: factory\n"
	}
	path := filepath.Join(dir, "thingcert.yaml")
	os.WriteFile(path, []byte(yaml(hex.EncodeToString(sum[:]))), 0o644)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	o, err := c.DeviceOptions()
	if err != nil {
		t.Fatal(err)
	}
	if o.Claim == nil || !o.Claim.IssuerOnly || o.ClaimConnects() || !o.JustInTime || o.Trust == nil || o.Issuer == nil {
		t.Fatalf("options: claim %+v, just in time %v, trust %v", o.Claim, o.JustInTime, o.Trust)
	}
	if _, ok := o.Issuer(nil).(rotation.IdentityIssuer); !ok {
		t.Fatalf("issuer %T does not prove the device with its identity", o.Issuer(nil))
	}
	os.WriteFile(path, []byte(yaml(strings.Repeat("ab", 32))), 0o644)
	c, err = Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeviceOptions(); err == nil || !strings.Contains(err.Error(), "provisioning.root") || !strings.Contains(err.Error(), "fingerprint") {
		t.Fatalf("a root that does not match its fingerprint: %v", err)
	}
	os.Remove(filepath.Join(dir, "root_ca.crt"))
	if _, err := c.DeviceOptions(); err == nil || !strings.Contains(err.Error(), "provisioning.root") {
		t.Fatalf("a missing root: %v", err)
	}
}

// TestStepCAAccountsDeviceOptions: step-ca with accounts (kind 3: the CA is
// registered with no account) renews by rekey from the device's own
// certificate, checks new certificates against the CA's root, and does not
// take a refused connection for a just-in-time registration.
func TestStepCAAccountsDeviceOptions(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err := os.WriteFile(filepath.Join(dir, "root_ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	yaml := minimal + "accounts:\n  - endpoint: pre-ats.iot.eu-west-1.amazonaws.com\nkey: file:" + dir + "/dev.pem\ncert: dev.crt\n" +
		"provisioning:\n  issuer: step-ca\n  ca_url: https://ca.example.com:9000\n  root: root_ca.crt\n"
	path := filepath.Join(dir, "thingcert.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	o, err := c.DeviceOptions()
	if err != nil {
		t.Fatal(err)
	}
	if o.JustInTime || o.Claim != nil || o.Identity == nil || o.Trust == nil || len(o.Accounts) != 1 {
		t.Fatalf("options: just in time %v, claim %+v, identity %+v, trust %v, accounts %+v", o.JustInTime, o.Claim, o.Identity, o.Trust, o.Accounts)
	}
	if _, ok := o.Issuer(nil).(rotation.IdentityIssuer); !ok {
		t.Fatalf("issuer %T does not prove the device with its identity", o.Issuer(nil))
	}
}
