package emulator

import (
	"context"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/thingcert/thingcert/emulator/iotpolicy"
)

// Policy is an AWS IoT policy of an account: a named policy document that
// grants or denies MQTT actions to the certificates it is attached to.
type Policy struct {
	Name             string    `json:"policyName"`
	ARN              string    `json:"policyArn"`
	Document         string    `json:"policyDocument"`
	DefaultVersionID string    `json:"defaultVersionId"`
	CreatedAt        time.Time `json:"createdAt"`
}

type policyRec struct {
	Document  string    `json:"document"`
	VersionID string    `json:"versionId"`
	CreatedAt time.Time `json:"createdAt"`
	doc       *iotpolicy.Document
}

// maxPoliciesPerCertificate is AWS IoT's quota of policies attached to one
// certificate.
const maxPoliciesPerCertificate = 10

// AllowAllPolicy is a policy document that allows every MQTT action on every
// resource. Tests that do not care about policies attach it with
// AttachAllowAllPolicy; a real deployment should never use it.
const AllowAllPolicy = `{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}`

// AllowAllPolicyName is the name AttachAllowAllPolicy stores AllowAllPolicy under.
const AllowAllPolicyName = "thingcert-allow-all"

// ClaimPolicy is the least-privilege policy of a fleet-provisioning claim
// certificate: connect, and use CreateCertificateFromCsr and the RegisterThing
// topics of template (may be "*" for every template), nothing else — not even
// CreateKeysAndCertificate, which makes the private key in the cloud.
func ClaimPolicy(template string) string {
	topics := []string{"$aws/certificates/create-from-csr/*", "$aws/provisioning-templates/" + template + "/provision/*"}
	return policyJSON(
		stmt("Allow", []string{iotpolicy.ActionConnect}, []string{"*"}),
		stmt("Allow", []string{iotpolicy.ActionPublish, iotpolicy.ActionReceive}, arns("topic", topics)),
		stmt("Allow", []string{iotpolicy.ActionSubscribe}, arns("topicfilter", topics)),
	)
}

// DevicePolicy is the least-privilege everyday policy of a device that
// rotates its certificate: connect with its thing name as client ID; its own
// Jobs topics; CreateCertificateFromCsr and the RegisterThing topics of
// template ("*" for every template) to rotate; and its own telemetry and
// command topics dt/<thing>/… and cmd/<thing>/….
func DevicePolicy(template string) string {
	const thing = "${iot:Connection.Thing.ThingName}"
	topics := []string{
		"$aws/things/" + thing + "/jobs/*",
		"$aws/certificates/create-from-csr/*",
		"$aws/provisioning-templates/" + template + "/provision/*",
		"dt/" + thing + "/*",
		"cmd/" + thing + "/*",
	}
	return policyJSON(
		stmt("Allow", []string{iotpolicy.ActionConnect}, arns("client", []string{thing})),
		stmt("Allow", []string{iotpolicy.ActionPublish, iotpolicy.ActionReceive}, arns("topic", topics)),
		stmt("Allow", []string{iotpolicy.ActionSubscribe}, arns("topicfilter", topics)),
	)
}

func stmt(effect string, actions, resources []string) map[string]any {
	return map[string]any{"Effect": effect, "Action": actions, "Resource": resources}
}

// arns are ARNs of any region and account: the same policy works in every
// emulated account.
func arns(kind string, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = "arn:aws:iot:*:*:" + kind + "/" + n
	}
	return out
}

func policyJSON(statements ...map[string]any) string {
	b, _ := json.Marshal(map[string]any{"Version": iotpolicy.Version2012, "Statement": statements})
	return string(b)
}

// isPolicyName: AWS's [\w+=,.@-]{1,128}.
func isPolicyName(s string) bool { return isName(s, 128, "_+=,.@-") }

func policyNameError(name string) error {
	return fmt.Errorf("emulator: policy name %q: %w: use 1-128 letters, digits or _+=,.@-", name, ErrInvalid)
}

// arn is an ARN of a resource of the account; the account's name stands for
// its account ID.
func (a *accountRec) arn(kind, name string) string {
	return "arn:aws:iot:" + a.Region + ":" + accountID(a.Name) + ":" + kind + "/" + name
}

func (p *policyRec) export(a *accountRec, name string) Policy {
	return Policy{Name: name, ARN: a.arn("policy", name), Document: p.Document, DefaultVersionID: p.VersionID, CreatedAt: p.CreatedAt}
}

