// Package config reads the device's YAML configuration file: where the cloud
// is, which key store and identity the device uses, how it provisions by
// claim and how it renews its certificate. Reading is strict: an unknown key
// is an error naming it and its line, since a misspelt setting that is
// silently ignored is how a device ends up renewing never, or with the wrong
// template. docs/config.md documents every key.
package config

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

// Config is the device configuration. Fields marked optional have a
// documented default, applied by Load (see Defaults).
type Config struct {
	// Endpoint is the AWS IoT data endpoint host name, sent as SNI
	// (abc123-ats.iot.eu-west-1.amazonaws.com). Required.
	Endpoint string `yaml:"endpoint"`
	// Port is 8883 (default) or 443 (ALPN x-amzn-mqtt-ca).
	Port int `yaml:"port"`
	// Address, optional, is the HOST:PORT to dial instead of Endpoint:Port (a
	// proxy, an emulator); SNI stays Endpoint.
	Address string `yaml:"address"`
	// Accounts, optional, are the device's other AWS accounts, for a
	// certificate signed by a CA that is not registered with AWS IoT and
	// registered in several accounts (multi-account registration, SNI_ONLY):
	// the device connects to Endpoint (the primary) and commits a new
	// certificate only once every account here accepts it.
	Accounts []Account `yaml:"accounts"`
	// CA, optional, is a PEM file of CAs the server's certificate must chain
	// to; default: Amazon's root CAs, built in.
	CA string `yaml:"ca"`
	// ThingName is the device's thing. Required.
	ThingName string `yaml:"thing_name"`
	// ClientID, optional, is the MQTT client ID; default: ThingName.
	ClientID string `yaml:"client_id"`
	// Store is the store URI new keys are made in (file:/var/lib/thingcert/keys/,
	// pkcs11:token=...?..., tpm:?device=/dev/tpmrm0). Required.
	Store string `yaml:"store"`
	// Key and Cert, optional, are an identity made outside thingcert (a key
	// URI and its certificate's PEM file). When the state folder has no
	// identity yet, it is adopted as the current one; from then on the state
	// folder says which key is current, since rotation gives keys new names.
	Key  string `yaml:"key"`
	Cert string `yaml:"cert"`
	// KeyAlgorithm, optional, is the algorithm of new keys; default ecdsa-p256.
	KeyAlgorithm string `yaml:"key_algorithm"`
	// Subject, optional, is the subject of CSRs; default CN=<thing_name>.
	Subject string `yaml:"subject"`
	// Claim, optional, is the claim identity that provisions the device.
	Claim *Claim `yaml:"claim"`
	// Provisioning says how the device's certificates are issued.
	Provisioning Provisioning `yaml:"provisioning"`
	// Rotation is the renewal policy.
	Rotation Rotation `yaml:"rotation"`
	// StateDir, optional, is the state folder; default /var/lib/thingcert.
	StateDir string `yaml:"state_dir"`
	// Log, optional, is how the daemon logs.
	Log Log `yaml:"log"`
	// Metrics, optional, is the Prometheus endpoint.
	Metrics Metrics `yaml:"metrics"`

	// Path is the file the configuration was read from (not a YAML key).
	Path string `yaml:"-"`
}

// Account is another account's data endpoint.
type Account struct {
	// Endpoint is the account's endpoint host name, sent as SNI: it is what
	// picks the account. Required.
	Endpoint string `yaml:"endpoint"`
	// Port is 8883 (default) or 443.
	Port int `yaml:"port"`
	// Address, optional, is the HOST:PORT to dial instead of Endpoint:Port.
	Address string `yaml:"address"`
}

