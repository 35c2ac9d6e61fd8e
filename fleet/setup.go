package fleet

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"

	"github.com/aws/aws-sdk-go-v2/service/iot"

	"github.com/thingcert/thingcert/internal/atomicfile"
	"github.com/thingcert/thingcert/keystore"
)

// SetupOptions say what Setup makes for a provisioning template.
type SetupOptions struct {
	// Template is the fleet-provisioning template's name; the policies are
	// named after it (TEMPLATE-device, TEMPLATE-claim).
	Template string
	// ThingPrefix is put before the SerialNumber parameter to name a thing.
	ThingPrefix string
	// RoleARN is the provisioning role AWS IoT assumes to run the template
	// (AWS requires one when the template is created).
	RoleARN string
	// ClaimKey, if set, is the key URI of the claim key (made when missing,
	// in any key store the program links), and ClaimCertFile the file that
	// receives the claim certificate.
	ClaimKey      string
	ClaimCertFile string
	// ClaimAlgorithm is the claim key's algorithm when it is made; empty is
	// ECDSA P-256.
	ClaimAlgorithm keystore.Algorithm
	// KeyOptions open the claim key's store.
	KeyOptions keystore.Options
	// DryRun only says what would be done.
	DryRun bool
}

// Change is one resource Setup looked at and what it did (or would do).
type Change struct {
	Kind   string `json:"kind"` // policy, provisioning-template, claim-certificate, policy-attachment
	Name   string `json:"name"`
	Action string `json:"action"` // created, unchanged, would-create, differs
	Detail string `json:"detail,omitempty"`
}

// Setup action names.
const (
	ActionCreated     = "created"
	ActionUnchanged   = "unchanged"
	ActionWouldCreate = "would-create"
	ActionDiffers     = "differs"
)

// ThingNameParameter is the template parameter the device sends to name its
// thing (with ThingPrefix before it).
const ThingNameParameter = "SerialNumber"

// DevicePolicyName and ClaimPolicyName are the names Setup gives a
// template's policies.
func DevicePolicyName(template string) string { return template + "-device" }

// ClaimPolicyName: see DevicePolicyName.
func ClaimPolicyName(template string) string { return template + "-claim" }

// DevicePolicy is the least-privilege everyday policy of a device that
// rotates its certificate: connect with its own thing name as client ID
// (the certificate must be attached to that thing); its own Jobs topics; and
// the certificate and provisioning topics of template, through which it asks
// for its next certificate. Nothing else: not another device's topics, not
// CreateKeysAndCertificate (which makes the key in the cloud).
func DevicePolicy(template string) string {
	const thing = "${iot:Connection.Thing.ThingName}"
	topics := []string{
		"$aws/things/" + thing + "/jobs/*",
		"$aws/certificates/create-from-csr/*",
		"$aws/provisioning-templates/" + template + "/provision/*",
	}
	return policyDoc(
		statement([]string{"iot:Connect"}, []string{"arn:aws:iot:*:*:client/" + thing}),
		statement([]string{"iot:Publish", "iot:Receive"}, resources("topic", topics)),
		statement([]string{"iot:Subscribe"}, resources("topicfilter", topics)),
	)
}

// ClaimPolicy is the policy of the claim certificate a factory puts on
// every device: connect, and the two topics of provisioning by claim with
// template, nothing else.
func ClaimPolicy(template string) string {
	topics := []string{"$aws/certificates/create-from-csr/*", "$aws/provisioning-templates/" + template + "/provision/*"}
	return policyDoc(
		statement([]string{"iot:Connect"}, []string{"*"}),
		statement([]string{"iot:Publish", "iot:Receive"}, resources("topic", topics)),
		statement([]string{"iot:Subscribe"}, resources("topicfilter", topics)),
	)
}

func statement(actions, res []string) map[string]any {
	return map[string]any{"Effect": "Allow", "Action": actions, "Resource": res}
}

// resources are ARNs in any region and account, so one document serves
// every account the operator sets up.
func resources(kind string, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = "arn:aws:iot:*:*:" + kind + "/" + n
	}
	return out
}

func policyDoc(stmts ...map[string]any) string {
	b, _ := json.Marshal(map[string]any{"Version": "2012-10-17", "Statement": stmts})
	return string(b)
}