// CreatePolicy stores a policy document under a name (AWS's CreatePolicy). A
// document AWS IoT would refuse (MalformedPolicyException) is refused with
// ErrInvalid, wrapping iotpolicy.ErrMalformed.
func (r *Registry) CreatePolicy(ctx context.Context, account, name, document string) (Policy, error) {
	if err := ctx.Err(); err != nil {
		return Policy{}, err
	}
	if !isPolicyName(name) {
		return Policy{}, policyNameError(name)
	}
	doc, err := iotpolicy.Parse(document)
	if err != nil {
		return Policy{}, fmt.Errorf("emulator: policy %q: %w: %w", name, ErrInvalid, err)
	}
	var out Policy
	err = r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		p, err := createPolicyLocked(tx, a, name, document, doc, now)
		if err != nil {
			return nil, err
		}
		out = p.export(a, name)
		return nil, nil
	})
	if err != nil {
		return Policy{}, err
	}
	r.log.Info("emulator: policy created", "account", account, "policy", name)
	return out, nil
}

func createPolicyLocked(tx *changeSet, a *accountRec, name, document string, doc *iotpolicy.Document, now time.Time) (*policyRec, error) {
	if _, ok := a.Policies[name]; ok {
		return nil, fmt.Errorf("emulator: policy %q in account %s: %w", name, a.Name, ErrExists)
	}
	p := &policyRec{Document: document, VersionID: "1", CreatedAt: now, doc: doc}
	a.Policies[name] = p
	tx.touchPolicy(a.Name, name)
	return p, nil
}

// Policy returns one policy (AWS's GetPolicy).
func (r *Registry) Policy(ctx context.Context, account, name string) (Policy, error) {
	return readAccount(ctx, r, account, func(a *accountRec) (Policy, error) {
		p, ok := a.Policies[name]
		if !ok {
			return Policy{}, fmt.Errorf("emulator: policy %q in account %s: %w", name, account, ErrNotFound)
		}
		return p.export(a, name), nil
	})
}

