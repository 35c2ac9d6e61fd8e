package emulator

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/thingcert/thingcert/emulator/iotpolicy"
)

// Fleet provisioning MQTT API topics (JSON payloads).
const (
	topicCreateFromCSR = "$aws/certificates/create-from-csr/json"
	topicCreateKeys    = "$aws/certificates/create/json"
	topicTemplates     = "$aws/provisioning-templates/"
)

// provisioningError is the body of every fleet-provisioning /rejected reply.
// errorCode InvalidCertificateOwnershipToken (with its messages) is what AWS
// IoT sends; the others follow AWS's exception names.
type provisioningError struct {
	StatusCode   int    `json:"statusCode"`
	ErrorCode    string `json:"errorCode"`
	ErrorMessage string `json:"errorMessage"`
}

const (
	errInvalidToken    = "InvalidCertificateOwnershipToken"
	errInvalidRequest  = "InvalidRequestException"
	errNotFound        = "ResourceNotFoundException"
	errThrottling      = "ThrottlingException"
	errInternalFailure = "InternalFailureException"
)

func badRequest(code, format string, args ...any) *provisioningError {
	return &provisioningError{StatusCode: 400, ErrorCode: code, ErrorMessage: fmt.Sprintf(format, args...)}
}

// isProvisioningTopic reports whether a topic belongs to the fleet-provisioning API.
func isProvisioningTopic(topic string) bool {
	return strings.HasPrefix(topic, "$aws/certificates/") || strings.HasPrefix(topic, topicTemplates)
}

// handleProvisioning answers a request on the fleet-provisioning MQTT API from
// a connection in account. ok is false when the topic is not a request (a reply
// topic, or CBOR, which the emulator does not speak).
func (r *Registry) handleProvisioning(account, topic string, payload []byte) (reply message, ok bool) {
	var accepted any
	var perr *provisioningError
	switch {
	case topic == topicCreateFromCSR:
		accepted, perr = r.createCertificateFromCSR(account, payload)
	case topic == topicCreateKeys:
		accepted, perr = r.createKeysAndCertificate(account)
	case strings.HasPrefix(topic, topicTemplates) && strings.HasSuffix(topic, "/provision/json"):
		name := strings.TrimSuffix(strings.TrimPrefix(topic, topicTemplates), "/provision/json")
		if strings.Contains(name, "/") {
			return message{}, false
		}
		accepted, perr = r.registerThing(account, name, payload)
	default:
		if strings.HasSuffix(topic, "/cbor") {
			r.log.Warn("emulator: fleet provisioning request in CBOR ignored: the emulator answers the JSON API only", "account", account, "topic", topic)
		}
		return message{}, false
	}
	if perr != nil {
		b, _ := json.Marshal(perr)
		r.log.Info("emulator: fleet provisioning request rejected", "account", account, "topic", topic, "status_code", perr.StatusCode, "error_code", perr.ErrorCode, "error_message", perr.ErrorMessage)
		return message{Topic: topic + "/rejected", Payload: b}, true
	}
	b, _ := json.Marshal(accepted)
	return message{Topic: topic + "/accepted", Payload: b}, true
}

type createFromCSRAccepted struct {
	CertificateOwnershipToken string `json:"certificateOwnershipToken"`
	CertificateID             string `json:"certificateId"`
	CertificatePEM            string `json:"certificatePem"`
}

type createKeysAccepted struct {
	CertificateID             string `json:"certificateId"`
	CertificatePEM            string `json:"certificatePem"`
	PrivateKey                string `json:"privateKey"`
	CertificateOwnershipToken string `json:"certificateOwnershipToken"`
}

type registerThingAccepted struct {
	DeviceConfiguration map[string]string `json:"deviceConfiguration"`
	ThingName           string            `json:"thingName"`
}

