package emulator

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
)

// certARN is a certificate's ARN as the API names it.
func certARN(t *testing.T, c *iot.Client, id string) string {
	t.Helper()
	d, err := c.DescribeCertificate(context.Background(), &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(d.CertificateDescription.CertificateArn)
}

// TestAPICertificateLifecycle: keys and certificate made by the API, attached
// to a thing, used by a device, deactivated (the device is refused), detached
// and deleted, with AWS's refusals on the way.
func TestAPICertificateLifecycle(t *testing.T) {
	e := startAPIEmu(t, Config{ClientConnectInterval: -1}, "prod") // the test connects in quick succession
	ctx := context.Background()
	c := newAPIClient(t, e.Emulator, "prod")

	kc, err := c.CreateKeysAndCertificate(ctx, &iot.CreateKeysAndCertificateInput{SetAsActive: true})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(kc.CertificateId)
	kb, _ := pem.Decode([]byte(aws.ToString(kc.KeyPair.PrivateKey)))
	if kb == nil || kb.Type != "RSA PRIVATE KEY" {
		t.Fatalf("private key: %q", aws.ToString(kc.KeyPair.PrivateKey))
	}
	key, err := x509.ParsePKCS1PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := pem.Decode([]byte(aws.ToString(kc.CertificatePem)))
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil || CertificateID(cert.Raw) != id || !key.PublicKey.Equal(cert.PublicKey) {
		t.Fatalf("certificate %s does not match the key pair (%v)", id, err)
	}
	if pb, _ := pem.Decode([]byte(aws.ToString(kc.KeyPair.PublicKey))); pb == nil || pb.Type != "PUBLIC KEY" {
		t.Errorf("public key: %q", aws.ToString(kc.KeyPair.PublicKey))
	}
	if !strings.HasSuffix(aws.ToString(kc.CertificateArn), ":cert/"+id) {
		t.Errorf("ARN %s", aws.ToString(kc.CertificateArn))
	}

	d, err := c.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
	if err != nil {
		t.Fatal(err)
	}
	cd := d.CertificateDescription
	if cd.Status != types.CertificateStatusActive || cd.CertificateMode != types.CertificateModeDefault || aws.ToString(cd.CertificatePem) != aws.ToString(kc.CertificatePem) ||
		aws.ToString(cd.CaCertificateId) != CertificateID(e.issuing.cert.Raw) || !cd.Validity.NotAfter.Equal(AWSCertificateNotAfter) ||
		cd.CreationDate == nil || !cd.CreationDate.Equal(e.clock.Now().Truncate(time.Millisecond)) || aws.ToString(cd.OwnedBy) == "" {
		t.Errorf("DescribeCertificate: %+v", cd)
	}

	if _, err := c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-1")}); err != nil {
		t.Fatal(err)
	}
	arn := aws.ToString(kc.CertificateArn)
	if _, err := c.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: aws.String("gw-1"), Principal: aws.String(arn)}); err != nil {
		t.Fatal(err)
	}
	_, err = c.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: aws.String("nope"), Principal: aws.String(arn)})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	_, err = c.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: aws.String("gw-1"), Principal: aws.String("arn:aws:iam::123456789012:user/x")})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	tp, err := c.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String("gw-1")})
	if err != nil || !slices.Equal(tp.Principals, []string{arn}) {
		t.Fatalf("ListThingPrincipals: %+v, %v", tp, err)
	}
	pt, err := c.ListPrincipalThings(ctx, &iot.ListPrincipalThingsInput{Principal: aws.String(arn)})
	if err != nil || !slices.Equal(pt.Things, []string{"gw-1"}) {
		t.Fatalf("ListPrincipalThings: %+v, %v", pt, err)
	}

	// Without a policy the certificate is refused at CONNECT, as on AWS;
	// with one attached through the API it connects.
	dev := &device{cert: cert, key: key, id: id}
	_, err = dial(t, e, dev, "gw-1", dialOpts{account: "prod"})
	expectRefused(t, e, dev, err, RulePolicy, e.Endpoint("prod"))
	cp, err := c.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("gw"), PolicyDocument: aws.String(AllowAllPolicy)})
	if err != nil || aws.ToString(cp.PolicyArn) != strings.Replace(arn, "cert/"+id, "policy/gw", 1) || aws.ToString(cp.PolicyVersionId) != "1" {
		t.Fatalf("CreatePolicy: %+v, %v", cp, err)
	}
	_, err = c.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("gw"), PolicyDocument: aws.String(AllowAllPolicy)})
	wantAPIError(t, err, "ResourceAlreadyExistsException", http.StatusConflict)
	_, err = c.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("bad"), PolicyDocument: aws.String(`{"Statement": "x"}`)})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	if _, err := c.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String("gw"), Target: aws.String(arn)}); err != nil {
		t.Fatal(err)
	}
	ap, err := c.ListAttachedPolicies(ctx, &iot.ListAttachedPoliciesInput{Target: aws.String(arn)})
	if err != nil || len(ap.Policies) != 1 || aws.ToString(ap.Policies[0].PolicyName) != "gw" {
		t.Fatalf("ListAttachedPolicies: %+v, %v", ap, err)
	}
	gp, err := c.GetPolicy(ctx, &iot.GetPolicyInput{PolicyName: aws.String("gw")})
	if err != nil || aws.ToString(gp.PolicyDocument) != AllowAllPolicy || gp.CreationDate == nil {
		t.Fatalf("GetPolicy: %+v, %v", gp, err)
	}
	_, err = c.DeletePolicy(ctx, &iot.DeletePolicyInput{PolicyName: aws.String("gw")})
	wantAPIError(t, err, "DeleteConflictException", http.StatusConflict)

	// The device connects with what CreateKeysAndCertificate gave it.
	mustDial(t, e, dev, "gw-1", dialOpts{account: "prod"}).Disconnect(0)

	// AWS refuses: deleting an ACTIVE certificate, deleting a thing with a
	// principal, the internal statuses.
	_, err = c.DeleteCertificate(ctx, &iot.DeleteCertificateInput{CertificateId: aws.String(id)})
	wantAPIError(t, err, "CertificateStateException", http.StatusNotAcceptable)
	_, err = c.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String("gw-1")})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	for _, s := range []types.CertificateStatus{types.CertificateStatusPendingActivation, types.CertificateStatusPendingTransfer, "BOGUS"} {
		_, err = c.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(id), NewStatus: s})
		wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	}
	_, err = c.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(strings.Repeat("0", 64)), NewStatus: types.CertificateStatusInactive})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)

	// Deactivated, the device is refused.
	if _, err := c.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(id), NewStatus: types.CertificateStatusInactive}); err != nil {
		t.Fatal(err)
	}
	_, err = dial(t, e, dev, "gw-1", dialOpts{account: "prod"})
	expectRefused(t, e, dev, err, RuleStatus, e.Endpoint("prod"))

	// Still attached: DeleteConflict.
	_, err = c.DeleteCertificate(ctx, &iot.DeleteCertificateInput{CertificateId: aws.String(id)})
	wantAPIError(t, err, "DeleteConflictException", http.StatusConflict)
	if _, err := c.DetachThingPrincipal(ctx, &iot.DetachThingPrincipalInput{ThingName: aws.String("gw-1"), Principal: aws.String(arn)}); err != nil {
		t.Fatal(err)
	}
	_, err = c.DetachThingPrincipal(ctx, &iot.DetachThingPrincipalInput{ThingName: aws.String("gw-1"), Principal: aws.String(arn)})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	// A policy still attached: DeleteConflict, unless forced.
	_, err = c.DeleteCertificate(ctx, &iot.DeleteCertificateInput{CertificateId: aws.String(id)})
	wantAPIError(t, err, "DeleteConflictException", http.StatusConflict)
	if _, err := c.DeleteCertificate(ctx, &iot.DeleteCertificateInput{CertificateId: aws.String(id), ForceDelete: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeletePolicy(ctx, &iot.DeletePolicyInput{PolicyName: aws.String("gw")}); err != nil {
		t.Fatalf("DeletePolicy once detached: %v", err)
	}
	_, err = c.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	_, err = c.ListPrincipalThings(ctx, &iot.ListPrincipalThingsInput{Principal: aws.String(arn)})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	if _, err := c.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String("gw-1")}); err != nil {
		t.Fatal(err)
	}
}

