package fleetprov

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/internal/exchange"

	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

// Fleet-provisioning MQTT API topics (JSON).
const (
	TopicCreateCertificateFromCSR = "$aws/certificates/create-from-csr/json"
	topicProvisioningTemplates    = "$aws/provisioning-templates/"
)

// RegisterThingTopic is the RegisterThing request topic of a template.
func RegisterThingTopic(template string) string {
	return topicProvisioningTemplates + template + "/provision/json"
}

// Issuer is a rotation.Issuer over AWS IoT's fleet-provisioning
// MQTT API: CreateCertificateFromCsr, then RegisterThing with the template,
// which activates the certificate and attaches it to the thing. It works over
// a claim certificate's connection (provisioning) and over the device's own
// (rotation), if the device's policy allows the two APIs.
type Issuer struct {
	// Conn is the connection the requests go over.
	Conn iot.MQTT
	// Template is the provisioning template's name.
	Template string
	// Parameters are RegisterThing's parameters (SerialNumber, ...).
	Parameters map[string]string
	// ThingName, if set, is the thing the device expects to be: a template
	// that registers the certificate to another thing is refused, since the
	// device could not connect as that thing's client ID.
	ThingName string
	// Timeout bounds the wait for each answer; zero is iot.DefaultRequestTimeout.
	Timeout time.Duration
	// RegisterRetryFor is how long a throttled RegisterThing is asked again
	// with the same ownership token (valid for an hour) before Issue gives
	// up; zero is DefaultRegisterRetryFor, negative does not retry. Starting
	// over would spend a CreateCertificateFromCsr (15/s per account) for
	// every throttled RegisterThing (10/s): in a fleet rotating at the quota,
	// most of them.
	RegisterRetryFor time.Duration
	// Rand is the jitter source in [0, 1); nil is math/rand/v2.
	Rand func() float64
}

// DefaultRegisterRetryFor is how long a throttled RegisterThing is retried
// with the same ownership token.
const DefaultRegisterRetryFor = 5 * time.Minute

var _ rotation.Issuer = (*Issuer)(nil)

// Error is a fleet-provisioning /rejected answer.
type Error struct {
	StatusCode   int    `json:"statusCode"`
	ErrorCode    string `json:"errorCode"`
	ErrorMessage string `json:"errorMessage"`
}

func (e *Error) Error() string { return e.ErrorMessage }

