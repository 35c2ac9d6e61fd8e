package emulator

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/thingcert/thingcert/emulator/iotpolicy"
)

// hook connects the emulator's rules and APIs to the MQTT server.
type hook struct {
	mqtt.HookBase
	e *Emulator
}

func (h *hook) ID() string { return "thingcert-emulator" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnDisconnect,
		mqtt.OnPacketRead, mqtt.OnPacketEncode, mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnWill,
	}, []byte{b})
}

func sessionOf(cl *mqtt.Client) *session {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		return dc.sess
	}
	return nil
}

// connInfo is what a policy decision needs of a connection.
func (s *session) connInfo() (account, certID, clientID, remote string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.verdict.Account, s.verdict.CertID, s.clientID, s.remote
}

func (s *session) account() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.verdict.Account
}

// OnConnect puts the client ID in the account's namespace inside the broker
// (account/clientID), before mochi looks for a session to take over: the same
// client ID in two accounts is two clients, as on AWS. History, policies and
// the APIs see the client's own ID (session.clientID).
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	sess := sessionOf(cl)
	if sess == nil {
		return nil
	}
	sess.mu.Lock()
	sess.clientID = cl.ID // mochi's: the CONNECT's, or the one it assigned to an empty one
	account := sess.verdict.Account
	sess.mu.Unlock()
	cl.ID = clientNS(account, cl.ID)
	return nil
}

// OnConnectAuthenticate applies the rules checked at CONNECT: the TLS handshake
// already accepted the certificate; here the client ID must suit it, a client
// ID may CONNECT at most once per ClientConnectInterval, and the certificate's
// policies must allow iot:Connect for the client ID.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	sess := sessionOf(cl)
	if sess == nil {
		return false
	}
	now := h.e.cfg.now()
	account, certID, clientID, remote := sess.connInfo()
	rule, reason := h.e.decideConnect(account, certID, clientID)
	if rule == "" && !h.e.connectLimit.allow(account+"\x00"+clientID, now) {
		rule, reason = RuleConnectRate, "more than one CONNECT per second with this client ID (AWS IoT's fixed limit); wait and retry with backoff"
	}
	if rule == "" && !h.e.accountConnects.allow(account, now) {
		rule, reason = RuleAccountConnects, fmt.Sprintf("more than %g CONNECTs per second in account %s (AWS IoT's account quota); retry with backoff and jitter", h.e.accountConnects.rate, account)
	}
	h.e.count("CONNECT", rule == RuleConnectRate || rule == RuleAccountConnects)
	var action, resource string
	if rule == "" {
		var d iotpolicy.Decision
		d, resource = h.e.authorize(request{account: account, certID: certID, clientID: clientID, remote: remote, action: iotpolicy.ActionConnect, kind: "client", name: clientID})
		if !d.Allowed {
			action = iotpolicy.ActionConnect
			rule, reason = RulePolicy, fmt.Sprintf("iot:Connect on %s: %s; attach a policy to certificate %s that allows it", resource, d, certID)
		}
	}
	v := verdict{Account: account, CertID: certID, Rule: rule, Reason: reason}
	sess.mu.Lock()
	sess.verdict = v
	sess.mu.Unlock()
	if rule != "" {
		ev := sess.event(Refused, now)
		ev.Action, ev.Resource = action, resource
		h.e.record(ev, v)
		if rule == RulePolicy {
			// AWS IoT closes the connection without a CONNACK when no
			// policy allows iot:Connect.
			cl.Stop(packets.ErrNotAuthorized)
		}
		return false
	}
	h.e.record(sess.event(Accepted, now), v)
	return true
}

