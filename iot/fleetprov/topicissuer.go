package fleetprov

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/internal/exchange"

	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

// TopicIssuer is a rotation.Issuer for devices whose certificates come from
// the owner's own CA: a service of the owner's subscribes to a request topic
// and answers on reply topics the owner chooses. The exchange follows AWS
// IoT's own request/response pattern, so one service can serve a fleet:
//
//	request  <Request>:           {"clientToken": "…", "thingName": "…", "certificateSigningRequest": "<PEM>"}
//	accepted <Response>/accepted: {"clientToken": "…", "certificatePem": "<leaf PEM, then intermediates>", "certificateId": "…"?}
//	rejected <Response>/rejected: {"clientToken": "…", "statusCode": 400, "errorCode": "…", "errorMessage": "…"}
//
// statusCode 429 or ≥ 500 is retried; others roll the rotation back. The
// service registers the new certificate with AWS IoT (RegisterCertificate or
// a CA registered for it) and attaches it to the thing before answering.
type TopicIssuer struct {
	Conn iot.MQTT
	// ThingName is sent with each request and replaces "{thing}" in the topics.
	ThingName string
	// Request is the topic CSRs are published to.
	Request string
	// Response is the prefix of the reply topics; empty means Request.
	Response string
	// Timeout bounds the wait for the answer; zero is iot.DefaultRequestTimeout.
	Timeout time.Duration
}

var _ rotation.Issuer = (*TopicIssuer)(nil)

// Issue sends the CSR and waits for the answer.
func (ti *TopicIssuer) Issue(ctx context.Context, csrDER []byte) (*rotation.Issued, error) {
	op := "certificate request on " + ti.Request
	if ti.Request == "" {
		return nil, rotation.NewFatal(op, errors.New("no request topic configured (provisioning.topics.request)"))
	}
	var tok [16]byte
	_, _ = rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	req, _ := json.Marshal(map[string]string{
		"clientToken": token, "thingName": ti.ThingName,
		"certificateSigningRequest": string(keystore.EncodeCSR(csrDER)),
	})
	request := strings.ReplaceAll(ti.Request, "{thing}", ti.ThingName)
	response := strings.ReplaceAll(ti.Response, "{thing}", ti.ThingName)
	if response == "" {
		response = request
	}
	a, err := exchangeSplit(ctx, ti.Conn, op, request, response, req, token, ti.Timeout)
	if err != nil {
		return nil, err
	}
	if !a.Accepted {
		return nil, provisioningRejected(op, a.Payload)
	}
	var ok struct {
		PEM           string `json:"certificatePem"`
		CertificateID string `json:"certificateId"`
	}
	if err := json.Unmarshal(a.Payload, &ok); err != nil || ok.PEM == "" {
		return nil, rotation.NewFatal(op, fmt.Errorf("the exchange.Answer on %s/accepted is not {\"certificatePem\": ...}: %s", response, exchange.Snippet(a.Payload)))
	}
	chain, err := rotation.ParseChainPEM([]byte(ok.PEM), op+" certificatePem")
	if err != nil {
		return nil, rotation.NewFatal(op, err)
	}
	return &rotation.Issued{Chain: chain, CertificateID: ok.CertificateID, ThingName: ti.ThingName}, nil
}

// exchangeSplit is exchange with the replies on another topic than the request.
func exchangeSplit(ctx context.Context, m iot.MQTT, op, request, response string, payload []byte, token string, timeout time.Duration) (exchange.Answer, error) {
	if request == response {
		return exchange.Do(ctx, m, op, request, payload, token, timeout)
	}
	return exchange.Do(ctx, splitTopics{MQTT: m, request: request, response: response}, op, response, payload, token, timeout)
}

// splitTopics publishes what exchange sends to the response prefix on the
// request topic instead.
type splitTopics struct {
	iot.MQTT
	request, response string
}

func (s splitTopics) Publish(ctx context.Context, topic string, qos iot.QoS, payload []byte) error {
	if topic == s.response {
		topic = s.request
	}
	return s.MQTT.Publish(ctx, topic, qos, payload)
}

// SubscribeMultiple and UnsubscribeNoWait pass through to the connection, so
// an owner's issuer topics cost what fleet provisioning's do.
func (s splitTopics) SubscribeMultiple(ctx context.Context, subs ...iot.Subscription) error {
	return iot.SubscribeAll(ctx, s.MQTT, subs...)
}

func (s splitTopics) UnsubscribeNoWait(filters ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	iot.UnsubscribeNoWait(ctx, s.MQTT, filters...)
}