// Policies lists an account's policies by name.
func (r *Registry) Policies(ctx context.Context, account string) ([]Policy, error) {
	return readAccount(ctx, r, account, func(a *accountRec) ([]Policy, error) {
		out := make([]Policy, 0, len(a.Policies))
		for name, p := range a.Policies {
			out = append(out, p.export(a, name))
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		return out, nil
	})
}

// DeletePolicy deletes a policy that is attached to nothing; while attached
// it is refused with ErrConflict (AWS: DeleteConflictException).
func (r *Registry) DeletePolicy(ctx context.Context, account, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return r.mutate(func(tx *changeSet, _ time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		if _, ok := a.Policies[name]; !ok {
			return nil, fmt.Errorf("emulator: policy %q in account %s: %w", name, account, ErrNotFound)
		}
		var targets []string
		for id, c := range a.Certs {
			if slices.Contains(c.Policies, name) {
				targets = append(targets, id)
			}
		}
		if len(targets) > 0 {
			sort.Strings(targets)
			return nil, fmt.Errorf("emulator: policy %q in account %s: %w: attached to certificates %s; detach it first", name, account, ErrConflict, strings.Join(targets, ", "))
		}
		delete(a.Policies, name)
		tx.touchPolicy(account, name)
		return nil, nil
	})
}

// certTarget reads a policy target: a certificate ARN
// (arn:aws:iot:REGION:ACCOUNT:cert/ID) or a bare certificate ID.
func certTarget(target string) (string, error) {
	id := target
	if strings.HasPrefix(target, "arn:") {
		parts := strings.SplitN(target, ":", 6)
		if len(parts) != 6 || parts[2] != "iot" || !strings.HasPrefix(parts[5], "cert/") {
			return "", fmt.Errorf("emulator: policy target %q: %w: the emulator attaches policies to certificates (arn:aws:iot:REGION:ACCOUNT:cert/ID, or the ID)", target, ErrInvalid)
		}
		id = strings.TrimPrefix(parts[5], "cert/")
	}
	if len(id) != 64 || strings.Trim(strings.ToLower(id), "0123456789abcdef") != "" {
		return "", fmt.Errorf("emulator: policy target %q: %w: not a certificate ID (64 hex digits) or certificate ARN", target, ErrInvalid)
	}
	return strings.ToLower(id), nil
}

// AttachPolicy attaches a policy to a certificate (AWS's AttachPolicy; target
// is the certificate's ARN or ID). Attaching it again changes nothing.
func (r *Registry) AttachPolicy(ctx context.Context, account, policyName, target string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	certID, err := certTarget(target)
	if err != nil {
		return err
	}
	err = r.mutate(func(tx *changeSet, _ time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		return nil, attachPolicyLocked(tx, a, policyName, certID)
	})
	if err == nil {
		r.log.Info("emulator: policy attached", "account", account, "policy", policyName, "cert_id", certID)
	}
	return err
}

func attachPolicyLocked(tx *changeSet, a *accountRec, policyName, certID string) error {
	if _, ok := a.Policies[policyName]; !ok {
		return fmt.Errorf("emulator: policy %q in account %s: %w", policyName, a.Name, ErrNotFound)
	}
	c, ok := a.Certs[certID]
	if !ok {
		return fmt.Errorf("emulator: certificate %s in account %s: %w", certID, a.Name, ErrNotFound)
	}
	if slices.Contains(c.Policies, policyName) {
		return nil
	}
	if len(c.Policies) >= maxPoliciesPerCertificate {
		return fmt.Errorf("emulator: certificate %s in account %s: %w: it has %d policies attached, AWS IoT's limit", certID, a.Name, ErrInvalid, len(c.Policies))
	}
	c.Policies = append(c.Policies, policyName)
	sort.Strings(c.Policies)
	tx.touchCert(a.Name, certID)
	return nil
}

// DetachPolicy detaches a policy from a certificate.
func (r *Registry) DetachPolicy(ctx context.Context, account, policyName, target string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	certID, err := certTarget(target)
	if err != nil {
		return err
	}
	return r.mutate(func(tx *changeSet, _ time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		if _, ok := a.Policies[policyName]; !ok {
			return nil, fmt.Errorf("emulator: policy %q in account %s: %w", policyName, account, ErrNotFound)
		}
		c, ok := a.Certs[certID]
		if !ok {
			return nil, fmt.Errorf("emulator: certificate %s in account %s: %w", certID, account, ErrNotFound)
		}
		c.Policies = slices.DeleteFunc(c.Policies, func(p string) bool { return p == policyName })
		tx.touchCert(account, certID)
		return nil, nil
	})
}

// AttachedPolicies lists the policies attached to a certificate (target: its
// ARN or ID), by name.
func (r *Registry) AttachedPolicies(ctx context.Context, account, target string) ([]Policy, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	certID, err := certTarget(target)
	if err != nil {
		return nil, err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, err := r.accountLocked(account)
	if err != nil {
		return nil, err
	}
	c, ok := a.Certs[certID]
	if !ok {
		return nil, fmt.Errorf("emulator: certificate %s in account %s: %w", certID, account, ErrNotFound)
	}
	out := []Policy{}
	for _, name := range c.Policies {
		if p, ok := a.Policies[name]; ok {
			out = append(out, p.export(a, name))
		}
	}
	return out, nil
}

// AttachAllowAllPolicy attaches AllowAllPolicy (created as AllowAllPolicyName
// when missing) to a certificate: for tests that do not care about policies.
// Policies are always enforced; this is the one way to waive them.
func (r *Registry) AttachAllowAllPolicy(ctx context.Context, account, certID string) error {
	if _, err := r.CreatePolicy(ctx, account, AllowAllPolicyName, AllowAllPolicy); err != nil && !errors.Is(err, ErrExists) {
		return err
	}
	return r.AttachPolicy(ctx, account, AllowAllPolicyName, certID)
}

// request is one MQTT action of a connection, for authorize.
type request struct {
	account, certID, clientID, remote string
	action                            string
	kind, name                        string // client/ID, topic/T, topicfilter/F
}

// authorize evaluates a request against the policies attached to the
// connection's certificate, with the connection's policy variables. It
// returns the decision and the resource ARN it was made on.
func (r *Registry) authorize(q request) (iotpolicy.Decision, string) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, ok := r.st.Accounts[q.account]
	if !ok {
		return iotpolicy.Decision{}, "arn:aws:iot:::" + q.kind + "/" + q.name
	}
	resource := a.arn(q.kind, q.name)
	c, ok := a.Certs[q.certID]
	if !ok {
		return iotpolicy.Decision{}, resource
	}
	policies := make([]iotpolicy.Named, 0, len(c.Policies))
	for _, name := range c.Policies {
		if p, ok := a.Policies[name]; ok {
			policies = append(policies, iotpolicy.Named{Name: name, Document: p.doc})
		}
	}
	vars := connectionVars(a, c, q.clientID, q.remote)
	return iotpolicy.Evaluate(policies, iotpolicy.Request{Action: q.action, Resource: resource, Vars: vars}), resource
}

// connectionVars are the policy variables of a connection. Call under the
// registry's read lock: the closure reads the account's things.
func connectionVars(a *accountRec, c *certRec, clientID, remote string) iotpolicy.Vars {
	// The thing is the one named by the client ID, if the certificate is
	// attached to it (AWS: "the thing name is set to the client ID").
	thing := ""
	if slices.Contains(c.Things, clientID) {
		thing = clientID
	}
	return func(name string) ([]string, bool) {
		lname := strings.ToLower(name)
		switch lname {
		case "iot:clientid":
			return []string{clientID}, true
		case "iot:connection.thing.thingname":
			if thing == "" {
				return nil, false
			}
			return []string{thing}, true
		case "iot:connection.thing.isattached":
			return []string{strconv.FormatBool(thing != "")}, true
		case "aws:sourceip":
			host := remote
			if i := strings.LastIndexByte(remote, ':'); i >= 0 {
				host = strings.Trim(remote[:i], "[]")
			}
			return []string{host}, host != ""
		case "iot:certificate.serialnumber":
			if c.cert == nil {
				return nil, false
			}
			return []string{c.cert.SerialNumber.String()}, true
		}
		if strings.HasPrefix(lname, "iot:connection.thing.attributes[") && strings.HasSuffix(name, "]") {
			attr := name[len("iot:connection.thing.attributes[") : len(name)-1]
			if thing == "" {
				return nil, false
			}
			t, ok := a.Things[thing]
			if !ok {
				return nil, false
			}
			v, ok := t.Attributes[attr]
			return []string{v}, ok
		}
		if c.cert == nil {
			return nil, false
		}
		if rest, ok := strings.CutPrefix(lname, "iot:certificate.subject."); ok {
			return nameVar(c.cert, false, rest)
		}
		if rest, ok := strings.CutPrefix(lname, "iot:certificate.issuer."); ok {
			return nameVar(c.cert, true, rest)
		}
		return nil, false
	}
}

// Distinguished-name attributes of AWS's certificate policy variables.
var dnAttributes = map[string]asn1.ObjectIdentifier{
	"distinguishednamequalifier": {2, 5, 4, 46},
	"country":                    {2, 5, 4, 6},
	"organization":               {2, 5, 4, 10},
	"organizationalunit":         {2, 5, 4, 11},
	"state":                      {2, 5, 4, 8},
	"commonname":                 {2, 5, 4, 3},
	"serialnumber":               {2, 5, 4, 5},
	"title":                      {2, 5, 4, 12},
	"surname":                    {2, 5, 4, 4},
	"givenname":                  {2, 5, 4, 42},
	"initials":                   {2, 5, 4, 43},
	"pseudonym":                  {2, 5, 4, 65},
	"generationqualifier":        {2, 5, 4, 44},
}

// nameVar resolves iot:Certificate.Subject.<attr>[.N|.List] (or Issuer): the
// first value, the N-th after it (.1 is the second), or all of them (at most
// five, as AWS). A value with a wildcard character (* $ + ? #) or longer than
// 1024 characters does not resolve, as on AWS.
func nameVar(cert *x509.Certificate, issuer bool, rest string) ([]string, bool) {
	attr, suffix, _ := strings.Cut(rest, ".")
	oid, ok := dnAttributes[attr]
	if !ok {
		return nil, false
	}
	names := cert.Subject.Names
	if issuer {
		names = cert.Issuer.Names
	}
	var vals []string
	for _, atv := range names {
		if atv.Type.Equal(oid) {
			s, ok := atv.Value.(string)
			if !ok || len(s) > 1024 || strings.ContainsAny(s, "*$+?#") {
				return nil, false
			}
			vals = append(vals, s)
		}
	}
	if len(vals) > 5 {
		vals = vals[:5]
	}
	switch {
	case len(vals) == 0:
		return nil, false
	case suffix == "":
		return vals[:1], true
	case suffix == "list":
		return vals, true
	}
	n, err := strconv.Atoi(suffix)
	if err != nil || n < 0 || n >= len(vals) {
		return nil, false
	}
	return vals[n : n+1], true
}