// TemplateBody is the provisioning template Setup creates: the thing is
// named prefix + SerialNumber, the new certificate is activated, attached to
// it and given the device policy by name (so a policy change reaches every
// device without a new template).
func TemplateBody(template, prefix string) string {
	var name any = map[string]any{"Ref": ThingNameParameter}
	if prefix != "" {
		name = map[string]any{"Fn::Join": []any{"", []any{prefix, map[string]any{"Ref": ThingNameParameter}}}}
	}
	b, _ := json.Marshal(map[string]any{
		"Parameters": map[string]any{
			ThingNameParameter:          map[string]any{"Type": "String"},
			"AWS::IoT::Certificate::Id": map[string]any{"Type": "String"},
		},
		"Resources": map[string]any{
			"thing": map[string]any{"Type": "AWS::IoT::Thing", "Properties": map[string]any{"ThingName": name}},
			"certificate": map[string]any{"Type": "AWS::IoT::Certificate", "Properties": map[string]any{
				"CertificateId": map[string]any{"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active",
			}},
			"policy": map[string]any{"Type": "AWS::IoT::Policy", "Properties": map[string]any{"PolicyName": DevicePolicyName(template)}},
		},
	})
	return string(b)
}

// Setup makes, where missing, the device policy, the claim policy, the
// provisioning template and (with ClaimKey) a claim certificate for a key
// made in any key store. A resource that exists with the same content is
// left as it is; one that differs is reported (ActionDiffers) and left too,
// so running Setup twice changes nothing.
func Setup(ctx context.Context, api API, o SetupOptions) ([]Change, error) {
	if o.Template == "" {
		return nil, fmt.Errorf("fleet: setup needs a provisioning template name: %w", ErrInvalid)
	}
	if o.ClaimKey != "" && o.ClaimCertFile == "" {
		return nil, fmt.Errorf("fleet: a claim key (%s) needs a file to write its claim certificate to: %w", keystore.RedactURI(o.ClaimKey), ErrInvalid)
	}
	var changes []Change
	for _, p := range []struct{ name, doc string }{
		{DevicePolicyName(o.Template), DevicePolicy(o.Template)},
		{ClaimPolicyName(o.Template), ClaimPolicy(o.Template)},
	} {
		c, err := ensurePolicy(ctx, api, p.name, p.doc, o.DryRun)
		if err != nil {
			return changes, err
		}
		changes = append(changes, c)
	}
	c, err := ensureTemplate(ctx, api, o)
	if err != nil {
		return changes, err
	}
	changes = append(changes, c)
	if o.ClaimKey != "" {
		cs, err := ensureClaim(ctx, api, o)
		changes = append(changes, cs...)
		if err != nil {
			return changes, err
		}
	}
	return changes, nil
}

func ensurePolicy(ctx context.Context, api API, name, doc string, dry bool) (Change, error) {
	c := Change{Kind: "policy", Name: name}
	out, err := api.GetPolicy(ctx, &iot.GetPolicyInput{PolicyName: &name})
	switch {
	case err == nil:
		if sameJSON(str(out.PolicyDocument), doc) {
			c.Action = ActionUnchanged
		} else {
			c.Action, c.Detail = ActionDiffers, "its document is not the least-privilege one; left as it is"
		}
		return c, nil
	case !isNotFound(err):
		return c, fmt.Errorf("fleet: reading policy %s: %w", name, err)
	case dry:
		c.Action = ActionWouldCreate
		return c, nil
	}
	if _, err := api.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: &name, PolicyDocument: &doc}); err != nil && !isExists(err) {
		return c, fmt.Errorf("fleet: creating policy %s: %w", name, err)
	}
	c.Action = ActionCreated
	return c, nil
}

func ensureTemplate(ctx context.Context, api API, o SetupOptions) (Change, error) {
	c := Change{Kind: "provisioning-template", Name: o.Template}
	body := TemplateBody(o.Template, o.ThingPrefix)
	out, err := api.DescribeProvisioningTemplate(ctx, &iot.DescribeProvisioningTemplateInput{TemplateName: &o.Template})
	switch {
	case err == nil:
		switch {
		case !sameJSON(str(out.TemplateBody), body):
			c.Action, c.Detail = ActionDiffers, "its body is not the one setup makes; left as it is"
		case out.Enabled == nil || !*out.Enabled:
			c.Action, c.Detail = ActionDiffers, "it is disabled; left as it is"
		default:
			c.Action = ActionUnchanged
		}
		return c, nil
	case !isNotFound(err):
		return c, fmt.Errorf("fleet: reading provisioning template %s: %w", o.Template, err)
	case o.DryRun:
		c.Action = ActionWouldCreate
		return c, nil
	case o.RoleARN == "":
		return c, fmt.Errorf("fleet: creating provisioning template %s: AWS IoT needs the ARN of a provisioning role it can assume: %w", o.Template, ErrInvalid)
	}
	enabled := true
	desc := "thingcert fleet provisioning by claim"
	if _, err := api.CreateProvisioningTemplate(ctx, &iot.CreateProvisioningTemplateInput{
		TemplateName: &o.Template, TemplateBody: &body, ProvisioningRoleArn: &o.RoleARN, Enabled: &enabled, Description: &desc,
	}); err != nil && !isExists(err) {
		return c, fmt.Errorf("fleet: creating provisioning template %s: %w", o.Template, err)
	}
	c.Action = ActionCreated
	return c, nil
}

