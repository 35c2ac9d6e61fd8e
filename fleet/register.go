package fleet

import (
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/thingcert/thingcert/iot/jobs/certreport"
)

// Multi-account registration of rotated certificates. A device whose
// certificate is signed by a CA that is not registered with AWS IoT belongs to
// each of its accounts through RegisterCertificateWithoutCA (SNI_ONLY). When
// it rotates, it reports its new certificate in the rotation job's
// statusDetails while the execution is IN_PROGRESS (package certreport), and
// waits until every account accepts it. Register reads those reports, checks
// each one, and registers the certificate in every account where the thing's
// current certificate is: ACTIVE, attached to the thing, with the current
// certificate's policies. It never registers a certificate that the owner's CA
// did not sign, that names another subject than the thing's current
// certificate, or in an account the device does not already belong to.
// Everything is read again from AWS each run, so it is safe to interrupt and
// to run again; once the device reports SUCCEEDED, Retire (with the same
// accounts) deactivates the old certificate in each.

// Account is one AWS account of the fleet, by the name the operator knows
// it by (a profile name) and its control-plane client.
type Account struct {
	Name string
	API  API
}

// RegisterOptions are Register's settings.
type RegisterOptions struct {
	// CA are the owner's CAs: only a certificate that chains to one of them
	// is registered. Required.
	CA *x509.CertPool
	// DryRun says what would be done; nothing changes.
	DryRun bool
}

// RegisterStep is what Register does for one execution in one account.
type RegisterStep string

// The steps of PlanAccount.
const (
	RegisterNothing  RegisterStep = "nothing"  // registered and attached already
	RegisterPending  RegisterStep = "pending"  // no certificate reported yet
	RegisterRegister RegisterStep = "register" // register it ACTIVE, attach the thing and policies
	RegisterAttach   RegisterStep = "attach"   // registered: attach what is missing
	RegisterRefuse   RegisterStep = "refuse"   // a problem a person must look at; nothing done
)

// RegisterDecision is Register's answer for one execution in one account.
type RegisterDecision struct {
	Thing    string       `json:"thing"`
	Account  string       `json:"account,omitempty"`
	Step     RegisterStep `json:"step"`
	NewCert  string       `json:"newCertificateId,omitempty"`
	OldCert  string       `json:"certificateId,omitempty"`
	Reason   string       `json:"reason,omitempty"`
	Policies []string     `json:"policies,omitempty"` // to attach
	Error    string       `json:"error,omitempty"`
	Executed bool         `json:"executed,omitempty"`
}

// RegisterResult is what one run of Register saw and did.
type RegisterResult struct {
	Job       string             `json:"jobId"`
	Decisions []RegisterDecision `json:"decisions"`
	Acted     int                `json:"acted"`
	Refused   int                `json:"refused"`
	Errors    int                `json:"errors"`
}

// Errors of CheckReported.
var (
	// ErrNotOwnerCA: the reported certificate does not chain to the owner's CA.
	ErrNotOwnerCA = errors.New("not signed by the owner's CA")
	// ErrNotThisDevice: the reported certificate is not the thing's (another
	// subject than its current certificate's).
	ErrNotThisDevice = errors.New("not this thing's certificate")
)