func csrPEMFor(t *testing.T, cn string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func TestAPICreateCertificateFromCsr(t *testing.T) {
	e := startAPIEmu(t, Config{}, "prod")
	ctx := context.Background()
	c := newAPIClient(t, e.Emulator, "prod")
	out, err := c.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: aws.String(csrPEMFor(t, "gw-7"))})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := e.Certificate(ctx, "prod", aws.ToString(out.CertificateId))
	// setAsActive absent: INACTIVE, as AWS.
	if err != nil || cert.Status != StatusInactive || cert.PEM != aws.ToString(out.CertificatePem) || !strings.Contains(cert.Subject, "gw-7") {
		t.Fatalf("registry: %+v, %v", cert, err)
	}
	_, err = c.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: aws.String("not a CSR")})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
}

// verificationCert is a certificate signed by ca with cn as its common name.
func verificationCert(t *testing.T, ca *testCA, cn string) string {
	t.Helper()
	return string(issue(t, ca, cn, certOpts{}).pem)
}

func TestAPIRegisterCAAndCertificates(t *testing.T) {
	e := startAPIEmu(t, Config{Templates: []Template{{Name: "jitp", Body: SimpleTemplate("gw-", "SerialNumber")}}}, "prod")
	ctx := context.Background()
	c := newAPIClient(t, e.Emulator, "prod")
	code, err := c.GetRegistrationCode(ctx, &iot.GetRegistrationCodeInput{})
	if err != nil || len(aws.ToString(code.RegistrationCode)) != 64 {
		t.Fatalf("GetRegistrationCode: %+v, %v", code, err)
	}
	regCode := aws.ToString(code.RegistrationCode)

	// DEFAULT mode needs a verification certificate with the code.
	caDefault := newTestCA(t, "Factory CA")
	_, err = c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: aws.String(string(caDefault.pem))})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	_, err = c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: aws.String(string(caDefault.pem)), VerificationCertificate: aws.String(verificationCert(t, caDefault, "not-the-code"))})
	wantAPIError(t, err, "RegistrationCodeValidationException", http.StatusBadRequest)
	_, err = c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: aws.String(string(caDefault.pem)), VerificationCertificate: aws.String(verificationCert(t, newTestCA(t, "Other"), regCode))})
	wantAPIError(t, err, "CertificateValidationException", http.StatusBadRequest)
	_, err = c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: aws.String(string(caDefault.pem)), VerificationCertificate: aws.String(verificationCert(t, caDefault, regCode)),
		RegistrationConfig: &types.RegistrationConfig{TemplateName: aws.String("missing")}})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	reg, err := c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{
		CaCertificate: aws.String(string(caDefault.pem)), VerificationCertificate: aws.String(verificationCert(t, caDefault, regCode)),
		SetAsActive: true, AllowAutoRegistration: true, RegistrationConfig: &types.RegistrationConfig{TemplateName: aws.String("jitp"), RoleArn: aws.String("arn:aws:iam::123456789012:role/JITP")},
	})
	if err != nil {
		t.Fatal(err)
	}
	caID := aws.ToString(reg.CertificateId)
	if caID != CertificateID(caDefault.cert.Raw) || !strings.HasSuffix(aws.ToString(reg.CertificateArn), ":cacert/"+caID) {
		t.Errorf("RegisterCACertificate: %+v", reg)
	}
	_, err = c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: aws.String(string(caDefault.pem)), VerificationCertificate: aws.String(verificationCert(t, caDefault, regCode))})
	wantAPIError(t, err, "ResourceAlreadyExistsException", http.StatusConflict)

	dca, err := c.DescribeCACertificate(ctx, &iot.DescribeCACertificateInput{CertificateId: aws.String(caID)})
	if err != nil {
		t.Fatal(err)
	}
	if d := dca.CertificateDescription; d.Status != types.CACertificateStatusActive || d.CertificateMode != types.CertificateModeDefault || d.AutoRegistrationStatus != types.AutoRegistrationStatusEnable ||
		aws.ToString(d.CertificatePem) != string(caDefault.pem) || !d.Validity.NotAfter.Equal(caDefault.cert.NotAfter) {
		t.Errorf("DescribeCACertificate: %+v", d)
	}
	if rc := dca.RegistrationConfig; rc == nil || aws.ToString(rc.TemplateName) != "jitp" || aws.ToString(rc.RoleArn) != "arn:aws:iam::123456789012:role/JITP" {
		t.Errorf("registrationConfig: %+v", rc)
	}

	// SNI_ONLY: no verification certificate, and none allowed.
	caSNI := newTestCA(t, "Partner CA")
	_, err = c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: aws.String(string(caSNI.pem)), CertificateMode: types.CertificateModeSniOnly, VerificationCertificate: aws.String(verificationCert(t, caSNI, regCode))})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	regSNI, err := c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: aws.String(string(caSNI.pem)), CertificateMode: types.CertificateModeSniOnly})
	if err != nil {
		t.Fatal(err)
	}
	sniID := aws.ToString(regSNI.CertificateId)
	if ca, err := e.caByID(ctx, "prod", sniID); err != nil || ca.Status != StatusInactive || ca.Mode != ModeSNIOnly {
		t.Errorf("SNI_ONLY CA: %+v, %v", ca, err)
	}

	// Device certificates under the CAs.
	dev := issue(t, caDefault, "gw-1", certOpts{})
	r1, err := c.RegisterCertificate(ctx, &iot.RegisterCertificateInput{CertificatePem: aws.String(string(dev.pem)), CaCertificatePem: aws.String(string(caDefault.pem)), Status: types.CertificateStatusActive})
	if err != nil || aws.ToString(r1.CertificateId) != dev.id {
		t.Fatalf("RegisterCertificate: %+v, %v", r1, err)
	}
	_, err = c.RegisterCertificate(ctx, &iot.RegisterCertificateInput{CertificatePem: aws.String(string(dev.pem))})
	wantAPIError(t, err, "ResourceAlreadyExistsException", http.StatusConflict)
	stranger := newTestCA(t, "Unregistered CA")
	_, err = c.RegisterCertificate(ctx, &iot.RegisterCertificateInput{CertificatePem: aws.String(string(issue(t, stranger, "x", certOpts{}).pem)), CaCertificatePem: aws.String(string(stranger.pem))})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	_, err = c.RegisterCertificate(ctx, &iot.RegisterCertificateInput{CertificatePem: aws.String(string(issue(t, stranger, "x", certOpts{}).pem))})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	_, err = c.RegisterCertificate(ctx, &iot.RegisterCertificateInput{CertificatePem: aws.String(string(issue(t, caDefault, "weak", certOpts{key: rsaKey(t, 1024)}).pem))})
	wantAPIError(t, err, "CertificateValidationException", http.StatusBadRequest)
	devSNI := issue(t, caSNI, "gw-2", certOpts{})
	if _, err := c.RegisterCertificate(ctx, &iot.RegisterCertificateInput{CertificatePem: aws.String(string(devSNI.pem))}); err != nil {
		t.Fatal(err)
	}
	selfSigned := issue(t, nil, "gw-3", certOpts{})
	if _, err := c.RegisterCertificateWithoutCA(ctx, &iot.RegisterCertificateWithoutCAInput{CertificatePem: aws.String(string(selfSigned.pem)), Status: types.CertificateStatusActive}); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		d      *device
		status types.CertificateStatus
		mode   types.CertificateMode
		ca     string
	}{
		{dev, types.CertificateStatusActive, types.CertificateModeDefault, caID},
		{devSNI, types.CertificateStatusInactive, types.CertificateModeSniOnly, sniID},
		{selfSigned, types.CertificateStatusActive, types.CertificateModeSniOnly, ""},
	} {
		d, err := c.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(w.d.id)})
		if err != nil {
			t.Fatal(err)
		}
		if cd := d.CertificateDescription; cd.Status != w.status || cd.CertificateMode != w.mode || aws.ToString(cd.CaCertificateId) != w.ca {
			t.Errorf("%s: %s %s CA %q, want %s %s %q", w.d.id[:8], cd.Status, cd.CertificateMode, aws.ToString(cd.CaCertificateId), w.status, w.mode, w.ca)
		}
	}
	byCA, err := c.ListCertificatesByCA(ctx, &iot.ListCertificatesByCAInput{CaCertificateId: aws.String(caID)})
	if err != nil || len(byCA.Certificates) != 1 || aws.ToString(byCA.Certificates[0].CertificateId) != dev.id {
		t.Errorf("ListCertificatesByCA: %+v, %v", byCA, err)
	}
	_, err = c.ListCertificatesByCA(ctx, &iot.ListCertificatesByCAInput{CaCertificateId: aws.String(strings.Repeat("a", 64))})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)

	// UpdateCACertificate.
	if _, err := c.UpdateCACertificate(ctx, &iot.UpdateCACertificateInput{CertificateId: aws.String(caID), NewStatus: types.CACertificateStatusInactive, NewAutoRegistrationStatus: types.AutoRegistrationStatusDisable, RemoveAutoRegistration: true}); err != nil {
		t.Fatal(err)
	}
	dca, err = c.DescribeCACertificate(ctx, &iot.DescribeCACertificateInput{CertificateId: aws.String(caID)})
	if err != nil || dca.CertificateDescription.Status != types.CACertificateStatusInactive || dca.CertificateDescription.AutoRegistrationStatus != types.AutoRegistrationStatusDisable || dca.RegistrationConfig != nil {
		t.Errorf("after UpdateCACertificate: %+v %+v, %v", dca.CertificateDescription, dca.RegistrationConfig, err)
	}
	// An INACTIVE CA's certificates cannot connect.
	if _, err := c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-1")}); err != nil {
		t.Fatal(err)
	}
	_, err = dial(t, e, dev, "gw-1", dialOpts{account: "prod"})
	expectRefused(t, e, dev, err, RuleCA, e.Endpoint("prod"))
	_, err = c.UpdateCACertificate(ctx, &iot.UpdateCACertificateInput{CertificateId: aws.String(caID), NewStatus: "REVOKED"})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	_, err = c.DescribeCACertificate(ctx, &iot.DescribeCACertificateInput{CertificateId: aws.String(strings.Repeat("b", 64))})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	cas, err := c.ListCACertificates(ctx, &iot.ListCACertificatesInput{})
	if err != nil || len(cas.Certificates) != 2 {
		t.Errorf("ListCACertificates: %+v, %v", cas, err)
	}
}

