// Package fleet is the operator's half of certificate rotation on AWS IoT:
// it sets up least-privilege policies, a provisioning template and a claim
// certificate; audits a fleet's certificates; starts rotation jobs on AWS IoT
// Jobs; and retires the certificates that rotations replaced.
//
// Everything is derived from AWS IoT's own state (job IDs, execution status
// details, certificate status and attachments), so each step is safe to
// interrupt and to run again, and two operators running at once do no harm.
// It talks to AWS through API, which *iot.Client from aws-sdk-go-v2 satisfies;
// a device program never links this package.
package fleet

import (
	"context"
	"errors"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/smithy-go"
)

// API is the part of AWS IoT's control plane fleet uses; *iot.Client is one.
type API interface {
	CreatePolicy(context.Context, *iot.CreatePolicyInput, ...func(*iot.Options)) (*iot.CreatePolicyOutput, error)
	GetPolicy(context.Context, *iot.GetPolicyInput, ...func(*iot.Options)) (*iot.GetPolicyOutput, error)
	AttachPolicy(context.Context, *iot.AttachPolicyInput, ...func(*iot.Options)) (*iot.AttachPolicyOutput, error)
	DetachPolicy(context.Context, *iot.DetachPolicyInput, ...func(*iot.Options)) (*iot.DetachPolicyOutput, error)
	ListAttachedPolicies(context.Context, *iot.ListAttachedPoliciesInput, ...func(*iot.Options)) (*iot.ListAttachedPoliciesOutput, error)

	CreateProvisioningTemplate(context.Context, *iot.CreateProvisioningTemplateInput, ...func(*iot.Options)) (*iot.CreateProvisioningTemplateOutput, error)
	DescribeProvisioningTemplate(context.Context, *iot.DescribeProvisioningTemplateInput, ...func(*iot.Options)) (*iot.DescribeProvisioningTemplateOutput, error)

	CreateCertificateFromCsr(context.Context, *iot.CreateCertificateFromCsrInput, ...func(*iot.Options)) (*iot.CreateCertificateFromCsrOutput, error)
	DescribeCertificate(context.Context, *iot.DescribeCertificateInput, ...func(*iot.Options)) (*iot.DescribeCertificateOutput, error)
	UpdateCertificate(context.Context, *iot.UpdateCertificateInput, ...func(*iot.Options)) (*iot.UpdateCertificateOutput, error)
	DeleteCertificate(context.Context, *iot.DeleteCertificateInput, ...func(*iot.Options)) (*iot.DeleteCertificateOutput, error)
	ListCertificates(context.Context, *iot.ListCertificatesInput, ...func(*iot.Options)) (*iot.ListCertificatesOutput, error)
	RegisterCertificateWithoutCA(context.Context, *iot.RegisterCertificateWithoutCAInput, ...func(*iot.Options)) (*iot.RegisterCertificateWithoutCAOutput, error)
	DescribeCACertificate(context.Context, *iot.DescribeCACertificateInput, ...func(*iot.Options)) (*iot.DescribeCACertificateOutput, error)

	DescribeThing(context.Context, *iot.DescribeThingInput, ...func(*iot.Options)) (*iot.DescribeThingOutput, error)
	ListThings(context.Context, *iot.ListThingsInput, ...func(*iot.Options)) (*iot.ListThingsOutput, error)
	ListThingPrincipals(context.Context, *iot.ListThingPrincipalsInput, ...func(*iot.Options)) (*iot.ListThingPrincipalsOutput, error)
	ListPrincipalThings(context.Context, *iot.ListPrincipalThingsInput, ...func(*iot.Options)) (*iot.ListPrincipalThingsOutput, error)
	AttachThingPrincipal(context.Context, *iot.AttachThingPrincipalInput, ...func(*iot.Options)) (*iot.AttachThingPrincipalOutput, error)
	DetachThingPrincipal(context.Context, *iot.DetachThingPrincipalInput, ...func(*iot.Options)) (*iot.DetachThingPrincipalOutput, error)
	DescribeThingGroup(context.Context, *iot.DescribeThingGroupInput, ...func(*iot.Options)) (*iot.DescribeThingGroupOutput, error)
	ListThingsInThingGroup(context.Context, *iot.ListThingsInThingGroupInput, ...func(*iot.Options)) (*iot.ListThingsInThingGroupOutput, error)

	CreateJob(context.Context, *iot.CreateJobInput, ...func(*iot.Options)) (*iot.CreateJobOutput, error)
	DescribeJob(context.Context, *iot.DescribeJobInput, ...func(*iot.Options)) (*iot.DescribeJobOutput, error)
	ListJobs(context.Context, *iot.ListJobsInput, ...func(*iot.Options)) (*iot.ListJobsOutput, error)
	ListJobExecutionsForJob(context.Context, *iot.ListJobExecutionsForJobInput, ...func(*iot.Options)) (*iot.ListJobExecutionsForJobOutput, error)
	DescribeJobExecution(context.Context, *iot.DescribeJobExecutionInput, ...func(*iot.Options)) (*iot.DescribeJobExecutionOutput, error)
}