// CheckReported decides whether a reported certificate may be registered for
// a thing: it must chain to the owner's CA (for client authentication) at
// now, and carry the subject of current, the thing's ACTIVE certificate that
// the device reports rotating away from, under another key.
func CheckReported(reported, current *x509.Certificate, ca *x509.CertPool, now time.Time) error {
	if ca == nil {
		return fmt.Errorf("fleet: %w: no owner CA given to check reported certificates against", ErrInvalid)
	}
	if _, err := reported.Verify(x509.VerifyOptions{Roots: ca, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("fleet: the reported certificate is %w: %v", ErrNotOwnerCA, err)
	}
	if current == nil {
		return fmt.Errorf("fleet: %w: the thing has no ACTIVE certificate the device reports rotating from", ErrNotThisDevice)
	}
	if !sameName(reported.Subject, current.Subject) {
		return fmt.Errorf("fleet: the reported certificate is %w: its subject %q is not the current certificate's %q", ErrNotThisDevice, reported.Subject, current.Subject)
	}
	if bytes.Equal(reported.RawSubjectPublicKeyInfo, current.RawSubjectPublicKeyInfo) {
		return fmt.Errorf("fleet: the reported certificate is %w: it has the current certificate's key, and a rotation makes a new one", ErrNotThisDevice)
	}
	return nil
}

// sameName compares two names attribute by attribute, whatever the order of
// their RDNs (openssl keeps the order it is given, Go's x509 its own): the
// same attributes with the same values, none more, none fewer.
func sameName(a, b pkix.Name) bool {
	flat := func(n pkix.Name) []string {
		out := make([]string, len(n.Names))
		for i, atv := range n.Names {
			out[i] = atv.Type.String() + "=" + fmt.Sprint(atv.Value)
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(flat(a), flat(b))
}

// PlanAccount decides, for a checked certificate newID of thing, what to do
// in one account from the state there of the thing's current certificate
// (old) and of the new one. The device belongs to an account where its
// current certificate is registered and attached to the thing; elsewhere
// nothing is registered.
func PlanAccount(thing string, old, cur *CertState) (RegisterStep, string, []string) {
	switch {
	case !old.Exists():
		return RegisterRefuse, "the thing's current certificate is not registered in this account: the device does not belong to it", nil
	case !slices.Contains(old.Things, thing):
		return RegisterRefuse, "the thing's current certificate is not attached to the thing in this account", nil
	}
	if !cur.Exists() {
		return RegisterRegister, "", old.Policies
	}
	if cur.Status != string(types.CertificateStatusActive) {
		return RegisterRefuse, "the new certificate is " + cur.Status + " in this account (someone changed it); left alone", nil
	}
	if others := without(cur.Things, thing); len(others) > 0 {
		return RegisterRefuse, "the new certificate is attached to other things (" + strings.Join(others, ", ") + "); left alone", nil
	}
	var missing []string
	for _, p := range old.Policies {
		if !slices.Contains(cur.Policies, p) {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 || !slices.Contains(cur.Things, thing) {
		return RegisterAttach, "", missing
	}
	return RegisterNothing, "registered, ACTIVE and attached", nil
}

// Register reads the IN_PROGRESS executions of a rotation job (in the
// account of jobAPI), checks every certificate they report (CheckReported
// against the thing's current certificate there) and registers it in each
// account (PlanAccount), unless DryRun.
func Register(ctx context.Context, jobAPI API, jobID string, accounts []Account, o RegisterOptions, now func() time.Time) (RegisterResult, error) {
	res := RegisterResult{Job: jobID}
	if o.CA == nil {
		return res, fmt.Errorf("fleet: %w: registering needs the owner's CA to check reported certificates against", ErrInvalid)
	}
	if len(accounts) == 0 {
		return res, fmt.Errorf("fleet: %w: registering needs the accounts to register in", ErrInvalid)
	}
	execs, err := jobExecutions(ctx, jobAPI, jobID)
	if err != nil {
		return res, err
	}
	for _, ex := range execs {
		if ex.status != string(types.JobExecutionStatusInProgress) {
			continue
		}
		for _, d := range registerOne(ctx, jobAPI, jobID, ex.thing, accounts, o, now) {
			switch {
			case d.Error != "":
				res.Errors++
			case d.Step == RegisterRefuse:
				res.Refused++
			case d.Executed:
				res.Acted++
			}
			res.Decisions = append(res.Decisions, d)
		}
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
	}
	return res, nil
}

// registerOne handles one thing's execution: one decision, or one per account.
func registerOne(ctx context.Context, jobAPI API, jobID, thing string, accounts []Account, o RegisterOptions, now func() time.Time) []RegisterDecision {
	d := RegisterDecision{Thing: thing}
	fail := func(err error) []RegisterDecision {
		d.Step, d.Error = RegisterRefuse, err.Error()
		return []RegisterDecision{d}
	}
	out, err := jobAPI.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: &jobID, ThingName: &thing})
	if err != nil {
		return fail(fmt.Errorf("fleet: describing execution of job %s on %s: %w", jobID, thing, err))
	}
	var details map[string]string
	if e := out.Execution; e != nil && e.StatusDetails != nil {
		details = e.StatusDetails.DetailsMap
	}
	if e := out.Execution; e == nil || e.Status != types.JobExecutionStatusInProgress {
		return nil // finished since it was listed
	}
	d.OldCert = details[certreport.KeyCertificateID]
	der, newID, err := certreport.Decode(details)
	switch {
	case errors.Is(err, certreport.ErrNoReport):
		d.Step, d.Reason = RegisterPending, "the device has not reported a new certificate yet"
		return []RegisterDecision{d}
	case err != nil:
		d.Step, d.Reason = RegisterRefuse, err.Error()
		return []RegisterDecision{d}
	}
	d.NewCert = newID
	reported, err := x509.ParseCertificate(der)
	if err != nil {
		d.Step, d.Reason = RegisterRefuse, "the reported certificate does not parse: "+err.Error()
		return []RegisterDecision{d}
	}
	current, err := currentCertificate(ctx, jobAPI, thing, d.OldCert)
	if err != nil {
		return fail(err)
	}
	if err := CheckReported(reported, current, o.CA, now()); err != nil {
		d.Step, d.Reason = RegisterRefuse, err.Error()
		return []RegisterDecision{d}
	}
	pemText := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	var all []RegisterDecision
	for _, a := range accounts {
		ad := d
		ad.Account = a.Name
		old, err := certState(ctx, a.API, d.OldCert, true)
		if err == nil {
			var cur *CertState
			if cur, err = certState(ctx, a.API, newID, true); err == nil {
				ad.Step, ad.Reason, ad.Policies = PlanAccount(thing, old, cur)
				if !o.DryRun && (ad.Step == RegisterRegister || ad.Step == RegisterAttach) {
					if err = registerIn(ctx, a.API, thing, newID, pemText, ad, cur); err == nil {
						ad.Executed = true
					}
				}
			}
		}
		if err != nil {
			ad.Step, ad.Error = RegisterRefuse, fmt.Sprintf("account %s: %v", a.Name, err)
		}
		all = append(all, ad)
	}
	return all
}

// currentCertificate is the thing's current certificate in the job's
// account: the one the device reported rotating from, which must be ACTIVE
// and attached to the thing. nil if there is none.
func currentCertificate(ctx context.Context, api API, thing, id string) (*x509.Certificate, error) {
	if id == "" {
		return nil, nil
	}
	ids, _, err := thingCertificates(ctx, api, thing)
	if err != nil {
		return nil, fmt.Errorf("fleet: listing certificates of %s: %w", thing, err)
	}
	if !slices.Contains(ids, id) {
		return nil, nil
	}
	out, err := api.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: &id})
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fleet: describing certificate %s: %w", id, err)
	}
	desc := out.CertificateDescription
	if desc == nil || desc.Status != types.CertificateStatusActive {
		return nil, nil
	}
	block, _ := pem.Decode([]byte(str(desc.CertificatePem)))
	if block == nil {
		return nil, fmt.Errorf("fleet: certificate %s: AWS returned no PEM", id)
	}
	return x509.ParseCertificate(block.Bytes)
}