// ensureClaim keeps one ACTIVE claim certificate, in ClaimCertFile, for the
// claim key, with the claim policy attached. A certificate file whose
// certificate AWS still holds ACTIVE is kept; otherwise a new certificate
// is made from a CSR the key signs in its store.
func ensureClaim(ctx context.Context, api API, o SetupOptions) ([]Change, error) {
	policy := ClaimPolicyName(o.Template)
	c := Change{Kind: "claim-certificate", Name: o.ClaimCertFile}
	var certARN string
	if pemBytes, err := os.ReadFile(o.ClaimCertFile); err == nil {
		id, err := certificateID(pemBytes)
		if err != nil {
			return nil, fmt.Errorf("fleet: claim certificate %s: %w; move it away to make a new one", o.ClaimCertFile, err)
		}
		out, err := api.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: &id})
		switch {
		case err == nil && out.CertificateDescription != nil && out.CertificateDescription.Status == "ACTIVE":
			c.Name, c.Action, c.Detail = id, ActionUnchanged, o.ClaimCertFile
			certARN = str(out.CertificateDescription.CertificateArn)
		case err != nil && !isNotFound(err):
			return nil, fmt.Errorf("fleet: describing claim certificate %s (%s): %w", id, o.ClaimCertFile, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("fleet: reading claim certificate %s: %w", o.ClaimCertFile, err)
	}
	if certARN == "" {
		if o.DryRun {
			c.Action, c.Detail = ActionWouldCreate, "from a CSR signed by "+keystore.RedactURI(o.ClaimKey)
			return []Change{c, {Kind: "policy-attachment", Name: policy, Action: ActionWouldCreate}}, nil
		}
		key, closeKey, err := openOrMakeKey(ctx, o)
		if err != nil {
			return nil, err
		}
		der, err := keystore.CreateCSR(key, "CN=thingcert claim "+o.Template, keystore.CSROptions{})
		closeKey()
		if err != nil {
			return nil, err
		}
		csr := string(keystore.EncodeCSR(der))
		active := true
		out, err := api.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: &csr, SetAsActive: active})
		if err != nil {
			return nil, fmt.Errorf("fleet: CreateCertificateFromCsr for the claim key %s: %w", keystore.RedactURI(o.ClaimKey), err)
		}
		if err := atomicfile.WriteFile(o.ClaimCertFile, []byte(str(out.CertificatePem)), 0o644); err != nil {
			return nil, fmt.Errorf("fleet: writing claim certificate %s (certificate %s is ACTIVE in AWS IoT; deactivate it if this is abandoned): %w", o.ClaimCertFile, str(out.CertificateId), err)
		}
		c.Name, c.Action, c.Detail = str(out.CertificateId), ActionCreated, o.ClaimCertFile
		certARN = str(out.CertificateArn)
	}
	changes := []Change{c}
	att := Change{Kind: "policy-attachment", Name: policy + " → " + c.Name}
	names, err := attachedPolicies(ctx, api, certARN)
	if err != nil {
		return changes, fmt.Errorf("fleet: listing policies of claim certificate %s: %w", c.Name, err)
	}
	switch {
	case slices.Contains(names, policy):
		att.Action = ActionUnchanged
	case o.DryRun:
		att.Action = ActionWouldCreate
	default:
		if _, err := api.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: &policy, Target: &certARN}); err != nil {
			return changes, fmt.Errorf("fleet: attaching policy %s to claim certificate %s: %w", policy, c.Name, err)
		}
		att.Action = ActionCreated
	}
	return append(changes, att), nil
}

// openOrMakeKey opens the claim key, making it when its store has none.
func openOrMakeKey(ctx context.Context, o SetupOptions) (keystore.Key, func(), error) {
	st, err := keystore.Open(ctx, o.ClaimKey, o.KeyOptions)
	if err != nil {
		return nil, nil, err
	}
	key, err := st.Open(ctx, o.ClaimKey)
	if errors.Is(err, keystore.ErrNotFound) {
		alg := o.ClaimAlgorithm
		if alg == "" {
			alg = keystore.ECDSAP256
		}
		key, err = st.Generate(ctx, o.ClaimKey, alg)
	}
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	return key, func() { st.Close() }, nil
}

// certificateID is AWS IoT's ID of a certificate: the SHA-256 of its DER, in hex.
func certificateID(pemBytes []byte) (string, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil || b.Type != "CERTIFICATE" {
		return "", errors.New("not a PEM certificate")
	}
	if _, err := x509.ParseCertificate(b.Bytes); err != nil {
		return "", err
	}
	sum := sha256.Sum256(b.Bytes)
	return hex.EncodeToString(sum[:]), nil
}

// sameJSON compares two JSON texts by value; a text that is not JSON equals
// nothing.
func sameJSON(a, b string) bool {
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}
