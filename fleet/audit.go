package fleet

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/csv"
	"encoding/pem"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
)

// Audit check names. Those AWS IoT Device Defender has are named as it
// names them; the rotation checks are thingcert's own.
const (
	CheckDeviceCertExpiring = "DEVICE_CERTIFICATE_EXPIRING_CHECK"
	CheckDeviceCertAge      = "DEVICE_CERTIFICATE_AGE_CHECK"
	CheckDeviceCertKey      = "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"
	CheckDeviceCertShared   = "DEVICE_CERTIFICATE_SHARED_CHECK"
	CheckCACertExpiring     = "CA_CERTIFICATE_EXPIRING_CHECK"
	CheckMultipleActive     = "THINGCERT_MULTIPLE_ACTIVE_CERTIFICATES_CHECK"
	CheckInactiveAttached   = "THINGCERT_INACTIVE_CERTIFICATE_ATTACHED_CHECK"
	CheckActiveUnattached   = "THINGCERT_ACTIVE_CERTIFICATE_UNATTACHED_CHECK"
	CheckRotationJobOverdue = "THINGCERT_ROTATION_JOB_STUCK_CHECK"
)

// rotationCures reports whether rotating the thing's certificate resolves
// a finding of check.
func rotationCures(check string) bool {
	switch check {
	case CheckDeviceCertExpiring, CheckDeviceCertAge, CheckDeviceCertKey, CheckDeviceCertShared:
		return true
	}
	return false
}

// AuditOptions are the audit's thresholds; zero values take Device
// Defender's defaults.
type AuditOptions struct {
	ThingGroup string
	// ExpiringWithin flags certificates expiring sooner (Device Defender: 30 days).
	ExpiringWithin time.Duration
	// MaxAge flags certificates older (Device Defender: 365 days).
	MaxAge time.Duration
}

func (o AuditOptions) expiring() time.Duration {
	if o.ExpiringWithin > 0 {
		return o.ExpiringWithin
	}
	return 30 * 24 * time.Hour
}

func (o AuditOptions) maxAge() time.Duration {
	if o.MaxAge > 0 {
		return o.MaxAge
	}
	return 365 * 24 * time.Hour
}

// Certificate is one certificate as the audit saw it.
type Certificate struct {
	ID           string    `json:"certificateId"`
	Status       string    `json:"status"`
	CA           string    `json:"ca"` // the registered CA's ID, or the issuer's name
	NotBefore    time.Time `json:"notBefore"`
	NotAfter     time.Time `json:"notAfter"`
	AgeDays      int       `json:"ageDays"`
	KeyAlgorithm string    `json:"keyAlgorithm"`
	KeyBits      int       `json:"keyBits"`
	SigAlgorithm string    `json:"signatureAlgorithm"`
	Things       []string  `json:"things,omitempty"`
	caID         string
}

// Thing is one thing and its certificates.
type Thing struct {
	Name         string        `json:"thing"`
	Certificates []Certificate `json:"certificates"`
}

// Finding is one problem the audit found.
type Finding struct {
	Check         string `json:"check"`
	Thing         string `json:"thing,omitempty"`
	CertificateID string `json:"certificateId,omitempty"`
	JobID         string `json:"jobId,omitempty"`
	Detail        string `json:"detail"`
}

// Report is an audit's result.
type Report struct {
	At       time.Time `json:"at"`
	Scope    string    `json:"scope"`
	Things   []Thing   `json:"things"`
	Findings []Finding `json:"findings"`
}

// Audit lists the things (all, or a thing group's), their certificates and
// what is wrong with them, at now.
func Audit(ctx context.Context, api API, o AuditOptions, now time.Time) (*Report, error) {
	r := &Report{At: now, Scope: "account"}
	if o.ThingGroup != "" {
		r.Scope = "thing group " + o.ThingGroup
	}
	names, err := listThings(ctx, api, o.ThingGroup)
	if err != nil {
		return nil, fmt.Errorf("fleet: listing things: %w", err)
	}
	sort.Strings(names)
	certs := map[string]*Certificate{}
	for _, name := range names {
		ids, _, err := thingCertificates(ctx, api, name)
		if err != nil {
			return nil, fmt.Errorf("fleet: listing certificates of %s: %w", name, err)
		}
		th := Thing{Name: name}
		for _, id := range ids {
			c, ok := certs[id]
			if !ok {
				if c, err = describeForAudit(ctx, api, id, now); err != nil {
					return nil, err
				}
				certs[id] = c
			}
			th.Certificates = append(th.Certificates, *c)
		}
		r.Things = append(r.Things, th)
	}
	if o.ThingGroup == "" {
		// Certificates attached to no thing are found only account-wide.
		if err := auditUnattached(ctx, api, certs, r); err != nil {
			return nil, err
		}
	}
	cas, err := auditCAs(ctx, api, certs, o, now)
	if err != nil {
		return nil, err
	}
	r.Findings = append(r.Findings, cas...)
	r.Findings = append(r.Findings, CertificateFindings(r.Things, o, now)...)
	jobs, err := auditJobs(ctx, api, now)
	if err != nil {
		return nil, err
	}
	r.Findings = append(r.Findings, jobs...)
	return r, nil
}

