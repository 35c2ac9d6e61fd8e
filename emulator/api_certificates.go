package emulator

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"

	"github.com/thingcert/thingcert/keystore"
)

// certificateVersion is every certificate's customerVersion and generation:
// the emulator keeps no history of a certificate's changes.
const certificateVersion = 1

type validityJSON struct {
	NotBefore epoch `json:"notBefore"`
	NotAfter  epoch `json:"notAfter"`
}

type certificateDescriptionJSON struct {
	CertificateArn   string       `json:"certificateArn"`
	CertificateID    string       `json:"certificateId"`
	CACertificateID  string       `json:"caCertificateId,omitempty"`
	Status           string       `json:"status"`
	CertificatePem   string       `json:"certificatePem"`
	OwnedBy          string       `json:"ownedBy"`
	CreationDate     epoch        `json:"creationDate"`
	LastModifiedDate epoch        `json:"lastModifiedDate"`
	CustomerVersion  int          `json:"customerVersion"`
	GenerationID     string       `json:"generationId"`
	Validity         validityJSON `json:"validity"`
	CertificateMode  string       `json:"certificateMode"`
}

type certificateJSON struct {
	CertificateArn  string `json:"certificateArn"`
	CertificateID   string `json:"certificateId"`
	Status          string `json:"status"`
	CertificateMode string `json:"certificateMode"`
	CreationDate    epoch  `json:"creationDate"`
}

func certificateARNs(c *apiCall, id string) map[string]string {
	return map[string]string{"certificateArn": c.ARN("cert/" + id), "certificateId": id}
}

// setAsActive reads setAsActive: ACTIVE when true, else INACTIVE (AWS's
// default for the certificates it issues and registers).
func setAsActive(c *apiCall) (CertificateStatus, error) {
	active, err := c.QueryBool("setAsActive", false)
	if err != nil {
		return "", err
	}
	if active {
		return StatusActive, nil
	}
	return StatusInactive, nil
}

func apiCreateKeysAndCertificate(ctx context.Context, c *apiCall) (any, error) {
	status, err := setAsActive(c)
	if err != nil {
		return nil, err
	}
	// AWS IoT makes an RSA-2048 key: PKCS#1 private key, PKIX public key.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	cert, err := c.Emu.issueForKey(ctx, c.Account, &key.PublicKey, status)
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"certificateArn": c.ARN("cert/" + cert.ID),
		"certificateId":  cert.ID,
		"certificatePem": cert.PEM,
		"keyPair": map[string]string{
			"PrivateKey": string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})),
			"PublicKey":  string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})),
		},
	}, nil
}

