package config

import (
	"fmt"
	"time"

	"github.com/thingcert/thingcert/agent"
	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/fleetprov"
	"github.com/thingcert/thingcert/iot/stepca"
	"github.com/thingcert/thingcert/rotation"
)

// DeviceOptions are the configuration as a device.Manager's options. The
// files it names (ca, rotation.trust) are read here, so a reload can refuse a
// configuration whose CA file is missing before it replaces a working one.
func (c *Config) DeviceOptions() (device.Options, error) {
	o := device.Options{
		Endpoint:  iot.Endpoint{Host: c.Endpoint, Port: c.Port, Address: c.Address},
		ThingName: c.ThingName,
		ClientID:  c.ClientID,
		StateDir:  c.StateDir,
		Store:     c.Store,
		Machine:   c.Machine(),
		Policy:    c.Policy(),
		Algorithm: c.Algorithm(),
		Subject:   c.Subject,
		NoJobs:    !c.JobsEnabled(),
	}
	for _, a := range c.Accounts {
		o.Accounts = append(o.Accounts, iot.Endpoint{Host: a.Endpoint, Port: a.Port, Address: a.Address})
	}
	var err error
	if c.CA != "" {
		if o.Roots, err = iot.LoadCAFile(c.CA); err != nil {
			return o, fmt.Errorf("config %s: ca: %w", c.Path, err)
		}
	}
	if c.Rotation.Trust != "" {
		if o.Trust, err = iot.LoadCAFile(c.Rotation.Trust); err != nil {
			return o, fmt.Errorf("config %s: rotation.trust: %w", c.Path, err)
		}
	}
	if c.Key != "" {
		o.Identity = &device.Credentials{KeyURI: c.Key, CertFile: c.Cert}
	}
	if cl := c.Claim; cl != nil {
		o.Claim = &device.Claim{Credentials: device.Credentials{KeyURI: cl.Key, CertFile: cl.Cert}, ClientID: cl.ClientID}
	}
	p, thing, timeout := c.Provisioning, c.ThingName, c.RequestTimeout()
	switch p.Issuer {
	case IssuerStepCA:
		roots, err := stepca.LoadRoot(p.Root, p.RootFingerprint)
		if err != nil {
			return o, fmt.Errorf("config %s: provisioning.root: %w", c.Path, err)
		}
		iss := &stepca.Issuer{URL: p.CAURL, Roots: roots, Provisioner: p.Provisioner, Timeout: timeout}
		o.Issuer = func(iot.MQTT) rotation.Issuer { return iss }
		// The claim is step-ca's, unknown to AWS IoT. With one account,
		// step-ca's CA is registered there with a JITP template, which
		// registers each certificate on its first connection and closes
		// it. With accounts, the CA is registered nowhere (SNI_ONLY): the
		// fleet tool registers each new certificate in every account
		// before the device moves to it, and a refused connection is a
		// refusal, not a registration under way.
		if o.Claim != nil {
			o.Claim.IssuerOnly = true
		}
		o.JustInTime = len(c.Accounts) == 0
		if o.Trust == nil {
			o.Trust = roots // a new certificate must chain to the CA's root
		}
	case IssuerTopics:
		o.Issuer = func(conn iot.MQTT) rotation.Issuer {
			return &fleetprov.TopicIssuer{Conn: conn, ThingName: thing, Request: p.Topics.Request, Response: p.Topics.Response, Timeout: timeout}
		}
	default:
		o.Issuer = func(conn iot.MQTT) rotation.Issuer {
			return &fleetprov.Issuer{Conn: conn, Template: p.Template, Parameters: p.Parameters, ThingName: thing, Timeout: timeout}
		}
	}
	if err := o.Validate(); err != nil {
		return o, fmt.Errorf("config %s: %w", c.Path, err)
	}
	return o, nil
}

// Settings are the configuration as the agent's settings.
func (c *Config) Settings() (agent.Settings, error) {
	o, err := c.DeviceOptions()
	if err != nil {
		return agent.Settings{}, err
	}
	return agent.Settings{
		Device:       o,
		Source:       c.Path,
		Recover:      c.Claim != nil && c.Claim.Recover,
		RecoveryRule: c.recoveryRule(),
		// The owner CA issuer's topics are the agent's, as AWS IoT's are.
		ReservedTopics: c.issuerTopics(),
		MetricsListen:  c.Metrics.Listen,
		Log:            agent.LogSettings{Level: c.Log.Level, Format: c.Log.Format},
	}, nil
}

// LoadSettings reads the configuration file at path as the agent's settings:
// the agent's reload.
func LoadSettings(path string) (agent.Settings, error) {
	c, err := Load(path)
	if err != nil {
		return agent.Settings{}, err
	}
	return c.Settings()
}

// recoveryRule is claim.recover_refusals and claim.recover_after, defaults
// filled in by the agent.
func (c *Config) recoveryRule() agent.RecoveryRule {
	if c.Claim == nil {
		return agent.RecoveryRule{}
	}
	r := agent.RecoveryRule{Refusals: c.Claim.RecoverRefusals, Span: agent.DefaultRecoverSpan}
	if c.Claim.RecoverAfter != nil {
		r.Span = time.Duration(*c.Claim.RecoverAfter)
		if r.Span < 0 { // "off" or 0: no minimum span
			r.Span = 0
		}
	}
	return r
}

// issuerTopics are the topics issuer's request and response topics, when
// that is the issuer.
func (c *Config) issuerTopics() []string {
	if c.Provisioning.Issuer != IssuerTopics {
		return nil
	}
	var out []string
	for _, t := range []string{c.Provisioning.Topics.Request, c.Provisioning.Topics.Response} {
		if t != "" {
			out = append(out, t)
		}
	}
	return out
}