func TestAPIListCertificatesPaginates(t *testing.T) {
	e := startAPIEmu(t, Config{}, "prod")
	ctx := context.Background()
	c := newAPIClient(t, e.Emulator, "prod")
	var ids []string // oldest first
	for range 7 {
		out, err := c.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: aws.String(csrPEMFor(t, "x")), SetAsActive: true})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, aws.ToString(out.CertificateId))
		e.clock.Advance(time.Second)
	}
	list := func(asc bool) []string {
		var got []string
		p := iot.NewListCertificatesPaginator(c, &iot.ListCertificatesInput{PageSize: aws.Int32(3), AscendingOrder: asc})
		pages := 0
		for p.HasMorePages() {
			out, err := p.NextPage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, x := range out.Certificates {
				if x.Status != types.CertificateStatusActive || x.CertificateMode != types.CertificateModeDefault || x.CreationDate == nil {
					t.Errorf("listed %+v", x)
				}
				got = append(got, aws.ToString(x.CertificateId))
			}
		}
		if pages != 3 {
			t.Errorf("%d pages of 3 for 7 certificates", pages)
		}
		return got
	}
	if got := list(true); !slices.Equal(got, ids) {
		t.Errorf("ascending: %v, want %v", got, ids)
	}
	desc := slices.Clone(ids)
	slices.Reverse(desc)
	if got := list(false); !slices.Equal(got, desc) {
		t.Errorf("descending (the default): %v, want %v", got, desc)
	}
}

