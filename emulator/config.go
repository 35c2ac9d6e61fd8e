package emulator

import (
	"log/slog"
	"time"
)

// Config says how to run an emulator. The zero value runs one in memory (no
// state folder), with no accounts, listening on a free loopback port, with AWS's
// defaults for everything else.
type Config struct {
	// StateDir keeps the registry, the emulator's CAs (RootCAFile for clients to
	// trust), the connection history and the admin socket. Empty keeps
	// everything in memory, for tests that need no restart.
	StateDir string

	// Listen is the MQTT over TLS listener (AWS's port 8883, no ALPN needed);
	// empty is "127.0.0.1:0", a free port (see Emulator.Addr).
	Listen string
	// ALPNListen, if set, adds a listener that behaves like AWS's port 443: the
	// client must offer ALPN x-amzn-mqtt-ca. "127.0.0.1:0" picks a free port
	// (see Emulator.ALPNAddr).
	ALPNListen string

	// APIListen, if set, serves AWS IoT's control-plane API (REST-JSON over
	// HTTPS, SigV4-signed with the accounts' access keys) on this address;
	// "127.0.0.1:0" picks a free port (see Emulator.APIURL). Its certificate is
	// the MQTT server's, issued by RootCAFile for localhost and 127.0.0.1.
	APIListen string

	// Accounts are added when missing (existing ones are kept as they are).
	Accounts []Account
	// Templates are provisioning templates added to every account in Accounts
	// where a template of that name is missing.
	Templates []Template

	// CertificateLifetime is the validity of certificates the emulator issues;
	// zero means AWS's: they expire 2049-12-31T23:59:59Z. A short lifetime lets
	// rotation be exercised in seconds.
	CertificateLifetime time.Duration
	// OwnershipTokenLifetime is how long a certificateOwnershipToken from
	// CreateCertificateFromCsr or CreateKeysAndCertificate stays valid; zero is
	// AWS's hour. A certificate never activated is deleted after its token expires.
	OwnershipTokenLifetime time.Duration
	// CreateCertificateRate is the CreateCertificateFromCsr (and
	// CreateKeysAndCertificate) limit per account and second; zero is AWS's 15,
	// negative is unlimited. Requests over it are answered with a throttling error.
	CreateCertificateRate float64
	// RegisterThingRate is the RegisterThing limit per account and second; zero
	// is AWS's 10, negative is unlimited.
	RegisterThingRate float64
	// AccountConnectRate is the CONNECT limit per account and second (over
	// every client ID); zero is AWS's 500, negative is unlimited. A CONNECT
	// over it is refused (rule account-connect-rate).
	AccountConnectRate float64
	// APIRate, if positive, limits each control-plane operation to that many
	// requests per account and second (AWS's quotas differ per operation;
	// see docs/emulator.md); zero or negative leaves the API unlimited.
	// Requests over it are answered ThrottlingException.
	APIRate float64
	// ClientConnectInterval is the least time between two CONNECTs with one
	// client ID; zero is AWS's fixed 1 s, negative turns the limit off.
	ClientConnectInterval time.Duration

	// JobEvents publishes the Jobs events ($aws/events/job/<jobId>/...,
	// $aws/events/jobExecution/<jobId>/<status>) in every account, as AWS does
	// once UpdateEventConfigurations enabled JOB and JOB_EXECUTION (which
	// Registry.UpdateEventConfigurations does per account).
	JobEvents bool

	// HistoryLimit is how many connection events are kept; zero is 10000.
	HistoryLimit int

	// Now is the clock for every decision (certificate validity, token expiry,
	// rate limits, job timestamps); nil is time.Now. Tests inject one to expire
	// a certificate or a token without waiting.
	Now func() time.Time
	// Logger receives the emulator's log, including one line per refused
	// connection naming the rule, the certificate ID and the SNI; nil discards it.
	Logger *slog.Logger

	// storeCheck, when set, gets the result of comparing the state in memory
	// with registry.db after every change (checkStoreLocked): the tests use it
	// to catch a change that did not mark a record it changed.
	storeCheck func(error)
}

const (
	defaultTokenLifetime     = time.Hour
	defaultCreateCertRate    = 15
	defaultRegisterThingRate = 10
	defaultConnectInterval   = time.Second
	defaultAccountConnects   = 500
	defaultHistoryLimit      = 10000
	defaultRegion            = "us-east-1"
	handshakeTimeout         = 10 * time.Second
	connectTimeout           = 30 * time.Second
	alpnMQTT                 = "x-amzn-mqtt-ca"
	maxPayloadSize           = 128 * 1024               // AWS IoT's message size limit (a PUBLISH's or a will's payload)
	maxPacketSize            = maxPayloadSize + 16*1024 // the payload with a topic (AWS: 256 bytes) and MQTT 5 properties
	maxClientWritesPending   = 256
	clientReadBufferSize     = 512
	maxSessionExpiry         = 3600
	jobsTick                 = time.Second
)

func (c Config) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (c Config) tokenLifetime() time.Duration {
	if c.OwnershipTokenLifetime > 0 {
		return c.OwnershipTokenLifetime
	}
	return defaultTokenLifetime
}

func (c Config) historyLimit() int {
	if c.HistoryLimit > 0 {
		return c.HistoryLimit
	}
	return defaultHistoryLimit
}

func rateOr(r, def float64) float64 {
	switch {
	case r == 0:
		return def
	case r < 0:
		return 0 // unlimited
	}
	return r
}

func (c Config) connectInterval() time.Duration {
	switch {
	case c.ClientConnectInterval == 0:
		return defaultConnectInterval
	case c.ClientConnectInterval < 0:
		return 0
	}
	return c.ClientConnectInterval
}

// notAfter is the expiry of a certificate issued at now.
func (c Config) notAfter(now time.Time, lifetime time.Duration) time.Time {
	if lifetime <= 0 {
		lifetime = c.CertificateLifetime
	}
	if lifetime > 0 {
		return now.Add(lifetime)
	}
	return AWSCertificateNotAfter
}