// Issue asks for a certificate for the CSR and registers it.
func (f *Issuer) Issue(ctx context.Context, csrDER []byte) (*rotation.Issued, error) {
	if f.Template == "" {
		return nil, rotation.NewFatal("RegisterThing", errors.New("no provisioning template configured (provisioning.template)"))
	}
	const createOp = "CreateCertificateFromCsr"
	registerTopic := RegisterThingTopic(f.Template)
	// The answers of both requests in one SUBSCRIBE, before the first.
	ex, err := exchange.Subscribe(ctx, f.Conn, createOp, f.Timeout, TopicCreateCertificateFromCSR, registerTopic)
	if err != nil {
		return nil, err
	}
	defer ex.Close()
	req, _ := json.Marshal(map[string]string{"certificateSigningRequest": string(keystore.EncodeCSR(csrDER))})
	a, err := ex.Do(ctx, createOp, TopicCreateCertificateFromCSR, req, "")
	if err != nil {
		return nil, err
	}
	if !a.Accepted {
		return nil, provisioningRejected(createOp, a.Payload)
	}
	var created struct {
		Token         string `json:"certificateOwnershipToken"`
		CertificateID string `json:"certificateId"`
		PEM           string `json:"certificatePem"`
	}
	if err := json.Unmarshal(a.Payload, &created); err != nil {
		return nil, rotation.NewFatal(createOp, fmt.Errorf("the exchange.Answer on /accepted is not JSON (%v): %s", err, exchange.Snippet(a.Payload)))
	}
	if created.Token == "" || created.PEM == "" {
		return nil, rotation.NewFatal(createOp, fmt.Errorf("the exchange.Answer on /accepted lacks certificatePem or certificateOwnershipToken: %s", exchange.Snippet(a.Payload)))
	}
	chain, err := rotation.ParseChainPEM([]byte(created.PEM), createOp+" certificatePem")
	if err != nil {
		return nil, rotation.NewFatal(createOp, err)
	}

	const registerOp = "RegisterThing"
	params := maps.Clone(f.Parameters)
	if params == nil {
		params = map[string]string{}
	}
	req, _ = json.Marshal(map[string]any{"certificateOwnershipToken": created.Token, "parameters": params})
	retryFor := f.RegisterRetryFor
	if retryFor == 0 {
		retryFor = DefaultRegisterRetryFor
	}
	giveUp := time.Now().Add(retryFor)
	var throttled error // the first throttled answer, for the record
	for attempt := 0; ; attempt++ {
		a, err = ex.Do(ctx, registerOp, registerTopic, req, "")
		if err != nil {
			return nil, fmt.Errorf("certificate %s was created but not registered (AWS IoT deletes it within the hour): %w", shortID(created.CertificateID), err)
		}
		if a.Accepted {
			break
		}
		rerr := provisioningRejected(registerOp+" with template "+f.Template, a.Payload)
		var re *rotation.Error
		isRE := errors.As(rerr, &re)
		if attempt > 0 && isRE && !re.Transient {
			// Refused after a throttled attempt: that attempt may have been
			// carried out after all (its token is spent). Starting over with a
			// new certificate is what a retry did before this one.
			return nil, rotation.NewTransient(registerOp, fmt.Errorf("%v, then with the same ownership token: %w", throttled, rerr), 0)
		}
		if throttled == nil {
			throttled = rerr
		}
		if !isRE || !re.Transient || re.RetryAfter == 0 || time.Now().After(giveUp) {
			return nil, rerr
		}
		// Throttled: the same token again after a second or so (the limit
		// is counted per second), with jitter so a fleet spreads out.
		wait := re.RetryAfter + time.Duration(f.random()*float64(min(attempt+1, 4))*float64(time.Second))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	var reg struct {
		ThingName           string            `json:"thingName"`
		DeviceConfiguration map[string]string `json:"deviceConfiguration"`
	}
	if err := json.Unmarshal(a.Payload, &reg); err != nil {
		return nil, rotation.NewFatal(registerOp, fmt.Errorf("the exchange.Answer on /accepted is not JSON (%v): %s", err, exchange.Snippet(a.Payload)))
	}
	if f.ThingName != "" && reg.ThingName != "" && reg.ThingName != f.ThingName {
		return nil, rotation.NewFatal(registerOp, fmt.Errorf("template %s registered certificate %s to thing %q, but this device is %q (thing_name); make them agree", f.Template, shortID(created.CertificateID), reg.ThingName, f.ThingName))
	}
	return &rotation.Issued{Chain: chain, CertificateID: created.CertificateID, ThingName: reg.ThingName}, nil
}

// provisioningRejected classifies a /rejected answer: throttling and server
// errors are worth a retry, the rest (a bad CSR, an unknown template, a spent
// ownership token, a policy refusal) are not.
func provisioningRejected(op string, payload []byte) error {
	var pe Error
	if err := json.Unmarshal(payload, &pe); err != nil || pe.StatusCode == 0 && pe.ErrorCode == "" {
		return rotation.NewFatal(op, fmt.Errorf("rejected, and the exchange.Answer on /rejected is not the error JSON AWS IoT sends: %s", exchange.Snippet(payload)))
	}
	e := &rotation.Error{Op: op, StatusCode: pe.StatusCode, Code: pe.ErrorCode, Err: fmt.Errorf("rejected: %s", pe.ErrorMessage)}
	switch {
	case pe.StatusCode == 429 || strings.Contains(pe.ErrorCode, "Throttl"):
		e.Transient = true
		// AWS sends no retry-after; the device waits at least a second, the
		// rate the limit is counted in, and the backoff adds jitter.
		e.RetryAfter = time.Second
	case pe.StatusCode >= 500 || pe.ErrorCode == "InternalFailureException" || pe.ErrorCode == "ServiceUnavailableException":
		e.Transient = true
	}
	return e
}

func (f *Issuer) random() float64 {
	if f.Rand != nil {
		return f.Rand()
	}
	return rand.Float64()
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
