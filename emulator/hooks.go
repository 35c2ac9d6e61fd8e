package emulator

import (
	"bytes"
	"errors"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// hook connects the emulator's rules and APIs to the MQTT server.
type hook struct {
	mqtt.HookBase
	e *Emulator
}

func (h *hook) ID() string { return "thingcert-emulator" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnDisconnect}, []byte{b})
}

func sessionOf(cl *mqtt.Client) *session {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		return dc.sess
	}
	return nil
}

// OnConnectAuthenticate applies the rules checked at CONNECT: the TLS handshake
// already accepted the certificate; here the client ID must suit it, and a
// client ID may CONNECT at most once per ClientConnectInterval.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	sess := sessionOf(cl)
	if sess == nil {
		return false
	}
	now := h.e.cfg.now()
	clientID := string(pk.Connect.ClientIdentifier)
	sess.mu.Lock()
	sess.clientID = clientID
	account, certID := sess.verdict.Account, sess.verdict.CertID
	sess.mu.Unlock()
	rule, reason := h.e.decideConnect(account, certID, clientID)
	if rule == "" && !h.e.connectLimit.allow(account+"\x00"+clientID, now) {
		rule, reason = RuleConnectRate, "more than one CONNECT per second with this client ID (AWS IoT's fixed limit); wait and retry with backoff"
	}
	v := verdict{Account: account, CertID: certID, Rule: rule, Reason: reason}
	sess.mu.Lock()
	sess.verdict = v
	sess.mu.Unlock()
	if rule != "" {
		h.e.record(sess.event(Refused, now), v)
		return false
	}
	h.e.record(sess.event(Accepted, now), v)
	return true
}

// OnACLCheck applies the emulator's topic policy (see aclAllows).
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	ok := aclAllows(cl.ID, topic, write)
	if !ok {
		h.e.log.Info("emulator: topic refused by policy", "client_id", cl.ID, "topic", topic, "publish", write)
	}
	return ok
}

// OnPublish answers the fleet-provisioning and Jobs APIs. Requests on them
// never reach other subscribers, and replies go to the requester alone.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	sess := sessionOf(cl)
	if cl.Net.Inline || sess == nil {
		return pk, nil
	}
	sess.mu.Lock()
	account := sess.verdict.Account
	sess.mu.Unlock()
	topic := pk.TopicName
	switch {
	case isProvisioningTopic(topic):
		if reply, ok := h.e.handleProvisioning(account, topic, pk.Payload); ok {
			// AWS says to subscribe to the replies first, or they may be lost.
			if subscribed(cl, reply.Topic) {
				h.e.send(cl, reply)
			} else {
				h.e.log.Info("emulator: fleet provisioning reply dropped: the client is not subscribed to it", "client_id", cl.ID, "topic", reply.Topic)
			}
		}
		return pk, packets.CodeSuccessIgnore
	case strings.HasPrefix(topic, "$aws/things/"+cl.ID+"/jobs/"):
		rest := strings.TrimPrefix(topic, "$aws/things/"+cl.ID+"/jobs/")
		if reply, ok := h.e.handleJobs(account, cl.ID, rest, pk.Payload); ok {
			// Jobs replies reach the requester whether or not it subscribed.
			h.e.send(cl, reply)
		}
		return pk, packets.CodeSuccessIgnore
	}
	return pk, nil
}

func subscribed(cl *mqtt.Client, topic string) bool {
	for filter := range cl.State.Subscriptions.GetAll() {
		if topicMatches(filter, topic) {
			return true
		}
	}
	return false
}

// OnDisconnect records the end of an accepted connection and why it ended.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	sess := sessionOf(cl)
	if sess == nil {
		return
	}
	sess.mu.Lock()
	accepted := sess.decided && !sess.verdict.refused()
	rule, reason := sess.endRule, sess.endReason
	sess.mu.Unlock()
	if !accepted {
		return
	}
	cause := cl.StopCause()
	switch {
	case rule != "":
	case errors.Is(cause, packets.ErrSessionTakenOver) || cl.IsTakenOver():
		rule, reason = RuleSessionTakeover, "a newer connection with the same client ID took over"
	default:
		rule = RuleClosed
		switch {
		case errors.Is(cause, packets.CodeDisconnect):
			reason = "the client sent DISCONNECT"
		case errors.Is(cause, packets.ErrServerShuttingDown):
			reason = "the emulator is shutting down"
		case cause != nil:
			reason = cause.Error()
		case err != nil:
			reason = err.Error()
		}
	}
	h.e.record(sess.event(Disconnected, h.e.cfg.now()), verdict{Rule: rule, Reason: reason})
}
