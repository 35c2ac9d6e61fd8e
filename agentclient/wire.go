// Package agentclient is how a device program publishes and subscribes
// through the running thingcert agent: over the agent's local Unix socket, on
// the agent's own MQTT connection, so the program needs neither the device's
// key nor a connection of its own, and keeps working across reconnects and
// certificate rotations. It links nothing but the standard library.
//
// The wire format is documented in docs/daemon.md so that programs in other
// languages can speak it: one JSON object per line in each direction, a
// hello first, then requests each answered by a reply with the same id.
package agentclient

import (
	"errors"
	"time"
)

// ProtocolVersion is the version of the local socket protocol this package
// speaks. The agent refuses a hello with a version it does not serve.
const ProtocolVersion = 1

// DefaultSocket is where the agent listens under systemd (its
// RuntimeDirectory).
const DefaultSocket = "/run/thingcert/agent.sock"

// MaxPayload is AWS IoT's largest MQTT payload (128 KiB); the agent refuses
// larger ones before they reach the cloud.
const MaxPayload = 128 * 1024

// The operations of the protocol.
const (
	OpHello       = "hello"
	OpPublish     = "publish"
	OpSubscribe   = "subscribe"
	OpUnsubscribe = "unsubscribe"
	OpStatus      = "status"
	OpMessage     = "message" // agent → program: a message for a subscription
)

// Error codes a reply's Code may carry, beside its human Error text.
const (
	CodeReservedTopic = "reserved-topic" // the topic is the agent's own
	CodeBusy          = "busy"           // too many requests in flight: retry later
	CodeTooLarge      = "payload-too-large"
	CodeVersion       = "unsupported-version"
	CodeBadRequest    = "bad-request"
	CodeTooManySubs   = "too-many-subscriptions" // the programs hold all the filters the agent allows them
)

// Sentinel errors for the codes, so callers can test with errors.Is.
var (
	// ErrReservedTopic: the topic or filter is one of the agent's own
	// (certificates, provisioning, the thing's jobs).
	ErrReservedTopic = errors.New("topic reserved for the agent")
	// ErrBusy: the agent has too many requests in flight; try again later.
	ErrBusy = errors.New("agent busy")
	// ErrTooLarge: the payload is over MaxPayload.
	ErrTooLarge = errors.New("payload too large")
	// ErrVersion: the agent does not speak this protocol version.
	ErrVersion = errors.New("protocol version not supported")
	// ErrProtocol: a frame that does not follow the protocol.
	ErrProtocol = errors.New("local socket protocol error")
	// ErrTooManySubscriptions: the device's programs hold as many topic
	// filters as the agent lets them (the rest of AWS IoT's 50 per
	// connection are the agent's own).
	ErrTooManySubscriptions = errors.New("too many subscriptions")
	// ErrAgentGone: the agent closed the connection (it stopped or restarted).
	ErrAgentGone = errors.New("connection to the agent closed")
)

// CodeOf is the wire code of an error wrapping one of the sentinels, or
// CodeBadRequest.
func CodeOf(err error) string {
	switch {
	case errors.Is(err, ErrReservedTopic):
		return CodeReservedTopic
	case errors.Is(err, ErrBusy):
		return CodeBusy
	case errors.Is(err, ErrTooLarge):
		return CodeTooLarge
	case errors.Is(err, ErrVersion):
		return CodeVersion
	case errors.Is(err, ErrTooManySubscriptions):
		return CodeTooManySubs
	}
	return CodeBadRequest
}

func sentinelOf(code string) error {
	switch code {
	case CodeReservedTopic:
		return ErrReservedTopic
	case CodeBusy:
		return ErrBusy
	case CodeTooLarge:
		return ErrTooLarge
	case CodeVersion:
		return ErrVersion
	case CodeTooManySubs:
		return ErrTooManySubscriptions
	}
	return nil
}

// QoS is an MQTT quality of service; AWS IoT supports 0 and 1.
type QoS byte

// The QoS levels AWS IoT supports.
const (
	AtMostOnce  QoS = 0
	AtLeastOnce QoS = 1
)

// Frame is one line of the protocol, in either direction.
type Frame struct {
	ID       uint64  `json:"id,omitempty"`
	Op       string  `json:"op,omitempty"`
	Version  int     `json:"version,omitempty"` // hello
	Topic    string  `json:"topic,omitempty"`
	Filter   string  `json:"filter,omitempty"`
	QoS      QoS     `json:"qos,omitempty"`
	Payload  []byte  `json:"payload,omitempty"` // base64 in JSON
	Retained bool    `json:"retained,omitempty"`
	Error    string  `json:"error,omitempty"`
	Code     string  `json:"code,omitempty"`
	Status   *Status `json:"status,omitempty"`
}

// Status is what a device program may ask the agent about the device's
// identity and connection.
type Status struct {
	ThingName     string    `json:"thing_name"`
	ClientID      string    `json:"client_id"`
	Connection    string    `json:"connection"`
	Connected     bool      `json:"connected"`
	CertificateID string    `json:"certificate_id,omitempty"`
	NotAfter      time.Time `json:"not_after,omitzero"`
	Rotating      bool      `json:"rotating"`
}

// Message is an MQTT message delivered for a subscription.
type Message struct {
	Topic    string
	Payload  []byte
	QoS      QoS
	Retained bool
}

// MessageHandler receives the messages of a subscription.
type MessageHandler func(Message)
