package fleet

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
)

// Retirement of the certificates a rotation job replaced. The decision for
// each execution (PlanRetire) is a pure function of what AWS says about the
// execution and the two certificates; Retire lists that state, decides, and
// acts. Each action moves the state one step along ACTIVE → INACTIVE →
// detached → deleted, so an interrupted run is finished by the next one.

// CertState is what AWS IoT says about one certificate.
type CertState struct {
	ID     string   `json:"certificateId"`
	ARN    string   `json:"arn,omitempty"`
	Status string   `json:"status"` // ACTIVE, INACTIVE, REVOKED, ...; "" when it does not exist
	Things []string `json:"things,omitempty"`
	// Policies are the policy names attached to it.
	Policies []string `json:"policies,omitempty"`
}

// Exists reports whether AWS still holds the certificate.
func (c *CertState) Exists() bool { return c != nil && c.Status != "" }

// ExecState is one job execution with the certificates its status details
// name.
type ExecState struct {
	Thing   string            `json:"thing"`
	Status  string            `json:"status"`
	Details map[string]string `json:"statusDetails,omitempty"`
	// Finished is when the execution last changed (its SUCCEEDED time).
	Finished time.Time `json:"finished"`
	// ThingActive are the IDs of the thing's ACTIVE certificates.
	ThingActive []string   `json:"thingActive,omitempty"`
	Old, New    *CertState `json:"-"`
}

// Step is what retirement does for one execution.
type Step string

// The steps PlanRetire chooses.
const (
	StepNothing    Step = "nothing"    // done already, or nothing to retire
	StepPending    Step = "pending"    // the execution has not finished
	StepWait       Step = "wait"       // grace or delete-after not over yet
	StepDeactivate Step = "deactivate" // set the old certificate INACTIVE
	StepDelete     Step = "delete"     // detach the old certificate and delete it
	StepReport     Step = "report"     // a problem a person must look at; nothing done
)

// RetireOptions are the knobs of retirement.
type RetireOptions struct {
	// Grace is how long after an execution SUCCEEDED its old certificate
	// stays ACTIVE (for a device that still uses it, e.g. a second process).
	Grace time.Duration
	// DeleteAfter, if set, deletes the old certificate that long after it
	// was deactivated (counted from the execution's end plus Grace); zero
	// keeps it INACTIVE.
	DeleteAfter time.Duration
	DryRun      bool
	// Workers is how many executions are looked at and acted on at once;
	// zero is one. AWS's control-plane quotas (ThrottlingException, which
	// the SDK retries) bound what more workers gain.
	Workers int
}