// registerIn registers (when missing) and attaches the new certificate in
// one account.
func registerIn(ctx context.Context, api API, thing, id, pemText string, d RegisterDecision, cur *CertState) error {
	arn := cur.ARN
	if d.Step == RegisterRegister {
		out, err := api.RegisterCertificateWithoutCA(ctx, &iot.RegisterCertificateWithoutCAInput{CertificatePem: &pemText, Status: types.CertificateStatusActive})
		switch {
		case isExists(err):
			// Registered by a run in between: attach to what is there.
			c, derr := api.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: &id})
			if derr != nil {
				return fmt.Errorf("fleet: describing certificate %s: %w", id, derr)
			}
			arn = str(c.CertificateDescription.CertificateArn)
		case err != nil:
			return fmt.Errorf("fleet: registering certificate %s of %s without a CA: %w", id, thing, err)
		default:
			arn = str(out.CertificateArn)
			if got := str(out.CertificateId); got != "" && got != id {
				return fmt.Errorf("fleet: AWS registered certificate %s of %s as %s", id, thing, got)
			}
		}
	}
	if !slices.Contains(cur.Things, thing) {
		if _, err := api.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: &thing, Principal: &arn}); err != nil {
			return fmt.Errorf("fleet: attaching certificate %s to %s: %w", id, thing, err)
		}
	}
	for _, p := range d.Policies {
		if _, err := api.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: &p, Target: &arn}); err != nil {
			return fmt.Errorf("fleet: attaching policy %s to certificate %s: %w", p, id, err)
		}
	}
	return nil
}
