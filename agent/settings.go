package agent

import (
	"errors"

	"github.com/thingcert/thingcert/device"
)

// Settings are what the agent runs with: the device's options and the
// service's own. A configuration file is one source of them (cmd/thingcert
// reads YAML into Settings); the agent never reads a file format itself.
type Settings struct {
	// Device are the options of the device the agent keeps (required).
	Device device.Options
	// Source names where the settings came from (a configuration file's
	// path), for logs and the status record.
	Source string
	// Recover lets the agent provision again with the claim when the cloud
	// refuses the device's own identity (the claim then holds the power to
	// replace it). It needs Device.Claim.
	Recover bool
	// RecoveryRule is how many refusals over how long a recovery by claim
	// needs; the zero value is three over ten minutes.
	RecoveryRule RecoveryRule
	// ReservedTopics are topics, besides AWS IoT's certificates,
	// provisioning and the thing's jobs, that the agent keeps for itself:
	// the owner CA issuer's request and response topics ("{thing}" is the
	// thing name). Device programs may not publish or subscribe there, nor
	// to any topic below them.
	ReservedTopics []string
	// MetricsListen is the loopback HOST:PORT the Prometheus metrics are
	// served on; empty serves none.
	MetricsListen string
	// Log is how the agent logs.
	Log LogSettings
}

// LogSettings are the log format and level.
type LogSettings struct {
	// Level is debug, info (the zero value), warn or error.
	Level string
	// Format is text (the zero value) or json.
	Format string
}

// Validate reports settings the agent cannot run with.
func (s *Settings) Validate() error {
	err := s.Device.Validate()
	if s.Recover && s.Device.Claim == nil {
		err = errors.Join(err, errors.New("agent: recovery by claim needs a claim"))
	}
	return err
}

// canRecover reports whether the settings allow recovery by claim.
func (s *Settings) canRecover() bool { return s.Recover && s.Device.Claim != nil }
