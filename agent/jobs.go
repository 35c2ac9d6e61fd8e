package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

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
	JobQueued     = "QUEUED"
	JobInProgress = "IN_PROGRESS"
	JobSucceeded  = "SUCCEEDED"
	JobFailed     = "FAILED"
)

// JobExecution is a job as the Jobs MQTT API describes it to the device.
type JobExecution struct {
	JobID           string            `json:"jobId"`
	ThingName       string            `json:"thingName"`
	Status          string            `json:"status"`
	StatusDetails   map[string]string `json:"statusDetails,omitempty"`
	VersionNumber   int64             `json:"versionNumber"`
	ExecutionNumber int64             `json:"executionNumber"`
	JobDocument     json.RawMessage   `json:"jobDocument,omitempty"`
}

// IsRotation reports whether the job asks for a certificate rotation.
func (e *JobExecution) IsRotation() bool {
	var doc struct {
		Operation string `json:"operation"`
	}
	return e != nil && json.Unmarshal(e.JobDocument, &doc) == nil && doc.Operation == RotateOperation
}

// JobsError is a /rejected answer of the Jobs API.
type JobsError struct {
	Code           string `json:"code"`
	Message        string `json:"message"`
	ExecutionState *struct {
		Status        string `json:"status"`
		VersionNumber int64  `json:"versionNumber"`
	} `json:"executionState,omitempty"`
}

func (e *JobsError) Error() string { return e.Code + ": " + e.Message }

// Jobs is a client of AWS IoT's Jobs MQTT API for one thing.
type Jobs struct {
	Conn      MQTT
	ThingName string
	// Timeout bounds the wait for each answer; zero is DefaultRequestTimeout.
	Timeout time.Duration
}

func (j *Jobs) topic(rest string) string { return "$aws/things/" + j.ThingName + "/jobs/" + rest }