// Claim is a claim identity: a key and certificate shared by many devices (or
// made for this one at the factory) whose only right is to provision.
type Claim struct {
	// Key is the claim key's URI (any store). Required.
	Key string `yaml:"key"`
	// Cert is the claim certificate's PEM file. Required.
	Cert string `yaml:"cert"`
	// ClientID, optional, is the client ID of the provisioning connection;
	// default: the device's client ID.
	ClientID string `yaml:"client_id"`
	// Recover, optional (default false), lets the claim provision the device
	// again when its own identity is refused (revoked, deleted). Off, a device
	// whose identity was revoked stays off the network until an operator acts.
	Recover bool `yaml:"recover"`
	// RecoverRefusals and RecoverAfter, optional (default 3 and 10m): a
	// recovery needs at least this many refusals of the identity, the first
	// and the latest at least this far apart, with no connection between.
	// One refusal is never enough by default: a flaky link must not make the
	// device give up a working identity.
	RecoverRefusals int       `yaml:"recover_refusals"`
	RecoverAfter    *Duration `yaml:"recover_after"`
}

// Issuers.
const (
	IssuerFleetProvisioning = "fleet-provisioning"
	IssuerTopics            = "topics"
	IssuerStepCA            = "step-ca"
)

// Provisioning says how certificates are issued.
type Provisioning struct {
	// Issuer is fleet-provisioning (default: CreateCertificateFromCsr then
	// RegisterThing with Template) or topics (the owner's own CA behind
	// request/response topics).
	Issuer string `yaml:"issuer"`
	// Template is the fleet-provisioning template's name. Required for
	// fleet-provisioning.
	Template string `yaml:"template"`
	// Parameters are passed to RegisterThing (SerialNumber, ...).
	Parameters map[string]string `yaml:"parameters"`
	// Topics are the owner's request and response topics, for the topics issuer.
	Topics Topics `yaml:"topics"`
	// Timeout, optional, bounds one request's wait for an answer; default 30s.
	Timeout Duration `yaml:"timeout"`
	// CAURL is the owner's step-ca (https://ca.example.com:9000). Required
	// for the step-ca issuer.
	CAURL string `yaml:"ca_url"`
	// Root is the step-ca root certificate's PEM file, the only CA the CA
	// server's TLS certificate may chain to. Required for step-ca.
	Root string `yaml:"root"`
	// RootFingerprint, optional, pins Root: the SHA-256 of its DER in hex
	// (step certificate fingerprint root_ca.crt).
	RootFingerprint string `yaml:"root_fingerprint"`
	// Provisioner is the name of step-ca's X5C provisioner that trusts the
	// claim certificate's CA. Required for step-ca with a claim.
	Provisioner string `yaml:"provisioner"`
}

// Topics are an owner CA's request/response topics. "{thing}" in them is
// replaced by the thing name.
type Topics struct {
	// Request is where the CSR is published. Required for the topics issuer.
	Request string `yaml:"request"`
	// Response is where the answer comes; default Request + "/accepted" and
	// Request + "/rejected" when empty.
	Response string `yaml:"response"`
}

// Rotation is the renewal policy. Durations are written 90d, 36h, 30m, 1h30m;
// "off" turns a rule off. The zero value of each is the rotation package's
// default.
type Rotation struct {
	// LifetimeRatio renews when this share of the lifetime has passed: 0.667,
	// 2/3 or 66%; default 2/3.
	LifetimeRatio Ratio `yaml:"lifetime_ratio"`
	// MaxAge renews a certificate this old; default 365d.
	MaxAge Duration `yaml:"max_age"`
	// BeforeExpiry renews this long before expiry; default off.
	BeforeExpiry Duration `yaml:"before_expiry"`
	// Jitter is the window a fleet spreads over; default a tenth of the age at
	// renewal, at most 7d.
	Jitter Duration `yaml:"jitter"`
	// EmergencyWindow renews at once, without jitter, this close to expiry;
	// default a tenth of the lifetime, at most 7d.
	EmergencyWindow Duration `yaml:"emergency_window"`
	// GracePeriod keeps a replaced key and certificate this long; default 24h.
	GracePeriod Duration `yaml:"grace_period"`
	// RetryMin and RetryMax bound the backoff after failures; default 30s and 4h.
	RetryMin Duration `yaml:"retry_min"`
	RetryMax Duration `yaml:"retry_max"`
	// Trust, optional, is a PEM file of the CAs allowed to sign the device's
	// certificates; new certificates that do not chain to it are refused.
	// Without it the chain is not checked (AWS IoT's CreateCertificateFromCsr
	// signs with an Amazon CA it does not publish).
	Trust string `yaml:"trust"`
	// Jobs, optional (default true), lets an AWS IoT job with the document
	// {"operation": "rotate-certificate"} start a rotation.
	Jobs *bool `yaml:"jobs"`
}

