package emulator

import (
	"context"
	"net/url"
)

// The IoT policy operations, over the policy store (policies.go). AWS keeps
// policy versions; the emulator has one version per policy ("1").

// validPolicyName is AWS's pattern for a policy name, [\w+=,.@-]{1,128},
// checked by hand: as a package-level regexp its 128-fold repetition cost
// every thingcert command 1,700 allocations at start-up.
func validPolicyName(n string) bool {
	if len(n) == 0 || len(n) > 128 {
		return false
	}
	for i := 0; i < len(n); i++ {
		switch c := n[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_',
			c == '+', c == '=', c == ',', c == '.', c == '@', c == '-':
		default:
			return false
		}
	}
	return true
}

func policyName(c *apiCall) (string, error) {
	n := c.Path("policyName")
	if !validPolicyName(n) {
		return "", invalidRequest("policy name %q: want 1 to 128 letters, digits or +=,.@-_", n)
	}
	return n, nil
}

type policyAPIJSON struct {
	PolicyName       string `json:"policyName"`
	PolicyArn        string `json:"policyArn"`
	PolicyDocument   string `json:"policyDocument,omitempty"`
	PolicyVersionID  string `json:"policyVersionId,omitempty"`
	DefaultVersionID string `json:"defaultVersionId,omitempty"`
	CreationDate     *epoch `json:"creationDate,omitempty"`
	LastModifiedDate *epoch `json:"lastModifiedDate,omitempty"`
	GenerationID     string `json:"generationId,omitempty"`
}

func policyOut(c *apiCall, p Policy) policyAPIJSON {
	return policyAPIJSON{PolicyName: p.Name, PolicyArn: c.ARN("policy/" + p.Name)}
}

func apiCreatePolicy(ctx context.Context, c *apiCall) (any, error) {
	name, err := policyName(c)
	if err != nil {
		return nil, err
	}
	var in struct {
		PolicyDocument string `json:"policyDocument"`
		Tags           []struct {
			Key   string `json:"Key"`
			Value string `json:"Value"`
		} `json:"tags"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	if in.PolicyDocument == "" {
		return nil, invalidRequest("policyDocument is required")
	}
	p, err := c.Emu.CreatePolicy(ctx, c.Account, name, in.PolicyDocument)
	if err != nil {
		return nil, err
	}
	out := policyOut(c, p)
	out.PolicyDocument, out.PolicyVersionID = p.Document, p.DefaultVersionID
	return out, nil
}

func apiGetPolicy(ctx context.Context, c *apiCall) (any, error) {
	name, err := policyName(c)
	if err != nil {
		return nil, err
	}
	p, err := c.Emu.Policy(ctx, c.Account, name)
	if err != nil {
		return nil, err
	}
	out := policyOut(c, p)
	created := epoch(p.CreatedAt)
	out.PolicyDocument, out.DefaultVersionID = p.Document, p.DefaultVersionID
	out.CreationDate, out.LastModifiedDate = &created, &created
	out.GenerationID = p.DefaultVersionID
	return out, nil
}

func apiDeletePolicy(ctx context.Context, c *apiCall) (any, error) {
	name, err := policyName(c)
	if err != nil {
		return nil, err
	}
	return nil, c.Emu.DeletePolicy(ctx, c.Account, name)
}

func apiListPolicies(ctx context.Context, c *apiCall) (any, error) {
	size, err := c.QueryInt("pageSize", 1, 250, 250)
	if err != nil {
		return nil, err
	}
	all, err := c.Emu.Policies(ctx, c.Account)
	if err != nil {
		return nil, err
	}
	return policyPage(c, all, c.Query("marker"), size)
}

// policyTarget reads the target of AttachPolicy and DetachPolicy (a
// certificate ARN of this account: the emulator attaches policies to nothing
// else).
func policyTarget(c *apiCall, target string) (string, error) {
	if target == "" {
		return "", invalidRequest("target is required: a certificate ARN")
	}
	return c.certificateFromPrincipal(target)
}

// policyAndTarget reads AttachPolicy's and DetachPolicy's input: the policy
// in the path, the target certificate in the body.
func policyAndTarget(c *apiCall) (name, cert string, err error) {
	if name, err = policyName(c); err != nil {
		return "", "", err
	}
	var in struct {
		Target string `json:"target"`
	}
	if err := c.Decode(&in); err != nil {
		return "", "", err
	}
	cert, err = policyTarget(c, in.Target)
	return name, cert, err
}

func apiAttachPolicy(ctx context.Context, c *apiCall) (any, error) {
	name, cert, err := policyAndTarget(c)
	if err != nil {
		return nil, err
	}
	return nil, c.Emu.AttachPolicy(ctx, c.Account, name, cert)
}

func apiDetachPolicy(ctx context.Context, c *apiCall) (any, error) {
	name, cert, err := policyAndTarget(c)
	if err != nil {
		return nil, err
	}
	return nil, c.Emu.DetachPolicy(ctx, c.Account, name, cert)
}

func apiListAttachedPolicies(ctx context.Context, c *apiCall) (any, error) {
	size, err := c.QueryInt("pageSize", 1, 250, 250)
	if err != nil {
		return nil, err
	}
	// The target sits in the path, escaped (an ARN holds ':' and '/').
	target, err := url.PathUnescape(c.Path("target"))
	if err != nil {
		return nil, invalidRequest("target %q is not a valid path segment", c.Path("target"))
	}
	cert, err := policyTarget(c, target)
	if err != nil {
		return nil, err
	}
	ps, err := c.Emu.AttachedPolicies(ctx, c.Account, cert)
	if err != nil {
		return nil, err
	}
	return policyPage(c, ps, c.Query("marker"), size)
}

func policyPage(c *apiCall, ps []Policy, marker string, size int) (any, error) {
	page, next, err := pageOf(ps, func(p Policy) string { return p.Name }, marker, size)
	if err != nil {
		return nil, err
	}
	out := struct {
		Policies   []policyAPIJSON `json:"policies"`
		NextMarker string          `json:"nextMarker,omitempty"`
	}{Policies: make([]policyAPIJSON, 0, len(page)), NextMarker: next}
	for _, p := range page {
		out.Policies = append(out.Policies, policyOut(c, p))
	}
	return out, nil
}