// Decision is PlanRetire's answer for one execution.
type Decision struct {
	Thing    string    `json:"thing"`
	Status   string    `json:"executionStatus"`
	Step     Step      `json:"step"`
	OldCert  string    `json:"oldCertificateId,omitempty"`
	NewCert  string    `json:"newCertificateId,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	At       time.Time `json:"at,omitzero"` // for StepWait: when to act
	Done     bool      `json:"done,omitempty"`
	Error    string    `json:"error,omitempty"`
	Executed bool      `json:"executed,omitempty"`
}

// PlanRetire decides what to do for one execution at now. It never
// deactivates a thing's only ACTIVE certificate, never touches a certificate
// attached to another thing, and acts only on SUCCEEDED executions.
func PlanRetire(e ExecState, o RetireOptions, now time.Time) Decision {
	d := Decision{Thing: e.Thing, Status: e.Status, OldCert: e.Details["oldCertificateId"], NewCert: e.Details["newCertificateId"]}
	switch e.Status {
	case "SUCCEEDED":
	case "QUEUED", "IN_PROGRESS":
		d.Step, d.Reason = StepPending, "the device has not finished"
		return d
	case "FAILED", "TIMED_OUT", "REJECTED":
		d.Step = StepReport
		d.Reason = e.Status
		if r := e.Details["reason"]; r != "" {
			d.Reason += ": " + r
		} else if e.Status == "TIMED_OUT" {
			d.Reason += ": the device did not finish within the job's timeout"
		}
		if c := e.Details["certificateId"]; c != "" {
			d.Reason += " (the device kept certificate " + c + ")"
		}
		return d
	default: // CANCELED, REMOVED
		d.Step, d.Reason = StepNothing, "execution "+e.Status
		return d
	}
	switch {
	case d.OldCert == "" || d.NewCert == "":
		d.Step, d.Reason = StepReport, "SUCCEEDED without oldCertificateId and newCertificateId in its status details"
		return d
	case d.OldCert == d.NewCert:
		d.Step, d.Reason, d.Done = StepNothing, "the old and new certificate are the same", true
		return d
	case !e.Old.Exists():
		d.Step, d.Reason, d.Done = StepNothing, "old certificate deleted", true
		return d
	}
	others := without(e.Old.Things, e.Thing)
	if len(others) > 0 {
		d.Step, d.Reason = StepReport, "old certificate is attached to other things too ("+strings.Join(others, ", ")+"); left alone"
		return d
	}
	if e.Old.Status == "ACTIVE" {
		switch {
		case !e.New.Exists():
			d.Step, d.Reason = StepReport, "new certificate does not exist; old one left ACTIVE"
			return d
		case e.New.Status != "ACTIVE":
			d.Step, d.Reason = StepReport, "new certificate is "+e.New.Status+", not ACTIVE; old one left ACTIVE"
			return d
		case !slices.Contains(e.New.Things, e.Thing):
			d.Step, d.Reason = StepReport, "new certificate is not attached to the thing; old one left ACTIVE"
			return d
		case len(without(e.ThingActive, d.OldCert)) == 0:
			d.Step, d.Reason = StepReport, "old certificate is the thing's only ACTIVE one; left ACTIVE"
			return d
		}
		if at := e.Finished.Add(o.Grace); now.Before(at) {
			d.Step, d.At, d.Reason = StepWait, at, "grace period"
			return d
		}
		d.Step = StepDeactivate
		return d
	}
	// INACTIVE (or REVOKED): delete when due.
	if o.DeleteAfter <= 0 {
		d.Step, d.Reason, d.Done = StepNothing, "old certificate "+e.Old.Status, true
		return d
	}
	if at := e.Finished.Add(o.Grace + o.DeleteAfter); now.Before(at) {
		d.Step, d.At, d.Reason = StepWait, at, "old certificate "+e.Old.Status+"; deleted after the delete-after period"
		return d
	}
	d.Step = StepDelete
	return d
}

func without(list []string, x string) []string {
	var out []string
	for _, s := range list {
		if s != x {
			out = append(out, s)
		}
	}
	return out
}

// RetireResult is what one run of Retire saw and did.
type RetireResult struct {
	Job       string         `json:"jobId"`
	Decisions []Decision     `json:"decisions"`
	Counts    map[string]int `json:"counts"` // by step
	Acted     int            `json:"acted"`
	Errors    int            `json:"errors"`
}

// Retire reads the job's executions and their certificates from AWS,
// decides with PlanRetire, and acts (unless DryRun). stop, if set, is
// consulted before each action: when it says true Retire returns what it
// did so far (for a signal, or a test that interrupts it). Executions are
// handled by o.Workers at once (each its own thing and certificates), and
// the decisions come back in the order AWS listed the executions.
func Retire(ctx context.Context, api API, jobID string, o RetireOptions, now func() time.Time, stop func() bool) (RetireResult, error) {
	return retire(ctx, api, api, jobID, o, now, stop)
}

// RetireIn is Retire for a job whose devices belong to several accounts
// (multi-account registration): the executions are read in the job's account
// (jobAPI), and the certificates they name are looked at, and retired, in
// certAPI's account, where the same certificates have the same IDs.
func RetireIn(ctx context.Context, jobAPI, certAPI API, jobID string, o RetireOptions, now func() time.Time, stop func() bool) (RetireResult, error) {
	return retire(ctx, jobAPI, certAPI, jobID, o, now, stop)
}

func retire(ctx context.Context, jobAPI, api API, jobID string, o RetireOptions, now func() time.Time, stop func() bool) (RetireResult, error) {
	res := RetireResult{Job: jobID, Counts: map[string]int{}}
	execs, err := jobExecutions(ctx, jobAPI, jobID)
	if err != nil {
		return res, err
	}
	workers := max(o.Workers, 1)
	type outcome struct {
		d       Decision
		acted   bool
		failed  bool
		stopped bool
	}
	out := make([]outcome, len(execs))
	var mu sync.Mutex // serializes stop, so "stop after N actions" is exact
	var stopped atomic.Bool
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				ex := execs[i]
				st, err := execState(ctx, jobAPI, api, jobID, ex)
				var d Decision
				if err != nil {
					d = Decision{Thing: ex.thing, Status: ex.status, Step: StepReport, Error: err.Error()}
					out[i] = outcome{d: d, failed: true}
					continue
				}
				d = PlanRetire(st, o, now())
				if !o.DryRun && (d.Step == StepDeactivate || d.Step == StepDelete) {
					mu.Lock()
					halt := stopped.Load() || (stop != nil && stop())
					if halt {
						stopped.Store(true)
					}
					mu.Unlock()
					if halt {
						out[i] = outcome{stopped: true}
						continue
					}
					if err := act(ctx, api, d, st); err != nil {
						d.Error = err.Error()
						out[i] = outcome{d: d, failed: true}
						continue
					}
					d.Executed = true
					out[i] = outcome{d: d, acted: true}
					continue
				}
				out[i] = outcome{d: d}
			}
		}()
	}
	for i := range execs {
		if ctx.Err() != nil || stopped.Load() {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	for _, r := range out {
		if r.stopped || r.d.Thing == "" && r.d.Step == "" {
			continue // not reached before the stop
		}
		if r.acted {
			res.Acted++
		}
		if r.failed {
			res.Errors++
		}
		res.Counts[string(r.d.Step)]++
		res.Decisions = append(res.Decisions, r.d)
	}
	return res, ctx.Err()
}

type execSummary struct{ thing, status string }

func jobExecutions(ctx context.Context, api API, jobID string) ([]execSummary, error) {
	var out []execSummary
	var token *string
	for {
		page, err := api.ListJobExecutionsForJob(ctx, &iot.ListJobExecutionsForJobInput{JobId: &jobID, NextToken: token})
		if err != nil {
			return nil, fmt.Errorf("fleet: listing executions of job %s: %w", jobID, err)
		}
		for _, e := range page.ExecutionSummaries {
			var status string
			if e.JobExecutionSummary != nil {
				status = string(e.JobExecutionSummary.Status)
			}
			out = append(out, execSummary{thing: thingFromARN(str(e.ThingArn)), status: status})
		}
		if token = page.NextToken; token == nil || *token == "" {
			return out, nil
		}
	}
}

func thingFromARN(arn string) string {
	if i := strings.LastIndex(arn, ":thing/"); i >= 0 {
		return arn[i+len(":thing/"):]
	}
	return arn
}

// execState reads, for a SUCCEEDED execution, everything PlanRetire needs.
func execState(ctx context.Context, jobAPI, api API, jobID string, ex execSummary) (ExecState, error) {
	st := ExecState{Thing: ex.thing, Status: ex.status}
	if ex.status != string(types.JobExecutionStatusSucceeded) && ex.status != string(types.JobExecutionStatusFailed) &&
		ex.status != string(types.JobExecutionStatusTimedOut) && ex.status != string(types.JobExecutionStatusRejected) {
		return st, nil
	}
	out, err := jobAPI.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: &jobID, ThingName: &ex.thing})
	if err != nil {
		return st, fmt.Errorf("fleet: describing execution of job %s on %s: %w", jobID, ex.thing, err)
	}
	if e := out.Execution; e != nil {
		st.Status = string(e.Status)
		if e.StatusDetails != nil {
			st.Details = e.StatusDetails.DetailsMap
		}
		if e.LastUpdatedAt != nil {
			st.Finished = *e.LastUpdatedAt
		}
	}
	if st.Status != string(types.JobExecutionStatusSucceeded) {
		return st, nil
	}
	ids, _, err := thingCertificates(ctx, api, ex.thing)
	if err != nil {
		return st, fmt.Errorf("fleet: listing certificates of %s: %w", ex.thing, err)
	}
	for _, id := range ids {
		c, err := certState(ctx, api, id, false)
		if err != nil {
			return st, err
		}
		if c.Status == "ACTIVE" {
			st.ThingActive = append(st.ThingActive, id)
		}
	}
	if id := st.Details["oldCertificateId"]; id != "" {
		if st.Old, err = certState(ctx, api, id, true); err != nil {
			return st, err
		}
	}
	if id := st.Details["newCertificateId"]; id != "" {
		if st.New, err = certState(ctx, api, id, false); err != nil {
			return st, err
		}
	}
	return st, nil
}

// certState describes a certificate and lists its things (and, with
// policies, its policies); a certificate AWS does not hold has Status "".
func certState(ctx context.Context, api API, id string, policies bool) (*CertState, error) {
	c := &CertState{ID: id}
	out, err := api.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: &id})
	if isNotFound(err) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fleet: describing certificate %s: %w", id, err)
	}
	if d := out.CertificateDescription; d != nil {
		c.Status, c.ARN = string(d.Status), str(d.CertificateArn)
	}
	if c.Things, err = principalThings(ctx, api, c.ARN); err != nil {
		return nil, fmt.Errorf("fleet: listing things of certificate %s: %w", id, err)
	}
	if policies {
		if c.Policies, err = attachedPolicies(ctx, api, c.ARN); err != nil {
			return nil, fmt.Errorf("fleet: listing policies of certificate %s: %w", id, err)
		}
	}
	return c, nil
}

// act carries out a deactivation or a deletion.
func act(ctx context.Context, api API, d Decision, st ExecState) error {
	id := d.OldCert
	switch d.Step {
	case StepDeactivate:
		if _, err := api.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: &id, NewStatus: types.CertificateStatusInactive}); err != nil {
			return fmt.Errorf("fleet: deactivating certificate %s of %s: %w", id, d.Thing, err)
		}
	case StepDelete:
		arn := st.Old.ARN
		for _, th := range st.Old.Things { // only d.Thing: PlanRetire refuses others
			if _, err := api.DetachThingPrincipal(ctx, &iot.DetachThingPrincipalInput{ThingName: &th, Principal: &arn}); err != nil && !isNotFound(err) {
				return fmt.Errorf("fleet: detaching certificate %s from %s: %w", id, th, err)
			}
		}
		for _, p := range st.Old.Policies {
			if _, err := api.DetachPolicy(ctx, &iot.DetachPolicyInput{PolicyName: &p, Target: &arn}); err != nil && !isNotFound(err) {
				return fmt.Errorf("fleet: detaching policy %s from certificate %s: %w", p, id, err)
			}
		}
		if _, err := api.DeleteCertificate(ctx, &iot.DeleteCertificateInput{CertificateId: &id}); err != nil && !isNotFound(err) {
			return fmt.Errorf("fleet: deleting certificate %s of %s: %w", id, d.Thing, err)
		}
	}
	return nil
}