func TestAPIProvisioningTemplates(t *testing.T) {
	e := startAPIEmu(t, Config{}, "prod")
	ctx := context.Background()
	c := newAPIClient(t, e.Emulator, "prod")
	body := string(SimpleTemplate("gw-", "SerialNumber"))
	role := aws.String("arn:aws:iam::123456789012:role/Provisioning")
	out, err := c.CreateProvisioningTemplate(ctx, &iot.CreateProvisioningTemplateInput{TemplateName: aws.String("fleet"), TemplateBody: aws.String(body), ProvisioningRoleArn: role, Enabled: aws.Bool(true), Description: aws.String("gateways")})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(out.TemplateName) != "fleet" || !strings.HasSuffix(aws.ToString(out.TemplateArn), ":provisioningtemplate/fleet") || aws.ToInt32(out.DefaultVersionId) != 1 {
		t.Errorf("CreateProvisioningTemplate: %+v", out)
	}
	_, err = c.CreateProvisioningTemplate(ctx, &iot.CreateProvisioningTemplateInput{TemplateName: aws.String("fleet"), TemplateBody: aws.String(body), ProvisioningRoleArn: role})
	wantAPIError(t, err, "ResourceAlreadyExistsException", http.StatusConflict)
	_, err = c.CreateProvisioningTemplate(ctx, &iot.CreateProvisioningTemplateInput{TemplateName: aws.String("broken"), TemplateBody: aws.String(`{"Resources":{"x":{"Type":"AWS::S3::Bucket"}}}`), ProvisioningRoleArn: role})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	if _, err := c.CreateProvisioningTemplate(ctx, &iot.CreateProvisioningTemplateInput{TemplateName: aws.String("off"), TemplateBody: aws.String(body), ProvisioningRoleArn: role}); err != nil {
		t.Fatal(err)
	}

	d, err := c.DescribeProvisioningTemplate(ctx, &iot.DescribeProvisioningTemplateInput{TemplateName: aws.String("fleet")})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(d.TemplateBody) != body || !aws.ToBool(d.Enabled) || aws.ToString(d.Description) != "gateways" || aws.ToString(d.ProvisioningRoleArn) != aws.ToString(role) ||
		d.Type != types.TemplateTypeFleetProvisioning || d.CreationDate == nil || !d.CreationDate.Equal(e.clock.Now().Truncate(time.Millisecond)) {
		t.Errorf("DescribeProvisioningTemplate: %+v", d)
	}
	// enabled absent: the template is disabled, as on AWS, and RegisterThing
	// would refuse it.
	if ts, _ := e.template(ctx, "prod", "off"); !ts.Disabled {
		t.Error("a template created without enabled is enabled")
	}
	_, err = c.DescribeProvisioningTemplate(ctx, &iot.DescribeProvisioningTemplateInput{TemplateName: aws.String("nope")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	l, err := c.ListProvisioningTemplates(ctx, &iot.ListProvisioningTemplatesInput{MaxResults: aws.Int32(1)})
	if err != nil || len(l.Templates) != 1 || aws.ToString(l.Templates[0].TemplateName) != "fleet" || aws.ToString(l.NextToken) == "" {
		t.Fatalf("ListProvisioningTemplates: %+v, %v", l, err)
	}
	l, err = c.ListProvisioningTemplates(ctx, &iot.ListProvisioningTemplatesInput{MaxResults: aws.Int32(1), NextToken: l.NextToken})
	if err != nil || len(l.Templates) != 1 || aws.ToString(l.Templates[0].TemplateName) != "off" || aws.ToBool(l.Templates[0].Enabled) || l.NextToken != nil {
		t.Fatalf("ListProvisioningTemplates page 2: %+v, %v", l, err)
	}
}