// Log is the daemon's logging.
type Log struct {
	// Format is text (default) or json.
	Format string `yaml:"format"`
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
}

// Metrics is the optional Prometheus endpoint.
type Metrics struct {
	// Listen is a loopback HOST:PORT (127.0.0.1:9464); empty: no endpoint.
	Listen string `yaml:"listen"`
}

// Defaults.
const (
	DefaultPort     = 8883
	DefaultStateDir = "/var/lib/thingcert"
)

// Off is the value a Duration or Ratio holds when written "off".
const Off = -1

// Duration is a YAML duration: Go's syntax (36h, 1h30m, 90s) plus days (90d,
// 1d12h), or "off".
type Duration time.Duration

// UnmarshalYAML reads a duration.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return lineError(n, "want a duration such as 90d, 36h or 30m")
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return lineError(n, err.Error())
	}
	*d = Duration(v)
	return nil
}

// MaxDuration bounds every duration in the config: 100 years, far beyond any
// certificate's life and far below what time.Duration holds (292 years), so a
// slip of the keyboard (200000d) is refused instead of overflowing into a
// negative value, which rotation reads as "off".
const MaxDuration = 36500 * 24 * time.Hour

// durationRange is the allowed range, as errors state it.
const durationRange = "0 to 36500d (100 years), or off"

// ParseDuration reads 90d, 1d12h, 36h, 30m, "off" (-1) or "0". Anything
// longer than MaxDuration, negative, NaN or infinite is refused.
func ParseDuration(s string) (time.Duration, error) {
	orig := s
	s = strings.TrimSpace(s)
	switch strings.ToLower(s) {
	case "off", "false", "never":
		return Off, nil
	case "0", "":
		return 0, nil
	}
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseFloat(s[:i], 64)
		if err != nil || math.IsNaN(n) || n < 0 {
			return 0, fmt.Errorf("%q is not a duration; write e.g. 90d, 36h or 30m (allowed: %s)", orig, durationRange)
		}
		if n > float64(MaxDuration/(24*time.Hour)) {
			return 0, fmt.Errorf("%q is too long: allowed %s", orig, durationRange)
		}
		days = time.Duration(n * float64(24*time.Hour))
		s = s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		if err != nil && strings.Contains(err.Error(), "invalid duration") && looksNumeric(s) {
			return 0, fmt.Errorf("%q is too long or not a duration: allowed %s", orig, durationRange)
		}
		return 0, fmt.Errorf("%q is not a duration; write e.g. 90d, 36h or 30m, or off (allowed: %s)", orig, durationRange)
	}
	if d > MaxDuration || days+d > MaxDuration {
		return 0, fmt.Errorf("%q is too long: allowed %s", orig, durationRange)
	}
	return days + d, nil
}

// looksNumeric reports whether s is digits and units only (so a parse failure
// is an overflow, not a typo).
func looksNumeric(s string) bool {
	return s != "" && strings.Trim(s, "0123456789.hmsuµn") == ""
}

// D is the duration, with Off as rotation's "turned off" (negative).
func (d Duration) D() time.Duration { return time.Duration(d) }

// Ratio is a share of a lifetime: 0.667, 2/3, 66.7% or "off".
type Ratio float64