func (r *Registry) throttled(l *limiter, account, op string) *provisioningError {
	ok := l.allow(account, r.cfg.now())
	r.count(op, !ok)
	if ok {
		return nil
	}
	return &provisioningError{StatusCode: 429, ErrorCode: errThrottling, ErrorMessage: fmt.Sprintf("Rate exceeded: %s is limited to %g requests per second per account; retry with backoff and jitter", op, l.rate)}
}

func (r *Registry) createCertificateFromCSR(account string, payload []byte) (any, *provisioningError) {
	if perr := r.throttled(r.createLimit, account, "CreateCertificateFromCsr"); perr != nil {
		return nil, perr
	}
	var req struct {
		CSR string `json:"certificateSigningRequest"`
	}
	if err := json.Unmarshal(payload, &req); err != nil {
		return nil, badRequest(errInvalidRequest, "The payload is not JSON: %v", err)
	}
	if strings.TrimSpace(req.CSR) == "" {
		return nil, badRequest(errInvalidRequest, "certificateSigningRequest is required (a PEM CSR)")
	}
	csr, err := parseCSR([]byte(req.CSR))
	if err != nil {
		return nil, badRequest(errInvalidRequest, "The certificate signing request is not valid: %v", err)
	}
	id, certPEM, token, perr := r.createPending(account, csr.PublicKey, csr.Subject)
	if perr != nil {
		return nil, perr
	}
	return createFromCSRAccepted{CertificateOwnershipToken: token, CertificateID: id, CertificatePEM: certPEM}, nil
}

func (r *Registry) createKeysAndCertificate(account string) (any, *provisioningError) {
	if perr := r.throttled(r.createLimit, account, "CreateKeysAndCertificate"); perr != nil {
		return nil, perr
	}
	// AWS IoT makes an RSA-2048 key and sends it in PKCS#1 PEM: the device can
	// only import it, so it never was secret from the cloud.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, &provisioningError{StatusCode: 500, ErrorCode: errInternalFailure, ErrorMessage: err.Error()}
	}
	id, certPEM, token, perr := r.createPending(account, &key.PublicKey, pkix.Name{})
	if perr != nil {
		return nil, perr
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	return createKeysAccepted{CertificateID: id, CertificatePEM: certPEM, PrivateKey: string(keyPEM), CertificateOwnershipToken: token}, nil
}

// createPending issues a PENDING_ACTIVATION certificate and its ownership token.
func (r *Registry) createPending(account string, pub any, subject pkix.Name) (id, certPEM, token string, perr *provisioningError) {
	raw := make([]byte, 48)
	_, _ = rand.Read(raw)
	token = base64.RawURLEncoding.EncodeToString(raw)
	err := r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		r.sweepLocked(tx, now)
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		var rec *certRec
		id, rec, err = r.issueLocked(tx, a, pub, subject, StatusPendingActivation, 0, now)
		if err != nil {
			return nil, err
		}
		certPEM = rec.PEM
		a.Tokens[token] = &tokenRec{CertID: id, ExpiresAt: now.Add(r.cfg.tokenLifetime())}
		tx.touchToken(account, token)
		return nil, nil
	})
	if err != nil {
		return "", "", "", &provisioningError{StatusCode: 500, ErrorCode: errInternalFailure, ErrorMessage: err.Error()}
	}
	r.log.Info("emulator: certificate created by fleet provisioning", "account", account, "cert_id", id, "status", StatusPendingActivation)
	return id, certPEM, token, nil
}

