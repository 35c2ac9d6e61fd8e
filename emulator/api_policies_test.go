package emulator

import (
	"context"
	"net/http"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
)

// TestAPIPolicies: the policy operations through aws-sdk-go-v2, with the
// errors AWS documents.
func TestAPIPolicies(t *testing.T) {
	e := startAPIEmu(t, Config{}, "prod", "other")
	ctx := context.Background()
	c := newAPIClient(t, e.Emulator, "prod")
	for _, n := range []string{"p-a", "p-b", "p-c"} {
		if _, err := c.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String(n), PolicyDocument: aws.String(AllowAllPolicy)}); err != nil {
			t.Fatal(err)
		}
	}
	// ListPolicies pages through all of them.
	var names []string
	var marker *string
	for pages := 0; ; pages++ {
		out, err := c.ListPolicies(ctx, &iot.ListPoliciesInput{PageSize: aws.Int32(2), Marker: marker})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range out.Policies {
			names = append(names, aws.ToString(p.PolicyName))
		}
		if out.NextMarker == nil || pages > 5 {
			break
		}
		marker = out.NextMarker
	}
	if !slices.Equal(names, []string{"p-a", "p-b", "p-c"}) {
		t.Fatalf("ListPolicies: %q", names)
	}
	_, err := c.GetPolicy(ctx, &iot.GetPolicyInput{PolicyName: aws.String("nope")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	_, err = c.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("bad name!"), PolicyDocument: aws.String(AllowAllPolicy)})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)

	kc, err := c.CreateKeysAndCertificate(ctx, &iot.CreateKeysAndCertificateInput{SetAsActive: true})
	if err != nil {
		t.Fatal(err)
	}
	arn := aws.ToString(kc.CertificateArn)
	for _, n := range []string{"p-a", "p-c"} {
		if _, err := c.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String(n), Target: aws.String(arn)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.DetachPolicy(ctx, &iot.DetachPolicyInput{PolicyName: aws.String("p-a"), Target: aws.String(arn)}); err != nil {
		t.Fatal(err)
	}
	ap, err := c.ListAttachedPolicies(ctx, &iot.ListAttachedPoliciesInput{Target: aws.String(arn)})
	if err != nil || len(ap.Policies) != 1 || aws.ToString(ap.Policies[0].PolicyName) != "p-c" {
		t.Fatalf("ListAttachedPolicies after a detach: %+v, %v", ap, err)
	}
	_, err = c.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String("nope"), Target: aws.String(arn)})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	_, err = c.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String("p-b"), Target: aws.String("arn:aws:iot:us-east-1:123456789012:thinggroup/g")})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	// Another account neither sees the policies nor may attach them to its
	// certificates.
	o := newAPIClient(t, e.Emulator, "other")
	_, err = o.GetPolicy(ctx, &iot.GetPolicyInput{PolicyName: aws.String("p-a")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	_, err = o.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String("p-a"), Target: aws.String(arn)})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	if _, err := c.DeletePolicy(ctx, &iot.DeletePolicyInput{PolicyName: aws.String("p-a")}); err != nil {
		t.Fatalf("DeletePolicy of a detached policy: %v", err)
	}
}