// OnPacketRead moves the topics and filters a device sends into its account's
// namespace (see toBroker).
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	sess := sessionOf(cl)
	if sess == nil {
		return pk, nil
	}
	if n := max(len(pk.Payload), len(pk.Connect.WillPayload)); n > maxPayloadSize {
		// AWS IoT's limit is on the payload; mochi's MaximumPacketSize
		// (maxPacketSize) only bounds the whole packet, topic included.
		sess.mu.Lock()
		sess.endRule, sess.endReason = RuleClosed, fmt.Sprintf("a %s payload of %d bytes: AWS IoT's limit is %d (128 KiB)", packetName(pk.FixedHeader.Type), n, maxPayloadSize)
		sess.mu.Unlock()
		return pk, packets.ErrPacketTooLarge
	}
	account := sess.account()
	switch pk.FixedHeader.Type {
	case packets.Publish:
		sess.mu.Lock()
		sess.pubQoS = pk.FixedHeader.Qos
		if pk.Properties.TopicAliasFlag && pk.Properties.TopicAlias > 0 {
			// mochi resolves aliases after the ACL check; resolve them here
			// so the check sees the topic.
			if pk.TopicName != "" {
				if sess.aliases == nil {
					sess.aliases = map[uint16]string{}
				}
				sess.aliases[pk.Properties.TopicAlias] = pk.TopicName
			} else {
				pk.TopicName = sess.aliases[pk.Properties.TopicAlias]
			}
		}
		sess.mu.Unlock()
		pk.TopicName = toBroker(account, pk.TopicName)
	case packets.Subscribe, packets.Unsubscribe:
		filters := make(packets.Subscriptions, len(pk.Filters))
		copy(filters, pk.Filters)
		for i := range filters {
			filters[i].Filter = toBroker(account, filters[i].Filter)
		}
		pk.Filters = filters
	}
	return pk, nil
}

func packetName(t byte) string {
	if t == packets.Connect {
		return "will"
	}
	return "PUBLISH"
}

// OnPacketEncode takes the account's namespace off the topic of a message on
// its way to a device.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Publish || pk.TopicName == "" {
		return pk
	}
	if sess := sessionOf(cl); sess != nil {
		if t, ok := fromBroker(sess.account(), pk.TopicName); ok {
			pk.TopicName = t
		}
	}
	return pk
}

// OnSubscribe decides iot:Subscribe for each filter of a SUBSCRIBE; mochi then
// asks OnACLCheck filter by filter, which answers from these decisions.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	sess := sessionOf(cl)
	if sess == nil {
		return pk
	}
	account, certID, clientID, remote := sess.connInfo()
	decisions := make(map[string]bool, len(pk.Filters))
	for _, f := range pk.Filters {
		filter, ok := fromBroker(account, f.Filter)
		if !ok {
			decisions[f.Filter] = false
			continue
		}
		d, resource := h.e.authorize(request{account: account, certID: certID, clientID: clientID, remote: remote, action: iotpolicy.ActionSubscribe, kind: "topicfilter", name: filter})
		decisions[f.Filter] = d.Allowed
		if !d.Allowed {
			h.e.denied(sess, RulePolicy, iotpolicy.ActionSubscribe, resource, fmt.Sprintf("iot:Subscribe on %s: %s; SUBACK 0x80 for this filter", resource, d))
		}
	}
	sess.mu.Lock()
	sess.pendingSub = decisions
	sess.mu.Unlock()
	return pk
}

// OnSubscribed forgets the SUBSCRIBE's decisions.
func (h *hook) OnSubscribed(cl *mqtt.Client, _ packets.Packet, _ []byte) {
	if sess := sessionOf(cl); sess != nil {
		sess.mu.Lock()
		sess.pendingSub = nil
		sess.mu.Unlock()
	}
}

// OnACLCheck applies AWS IoT's reserved-topic rules and the certificate's
// policies: iot:Publish for a PUBLISH (write), iot:Subscribe for a SUBSCRIBE's
// filter (decided in OnSubscribe) and iot:Receive for each message delivered.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	sess := sessionOf(cl)
	if sess == nil {
		return false
	}
	account, certID, clientID, remote := sess.connInfo()
	t, ok := fromBroker(account, topic)
	if !ok {
		return false
	}
	if write {
		if why := reservedPublish(t); why != "" {
			h.refusePublish(cl, sess, RuleReservedTopic, "arn:aws:iot:::topic/"+t, why)
			return false
		}
		d, resource := h.e.authorize(request{account: account, certID: certID, clientID: clientID, remote: remote, action: iotpolicy.ActionPublish, kind: "topic", name: t})
		if !d.Allowed {
			h.refusePublish(cl, sess, RulePolicy, resource, fmt.Sprintf("iot:Publish on %s: %s", resource, d))
			return false
		}
		return true
	}
	sess.mu.Lock()
	decision, isSubscribe := sess.pendingSub[topic]
	sess.mu.Unlock()
	if isSubscribe {
		// A filter of the SUBSCRIBE being processed. (A message delivered at
		// this very instant on a topic spelled exactly like one of its
		// filters would take this decision too; the window is one SUBSCRIBE.)
		return decision
	}
	// MQTT: a wildcard at the first level does not match a $ topic. The
	// broker sees namespaced topics, so the rule is applied here.
	if strings.HasPrefix(t, "$") && !subscribed(cl, t) {
		return false
	}
	d, resource := h.e.authorize(request{account: account, certID: certID, clientID: clientID, remote: remote, action: iotpolicy.ActionReceive, kind: "topic", name: t})
	if !d.Allowed {
		h.e.denied(sess, RulePolicy, iotpolicy.ActionReceive, resource, fmt.Sprintf("iot:Receive on %s: %s; the message was not delivered", resource, d))
	}
	return d.Allowed
}