func apiCreateCertificateFromCsr(ctx context.Context, c *apiCall) (any, error) {
	status, err := setAsActive(c)
	if err != nil {
		return nil, err
	}
	var in struct {
		CSR string `json:"certificateSigningRequest"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	if in.CSR == "" {
		return nil, invalidRequest("certificateSigningRequest is required (a PEM CSR)")
	}
	cert, err := c.Emu.IssueCertificate(ctx, c.Account, []byte(in.CSR), IssueOptions{Status: status})
	if errors.Is(err, keystore.ErrPolicy) {
		// AWS names a CSR it refuses an invalid request.
		return nil, invalidRequest("%v", err)
	}
	if err != nil {
		return nil, err
	}
	out := certificateARNs(c, cert.ID)
	out["certificatePem"] = cert.PEM
	return out, nil
}

// registerStatus is the status of a certificate being registered: status from
// the body, else the deprecated setAsActive query, else INACTIVE.
func registerStatus(c *apiCall, body string) (CertificateStatus, error) {
	if body != "" {
		return ParseCertificateStatus(body)
	}
	if c.Query("setAsActive") != "" {
		return setAsActive(c)
	}
	return StatusInactive, nil
}

func apiRegisterCertificate(ctx context.Context, c *apiCall) (any, error) {
	var in struct {
		CertificatePem   string `json:"certificatePem"`
		CACertificatePem string `json:"caCertificatePem"`
		Status           string `json:"status"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	if in.CertificatePem == "" {
		return nil, invalidRequest("certificatePem is required")
	}
	status, err := registerStatus(c, in.Status)
	if err != nil {
		return nil, err
	}
	if in.CACertificatePem != "" {
		// The CA it names must be registered here; the registry then checks
		// the signature against the account's CAs.
		ca, err := parseOneCert([]byte(in.CACertificatePem))
		if err != nil {
			return nil, apiErrorf("CertificateValidationException", http.StatusBadRequest, "caCertificatePem: %v", err)
		}
		if _, err := c.Emu.caByID(ctx, c.Account, CertificateID(ca.Raw)); err != nil {
			return nil, invalidRequest("the CA certificate %s (%s) is not registered in this account: register it first (RegisterCACertificate)", CertificateID(ca.Raw), ca.Subject)
		}
	}
	cert, err := c.Emu.RegisterCertificate(ctx, c.Account, []byte(in.CertificatePem), CertificateOptions{Status: status})
	if err != nil {
		return nil, err
	}
	return certificateARNs(c, cert.ID), nil
}

func apiRegisterCertificateWithoutCA(ctx context.Context, c *apiCall) (any, error) {
	var in struct {
		CertificatePem string `json:"certificatePem"`
		Status         string `json:"status"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	if in.CertificatePem == "" {
		return nil, invalidRequest("certificatePem is required")
	}
	status, err := registerStatus(c, in.Status)
	if err != nil {
		return nil, err
	}
	cert, err := c.Emu.RegisterCertificate(ctx, c.Account, []byte(in.CertificatePem), CertificateOptions{WithoutCA: true, Status: status})
	if err != nil {
		return nil, err
	}
	return certificateARNs(c, cert.ID), nil
}

func describeCertificate(c *apiCall, cert Certificate) certificateDescriptionJSON {
	return certificateDescriptionJSON{
		CertificateArn:  c.ARN("cert/" + cert.ID),
		CertificateID:   cert.ID,
		CACertificateID: cert.CAID,
		Status:          string(cert.Status),
		CertificatePem:  cert.PEM,
		OwnedBy:         accountID(c.Account),
		CreationDate:    epoch(cert.CreatedAt),
		// The emulator does not record changes: the creation date stands in.
		LastModifiedDate: epoch(cert.CreatedAt),
		CustomerVersion:  certificateVersion,
		GenerationID:     cert.ID[:36],
		Validity:         validityJSON{epoch(cert.NotBefore), epoch(cert.NotAfter)},
		CertificateMode:  string(cert.Mode),
	}
}

func apiDescribeCertificate(ctx context.Context, c *apiCall) (any, error) {
	cert, err := c.Emu.Certificate(ctx, c.Account, c.Path("certificateId"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"certificateDescription": describeCertificate(c, cert)}, nil
}

// markerPage is one page of a list ordered by creation date (newest first
// unless isAscendingOrder), with pageSize and marker/nextMarker as
// ListCertificates takes them. The marker names the last ID returned.
func markerPage[T any](c *apiCall, items []T, id func(T) string) (page []T, next string, err error) {
	size, err := c.QueryInt("pageSize", 1, 250, 25)
	if err != nil {
		return nil, "", err
	}
	asc, err := c.QueryBool("isAscendingOrder", false)
	if err != nil {
		return nil, "", err
	}
	if !asc {
		slices.Reverse(items)
	}
	start := 0
	if m := c.Query("marker"); m != "" {
		after, err := decodeToken(m)
		if err != nil {
			return nil, "", err
		}
		i := slices.IndexFunc(items, func(t T) bool { return id(t) == after })
		if i < 0 {
			return nil, "", invalidRequest("marker %q names a certificate that is gone: list again from the start", m)
		}
		start = i + 1
	}
	end := min(start+size, len(items))
	page = items[start:end]
	if end < len(items) && len(page) > 0 {
		next = encodeToken(id(page[len(page)-1]))
	}
	return page, next, nil
}

func listCertificates(c *apiCall, certs []Certificate) (any, error) {
	page, next, err := markerPage(c, certs, func(x Certificate) string { return x.ID })
	if err != nil {
		return nil, err
	}
	out := struct {
		Certificates []certificateJSON `json:"certificates"`
		NextMarker   string            `json:"nextMarker,omitempty"`
	}{Certificates: make([]certificateJSON, 0, len(page)), NextMarker: next}
	for _, x := range page {
		out.Certificates = append(out.Certificates, certificateJSON{CertificateArn: c.ARN("cert/" + x.ID), CertificateID: x.ID, Status: string(x.Status), CertificateMode: string(x.Mode), CreationDate: epoch(x.CreatedAt)})
	}
	return out, nil
}

func apiListCertificates(ctx context.Context, c *apiCall) (any, error) {
	certs, err := c.Emu.Certificates(ctx, c.Account)
	if err != nil {
		return nil, err
	}
	return listCertificates(c, certs)
}

func apiListCertificatesByCA(ctx context.Context, c *apiCall) (any, error) {
	caID := c.Path("caCertificateId")
	if _, err := c.Emu.caByID(ctx, c.Account, caID); err != nil {
		return nil, err
	}
	certs, err := c.Emu.Certificates(ctx, c.Account)
	if err != nil {
		return nil, err
	}
	certs = slices.DeleteFunc(certs, func(x Certificate) bool { return x.CAID != caID })
	return listCertificates(c, certs)
}

func apiUpdateCertificate(ctx context.Context, c *apiCall) (any, error) {
	s := c.Query("newStatus")
	if s == "" {
		return nil, invalidRequest("newStatus is required")
	}
	status, err := ParseCertificateStatus(s)
	if err != nil || string(status) != s {
		return nil, invalidRequest("newStatus %q: use one of ACTIVE, INACTIVE, REVOKED, REGISTER_INACTIVE", s)
	}
	if status == StatusPendingActivation || status == StatusPendingTransfer {
		// AWS: statuses used internally by IoT, refused here.
		return nil, invalidRequest("newStatus %s cannot be set: it is a status AWS IoT sets itself", status)
	}
	return nil, c.Emu.SetCertificateStatus(ctx, c.Account, c.Path("certificateId"), status)
}

func apiDeleteCertificate(ctx context.Context, c *apiCall) (any, error) {
	id := c.Path("certificateId")
	// forceDelete lets AWS delete a certificate with policies still attached
	// (it detaches them); without it, attached policies are a DeleteConflict.
	force, err := c.QueryBool("forceDelete", false)
	if err != nil {
		return nil, err
	}
	cert, err := c.Emu.Certificate(ctx, c.Account, id)
	if err != nil {
		return nil, err
	}
	// AWS's refusals, checked here so the API answers them whatever the
	// registry's own rules.
	if cert.Status == StatusActive {
		return nil, apiErrorf("CertificateStateException", http.StatusNotAcceptable, "certificate %s is ACTIVE: set it INACTIVE (UpdateCertificate) before deleting it", id)
	}
	if len(cert.Things) > 0 {
		return nil, apiErrorf("DeleteConflictException", http.StatusConflict, "certificate %s is attached to things %v: detach it (DetachThingPrincipal) before deleting it", id, cert.Things)
	}
	if force {
		ps, err := c.Emu.AttachedPolicies(ctx, c.Account, id)
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			if err := c.Emu.DetachPolicy(ctx, c.Account, p.Name, id); err != nil {
				return nil, err
			}
		}
	}
	return nil, c.Emu.DeleteCertificate(ctx, c.Account, id)
}

func apiGetRegistrationCode(ctx context.Context, c *apiCall) (any, error) {
	return map[string]string{"registrationCode": c.Key.RegistrationCode}, nil
}

// caByID finds a CA registered in an account.
func (r *Registry) caByID(ctx context.Context, account, id string) (CA, error) {
	cas, err := r.CAs(ctx, account)
	if err != nil {
		return CA{}, err
	}
	for _, ca := range cas {
		if ca.ID == id {
			return ca, nil
		}
	}
	return CA{}, fmt.Errorf("emulator: CA %s in account %s: %w", id, account, ErrNotFound)
}

func apiRegisterCACertificate(ctx context.Context, c *apiCall) (any, error) {
	var in struct {
		CACertificate           string                `json:"caCertificate"`
		VerificationCertificate string                `json:"verificationCertificate"`
		CertificateMode         string                `json:"certificateMode"`
		RegistrationConfig      *CARegistrationConfig `json:"registrationConfig"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	status, err := setAsActive(c)
	if err != nil {
		return nil, err
	}
	auto, err := c.QueryBool("allowAutoRegistration", false)
	if err != nil {
		return nil, err
	}
	if in.CACertificate == "" {
		return nil, invalidRequest("caCertificate is required")
	}
	mode, err := ParseCertificateMode(in.CertificateMode)
	if err != nil || (in.CertificateMode != "" && string(mode) != in.CertificateMode) {
		return nil, invalidRequest("certificateMode %q: use DEFAULT or SNI_ONLY", in.CertificateMode)
	}
	ca, err := parseOneCert([]byte(in.CACertificate))
	if err != nil {
		return nil, apiErrorf("CertificateValidationException", http.StatusBadRequest, "caCertificate: %v", err)
	}
	if err := checkVerificationCertificate(ca, mode, in.VerificationCertificate, c.Key.RegistrationCode); err != nil {
		return nil, err
	}
	if mode == ModeDefault {
		if err := defaultModeTaken(ctx, c, CertificateID(ca.Raw)); err != nil {
			return nil, err
		}
	}
	if rc := in.RegistrationConfig; rc != nil && rc.TemplateName != "" {
		if _, err := c.Emu.template(ctx, c.Account, rc.TemplateName); err != nil {
			return nil, err
		}
	}
	out, err := c.Emu.RegisterCA(ctx, c.Account, []byte(in.CACertificate), CAOptions{Mode: mode, Status: status, AutoRegistration: auto, Registration: in.RegistrationConfig})
	if err != nil {
		return nil, err
	}
	return map[string]string{"certificateArn": c.ARN("cacert/" + out.ID), "certificateId": out.ID}, nil
}

// defaultModeTaken applies AWS's rule that one account per region registers
// a CA in DEFAULT mode (where its certificates connect without SNI, so the CA
// alone must tell the account); SNI_ONLY is how several accounts share it.
// It is checked here, in the AWS API, and not by Registry.RegisterCA, whose
// callers (tests, the admin commands) may set up what AWS would refuse.
func defaultModeTaken(ctx context.Context, c *apiCall, caID string) error {
	accts, err := c.Emu.Accounts(ctx)
	if err != nil {
		return err
	}
	region := func(name string) string {
		for _, a := range accts {
			if a.Name == name {
				if a.Region == "" {
					return defaultRegion
				}
				return a.Region
			}
		}
		return ""
	}
	here := region(c.Account)
	cas, err := c.Emu.CAs(ctx, "")
	if err != nil {
		return err
	}
	for _, other := range cas {
		if other.ID == caID && other.Account != c.Account && other.Mode == ModeDefault && region(other.Account) == here {
			return apiErrorf("ResourceAlreadyExistsException", http.StatusConflict,
				"CA certificate %s is registered in DEFAULT mode by another account in %s; one account per region may: register it with certificateMode SNI_ONLY to use it in several accounts", caID, here)
		}
	}
	return nil
}

// checkVerificationCertificate applies AWS's proof of possession of a CA's
// key: in DEFAULT mode a verification certificate whose common name is the
// account's registration code, signed by the CA; in SNI_ONLY mode none.
func checkVerificationCertificate(ca *x509.Certificate, mode CertificateMode, verificationPEM, code string) error {
	if mode == ModeSNIOnly {
		if verificationPEM != "" {
			return invalidRequest("verificationCertificate must be empty when certificateMode is SNI_ONLY")
		}
		return nil
	}
	if verificationPEM == "" {
		return invalidRequest("verificationCertificate is required when certificateMode is DEFAULT: sign one with the CA's key, with the registration code (GetRegistrationCode) as its common name")
	}
	v, err := parseOneCert([]byte(verificationPEM))
	if err != nil {
		return apiErrorf("CertificateValidationException", http.StatusBadRequest, "verificationCertificate: %v", err)
	}
	if err := v.CheckSignatureFrom(ca); err != nil {
		return apiErrorf("CertificateValidationException", http.StatusBadRequest, "the verification certificate is not signed by the CA certificate %q: %v", ca.Subject, err)
	}
	if v.Subject.CommonName != code {
		return apiErrorf("RegistrationCodeValidationException", http.StatusBadRequest, "the verification certificate's common name %q is not this account's registration code (GetRegistrationCode)", v.Subject.CommonName)
	}
	return nil
}

type caDescriptionJSON struct {
	CertificateArn         string       `json:"certificateArn"`
	CertificateID          string       `json:"certificateId"`
	Status                 string       `json:"status"`
	CertificatePem         string       `json:"certificatePem"`
	OwnedBy                string       `json:"ownedBy"`
	CreationDate           epoch        `json:"creationDate"`
	LastModifiedDate       epoch        `json:"lastModifiedDate"`
	AutoRegistrationStatus string       `json:"autoRegistrationStatus"`
	CustomerVersion        int          `json:"customerVersion"`
	GenerationID           string       `json:"generationId"`
	Validity               validityJSON `json:"validity"`
	CertificateMode        string       `json:"certificateMode"`
}

func autoRegistrationStatus(on bool) string {
	if on {
		return "ENABLE"
	}
	return "DISABLE"
}

func apiDescribeCACertificate(ctx context.Context, c *apiCall) (any, error) {
	ca, err := c.Emu.caByID(ctx, c.Account, c.Path("certificateId"))
	if err != nil {
		return nil, err
	}
	out := map[string]any{"certificateDescription": caDescriptionJSON{
		CertificateArn:         c.ARN("cacert/" + ca.ID),
		CertificateID:          ca.ID,
		Status:                 string(ca.Status),
		CertificatePem:         ca.PEM,
		OwnedBy:                accountID(c.Account),
		CreationDate:           epoch(ca.CreatedAt),
		LastModifiedDate:       epoch(ca.CreatedAt),
		AutoRegistrationStatus: autoRegistrationStatus(ca.AutoRegistration),
		CustomerVersion:        certificateVersion,
		GenerationID:           ca.ID[:36],
		Validity:               validityJSON{epoch(ca.NotBefore), epoch(ca.NotAfter)},
		CertificateMode:        string(ca.Mode),
	}}
	if ca.Registration != nil {
		out["registrationConfig"] = ca.Registration
	}
	return out, nil
}

func apiUpdateCACertificate(ctx context.Context, c *apiCall) (any, error) {
	var in struct {
		RegistrationConfig     *CARegistrationConfig `json:"registrationConfig"`
		RemoveAutoRegistration bool                  `json:"removeAutoRegistration"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	u := CAUpdate{Registration: in.RegistrationConfig, RemoveRegistration: in.RemoveAutoRegistration}
	switch s := CertificateStatus(c.Query("newStatus")); s {
	case "":
	case StatusActive, StatusInactive:
		u.Status = &s
	default:
		return nil, invalidRequest("newStatus %q: a CA is ACTIVE or INACTIVE", s)
	}
	switch a := c.Query("newAutoRegistrationStatus"); a {
	case "":
	case "ENABLE", "DISABLE":
		on := a == "ENABLE"
		u.AutoRegistration = &on
	default:
		return nil, invalidRequest("newAutoRegistrationStatus %q: use ENABLE or DISABLE", a)
	}
	if rc := in.RegistrationConfig; rc != nil && rc.TemplateName != "" {
		if _, err := c.Emu.template(ctx, c.Account, rc.TemplateName); err != nil {
			return nil, err
		}
	}
	return nil, c.Emu.UpdateCA(ctx, c.Account, c.Path("certificateId"), u)
}

func apiListCACertificates(ctx context.Context, c *apiCall) (any, error) {
	cas, err := c.Emu.CAs(ctx, c.Account)
	if err != nil {
		return nil, err
	}
	if name := c.Query("templateName"); name != "" {
		cas = slices.DeleteFunc(cas, func(x CA) bool { return x.Registration == nil || x.Registration.TemplateName != name })
	}
	sort.SliceStable(cas, func(i, j int) bool { return cas[i].CreatedAt.Before(cas[j].CreatedAt) })
	page, next, err := markerPage(c, cas, func(x CA) string { return x.ID })
	if err != nil {
		return nil, err
	}
	type caJSON struct {
		CertificateArn string `json:"certificateArn"`
		CertificateID  string `json:"certificateId"`
		Status         string `json:"status"`
		CreationDate   epoch  `json:"creationDate"`
	}
	out := struct {
		Certificates []caJSON `json:"certificates"`
		NextMarker   string   `json:"nextMarker,omitempty"`
	}{Certificates: make([]caJSON, 0, len(page)), NextMarker: next}
	for _, x := range page {
		out.Certificates = append(out.Certificates, caJSON{c.ARN("cacert/" + x.ID), x.ID, string(x.Status), epoch(x.CreatedAt)})
	}
	return out, nil
}