func (r *Registry) registerThing(account, templateName string, payload []byte) (any, *provisioningError) {
	if perr := r.throttled(r.registerLimit, account, "RegisterThing"); perr != nil {
		return nil, perr
	}
	var req struct {
		Token      string         `json:"certificateOwnershipToken"`
		Parameters map[string]any `json:"parameters"`
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if err := dec.Decode(&req); err != nil {
		return nil, badRequest(errInvalidRequest, "The payload is not JSON: %v", err)
	}
	if req.Token == "" {
		return nil, badRequest(errInvalidToken, "Certificate ownership token cannot be empty.")
	}
	params := map[string]string{}
	for k, v := range req.Parameters {
		switch x := v.(type) {
		case string:
			params[k] = x
		case json.Number:
			params[k] = x.String()
		default:
			return nil, badRequest(errInvalidRequest, "parameters[%q] must be a string", k)
		}
	}
	var out registerThingAccepted
	var perr *provisioningError
	var certID string
	err := r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		r.sweepLocked(tx, now)
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		tok, ok := a.Tokens[req.Token]
		var cert *certRec
		if ok {
			cert = a.Certs[tok.CertID]
		}
		if cert == nil {
			perr = badRequest(errInvalidToken, "Certificate ownership token is invalid or has expired.")
			return nil, nil
		}
		tmpl, ok := a.Templates[templateName]
		if !ok {
			perr = &provisioningError{StatusCode: 404, ErrorCode: errNotFound, ErrorMessage: fmt.Sprintf("Provisioning template %s does not exist in this account.", templateName)}
			return nil, nil
		}
		if tmpl.Disabled {
			perr = badRequest(errInvalidRequest, "Provisioning template %s is disabled.", templateName)
			return nil, nil
		}
		doc, err := parseTemplate(tmpl.Body)
		if err != nil {
			perr = badRequest(errInvalidRequest, "Provisioning template %s: %v", templateName, err)
			return nil, nil
		}
		plan, err := evalTemplate(doc, params, tok.CertID, cert.cert)
		if err != nil {
			perr = badRequest(errInvalidRequest, "Provisioning template %s: %v", templateName, err)
			return nil, nil
		}
		if msg := applyPlanLocked(tx, a, plan, tok.CertID, now); msg != "" {
			perr = badRequest(errInvalidRequest, "Provisioning template %s: %s", templateName, msg)
			return nil, nil
		}
		cert.Status = plan.CertificateStatus
		delete(a.Tokens, req.Token)
		tx.touchCert(account, tok.CertID)
		tx.touchToken(account, req.Token)
		certID = tok.CertID
		out = registerThingAccepted{DeviceConfiguration: plan.DeviceConfiguration, ThingName: plan.ThingName}
		if out.DeviceConfiguration == nil {
			out.DeviceConfiguration = map[string]string{}
		}
		return nil, nil
	})
	if err != nil {
		return nil, &provisioningError{StatusCode: 500, ErrorCode: errInternalFailure, ErrorMessage: err.Error()}
	}
	if perr != nil {
		return nil, perr
	}
	r.log.Info("emulator: thing registered by fleet provisioning", "account", account, "template", templateName, "thing", out.ThingName, "cert_id", certID)
	return out, nil
}

// applyPlanLocked does what a template's plan says for a certificate: its
// policies (made when the template gives their document), its thing and
// attributes. It checks before it changes anything; a refusal is returned as
// the message a device or a log reads. The certificate's status is the
// caller's to set.
func applyPlanLocked(tx *changeSet, a *accountRec, plan provisionPlan, certID string, now time.Time) string {
	for _, p := range plan.Policies {
		if _, ok := a.Policies[p.Name]; !ok && p.Document == "" {
			return fmt.Sprintf("policy %s does not exist in this account; create it first or give a PolicyDocument", p.Name)
		}
	}
	for _, p := range plan.Policies {
		if _, ok := a.Policies[p.Name]; !ok {
			doc, _ := iotpolicy.Parse(p.Document) // evalTemplate parsed it
			if _, err := createPolicyLocked(tx, a, p.Name, p.Document, doc, now); err != nil {
				return err.Error()
			}
		}
		if err := attachPolicyLocked(tx, a, p.Name, certID); err != nil {
			return err.Error()
		}
	}
	if plan.ThingName != "" {
		attachLocked(tx, a, plan.ThingName, certID, now)
		if plan.ThingAttributes != nil {
			t := a.Things[plan.ThingName]
			tx.touchThing(a.Name, plan.ThingName)
			if t.Attributes == nil {
				t.Attributes = map[string]string{}
			}
			maps.Copy(t.Attributes, plan.ThingAttributes)
		}
	}
	return ""
}