// request sends one Jobs API request with a fresh clientToken and returns the
// accepted payload. A /rejected answer is a *JobsError inside a classified
// rotation.Error: throttling and internal errors are transient.
func (j *Jobs) request(ctx context.Context, op, rest string, body map[string]any) ([]byte, error) {
	var tok [12]byte
	_, _ = rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	if body == nil {
		body = map[string]any{}
	}
	body["clientToken"] = token
	payload, _ := json.Marshal(body)
	a, err := exchange(ctx, j.Conn, op, j.topic(rest), payload, token, j.Timeout)
	if err != nil {
		return nil, err
	}
	if a.accepted {
		return a.payload, nil
	}
	var je JobsError
	if err := json.Unmarshal(a.payload, &je); err != nil || je.Code == "" {
		return nil, rotation.NewFatal(op, fmt.Errorf("rejected, and the answer is not the Jobs error JSON: %s", snippet(a.payload)))
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
func (j *Jobs) StartNext(ctx context.Context, details map[string]string) (*JobExecution, error) {
	body := map[string]any{}
	if details != nil {
		body["statusDetails"] = details
	}
	return j.execution(j.request(ctx, "StartNextPendingJobExecution", "start-next", body))
}

// Next is the next pending job (queued or in progress), with its document;
// nil if there is none.
func (j *Jobs) Next(ctx context.Context) (*JobExecution, error) {
	return j.execution(j.request(ctx, "DescribeJobExecution $next", "$next/get", map[string]any{"includeJobDocument": true}))
}

// Describe is one job's execution on this thing.
func (j *Jobs) Describe(ctx context.Context, jobID string) (*JobExecution, error) {
	e, err := j.execution(j.request(ctx, "DescribeJobExecution "+jobID, jobID+"/get", nil))
	if err == nil && e == nil {
		err = rotation.NewFatal("DescribeJobExecution "+jobID, errors.New("the answer holds no execution"))
	}
	return e, err
}

func (j *Jobs) execution(payload []byte, err error) (*JobExecution, error) {
	if err != nil {
		return nil, err
	}
	var out struct {
		Execution *JobExecution `json:"execution"`
	}
	if err := json.Unmarshal(payload, &out); err != nil {
		return nil, rotation.NewFatal("Jobs", fmt.Errorf("the answer is not JSON: %s", snippet(payload)))
	}
	return out.Execution, nil
}

// Update sets a job execution's status and status details.
func (j *Jobs) Update(ctx context.Context, jobID, status string, details map[string]string) error {
	body := map[string]any{"status": status}
	if details != nil {
		body["statusDetails"] = details
	}
	_, err := j.request(ctx, "UpdateJobExecution "+jobID+" "+status, jobID+"/update", body)
	return err
}

// List is a round trip on the thing's Jobs API (GetPendingJobExecutions): a
// cheap question whose answer shows that the cloud accepts the connection.
func (j *Jobs) List(ctx context.Context) error {
	_, err := j.request(ctx, "GetPendingJobExecutions", "get", nil)
	return err
}

// OnNext calls h with the next pending job each time it changes (the
// notify-next topic). The subscription lasts until Unsubscribe, and the
// client restores it after reconnecting.
func (j *Jobs) OnNext(ctx context.Context, h func(*JobExecution)) error {
	return j.Conn.Subscribe(ctx, j.topic("notify-next"), AtLeastOnce, func(m Message) {
		var n struct {
			Execution *JobExecution `json:"execution"`
		}
		if json.Unmarshal(m.Payload, &n) == nil {
			h(n.Execution)
		}
	})
}

// StartRotationJob looks at the next pending job and, if its document asks
// for a rotation, marks it IN_PROGRESS and returns the trigger for it. A job
// of another kind is left alone for whoever handles it: the result is nil.
func (j *Jobs) StartRotationJob(ctx context.Context) (*rotation.Trigger, error) {
	e, err := j.Next(ctx)
	if err != nil || e == nil || !e.IsRotation() {
		return nil, err
	}
	if e.Status == JobQueued {
		if err := j.Update(ctx, e.JobID, JobInProgress, map[string]string{"step": "rotating"}); err != nil {
			return nil, err
		}
	}
	return &rotation.Trigger{Kind: rotation.TriggerJob, JobID: e.JobID, Reason: RotateOperation}, nil
}

// JobReporter reports rotations that a job started back to the job.
type JobReporter struct{ Jobs *Jobs }

var _ rotation.Reporter = JobReporter{}

// Report updates the job: SUCCEEDED with the old and new certificate IDs, or
// FAILED with the reason. A job already in the status to be reported (the
// report is repeated after a restart) counts as reported.
func (r JobReporter) Report(ctx context.Context, rep rotation.Report) error {
	if rep.Trigger.JobID == "" || r.Jobs == nil {
		return nil
	}
	status := JobSucceeded
	details := map[string]string{"oldCertificateId": rep.OldCertificateID, "newCertificateId": rep.NewCertificateID}
	if rep.Outcome != rotation.Succeeded {
		status = JobFailed
		reason := rep.Reason
		if len(reason) > 1000 {
			reason = reason[:1000] + "…"
		}
		details = map[string]string{"reason": reason, "phase": string(rep.Phase), "certificateId": rep.OldCertificateID}
	}
	err := r.Jobs.Update(ctx, rep.Trigger.JobID, status, details)
	var je *JobsError
	if errors.As(err, &je) && je.ExecutionState != nil && je.ExecutionState.Status == status {
		return nil
	}
	return err
}

// ConfirmJob checks, on the connection it is asked over, that the cloud
// accepts it: for a job's rotation that the job is still IN_PROGRESS (a job
// cancelled meanwhile fails the confirmation), otherwise that the thing's
// Jobs API answers.
func ConfirmJob(ctx context.Context, j *Jobs, t rotation.Trigger) error {
	if t.JobID == "" {
		return j.List(ctx)
	}
	e, err := j.Describe(ctx, t.JobID)
	if err != nil {
		return err
	}
	if e.Status != JobInProgress {
		return rotation.NewFatal("confirming job "+t.JobID, fmt.Errorf("the job is %s, no longer IN_PROGRESS: the cloud does not expect this rotation any more", e.Status))
	}
	return nil
}
