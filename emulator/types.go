package emulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Sentinel errors of the registry. Admin calls wrap them with %w (also across the
// admin socket), so callers test with errors.Is and people read the rest.
var (
	// ErrNotFound: no such account, certificate, CA, thing, template or job.
	ErrNotFound = errors.New("not found")
	// ErrExists: the object is already there (an account, a CA, a job ID...).
	ErrExists = errors.New("already exists")
	// ErrInvalid: the request itself is wrong (a bad PEM, a status AWS does not
	// have, a certificate its CA did not sign).
	ErrInvalid = errors.New("invalid request")
	// ErrLocked: another process holds the state folder (a running emulator
	// whose admin socket cannot be reached, or another admin command).
	ErrLocked = errors.New("state folder in use")
	// ErrConflict: the object is still in use (a certificate attached to a
	// thing or policy, a thing with principals); AWS: DeleteConflictException.
	ErrConflict = errors.New("still in use")
	// ErrCertificateState: the certificate's status forbids the change (AWS:
	// CertificateStateException), e.g. deleting an ACTIVE certificate.
	ErrCertificateState = errors.New("certificate state forbids it")
	// ErrThrottled: an account quota's rate was exceeded (AWS:
	// ThrottlingException); the caller should back off and retry.
	ErrThrottled = errors.New("rate exceeded")
)

// CertificateStatus is the status of a device or CA certificate in an
// account's registry, with AWS IoT's names.
type CertificateStatus string

// The statuses AWS IoT gives certificates. Only ACTIVE ones may connect.
const (
	StatusActive            CertificateStatus = "ACTIVE"
	StatusInactive          CertificateStatus = "INACTIVE"
	StatusRevoked           CertificateStatus = "REVOKED"
	StatusPendingTransfer   CertificateStatus = "PENDING_TRANSFER"
	StatusRegisterInactive  CertificateStatus = "REGISTER_INACTIVE"
	StatusPendingActivation CertificateStatus = "PENDING_ACTIVATION"
)

// CertificateStatuses lists every status, ACTIVE first.
func CertificateStatuses() []CertificateStatus {
	return []CertificateStatus{StatusActive, StatusInactive, StatusRevoked, StatusPendingTransfer, StatusRegisterInactive, StatusPendingActivation}
}

// ParseCertificateStatus reads a status name, case-insensitively ("active" is
// ACTIVE, as AWS templates write it).
func ParseCertificateStatus(s string) (CertificateStatus, error) {
	n := CertificateStatus(strings.ToUpper(strings.TrimSpace(s)))
	for _, ok := range CertificateStatuses() {
		if n == ok {
			return n, nil
		}
	}
	return "", fmt.Errorf("emulator: certificate status %q: %w: use one of %v", s, ErrInvalid, CertificateStatuses())
}

// CertificateMode says whether a certificate may connect without SNI. AWS IoT
// calls it certificateMode: DEFAULT for certificates it issued or that were
// registered with a CA in DEFAULT mode, SNI_ONLY for those registered without a
// CA or with a CA registered in SNI_ONLY mode (multi-account registration).
type CertificateMode string

// The two modes.
const (
	ModeDefault CertificateMode = "DEFAULT"
	ModeSNIOnly CertificateMode = "SNI_ONLY"
)

// ParseCertificateMode reads DEFAULT or SNI_ONLY (case-insensitive); "" is DEFAULT.
func ParseCertificateMode(s string) (CertificateMode, error) {
	switch CertificateMode(strings.ToUpper(strings.TrimSpace(s))) {
	case "", ModeDefault:
		return ModeDefault, nil
	case ModeSNIOnly, "SNI-ONLY", "SNIONLY":
		return ModeSNIOnly, nil
	}
	return "", fmt.Errorf("emulator: certificate mode %q: %w: use DEFAULT or SNI_ONLY", s, ErrInvalid)
}

// Account is one emulated AWS account (in one region): a registry of its own and
// an endpoint host name devices select it by (SNI).
type Account struct {
	// Name identifies the account in admin calls ("prod", "123456789012").
	Name string `json:"name"`
	// Prefix is the endpoint's account-specific part; empty asks for a random
	// one of 14 characters, as AWS makes.
	Prefix string `json:"prefix"`
	// Region is the AWS region of the endpoint; empty is us-east-1.
	Region string `json:"region"`
}

// Endpoint is the account's ATS data endpoint host name,
// <prefix>-ats.iot.<region>.amazonaws.com: what devices send as SNI.
func (a Account) Endpoint() string {
	return a.Prefix + "-ats.iot." + a.Region + ".amazonaws.com"
}

// CA is a CA certificate registered in an account.
type CA struct {
	Account   string            `json:"account"`
	ID        string            `json:"certificateId"`
	PEM       string            `json:"certificatePem"`
	Status    CertificateStatus `json:"status"`
	Mode      CertificateMode   `json:"certificateMode"`
	Subject   string            `json:"subject"`
	NotBefore time.Time         `json:"notBefore"`
	NotAfter  time.Time         `json:"notAfter"`
	CreatedAt time.Time         `json:"createdAt"`
	// AutoRegistration is allowAutoRegistration (just-in-time registration
	// of the certificates it signed, jit.go); Registration its
	// registrationConfig (a JITP template).
	AutoRegistration bool                  `json:"autoRegistration,omitempty"`
	Registration     *CARegistrationConfig `json:"registrationConfig,omitempty"`
}

// CARegistrationConfig is a CA's registrationConfig: the template that
// just-in-time provisioning runs for a certificate the CA's auto-registration
// took (TemplateBody, or TemplateName of a template in the account).
type CARegistrationConfig struct {
	TemplateBody string `json:"templateBody,omitempty"`
	TemplateName string `json:"templateName,omitempty"`
	RoleArn      string `json:"roleArn,omitempty"`
}

// Certificate is a device certificate registered in an account.
type Certificate struct {
	Account string            `json:"account"`
	ID      string            `json:"certificateId"`
	PEM     string            `json:"certificatePem"`
	Status  CertificateStatus `json:"status"`
	// Mode is DEFAULT or SNI_ONLY (see CertificateMode).
	Mode CertificateMode `json:"certificateMode"`
	// CAID is the ID of the registered CA that signed it; empty when it was
	// registered without a CA. Certificates the emulator issued name its
	// Amazon-like issuing CA, which every account trusts implicitly.
	CAID string `json:"caCertificateId,omitempty"`
	// Things are the things the certificate is attached to.
	Things    []string  `json:"things,omitempty"`
	Subject   string    `json:"subject"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	CreatedAt time.Time `json:"createdAt"`
}

// Thing is an IoT thing and the certificates (principals) attached to it.
type Thing struct {
	Account      string            `json:"account"`
	Name         string            `json:"thingName"`
	Attributes   map[string]string `json:"attributes,omitempty"`
	Certificates []string          `json:"certificates,omitempty"`
	CreatedAt    time.Time         `json:"createdAt"`
}

// Template is a fleet-provisioning template: Body is the template in AWS's own
// JSON format (Parameters, Resources with AWS::IoT::Thing, AWS::IoT::Certificate
// and AWS::IoT::Policy, DeviceConfiguration), so a template written for AWS works
// here unchanged. SimpleTemplate makes a common one.
type Template struct {
	Name     string          `json:"templateName"`
	Body     json.RawMessage `json:"templateBody"`
	Disabled bool            `json:"disabled,omitempty"`
	// Description, RoleARN, Type and CreatedAt are the control plane's
	// (CreateProvisioningTemplate), kept and reported only.
	Description string    `json:"description,omitempty"`
	RoleARN     string    `json:"provisioningRoleArn,omitempty"`
	Type        string    `json:"type,omitempty"`
	CreatedAt   time.Time `json:"createdAt,omitzero"`
}

// JobExecutionStatus is the status of one job on one thing.
type JobExecutionStatus string

// The job execution statuses of AWS IoT Jobs.
const (
	JobQueued     JobExecutionStatus = "QUEUED"
	JobInProgress JobExecutionStatus = "IN_PROGRESS"
	JobSucceeded  JobExecutionStatus = "SUCCEEDED"
	JobFailed     JobExecutionStatus = "FAILED"
	JobTimedOut   JobExecutionStatus = "TIMED_OUT"
	JobRejected   JobExecutionStatus = "REJECTED"
	JobRemoved    JobExecutionStatus = "REMOVED"
	JobCanceled   JobExecutionStatus = "CANCELED"
)

// Terminal reports whether no further update is possible.
func (s JobExecutionStatus) Terminal() bool {
	switch s {
	case JobQueued, JobInProgress:
		return false
	}
	return true
}

// Job is a job created for things and thing groups, with its document and
// AWS's job configurations. CreateJob reads ID, Document, the targets
// (Things, ThingGroups by name or Targets by ARN), TargetSelection,
// Description and the four configurations; the rest is the job's state.
type Job struct {
	Account  string          `json:"account"`
	ID       string          `json:"jobId"`
	Document json.RawMessage `json:"document"`
	// Things and ThingGroups are the targets by name; Targets the same as
	// ARNs (arn:aws:iot:REGION:ACCOUNT:thing/NAME or thinggroup/NAME).
	Things      []string `json:"things"`
	ThingGroups []string `json:"thingGroups,omitempty"`
	Targets     []string `json:"targets,omitempty"`
	// TargetSelection is SNAPSHOT (the default) or CONTINUOUS.
	TargetSelection string    `json:"targetSelection,omitempty"`
	Description     string    `json:"description,omitempty"`
	ARN             string    `json:"jobArn,omitempty"`
	Status          JobStatus `json:"status,omitempty"`
	CreatedAt       time.Time `json:"createdAt"`
	LastUpdatedAt   time.Time `json:"lastUpdatedAt,omitzero"`
	CompletedAt     time.Time `json:"completedAt,omitzero"`
	// Canceled is set by CancelJob or an abort: its QUEUED (and, forced,
	// IN_PROGRESS) executions became CANCELED.
	Canceled      bool   `json:"canceled,omitempty"`
	ForceCanceled bool   `json:"forceCanceled,omitempty"`
	ReasonCode    string `json:"reasonCode,omitempty"`
	Comment       string `json:"comment,omitempty"`

	RolloutConfig  *JobRolloutConfig  `json:"jobExecutionsRolloutConfig,omitempty"`
	AbortConfig    *JobAbortConfig    `json:"abortConfig,omitempty"`
	TimeoutConfig  *JobTimeoutConfig  `json:"timeoutConfig,omitempty"`
	RetryConfig    *JobRetryConfig    `json:"jobExecutionsRetryConfig,omitempty"`
	ProcessDetails *JobProcessDetails `json:"jobProcessDetails,omitempty"`
}

// JobExecution is a job on one thing: what the device reported (status and
// status details) and AWS's bookkeeping (version, timestamps).
type JobExecution struct {
	Account         string             `json:"account"`
	JobID           string             `json:"jobId"`
	ThingName       string             `json:"thingName"`
	Status          JobExecutionStatus `json:"status"`
	StatusDetails   map[string]string  `json:"statusDetails,omitempty"`
	QueuedAt        time.Time          `json:"queuedAt"`
	StartedAt       time.Time          `json:"startedAt,omitzero"`
	LastUpdatedAt   time.Time          `json:"lastUpdatedAt"`
	VersionNumber   int64              `json:"versionNumber"`
	ExecutionNumber int64              `json:"executionNumber"`
	// StepTimeoutAt, when set, is when an IN_PROGRESS execution becomes TIMED_OUT
	// unless updated (stepTimeoutInMinutes).
	StepTimeoutAt time.Time `json:"stepTimeoutAt,omitzero"`
	// InProgressTimeoutAt is the job's timeoutConfig applied to this execution:
	// it becomes TIMED_OUT then if still IN_PROGRESS, updates or not.
	InProgressTimeoutAt time.Time `json:"inProgressTimeoutAt,omitzero"`
	ThingARN            string    `json:"thingArn,omitempty"`
	ForceCanceled       bool      `json:"forceCanceled,omitempty"`
	// RetryAttempt counts the retries (jobExecutionsRetryConfig) before this
	// execution: 0 for the first one.
	RetryAttempt int `json:"retryAttempt,omitempty"`
}

// Outcome is what became of a connection attempt.
type Outcome string

// Outcomes recorded in the connection history.
const (
	Accepted     Outcome = "accepted"
	Refused      Outcome = "refused"
	Disconnected Outcome = "disconnected"
	// Denied: an accepted connection asked for something its policies do not
	// allow (a PUBLISH, a SUBSCRIBE filter, a delivery); Action and Resource
	// say what.
	Denied Outcome = "denied"
)

// Rule names the connection rule that refused (or ended) a connection, so tests
// and people can tell refusals apart without parsing prose.
type Rule string

// The connection rules.
const (
	RuleHandshake       Rule = "tls-handshake"        // crypto/tls itself failed (no certificate, bad signature...)
	RuleALPN            Rule = "alpn"                 // port-443 listener without ALPN x-amzn-mqtt-ca
	RuleAlgorithm       Rule = "algorithm"            // key or signature algorithm AWS IoT refuses
	RulePSSNeedsTLS13   Rule = "rsa-pss-needs-tls1.3" // an RSA-PSS key on TLS 1.2
	RuleSNIRequired     Rule = "sni-required"         // no or unknown SNI, and the certificate needs it
	RuleNotRegistered   Rule = "not-registered"       // not in the account's registry
	RuleAutoRegistered  Rule = "auto-registered"      // just registered by its CA's auto-registration (JITR/JITP): connect again
	RuleStatus          Rule = "status"               // registered but not ACTIVE
	RuleExpired         Rule = "expired"              // past NotAfter
	RuleNotYetValid     Rule = "not-yet-valid"        // before NotBefore
	RuleCA              Rule = "ca"                   // its CA is gone, not ACTIVE, or does not verify it
	RuleClientID        Rule = "client-id"            // client ID is not the attached thing's name
	RuleConnectRate     Rule = "connect-rate"         // more than 1 CONNECT/s for a client ID
	RuleAccountConnects Rule = "account-connect-rate" // more CONNECTs per second in the account than its quota
	RuleSessionTakeover Rule = "session-takeover"     // a newer connection took the client ID
	RuleStatusChanged   Rule = "status-changed"       // the certificate stopped being ACTIVE while connected
	RuleClosed          Rule = "closed"               // the client or the emulator closed the connection
	RulePolicy          Rule = "policy"               // the certificate's IoT policies do not allow the action
	RuleReservedTopic   Rule = "reserved-topic"       // a publish AWS IoT refuses on a reserved ($) topic, whatever the policy
)

// ConnectionEvent is one entry of the connection history: an accepted or refused
// attempt, or the end of an accepted connection.
type ConnectionEvent struct {
	Time     time.Time `json:"time"`
	Outcome  Outcome   `json:"outcome"`
	Rule     Rule      `json:"rule,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Listener string    `json:"listener"`
	Remote   string    `json:"remote,omitempty"`
	SNI      string    `json:"sni,omitempty"`
	ALPN     string    `json:"alpn,omitempty"`
	TLS      string    `json:"tls,omitempty"`
	Account  string    `json:"account,omitempty"`
	// CertificateID is the SHA-256 of the client certificate, when one was sent.
	CertificateID string `json:"certificateId,omitempty"`
	ClientID      string `json:"clientId,omitempty"`
	// Action and Resource are the IoT policy action and resource ARN a
	// policy refusal was about (iot:Publish on arn:aws:iot:…:topic/…).
	Action   string `json:"action,omitempty"`
	Resource string `json:"resource,omitempty"`
}

// String is the event in one line, for logs and the CLI.
func (e ConnectionEvent) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", e.Time.UTC().Format(time.RFC3339), e.Outcome)
	if e.Rule != "" {
		fmt.Fprintf(&b, " rule=%s", e.Rule)
	}
	for _, kv := range [][2]string{{"account", e.Account}, {"sni", e.SNI}, {"cert", e.CertificateID}, {"client", e.ClientID}, {"listener", e.Listener}, {"tls", e.TLS}, {"alpn", e.ALPN}, {"action", e.Action}, {"resource", e.Resource}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, " %s=%s", kv[0], kv[1])
		}
	}
	if e.Reason != "" {
		fmt.Fprintf(&b, ": %s", e.Reason)
	}
	return b.String()
}

// HistoryQuery selects connection events; zero fields match everything.
type HistoryQuery struct {
	Account       string  `json:"account,omitempty"`
	CertificateID string  `json:"certificateId,omitempty"`
	ClientID      string  `json:"clientId,omitempty"`
	Outcome       Outcome `json:"outcome,omitempty"`
	// Limit keeps only the newest events; 0 keeps all that are held.
	Limit int `json:"limit,omitempty"`
}

func (q HistoryQuery) match(e ConnectionEvent) bool {
	return (q.Account == "" || q.Account == e.Account) &&
		(q.CertificateID == "" || q.CertificateID == e.CertificateID) &&
		(q.ClientID == "" || q.ClientID == e.ClientID) &&
		(q.Outcome == "" || q.Outcome == e.Outcome)
}
