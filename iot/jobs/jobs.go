package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/internal/exchange"

	"github.com/thingcert/thingcert/rotation"
)

// RotateOperation is the job document operation that asks a device to rotate
// its certificate:
//
//	{"operation": "rotate-certificate"}
//
// Other fields are ignored. The device marks the job IN_PROGRESS, rotates,
// confirms on its new connection that the job is still IN_PROGRESS, and
// reports SUCCEEDED with statusDetails {"oldCertificateId", "newCertificateId"}
// (so the cloud side can deactivate the old certificate) or FAILED with
// {"reason", "phase", "certificateId"} naming the certificate it kept.
const RotateOperation = "rotate-certificate"

// Job execution statuses.
const (
	StatusQueued     = "QUEUED"
	StatusInProgress = "IN_PROGRESS"
	StatusSucceeded  = "SUCCEEDED"
	StatusFailed     = "FAILED"
)

// Execution is a job as the Client MQTT API describes it to the device.
type Execution struct {
	JobID           string            `json:"jobId"`
	ThingName       string            `json:"thingName"`
	Status          string            `json:"status"`
	StatusDetails   map[string]string `json:"statusDetails,omitempty"`
	VersionNumber   int64             `json:"versionNumber"`
	ExecutionNumber int64             `json:"executionNumber"`
	JobDocument     json.RawMessage   `json:"jobDocument,omitempty"`
}

// IsRotation reports whether the job asks for a certificate rotation.
func (e *Execution) IsRotation() bool {
	var doc struct {
		Operation string `json:"operation"`
	}
	return e != nil && json.Unmarshal(e.JobDocument, &doc) == nil && doc.Operation == RotateOperation
}