var _ API = (*iot.Client)(nil)

// Sentinel errors.
var (
	// ErrInvalid: the options ask for something that cannot be done.
	ErrInvalid = errors.New("invalid fleet request")
	// ErrDrift: a resource of the name setup would create exists with other
	// content; setup leaves it alone.
	ErrDrift = errors.New("existing resource differs")
)

// isNotFound reports whether err is AWS IoT's ResourceNotFoundException.
func isNotFound(err error) bool {
	var nf *types.ResourceNotFoundException
	if errors.As(err, &nf) {
		return true
	}
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "ResourceNotFoundException"
}

// isExists reports whether err is AWS IoT's ResourceAlreadyExistsException.
func isExists(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "ResourceAlreadyExistsException"
}

// certIDFromARN is the certificate ID at the end of a certificate ARN
// (arn:aws:iot:REGION:ACCOUNT:cert/ID); "" for another kind of principal.
func certIDFromARN(arn string) string {
	i := strings.LastIndex(arn, ":cert/")
	if i < 0 {
		return ""
	}
	return arn[i+len(":cert/"):]
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// thingCertificates lists the certificate IDs attached to a thing.
func thingCertificates(ctx context.Context, api API, thing string) (ids, arns []string, err error) {
	var token *string
	for {
		out, err := api.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: &thing, NextToken: token})
		if err != nil {
			return nil, nil, err
		}
		for _, p := range out.Principals {
			if id := certIDFromARN(p); id != "" {
				ids = append(ids, id)
				arns = append(arns, p)
			}
		}
		if token = out.NextToken; token == nil || *token == "" {
			return ids, arns, nil
		}
	}
}

// principalThings lists the things a certificate is attached to.
func principalThings(ctx context.Context, api API, certARN string) ([]string, error) {
	var things []string
	var token *string
	for {
		out, err := api.ListPrincipalThings(ctx, &iot.ListPrincipalThingsInput{Principal: &certARN, NextToken: token})
		if err != nil {
			return nil, err
		}
		things = append(things, out.Things...)
		if token = out.NextToken; token == nil || *token == "" {
			return things, nil
		}
	}
}

// attachedPolicies lists the policy names attached to a target (a
// certificate ARN).
func attachedPolicies(ctx context.Context, api API, target string) ([]string, error) {
	var names []string
	var marker *string
	for {
		out, err := api.ListAttachedPolicies(ctx, &iot.ListAttachedPoliciesInput{Target: &target, Marker: marker})
		if err != nil {
			return nil, err
		}
		for _, p := range out.Policies {
			names = append(names, str(p.PolicyName))
		}
		if marker = out.NextMarker; marker == nil || *marker == "" {
			return names, nil
		}
	}
}

// listThings lists every thing, or those of a thing group.
func listThings(ctx context.Context, api API, group string) ([]string, error) {
	var names []string
	var token *string
	for {
		if group != "" {
			out, err := api.ListThingsInThingGroup(ctx, &iot.ListThingsInThingGroupInput{ThingGroupName: &group, NextToken: token})
			if err != nil {
				return nil, err
			}
			names = append(names, out.Things...)
			token = out.NextToken
		} else {
			out, err := api.ListThings(ctx, &iot.ListThingsInput{NextToken: token})
			if err != nil {
				return nil, err
			}
			for _, t := range out.Things {
				names = append(names, str(t.ThingName))
			}
			token = out.NextToken
		}
		if token == nil || *token == "" {
			return names, nil
		}
	}
}