// refusePublish records an unauthorized PUBLISH and closes the connection, as
// AWS IoT does; an MQTT 5 client's QoS 1 PUBLISH gets PUBACK 0x87 (Not
// authorized) instead, from mochi.
func (h *hook) refusePublish(cl *mqtt.Client, sess *session, rule Rule, resource, reason string) {
	sess.mu.Lock()
	qos := sess.pubQoS
	sess.mu.Unlock()
	if cl.Properties.ProtocolVersion >= 5 && qos > 0 {
		h.e.denied(sess, rule, iotpolicy.ActionPublish, resource, reason+"; PUBACK 0x87 (Not authorized)")
		return
	}
	h.e.denied(sess, rule, iotpolicy.ActionPublish, resource, reason+"; the connection is closed")
	sess.mu.Lock()
	sess.endRule, sess.endReason = rule, reason
	sess.mu.Unlock()
	_ = h.e.server.DisconnectClient(cl, packets.ErrNotAuthorized)
}

// OnWill moves a will message into the account's namespace, and drops it when
// the certificate's policies do not allow publishing it.
func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	sess := sessionOf(cl)
	if sess == nil {
		return will, nil
	}
	account, certID, clientID, remote := sess.connInfo()
	reason := reservedPublish(will.TopicName)
	resource := "arn:aws:iot:::topic/" + will.TopicName
	if reason == "" {
		var d iotpolicy.Decision
		d, resource = h.e.authorize(request{account: account, certID: certID, clientID: clientID, remote: remote, action: iotpolicy.ActionPublish, kind: "topic", name: will.TopicName})
		if !d.Allowed {
			reason = fmt.Sprintf("iot:Publish on %s: %s", resource, d)
		}
	}
	if reason != "" {
		h.e.denied(sess, RulePolicy, iotpolicy.ActionPublish, resource, "will message dropped: "+reason)
		// No device subscription lies outside the account namespaces.
		will.TopicName, will.Retain = "$thingcert/dropped-will", false
		return will, nil
	}
	will.TopicName = toBroker(account, will.TopicName)
	return will, nil
}

// OnPublish answers the fleet-provisioning and Jobs APIs. Requests on them
// never reach other subscribers, and replies go to the requester alone.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	sess := sessionOf(cl)
	if cl.Net.Inline || sess == nil {
		return pk, nil
	}
	account := sess.account()
	topic, ok := fromBroker(account, pk.TopicName)
	if !ok {
		return pk, packets.CodeSuccessIgnore
	}
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
	case strings.HasPrefix(topic, "$aws/things/"):
		// $aws/things/<thing>/jobs/<rest>: the policy decided whether this
		// client may ask about that thing.
		thing, rest, _ := strings.Cut(strings.TrimPrefix(topic, "$aws/things/"), "/")
		if rest, ok := strings.CutPrefix(rest, "jobs/"); ok && thing != "" {
			if reply, ok := h.e.handleJobs(account, thing, rest, pk.Payload); ok {
				// Jobs replies reach the requester whether or not it subscribed.
				h.e.send(cl, reply)
			}
			return pk, packets.CodeSuccessIgnore
		}
	}
	return pk, nil
}

// subscribed reports whether one of the client's subscriptions matches a
// device topic name.
func subscribed(cl *mqtt.Client, topic string) bool {
	account := ""
	if sess := sessionOf(cl); sess != nil {
		account = sess.account()
	}
	for filter := range cl.State.Subscriptions.GetAll() {
		f, ok := fromBroker(account, filter)
		if rest, shared := strings.CutPrefix(f, "$share/"); shared {
			_, f, _ = strings.Cut(rest, "/") // the filter after $share/<group>/
		}
		if ok && topicMatches(f, topic) {
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