// CertificateFindings are the findings about things and their
// certificates: a pure function of what was listed.
func CertificateFindings(things []Thing, o AuditOptions, now time.Time) []Finding {
	var out []Finding
	seen := map[string]bool{}
	for _, th := range things {
		active := 0
		for _, c := range th.Certificates {
			if c.Status == "ACTIVE" {
				active++
			}
		}
		if active > 1 {
			out = append(out, Finding{Check: CheckMultipleActive, Thing: th.Name, Detail: fmt.Sprintf("%d ACTIVE certificates; a finished rotation leaves one", active)})
		}
		for _, c := range th.Certificates {
			if c.Status != "ACTIVE" {
				out = append(out, Finding{Check: CheckInactiveAttached, Thing: th.Name, CertificateID: c.ID, Detail: c.Status + " certificate still attached"})
				continue
			}
			if left := c.NotAfter.Sub(now); left < o.expiring() {
				d := "expires " + c.NotAfter.UTC().Format(time.RFC3339)
				if left < 0 {
					d = "expired " + c.NotAfter.UTC().Format(time.RFC3339)
				}
				out = append(out, Finding{Check: CheckDeviceCertExpiring, Thing: th.Name, CertificateID: c.ID, Detail: d})
			}
			if age := now.Sub(c.NotBefore); age > o.maxAge() {
				out = append(out, Finding{Check: CheckDeviceCertAge, Thing: th.Name, CertificateID: c.ID, Detail: fmt.Sprintf("%d days old", int(age.Hours()/24))})
			}
			if weak := weakKey(c); weak != "" {
				out = append(out, Finding{Check: CheckDeviceCertKey, Thing: th.Name, CertificateID: c.ID, Detail: weak})
			}
			if len(c.Things) > 1 && !seen[c.ID] {
				seen[c.ID] = true
				out = append(out, Finding{Check: CheckDeviceCertShared, Thing: th.Name, CertificateID: c.ID, Detail: "attached to " + strings.Join(c.Things, ", ")})
			}
		}
	}
	return out
}

// weakKey says what is wrong with a certificate's key or signature, as
// Device Defender's key quality check would.
func weakKey(c Certificate) string {
	switch {
	case c.KeyAlgorithm == "RSA" && c.KeyBits < 2048:
		return fmt.Sprintf("RSA key of %d bits (less than 2048)", c.KeyBits)
	case c.KeyAlgorithm == "ECDSA" && c.KeyBits < 256:
		return fmt.Sprintf("EC key of %d bits (less than 256)", c.KeyBits)
	case strings.Contains(c.SigAlgorithm, "SHA1") || strings.Contains(c.SigAlgorithm, "MD5"):
		return "signed with " + c.SigAlgorithm
	}
	return ""
}

func describeForAudit(ctx context.Context, api API, id string, now time.Time) (*Certificate, error) {
	out, err := api.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: &id})
	if err != nil {
		return nil, fmt.Errorf("fleet: describing certificate %s: %w", id, err)
	}
	d := out.CertificateDescription
	if d == nil {
		return nil, fmt.Errorf("fleet: certificate %s: DescribeCertificate answered without a description", id)
	}
	c := &Certificate{ID: id, Status: string(d.Status), caID: str(d.CaCertificateId)}
	if err := fillFromPEM(c, str(d.CertificatePem), now); err != nil {
		return nil, fmt.Errorf("fleet: certificate %s: %w", id, err)
	}
	if c.Things, err = principalThings(ctx, api, str(d.CertificateArn)); err != nil {
		return nil, fmt.Errorf("fleet: listing things of certificate %s: %w", id, err)
	}
	return c, nil
}

func fillFromPEM(c *Certificate, pemText string, now time.Time) error {
	b, _ := pem.Decode([]byte(pemText))
	if b == nil {
		return fmt.Errorf("its certificatePem is not PEM")
	}
	x, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return err
	}
	c.NotBefore, c.NotAfter = x.NotBefore, x.NotAfter
	c.AgeDays = int(now.Sub(x.NotBefore).Hours() / 24)
	c.SigAlgorithm = x.SignatureAlgorithm.String()
	c.CA = c.caID
	if c.CA == "" {
		c.CA = x.Issuer.String()
	}
	switch k := x.PublicKey.(type) {
	case *rsa.PublicKey:
		c.KeyAlgorithm, c.KeyBits = "RSA", k.N.BitLen()
	case *ecdsa.PublicKey:
		c.KeyAlgorithm, c.KeyBits = "ECDSA", k.Curve.Params().BitSize
	case ed25519.PublicKey:
		c.KeyAlgorithm, c.KeyBits = "Ed25519", 256
	default:
		c.KeyAlgorithm = x.PublicKeyAlgorithm.String()
	}
	return nil
}