// Error is a /rejected answer of the Client API.
type Error struct {
	Code           string `json:"code"`
	Message        string `json:"message"`
	ExecutionState *struct {
		Status        string `json:"status"`
		VersionNumber int64  `json:"versionNumber"`
	} `json:"executionState,omitempty"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Client is a client of AWS IoT's Jobs MQTT API for one thing.
type Client struct {
	Conn      iot.MQTT
	ThingName string
	// Timeout bounds the wait for each answer; zero is iot.DefaultRequestTimeout.
	Timeout time.Duration
	// Serial, if set, is held for each request. The answers come on fixed
	// topics ($aws/things/T/jobs/get/accepted, ...), and an MQTT client keeps
	// one handler per filter: two requests of one kind at once over one
	// connection would take each other's subscription. Clients sharing a
	// connection share one Serial.
	Serial sync.Locker
}

func (j *Client) topic(rest string) string { return "$aws/things/" + j.ThingName + "/jobs/" + rest }

// request sends one Jobs API request with a fresh clientToken and returns the
// accepted payload. A /rejected answer is a *Error inside a classified
// rotation.Error: throttling and internal errors are transient.
func (j *Client) request(ctx context.Context, op, rest string, body map[string]any) ([]byte, error) {
	if j.Serial != nil {
		j.Serial.Lock()
		defer j.Serial.Unlock()
	}
	var tok [12]byte
	_, _ = rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	if body == nil {
		body = map[string]any{}
	}
	body["clientToken"] = token
	payload, _ := json.Marshal(body)
	a, err := exchange.Do(ctx, j.Conn, op, j.topic(rest), payload, token, j.Timeout)
	if err != nil {
		return nil, err
	}
	if a.Accepted {
		return a.Payload, nil
	}
	var je Error
	if err := json.Unmarshal(a.Payload, &je); err != nil || je.Code == "" {
		return nil, rotation.NewFatal(op, fmt.Errorf("rejected, and the exchange.Answer is not the Client error JSON: %s", exchange.Snippet(a.Payload)))
	}
	e := &rotation.Error{Op: op, Code: je.Code, Err: &je}
	switch je.Code {
	case "RequestThrottled", "InternalError", "ServiceUnavailable":
		e.Transient = true
	}
	return nil, e
}

// StartNext marks the next pending job IN_PROGRESS and returns it; nil if
// there is none.
func (j *Client) StartNext(ctx context.Context, details map[string]string) (*Execution, error) {
	body := map[string]any{}
	if details != nil {
		body["statusDetails"] = details
	}
	return j.execution(j.request(ctx, "StartNextPendingJobExecution", "start-next", body))
}

// Next is the next pending job (queued or in progress), with its document;
// nil if there is none.
func (j *Client) Next(ctx context.Context) (*Execution, error) {
	return j.execution(j.request(ctx, "DescribeJobExecution $next", "$next/get", map[string]any{"includeJobDocument": true}))
}

// Describe is one job's execution on this thing, with its document.
func (j *Client) Describe(ctx context.Context, jobID string) (*Execution, error) {
	e, err := j.execution(j.request(ctx, "DescribeJobExecution "+jobID, jobID+"/get", map[string]any{"includeJobDocument": true}))
	if err == nil && e == nil {
		err = rotation.NewFatal("DescribeJobExecution "+jobID, errors.New("the exchange.Answer holds no execution"))
	}
	return e, err
}

func (j *Client) execution(payload []byte, err error) (*Execution, error) {
	if err != nil {
		return nil, err
	}
	var out struct {
		Execution *Execution `json:"execution"`
	}
	if err := json.Unmarshal(payload, &out); err != nil {
		return nil, rotation.NewFatal("Client", fmt.Errorf("the exchange.Answer is not JSON: %s", exchange.Snippet(payload)))
	}
	return out.Execution, nil
}

// Update sets a job execution's status and status details.
func (j *Client) Update(ctx context.Context, jobID, status string, details map[string]string) error {
	body := map[string]any{"status": status}
	if details != nil {
		body["statusDetails"] = Details(details)
	}
	_, err := j.request(ctx, "UpdateJobExecution "+jobID+" "+status, jobID+"/update", body)
	return err
}

// Summary is a pending job as GetPendingJobExecutions lists it (without
// its document).
type Summary struct {
	JobID           string `json:"jobId"`
	VersionNumber   int64  `json:"versionNumber"`
	ExecutionNumber int64  `json:"executionNumber"`
	// Status is IN_PROGRESS or QUEUED: the list it came from.
	Status string `json:"-"`
}

// Pending lists the thing's pending jobs (GetPendingJobExecutions): those
// IN_PROGRESS first, then those QUEUED, each in AWS's order.
func (j *Client) Pending(ctx context.Context) ([]Summary, error) {
	payload, err := j.request(ctx, "GetPendingJobExecutions", "get", nil)
	if err != nil {
		return nil, err
	}
	var out struct {
		InProgress []Summary `json:"inProgressJobs"`
		Queued     []Summary `json:"queuedJobs"`
	}
	if err := json.Unmarshal(payload, &out); err != nil {
		return nil, rotation.NewFatal("GetPendingJobExecutions", fmt.Errorf("the answer is not JSON: %s", exchange.Snippet(payload)))
	}
	for i := range out.InProgress {
		out.InProgress[i].Status = StatusInProgress
	}
	for i := range out.Queued {
		out.Queued[i].Status = StatusQueued
	}
	return append(out.InProgress, out.Queued...), nil
}

// PendingRotations looks through the thing's pending jobs, reads each one's
// document, and returns the rotation jobs among them, in the order of
// Pending. Jobs of other operations (a firmware update queued before the
// rotation, say) are left alone for whoever handles them: a device that
// looked only at the next job would never reach a rotation queued behind one.
func (j *Client) PendingRotations(ctx context.Context) ([]*Execution, error) {
	pending, err := j.Pending(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Execution
	for _, p := range pending {
		e, err := j.Describe(ctx, p.JobID)
		if err != nil {
			var je *Error
			if errors.As(err, &je) && je.Code == "ResourceNotFound" {
				continue // finished or cancelled since it was listed
			}
			return out, err
		}
		if e.IsRotation() && (e.Status == StatusQueued || e.Status == StatusInProgress) {
			out = append(out, e)
		}
	}
	return out, nil
}

// OnNotify calls h each time the thing's list of pending jobs changes (the
// notify topic: a job added, finished or cancelled). h gets no job: it
// should look with Pending, from a goroutine of its own.
func (j *Client) OnNotify(ctx context.Context, h func()) error {
	return j.Conn.Subscribe(ctx, j.topic("notify"), iot.AtLeastOnce, func(iot.Message) { h() })
}

// List is a round trip on the thing's Client API (GetPendingJobExecutions): a
// cheap question whose answer shows that the cloud accepts the connection.
func (j *Client) List(ctx context.Context) error {
	_, err := j.request(ctx, "GetPendingJobExecutions", "get", nil)
	return err
}

// OnNext calls h with the next pending job each time it changes (the
// notify-next topic). The subscription lasts until Unsubscribe, and the
// client restores it after reconnecting.
func (j *Client) OnNext(ctx context.Context, h func(*Execution)) error {
	return j.Conn.Subscribe(ctx, j.topic("notify-next"), iot.AtLeastOnce, func(m iot.Message) {
		var n struct {
			Execution *Execution `json:"execution"`
		}
		if json.Unmarshal(m.Payload, &n) == nil {
			h(n.Execution)
		}
	})
}

// StartRotationJob finds the first pending rotation job (looking past jobs
// of other operations, which it leaves alone), marks it IN_PROGRESS and
// returns the trigger for it; nil if no rotation job is pending.
func (j *Client) StartRotationJob(ctx context.Context) (*rotation.Trigger, error) {
	found, err := j.PendingRotations(ctx)
	if err != nil || len(found) == 0 {
		return nil, err
	}
	e := found[0]
	if e.Status == StatusQueued {
		if err := j.Update(ctx, e.JobID, StatusInProgress, map[string]string{"step": "rotating"}); err != nil {
			return nil, err
		}
	}
	return &rotation.Trigger{Kind: rotation.TriggerJob, JobID: e.JobID, Reason: RotateOperation}, nil
}

// Reporter reports rotations that a job started back to the job.
type Reporter struct{ Client *Client }

var _ rotation.Reporter = Reporter{}

// Report updates the job: SUCCEEDED with the old and new certificate IDs, or
// FAILED with the reason. A job already in the status to be reported (the
// report is repeated after a restart) counts as reported.
func (r Reporter) Report(ctx context.Context, rep rotation.Report) error {
	if rep.Trigger.JobID == "" || r.Client == nil {
		return nil
	}
	status := StatusSucceeded
	details := map[string]string{"oldCertificateId": rep.OldCertificateID, "newCertificateId": rep.NewCertificateID}
	if rep.Outcome != rotation.Succeeded {
		status = StatusFailed
		details = map[string]string{"reason": rep.Reason, "phase": string(rep.Phase), "certificateId": rep.OldCertificateID}
	}
	err := r.Client.Update(ctx, rep.Trigger.JobID, status, details)
	var je *Error
	if errors.As(err, &je) && je.ExecutionState != nil && je.ExecutionState.Status == status {
		return nil
	}
	return err
}

// Confirm checks, on the connection it is asked over, that the cloud
// accepts it: for a job's rotation that the job is still IN_PROGRESS (a job
// cancelled meanwhile fails the confirmation), otherwise that the thing's
// Client API answers.
func Confirm(ctx context.Context, j *Client, t rotation.Trigger) error {
	if t.JobID == "" {
		return j.List(ctx)
	}
	e, err := j.Describe(ctx, t.JobID)
	if err != nil {
		return err
	}
	if e.Status != StatusInProgress {
		return rotation.NewFatal("confirming job "+t.JobID, fmt.Errorf("the job is %s, no longer IN_PROGRESS: the cloud does not expect this rotation any more", e.Status))
	}
	return nil
}

// MaxDetailValue is the longest statusDetails value AWS IoT Jobs accepts, in
// characters.
const MaxDetailValue = 1024

// Details makes statusDetails that AWS IoT Jobs accepts: keys of 1–128
// characters of [a-zA-Z0-9:_-] (others are replaced by '_'), values of 1–1,024
// characters without control characters (a multi-line error becomes one
// line; an empty value becomes "-"; a long one is cut, ending in "…"). AWS
// refuses the whole update otherwise, and the device's report would be lost.
func Details(in map[string]string) map[string]string {
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[detailKey(k)] = detailValue(v)
	}
	return out
}

func detailKey(k string) string {
	if k == "" {
		return "_"
	}
	b := []rune(k)
	if len(b) > 128 {
		b = b[:128]
	}
	for i, r := range b {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == ':' || r == '_' || r == '-') {
			b[i] = '_'
		}
	}
	return string(b)
}

func detailValue(v string) string {
	v = strings.Join(strings.FieldsFunc(v, func(r rune) bool {
		return unicode.IsControl(r) || unicode.IsSpace(r) || !unicode.IsPrint(r) && !unicode.IsSpace(r)
	}), " ")
	if v == "" {
		return "-"
	}
	if r := []rune(v); len(r) > MaxDetailValue {
		v = string(r[:MaxDetailValue-1]) + "…"
	}
	return v
}