// UnmarshalYAML reads a ratio.
func (r *Ratio) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return lineError(n, "want a share of the lifetime such as 0.667, 2/3 or 66%")
	}
	s := strings.TrimSpace(n.Value)
	if strings.EqualFold(s, "off") {
		*r = Off
		return nil
	}
	bad := fmt.Errorf("%q is not a share of the lifetime; write e.g. 0.667, 2/3 or 66%%, or off", s)
	var v float64
	var err error
	switch {
	case strings.HasSuffix(s, "%"):
		v, err = strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
		v /= 100
	case strings.Contains(s, "/"):
		a, b, _ := strings.Cut(s, "/")
		var x, y float64
		x, err = strconv.ParseFloat(strings.TrimSpace(a), 64)
		if err == nil {
			y, err = strconv.ParseFloat(strings.TrimSpace(b), 64)
		}
		if err == nil && y == 0 {
			err = bad
		}
		if err == nil {
			v = x / y
		}
	default:
		v, err = strconv.ParseFloat(s, 64)
	}
	if err != nil || v <= 0 || v > 1 {
		return lineError(n, bad.Error())
	}
	*r = Ratio(v)
	return nil
}

// lineError is a decoding error yaml reports with the others, by line (an
// error of another type would lose the line).
func lineError(n *yaml.Node, msg string) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %s", n.Line, msg)}}
}

// Load reads, checks and completes a configuration file. Relative file paths
// in it are taken from the file's folder.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data, path)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Parse reads a configuration from data; where names it in errors and
// anchors relative paths (its folder).
func Parse(data []byte, where string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("config %s: %s", where, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, fmt.Errorf("config %s is empty; see docs/config.md for an example", where)
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config %s: line %d: want a mapping of keys (endpoint: ..., store: ...)", where, doc.Line)
	}
	lines := map[int]string{}
	if err := checkKeys(doc, reflect.TypeOf(Config{}), "", lines); err != nil {
		return nil, fmt.Errorf("config %s: %w", where, err)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config %s: %s", where, explain(err, lines))
	}
	c.Path = where
	base := filepath.Dir(where)
	if abs, err := filepath.Abs(base); err == nil {
		base = abs
	}
	c.applyDefaults(base)
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", where, err)
	}
	return &c, nil
}

// checkKeys walks the YAML mapping against the struct's yaml tags and refuses
// an unknown key, naming it, its line and the keys that are allowed there.
func checkKeys(n *yaml.Node, t reflect.Type, prefix string, lines map[int]string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode {
		base := strings.TrimSuffix(prefix, ".")
		for i, item := range n.Content {
			if err := checkKeys(item, t.Elem(), fmt.Sprintf("%s[%d].", base, i), lines); err != nil {
				return err
			}
		}
		return nil
	}
	if t.Kind() != reflect.Struct || n.Kind != yaml.MappingNode {
		return nil
	}
	fields := map[string]reflect.Type{}
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		fields[name] = f.Type
		names = append(names, name)
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		path := prefix + k.Value
		ft, ok := fields[k.Value]
		if !ok {
			where := "at the top level"
			if prefix != "" {
				where = "in " + strings.TrimSuffix(prefix, ".")
			}
			hint := ""
			if s := closest(k.Value, names); s != "" {
				hint = fmt.Sprintf("; did you mean %q?", s)
			}
			return fmt.Errorf("line %d: unknown key %q %s%s (allowed: %s)", k.Line, k.Value, where, hint, strings.Join(names, ", "))
		}
		if prev, dup := seen[k.Value]; dup {
			return fmt.Errorf("line %d: key %q given twice (first on line %d)", k.Line, path, prev)
		}
		seen[k.Value] = k.Line
		lines[k.Line] = path
		lines[v.Line] = path
		if err := checkKeys(v, ft, path+".", lines); err != nil {
			return err
		}
	}
	return nil
}

