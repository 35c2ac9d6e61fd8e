package emulator

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"sort"
	"time"
)

// Just-in-time registration (JITR) and provisioning (JITP), as AWS IoT does
// them for a CA registered with auto-registration: the first connection of an
// unknown certificate that the CA signed registers it PENDING_ACTIVATION,
// publishes $aws/events/certificates/registered/<caCertificateId> and is
// closed; with a provisioning template in the CA's registration config
// (JITP) the template then runs with the certificate's subject fields as its
// parameters, which activates the certificate and attaches its thing and
// policies, so the device's next attempt is accepted. Without a template
// (JITR) the certificate waits, PENDING_ACTIVATION, for a program of the
// owner's to activate it (UpdateCertificate).

// autoRegistrationCALocked is the ID of an ACTIVE CA of the account that
// allows auto-registration and signed the chain, or "".
func (r *Registry) autoRegistrationCALocked(a *accountRec, chain []*x509.Certificate, now time.Time) string {
	ids := make([]string, 0, len(a.CAs))
	for id, ca := range a.CAs {
		if ca.AutoRegistration && ca.Status == StatusActive {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	for _, id := range ids {
		if verifyChain(chain, a.CAs[id].cert, now) == nil {
			return id
		}
	}
	return ""
}

// certificateRegisteredEvent is the payload of
// $aws/events/certificates/registered/<caCertificateId>.
type certificateRegisteredEvent struct {
	CertificateID                    string            `json:"certificateId"`
	CACertificateID                  string            `json:"caCertificateId"`
	Timestamp                        int64             `json:"timestamp"`
	CertificateStatus                CertificateStatus `json:"certificateStatus"`
	AWSAccountID                     string            `json:"awsAccountId"`
	CertificateRegistrationTimestamp *int64            `json:"certificateRegistrationTimestamp"`
}

// autoRegister registers a certificate its CA's auto-registration takes, and
// runs the CA's JITP template if it has one. It returns what happened, for
// the connection's refusal and the history.
func (e *Emulator) autoRegister(account, caID string, chain []*x509.Certificate) string {
	if len(chain) == 0 {
		return "no certificate"
	}
	leaf := chain[0]
	certID := CertificateID(leaf.Raw)
	note := ""
	err := e.Registry.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		a, err := e.Registry.accountLocked(account)
		if err != nil {
			return nil, err
		}
		if _, ok := a.Certs[certID]; ok {
			note = "already registered"
			return nil, nil // two first connections at once: one registers
		}
		ca, ok := a.CAs[caID]
		if !ok {
			note = "its CA is gone"
			return nil, nil
		}
		rec := &certRec{PEM: string(encodeCert(leaf.Raw)), Status: StatusPendingActivation, CAID: caID, CreatedAt: now, cert: leaf}
		a.Certs[certID] = rec
		tx.touchCert(account, certID)
		note = fmt.Sprintf("certificate %s registered PENDING_ACTIVATION (JITR)", certID)
		if reg := ca.Registration; reg != nil && (reg.TemplateBody != "" || reg.TemplateName != "") {
			note = e.Registry.jitpLocked(tx, a, reg, certID, rec, now)
		}
		ev, _ := json.Marshal(certificateRegisteredEvent{CertificateID: certID, CACertificateID: caID, Timestamp: now.UnixMilli(),
			CertificateStatus: StatusPendingActivation, AWSAccountID: accountID(account)})
		return []func(){func() { e.notify(account, "$aws/events/certificates/registered/"+caID, ev) }}, nil
	})
	if err != nil {
		note = "registration failed: " + err.Error()
	}
	e.Registry.log.Info("emulator: just-in-time registration", "account", account, "ca_id", caID, "cert_id", certID, "result", note)
	return note
}

// jitpLocked runs a CA's provisioning template for a certificate it just
// registered: the parameters are the certificate's, the plan's thing,
// policies and status are applied. A template that cannot run (a subject
// field the certificate lacks, a missing policy) leaves the certificate
// PENDING_ACTIVATION, and says why.
func (r *Registry) jitpLocked(tx *changeSet, a *accountRec, reg *CARegistrationConfig, certID string, rec *certRec, now time.Time) string {
	body := []byte(reg.TemplateBody)
	if reg.TemplateName != "" {
		t, ok := a.Templates[reg.TemplateName]
		if !ok {
			return fmt.Sprintf("certificate %s registered PENDING_ACTIVATION; JITP template %s does not exist in the account", certID, reg.TemplateName)
		}
		body = t.Body
	}
	doc, err := parseTemplateFor(body, jitpTemplate)
	if err != nil {
		return fmt.Sprintf("certificate %s registered PENDING_ACTIVATION; the JITP template does not parse: %v", certID, err)
	}
	plan, err := evalTemplateFor(doc, jitpTemplate, nil, certID, rec.cert)
	if err != nil {
		return fmt.Sprintf("certificate %s registered PENDING_ACTIVATION; the JITP template failed: %v", certID, err)
	}
	if msg := applyPlanLocked(tx, a, plan, certID, now); msg != "" {
		return fmt.Sprintf("certificate %s registered PENDING_ACTIVATION; the JITP template failed: %s", certID, msg)
	}
	rec.Status = plan.CertificateStatus
	return fmt.Sprintf("certificate %s registered and provisioned by JITP (thing %q, status %s)", certID, plan.ThingName, rec.Status)
}