// auditUnattached reports ACTIVE certificates attached to no thing.
func auditUnattached(ctx context.Context, api API, known map[string]*Certificate, r *Report) error {
	var marker *string
	for {
		out, err := api.ListCertificates(ctx, &iot.ListCertificatesInput{Marker: marker})
		if err != nil {
			return fmt.Errorf("fleet: listing certificates: %w", err)
		}
		for _, c := range out.Certificates {
			id := str(c.CertificateId)
			if _, ok := known[id]; ok || c.Status != types.CertificateStatusActive {
				continue
			}
			things, err := principalThings(ctx, api, str(c.CertificateArn))
			if err != nil {
				return fmt.Errorf("fleet: listing things of certificate %s: %w", id, err)
			}
			if len(things) == 0 {
				r.Findings = append(r.Findings, Finding{Check: CheckActiveUnattached, CertificateID: id, Detail: "ACTIVE certificate attached to no thing (a claim certificate is one by design)"})
			}
		}
		if marker = out.NextMarker; marker == nil || *marker == "" {
			return nil
		}
	}
}

func auditCAs(ctx context.Context, api API, certs map[string]*Certificate, o AuditOptions, now time.Time) ([]Finding, error) {
	var ids []string
	for _, c := range certs {
		if c.caID != "" && !slices.Contains(ids, c.caID) {
			ids = append(ids, c.caID)
		}
	}
	sort.Strings(ids)
	var out []Finding
	for _, id := range ids {
		d, err := api.DescribeCACertificate(ctx, &iot.DescribeCACertificateInput{CertificateId: &id})
		if isNotFound(err) {
			// AWS IoT's own issuing CA (CreateCertificateFromCsr) is not one
			// the account registered: AWS renews it, nothing to check.
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("fleet: describing CA certificate %s: %w", id, err)
		}
		if d.CertificateDescription == nil {
			continue
		}
		var ca Certificate
		if err := fillFromPEM(&ca, str(d.CertificateDescription.CertificatePem), now); err != nil {
			return nil, fmt.Errorf("fleet: CA certificate %s: %w", id, err)
		}
		if ca.NotAfter.Sub(now) < o.expiring() {
			out = append(out, Finding{Check: CheckCACertExpiring, CertificateID: id, Detail: "CA expires " + ca.NotAfter.UTC().Format(time.RFC3339)})
		}
	}
	return out, nil
}

// auditJobs reports rotation executions IN_PROGRESS for longer than their
// job's timeout (AWS should have timed them out: something is stuck).
func auditJobs(ctx context.Context, api API, now time.Time) ([]Finding, error) {
	var out []Finding
	var token *string
	for {
		page, err := api.ListJobs(ctx, &iot.ListJobsInput{Status: types.JobStatusInProgress, NextToken: token})
		if err != nil {
			return nil, fmt.Errorf("fleet: listing jobs: %w", err)
		}
		for _, j := range page.Jobs {
			id := str(j.JobId)
			if !strings.HasPrefix(id, JobIDPrefix) {
				continue
			}
			d, err := api.DescribeJob(ctx, &iot.DescribeJobInput{JobId: &id})
			if err != nil {
				return nil, fmt.Errorf("fleet: describing job %s: %w", id, err)
			}
			if d.Job == nil || d.Job.TimeoutConfig == nil || d.Job.TimeoutConfig.InProgressTimeoutInMinutes == nil {
				continue
			}
			limit := time.Duration(*d.Job.TimeoutConfig.InProgressTimeoutInMinutes) * time.Minute
			st := types.JobExecutionStatusInProgress
			ex, err := api.ListJobExecutionsForJob(ctx, &iot.ListJobExecutionsForJobInput{JobId: &id, Status: st})
			if err != nil {
				return nil, fmt.Errorf("fleet: listing executions of job %s: %w", id, err)
			}
			for _, e := range ex.ExecutionSummaries {
				if s := e.JobExecutionSummary; s != nil && s.StartedAt != nil && now.Sub(*s.StartedAt) > limit {
					out = append(out, Finding{Check: CheckRotationJobOverdue, Thing: thingFromARN(str(e.ThingArn)), JobID: id,
						Detail: fmt.Sprintf("IN_PROGRESS since %s, past the job's %s timeout", s.StartedAt.UTC().Format(time.RFC3339), limit)})
				}
			}
		}
		if token = page.NextToken; token == nil || *token == "" {
			return out, nil
		}
	}
}

// WriteCSV writes one row per thing and certificate, with its findings.
func (r *Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"thing", "certificate_id", "status", "ca", "not_after", "age_days", "key_algorithm", "key_bits", "signature_algorithm", "findings"})
	by := map[string][]string{}
	for _, f := range r.Findings {
		k := f.Thing + "/" + f.CertificateID
		by[k] = append(by[k], f.Check)
	}
	for _, th := range r.Things {
		for _, c := range th.Certificates {
			fs := append(by[th.Name+"/"+c.ID], by[th.Name+"/"]...)
			_ = cw.Write([]string{th.Name, c.ID, c.Status, c.CA, c.NotAfter.UTC().Format(time.RFC3339), strconv.Itoa(c.AgeDays),
				c.KeyAlgorithm, strconv.Itoa(c.KeyBits), c.SigAlgorithm, strings.Join(fs, " ")})
		}
	}
	cw.Flush()
	return cw.Error()
}
