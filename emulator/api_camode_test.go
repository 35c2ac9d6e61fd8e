package emulator

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
)

// TestAPICAModeAcrossAccounts: as on AWS, one account per region registers
// a CA in DEFAULT mode; SNI_ONLY is how several accounts share it, and
// another region is another registry. A device certificate of a CA no
// account registered goes in with RegisterCertificateWithoutCA, in each
// account, and only the account whose endpoint the SNI names decides.
func TestAPICAModeAcrossAccounts(t *testing.T) {
	e := startAPIEmu(t, Config{Accounts: []Account{{Name: "eu-prod", Region: "eu-west-1"}, {Name: "eu-pre", Region: "eu-west-1"}, {Name: "us", Region: "us-east-1"}}})
	ctx := context.Background()
	ca := newTestCA(t, "Shared CA")
	registerDefault := func(acct string) error {
		c := newAPIClient(t, e.Emulator, acct)
		code, err := c.GetRegistrationCode(ctx, &iot.GetRegistrationCodeInput{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: aws.String(string(ca.pem)),
			VerificationCertificate: aws.String(verificationCert(t, ca, aws.ToString(code.RegistrationCode)))})
		return err
	}
	if err := registerDefault("eu-prod"); err != nil {
		t.Fatal(err)
	}
	wantAPIError(t, registerDefault("eu-pre"), "ResourceAlreadyExistsException", http.StatusConflict)
	if _, err := newAPIClient(t, e.Emulator, "eu-pre").RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{
		CaCertificate: aws.String(string(ca.pem)), CertificateMode: types.CertificateModeSniOnly}); err != nil {
		t.Fatalf("SNI_ONLY beside another account's DEFAULT: %v", err)
	}
	if err := registerDefault("us"); err != nil {
		t.Fatalf("DEFAULT in another region: %v", err)
	}

	// A certificate of an unregistered CA, registered without it in eu-prod only.
	d := issue(t, newTestCA(t, "Owner CA"), "gw-1", certOpts{})
	out, err := newAPIClient(t, e.Emulator, "eu-prod").RegisterCertificateWithoutCA(ctx, &iot.RegisterCertificateWithoutCAInput{
		CertificatePem: aws.String(string(d.pem)), Status: types.CertificateStatusActive})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.AttachAllowAllPolicy(ctx, "eu-prod", aws.ToString(out.CertificateId)); err != nil {
		t.Fatal(err)
	}
	c := mustDial(t, e, d, "gw-1", dialOpts{account: "eu-prod"})
	c.Disconnect(0)
	e.clock.Advance(2 * time.Second)
	_, err = dial(t, e, d, "gw-1", dialOpts{account: "eu-pre"})
	expectRefused(t, e, d, err, RuleNotRegistered, e.Endpoint("eu-pre"))
}
