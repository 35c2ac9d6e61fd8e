package emulator

// The control-plane API's route table: one line per AWS IoT operation.
//
// To add an operation:
//
//  1. Find its HTTP binding in aws-sdk-go-v2 service/iot: serializers.go,
//     awsRestjson1_serializeOp<Op>.HandleSerialize (method and URI, e.g.
//     "POST /things/{thingName}") and awsRestjson1_serializeOpHttpBindings<Op>Input
//     (query parameters, headers such as x-amzn-principal) and
//     awsRestjson1_serializeOpDocument<Op>Input (JSON body keys); the answer's
//     keys in deserializers.go, awsRestjson1_deserializeOpDocument<Op>Output.
//     Timestamps are JSON numbers of seconds (the epoch type).
//
//  2. Write one function of type apiOp in an api_<area>.go file:
//
//     func apiCreateThing(ctx context.Context, c *apiCall) (any, error) {
//     var in struct{ AttributePayload *struct{ Attributes map[string]string } `json:"attributePayload"` }
//     if err := c.Decode(&in); err != nil { return nil, err }
//     t, err := c.Emu.CreateThing(ctx, c.Account, c.Path("thingName"), ...)
//     if err != nil { return nil, err } // registry sentinels map to AWS's exceptions
//     return map[string]any{"thingName": t.Name, "thingArn": c.ARN("thing/" + t.Name)}, nil
//     }
//
//     c.Account is the account the signing access key selects; c.Path, c.Query,
//     c.QueryBool, c.QueryInt, c.Header and c.Decode read the input; c.ARN
//     makes ARNs. Return registry errors as they are (ErrNotFound becomes
//     ResourceNotFoundException 404, ErrExists ResourceAlreadyExistsException
//     409, ErrInvalid InvalidRequestException 400, ErrConflict
//     DeleteConflictException 409, ErrCertificateState
//     CertificateStateException 406, ErrThrottled ThrottlingException 400, as AWS's model says: see
//     apiErrorCode), or invalidRequest(...) / apiErrorf(code, status, ...) for
//     other refusals. Paginated lists use pageOf with nextToken/maxResults.
//
//  3. Add its line below: {"POST", "/things/{thingName}", "CreateThing", apiCreateThing}.
//
//  4. Test it through aws-sdk-go-v2 in api_<area>_test.go (newAPIClient).
//
// Signature verification, the account, errors and the JSON encoding are done
// around the function; it never sees an unauthenticated request.
var apiRoutes = []apiRoute{
	{"GET", "/endpoint", "DescribeEndpoint", apiDescribeEndpoint},

	// Things (api_things.go).
	{"POST", "/things/{thingName}", "CreateThing", apiCreateThing},
	{"GET", "/things/{thingName}", "DescribeThing", apiDescribeThing},
	{"GET", "/things", "ListThings", apiListThings},
	{"DELETE", "/things/{thingName}", "DeleteThing", apiDeleteThing},
	{"PUT", "/things/{thingName}/principals", "AttachThingPrincipal", apiAttachThingPrincipal},
	{"DELETE", "/things/{thingName}/principals", "DetachThingPrincipal", apiDetachThingPrincipal},
	{"GET", "/things/{thingName}/principals", "ListThingPrincipals", apiListThingPrincipals},
	{"GET", "/principals/things", "ListPrincipalThings", apiListPrincipalThings},

	// Certificates and CAs (api_certificates.go).
	{"POST", "/keys-and-certificate", "CreateKeysAndCertificate", apiCreateKeysAndCertificate},
	{"POST", "/certificates", "CreateCertificateFromCsr", apiCreateCertificateFromCsr},
	{"POST", "/certificate/register", "RegisterCertificate", apiRegisterCertificate},
	{"POST", "/certificate/register-no-ca", "RegisterCertificateWithoutCA", apiRegisterCertificateWithoutCA},
	{"GET", "/certificates/{certificateId}", "DescribeCertificate", apiDescribeCertificate},
	{"GET", "/certificates", "ListCertificates", apiListCertificates},
	{"GET", "/certificates-by-ca/{caCertificateId}", "ListCertificatesByCA", apiListCertificatesByCA},
	{"PUT", "/certificates/{certificateId}", "UpdateCertificate", apiUpdateCertificate},
	{"DELETE", "/certificates/{certificateId}", "DeleteCertificate", apiDeleteCertificate},
	{"GET", "/registrationcode", "GetRegistrationCode", apiGetRegistrationCode},
	{"POST", "/cacertificate", "RegisterCACertificate", apiRegisterCACertificate},
	{"GET", "/cacertificate/{certificateId}", "DescribeCACertificate", apiDescribeCACertificate},
	{"PUT", "/cacertificate/{certificateId}", "UpdateCACertificate", apiUpdateCACertificate},
	{"GET", "/cacertificates", "ListCACertificates", apiListCACertificates},

	// Fleet-provisioning templates (api_templates.go).
	{"POST", "/provisioning-templates", "CreateProvisioningTemplate", apiCreateProvisioningTemplate},
	{"GET", "/provisioning-templates/{templateName}", "DescribeProvisioningTemplate", apiDescribeProvisioningTemplate},
	{"GET", "/provisioning-templates", "ListProvisioningTemplates", apiListProvisioningTemplates},

	// IoT policies (api_policies.go).
	{"POST", "/policies/{policyName}", "CreatePolicy", apiCreatePolicy},
	{"GET", "/policies/{policyName}", "GetPolicy", apiGetPolicy},
	{"DELETE", "/policies/{policyName}", "DeletePolicy", apiDeletePolicy},
	{"GET", "/policies", "ListPolicies", apiListPolicies},
	{"PUT", "/target-policies/{policyName}", "AttachPolicy", apiAttachPolicy},
	{"POST", "/target-policies/{policyName}", "DetachPolicy", apiDetachPolicy},
	{"POST", "/attached-policies/{target}", "ListAttachedPolicies", apiListAttachedPolicies},

	// Jobs (api_jobs.go).
	{"PUT", "/jobs/{jobId}", "CreateJob", apiCreateJob},
	{"GET", "/jobs/{jobId}", "DescribeJob", apiDescribeJob},
	{"GET", "/jobs/{jobId}/job-document", "GetJobDocument", apiGetJobDocument},
	{"GET", "/jobs", "ListJobs", apiListJobs},
	{"PUT", "/jobs/{jobId}/cancel", "CancelJob", apiCancelJob},
	{"DELETE", "/jobs/{jobId}", "DeleteJob", apiDeleteJob},
	{"GET", "/jobs/{jobId}/things", "ListJobExecutionsForJob", apiListJobExecutionsForJob},
	{"GET", "/things/{thingName}/jobs", "ListJobExecutionsForThing", apiListJobExecutionsForThing},
	{"GET", "/things/{thingName}/jobs/{jobId}", "DescribeJobExecution", apiDescribeJobExecution},
	{"PUT", "/things/{thingName}/jobs/{jobId}/cancel", "CancelJobExecution", apiCancelJobExecution},
	{"DELETE", "/things/{thingName}/jobs/{jobId}/executionNumber/{executionNumber}", "DeleteJobExecution", apiDeleteJobExecution},
	{"PATCH", "/event-configurations", "UpdateEventConfigurations", apiUpdateEventConfigurations},
	{"GET", "/event-configurations", "DescribeEventConfigurations", apiDescribeEventConfigurations},

	// Thing groups (api_jobs.go).
	{"POST", "/thing-groups/{thingGroupName}", "CreateThingGroup", apiCreateThingGroup},
	{"GET", "/thing-groups/{thingGroupName}", "DescribeThingGroup", apiDescribeThingGroup},
	{"GET", "/thing-groups", "ListThingGroups", apiListThingGroups},
	{"PUT", "/thing-groups/addThingToThingGroup", "AddThingToThingGroup", apiAddThingToThingGroup},
	{"PUT", "/thing-groups/removeThingFromThingGroup", "RemoveThingFromThingGroup", apiRemoveThingFromThingGroup},
	{"GET", "/thing-groups/{thingGroupName}/things", "ListThingsInThingGroup", apiListThingsInThingGroup},
}