// closest is the allowed name a typo most likely meant.
func closest(s string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(strings.ToLower(s), n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// explain rewrites yaml's type errors to name the key of each line.
func explain(err error, lines map[int]string) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return strings.TrimPrefix(err.Error(), "yaml: ")
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, m := range te.Errors {
		var line int
		if _, scanErr := fmt.Sscanf(m, "line %d:", &line); scanErr == nil {
			if key, ok := lines[line]; ok {
				rest := strings.TrimSpace(m[strings.IndexByte(m, ':')+1:])
				m = fmt.Sprintf("line %d (%s): %s", line, key, rest)
			}
		}
		msgs = append(msgs, m)
	}
	return strings.Join(msgs, "; ")
}

func (c *Config) applyDefaults(base string) {
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.ClientID == "" {
		c.ClientID = c.ThingName
	}
	for i := range c.Accounts {
		if c.Accounts[i].Port == 0 {
			c.Accounts[i].Port = DefaultPort
		}
	}
	if c.KeyAlgorithm == "" {
		c.KeyAlgorithm = string(keystore.DefaultAlgorithm)
	}
	if c.Subject == "" && c.ThingName != "" {
		c.Subject = "CN=" + c.ThingName
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.Provisioning.Issuer == "" {
		c.Provisioning.Issuer = IssuerFleetProvisioning
	}
	if c.Claim != nil && c.Claim.ClientID == "" {
		c.Claim.ClientID = c.ClientID
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) && base != "" {
			*p = filepath.Join(base, *p)
		}
	}
	abs(&c.CA)
	abs(&c.Cert)
	abs(&c.StateDir)
	abs(&c.Rotation.Trust)
	abs(&c.Provisioning.Root)
	if c.Claim != nil {
		abs(&c.Claim.Cert)
	}
}

// Validate checks every setting, naming the key and saying what to do. It
// reads no file: a missing file is reported when it is used.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}
	switch {
	case c.Endpoint == "":
		bad("endpoint", "missing; give your AWS IoT data endpoint (aws iot describe-endpoint --endpoint-type iot:Data-ATS)")
	case strings.Contains(c.Endpoint, "://") || strings.ContainsAny(c.Endpoint, ":/ "):
		bad("endpoint", "%q: give the bare host name (abc123-ats.iot.eu-west-1.amazonaws.com); put a port in port and a dial address in address", c.Endpoint)
	}
	if c.Port < 1 || c.Port > 65535 {
		bad("port", "%d: want 8883 or 443", c.Port)
	}
	if c.Address != "" {
		if _, p, err := net.SplitHostPort(c.Address); err != nil || p == "" {
			bad("address", "%q: want HOST:PORT", c.Address)
		}
	}
	for i, a := range c.Accounts {
		key := fmt.Sprintf("accounts[%d]", i)
		switch {
		case a.Endpoint == "":
			bad(key+".endpoint", "missing; give the account's AWS IoT data endpoint (aws iot describe-endpoint --endpoint-type iot:Data-ATS in that account)")
		case strings.Contains(a.Endpoint, "://") || strings.ContainsAny(a.Endpoint, ":/ "):
			bad(key+".endpoint", "%q: give the bare host name (abc123-ats.iot.eu-west-1.amazonaws.com); put a port in port and a dial address in address", a.Endpoint)
		case strings.EqualFold(a.Endpoint, c.Endpoint):
			bad(key+".endpoint", "%q is the primary endpoint; list only the device's other accounts", a.Endpoint)
		}
		for j := range i {
			if a.Endpoint != "" && strings.EqualFold(c.Accounts[j].Endpoint, a.Endpoint) {
				bad(key+".endpoint", "%q is listed twice (accounts[%d])", a.Endpoint, j)
			}
		}
		if a.Port < 1 || a.Port > 65535 {
			bad(key+".port", "%d: want 8883 or 443", a.Port)
		}
		if a.Address != "" {
			if _, p, err := net.SplitHostPort(a.Address); err != nil || p == "" {
				bad(key+".address", "%q: want HOST:PORT", a.Address)
			}
		}
	}
	if c.ThingName == "" {
		bad("thing_name", "missing; give the device's thing name")
	} else if len(c.ThingName) > 128 || strings.ContainsAny(c.ThingName, " #+/") {
		bad("thing_name", "%q: AWS IoT thing names are up to 128 letters, digits and : _ -", c.ThingName)
	}
	if c.ClientID != "" && (len(c.ClientID) > 128 || strings.ContainsAny(c.ClientID, "#+/")) {
		bad("client_id", "%q: AWS IoT client IDs are up to 128 characters without # + /", c.ClientID)
	}
	if c.Store == "" {
		bad("store", "missing; give the store URI new keys are made in (file:/var/lib/thingcert/keys/, pkcs11:token=...?module-path=..., tpm:?device=/dev/tpmrm0)")
	} else if _, err := keystore.ParseURI(c.Store); err != nil {
		bad("store", "%v", err)
	}
	if c.Key != "" {
		if _, err := keystore.ParseURI(c.Key); err != nil {
			bad("key", "%v", err)
		}
		if c.Cert == "" {
			bad("cert", "missing: key is set, so give its certificate's PEM file too")
		}
	} else if c.Cert != "" {
		bad("key", "missing: cert is set, so give the URI of its key too")
	}
	if _, err := keystore.ParseAlgorithm(c.KeyAlgorithm); err != nil {
		bad("key_algorithm", "%v", err)
	}
	if c.Subject != "" {
		if _, err := keystore.ParseSubject(c.Subject); err != nil {
			bad("subject", "%v", err)
		}
	}
	if cl := c.Claim; cl != nil {
		if cl.RecoverRefusals < 0 || cl.RecoverRefusals > 1000 {
			bad("claim.recover_refusals", "%d: want a count from 1 to 1000 (0: the default, 3)", cl.RecoverRefusals)
		}
		if cl.Key == "" {
			bad("claim.key", "missing; give the claim key's URI")
		} else if _, err := keystore.ParseURI(cl.Key); err != nil {
			bad("claim.key", "%v", err)
		}
		if cl.Cert == "" {
			bad("claim.cert", "missing; give the claim certificate's PEM file")
		}
	}
	p := c.Provisioning
	switch p.Issuer {
	case IssuerFleetProvisioning:
		if p.Template == "" && c.Claim != nil {
			bad("provisioning.template", "missing; give the fleet-provisioning template's name")
		}
		if p.Topics != (Topics{}) {
			bad("provisioning.topics", "only used with issuer: topics")
		}
	case IssuerTopics:
		if p.Topics.Request == "" {
			bad("provisioning.topics.request", "missing; give the topic the owner's CA takes CSRs on")
		}
		for k, v := range map[string]string{"request": p.Topics.Request, "response": p.Topics.Response} {
			if strings.ContainsAny(v, "#+") {
				bad("provisioning.topics."+k, "%q: a topic to publish to or a single reply topic cannot hold wildcards", v)
			}
		}
	case IssuerStepCA:
		if u, err := url.Parse(p.CAURL); p.CAURL == "" {
			bad("provisioning.ca_url", "missing; give the step-ca URL (https://ca.example.com:9000)")
		} else if err != nil || u.Scheme != "https" || u.Host == "" || u.Path != "" && u.Path != "/" {
			bad("provisioning.ca_url", "%q: want https://HOST[:PORT], the CA's address without a path", p.CAURL)
		}
		if p.Root == "" {
			bad("provisioning.root", "missing; give the step-ca root certificate's PEM file (step ca root root_ca.crt)")
		}
		if fp := strings.ReplaceAll(p.RootFingerprint, ":", ""); fp != "" {
			if _, err := hex.DecodeString(fp); err != nil || len(fp) != 64 {
				bad("provisioning.root_fingerprint", "%q: want the root's SHA-256 in hex (step certificate fingerprint root_ca.crt)", p.RootFingerprint)
			}
		}
		if p.Provisioner == "" && c.Claim != nil {
			bad("provisioning.provisioner", "missing; give the name of the X5C provisioner that trusts the claim certificate's CA")
		}
		switch {
		case len(c.Accounts) > 0 && c.Claim != nil:
			// Kind 3: step-ca's CA is registered with no account, so a
			// certificate connects only where it was registered, and an
			// X5C-issued first certificate would reach no account to
			// report itself from.
			bad("claim", "not used with accounts: a certificate of a CA that AWS IoT does not know connects only where it is registered, so the device starts from a first certificate registered in every account (RegisterCertificateWithoutCA) at the factory; give it as key and cert")
		case len(c.Accounts) > 0 && c.Key == "":
			bad("key", "missing; with accounts the device starts from a certificate of the step-ca CA registered in every account: give its key and cert")
		case len(c.Accounts) > 0 && p.Provisioner != "":
			bad("provisioning.provisioner", "not used with accounts: the device renews by rekey with its own certificate and never asks an X5C provisioner; leave it out")
		case c.Claim == nil && c.Key == "":
			bad("claim", "missing; the step-ca issuer makes the first certificate with the factory claim (claim.key, claim.cert), or give key and cert")
		}
		if p.Template != "" || len(p.Parameters) > 0 {
			bad("provisioning.template", "only used with issuer: fleet-provisioning; with step-ca, AWS IoT provisions the thing by the CA's JITP template")
		}
		if p.Topics != (Topics{}) {
			bad("provisioning.topics", "only used with issuer: topics")
		}
	default:
		bad("provisioning.issuer", "%q: want fleet-provisioning, topics or step-ca", p.Issuer)
	}
	if p.Issuer != IssuerStepCA {
		for k, v := range map[string]string{"ca_url": p.CAURL, "root": p.Root, "root_fingerprint": p.RootFingerprint, "provisioner": p.Provisioner} {
			if v != "" {
				bad("provisioning."+k, "only used with issuer: step-ca")
			}
		}
	}
	if p.Timeout < 0 {
		bad("provisioning.timeout", "must not be off")
	}
	pol := c.Policy()
	if err := pol.Validate(); err != nil {
		bad("rotation", "%v", err)
	}
	if err := c.Backoff().Validate(); err != nil {
		bad("rotation.retry_min/retry_max", "%v", err)
	}
	if c.Rotation.RetryMin < 0 || c.Rotation.RetryMax < 0 {
		bad("rotation.retry_min/retry_max", "retries cannot be turned off: a device keeps trying while its certificate is valid")
	}
	if !slices.Contains([]string{"text", "json"}, c.Log.Format) {
		bad("log.format", "%q: want text or json", c.Log.Format)
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		bad("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	if l := c.Metrics.Listen; l != "" {
		host, _, err := net.SplitHostPort(l)
		ip := net.ParseIP(host)
		if err != nil || !(host == "localhost" || ip != nil && ip.IsLoopback()) {
			bad("metrics.listen", "%q: want a loopback HOST:PORT such as 127.0.0.1:9464 (metrics are for a local scraper or an SSH tunnel, never the network)", l)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return invalid(errs)
}

// invalid is every problem found, on one line (the CLI prints one line).
type invalid []error

func (e invalid) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (e invalid) Unwrap() []error { return e }

// Policy is the renewal policy in rotation's terms.
func (c *Config) Policy() rotation.Policy {
	r := c.Rotation
	return rotation.Policy{
		LifetimeRatio:   float64(r.LifetimeRatio),
		MaxAge:          r.MaxAge.D(),
		BeforeExpiry:    r.BeforeExpiry.D(),
		Jitter:          r.Jitter.D(),
		EmergencyWindow: r.EmergencyWindow.D(),
	}
}

// Backoff is the retry backoff in rotation's terms.
func (c *Config) Backoff() rotation.Backoff {
	return rotation.Backoff{Min: max(c.Rotation.RetryMin.D(), 0), Max: max(c.Rotation.RetryMax.D(), 0)}
}

// Machine is the state machine's settings.
func (c *Config) Machine() rotation.Machine {
	return rotation.Machine{Backoff: c.Backoff(), GracePeriod: c.Rotation.GracePeriod.D()}
}

// JobsEnabled reports whether rotation jobs are listened for.
func (c *Config) JobsEnabled() bool { return c.Rotation.Jobs == nil || *c.Rotation.Jobs }

// Algorithm is the new keys' algorithm.
func (c *Config) Algorithm() keystore.Algorithm {
	a, _ := keystore.ParseAlgorithm(c.KeyAlgorithm)
	return a
}

// RequestTimeout bounds one provisioning request.
func (c *Config) RequestTimeout() time.Duration {
	if c.Provisioning.Timeout > 0 {
		return c.Provisioning.Timeout.D()
	}
	return 30 * time.Second
}

// DialAddress is the HOST:PORT dialed.
func (c *Config) DialAddress() string {
	if c.Address != "" {
		return c.Address
	}
	return net.JoinHostPort(c.Endpoint, strconv.Itoa(c.Port))
}
