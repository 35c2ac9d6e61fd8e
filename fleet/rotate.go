package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
)

// RotateDocument is the job document that asks a thingcert device to rotate
// its certificate (see iot/jobs.RotateOperation on the device's side).
const RotateDocument = `{"operation":"rotate-certificate"}`

// JobIDPrefix starts the ID of every rotation job fleet creates.
const JobIDPrefix = "thingcert-rotate-"

// RotateOptions say which things rotate and how fast.
type RotateOptions struct {
	// ThingGroup or Things (one of them) are the targets.
	ThingGroup string
	Things     []string
	// Round distinguishes a later rotation of the same targets from the
	// first: the job ID is derived from the targets and Round, so a re-run
	// with the same ones finds the job it already created.
	Round string
	// MaxPerMinute is the rollout rate (AWS: 1–1000); zero leaves AWS's
	// default (1000).
	MaxPerMinute int32
	// ExponentialBase and ExponentialFactor, if set (instead of
	// MaxPerMinute), start the rollout at Base per minute and multiply the
	// rate by Factor (1.1–5) after every Base successes.
	ExponentialBase   int32
	ExponentialFactor float64
	// AbortFailedPercent, if set, cancels the job when that share of
	// executions (after at least AbortMinExecuted) failed.
	AbortFailedPercent float64
	AbortMinExecuted   int32
	// TimeoutMinutes, if set, times an execution out that stays IN_PROGRESS
	// that long (AWS: 1–10080).
	TimeoutMinutes int64
	// DryRun only says which job would be created.
	DryRun bool
}

// Job is a rotation job as Rotate found or made it.
type Job struct {
	ID      string   `json:"jobId"`
	Targets []string `json:"targets"`
	Status  string   `json:"status"`
	Created bool     `json:"created"`
	DryRun  bool     `json:"dryRun,omitempty"`
}

// JobID is the rotation job's ID for a set of target ARNs and a round: the
// same set (in any order) always gives the same ID.
func JobID(targets []string, round string) string {
	s := slices.Clone(targets)
	slices.Sort(s)
	s = slices.Compact(s)
	h := sha256.New()
	for _, t := range s {
		h.Write([]byte(t))
		h.Write([]byte{0})
	}
	h.Write([]byte(round))
	id := JobIDPrefix + hex.EncodeToString(h.Sum(nil))[:20]
	if round != "" {
		id += "-" + sanitizeJobID(round)
	}
	return id
}

func sanitizeJobID(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	out := b.String()
	if len(out) > 24 {
		out = out[:24]
	}
	return out
}

// Rotate creates the rotation job for the targets, or finds the one a
// previous run created (the ID is derived from the targets), and returns it.
func Rotate(ctx context.Context, api API, o RotateOptions) (Job, error) {
	targets, err := rotateTargets(ctx, api, o)
	if err != nil {
		return Job{}, err
	}
	in, err := createJobInput(targets, o)
	if err != nil {
		return Job{}, err
	}
	j := Job{ID: *in.JobId, Targets: targets}
	out, err := api.DescribeJob(ctx, &iot.DescribeJobInput{JobId: in.JobId})
	switch {
	case err == nil && out.Job != nil:
		j.Status = string(out.Job.Status)
		return j, nil
	case err != nil && !isNotFound(err):
		return j, fmt.Errorf("fleet: looking for rotation job %s: %w", j.ID, err)
	case o.DryRun:
		j.DryRun = true
		return j, nil
	}
	if _, err := api.CreateJob(ctx, in); err != nil {
		if isExists(err) { // another operator made it meanwhile
			j.Status = string(types.JobStatusInProgress)
			return j, nil
		}
		return j, fmt.Errorf("fleet: creating rotation job %s: %w", j.ID, err)
	}
	j.Status, j.Created = string(types.JobStatusInProgress), true
	return j, nil
}

// createJobInput is the CreateJob request for the targets: a pure function
// of the options, checked against AWS's limits.
func createJobInput(targets []string, o RotateOptions) (*iot.CreateJobInput, error) {
	id := JobID(targets, o.Round)
	doc := RotateDocument
	desc := "thingcert certificate rotation"
	in := &iot.CreateJobInput{JobId: &id, Targets: targets, Document: &doc, Description: &desc, TargetSelection: types.TargetSelectionSnapshot}
	if o.MaxPerMinute != 0 || o.ExponentialBase != 0 {
		if o.MaxPerMinute < 0 || o.MaxPerMinute > 1000 {
			return nil, fmt.Errorf("fleet: rollout rate %d per minute: AWS IoT Jobs takes 1 to 1000: %w", o.MaxPerMinute, ErrInvalid)
		}
		if o.MaxPerMinute != 0 && o.ExponentialBase != 0 {
			// AWS IoT Jobs takes a fixed rate or an exponential one, not both
			// (an exponential rollout caps itself at 1000 per minute).
			return nil, fmt.Errorf("fleet: a rollout has a maximum rate or an exponential rate, not both: %w", ErrInvalid)
		}
		rc := &types.JobExecutionsRolloutConfig{}
		if o.MaxPerMinute > 0 {
			rc.MaximumPerMinute = &o.MaxPerMinute
		}
		if o.ExponentialBase != 0 {
			if o.ExponentialBase < 1 || o.ExponentialBase > 1000 || o.ExponentialFactor < 1.1 || o.ExponentialFactor > 5 {
				return nil, fmt.Errorf("fleet: exponential rollout base %d, factor %g: AWS IoT Jobs takes a base of 1 to 1000 per minute and a factor of 1.1 to 5: %w", o.ExponentialBase, o.ExponentialFactor, ErrInvalid)
			}
			base, factor := o.ExponentialBase, o.ExponentialFactor
			rc.ExponentialRate = &types.ExponentialRolloutRate{BaseRatePerMinute: &base, IncrementFactor: &factor,
				RateIncreaseCriteria: &types.RateIncreaseCriteria{NumberOfSucceededThings: &base}}
		}
		in.JobExecutionsRolloutConfig = rc
	}
	if o.AbortFailedPercent != 0 {
		if o.AbortFailedPercent < 0 || o.AbortFailedPercent > 100 {
			return nil, fmt.Errorf("fleet: abort threshold %g%%: takes 0 to 100: %w", o.AbortFailedPercent, ErrInvalid)
		}
		pct, minExec := o.AbortFailedPercent, o.AbortMinExecuted
		if minExec < 1 {
			minExec = 1
		}
		in.AbortConfig = &types.AbortConfig{CriteriaList: []types.AbortCriteria{{
			Action: types.AbortActionCancel, FailureType: types.JobExecutionFailureTypeFailed, ThresholdPercentage: &pct, MinNumberOfExecutedThings: &minExec,
		}}}
	}
	if o.TimeoutMinutes != 0 {
		if o.TimeoutMinutes < 1 || o.TimeoutMinutes > 10080 {
			return nil, fmt.Errorf("fleet: in-progress timeout %d minutes: AWS IoT Jobs takes 1 to 10080: %w", o.TimeoutMinutes, ErrInvalid)
		}
		t := o.TimeoutMinutes
		in.TimeoutConfig = &types.TimeoutConfig{InProgressTimeoutInMinutes: &t}
	}
	return in, nil
}

// rotateTargets are the job's target ARNs.
func rotateTargets(ctx context.Context, api API, o RotateOptions) ([]string, error) {
	switch {
	case o.ThingGroup != "" && len(o.Things) > 0:
		return nil, fmt.Errorf("fleet: a rotation targets a thing group or things, not both: %w", ErrInvalid)
	case o.ThingGroup != "":
		out, err := api.DescribeThingGroup(ctx, &iot.DescribeThingGroupInput{ThingGroupName: &o.ThingGroup})
		if err != nil {
			return nil, fmt.Errorf("fleet: thing group %s: %w", o.ThingGroup, err)
		}
		return []string{str(out.ThingGroupArn)}, nil
	case len(o.Things) == 0:
		return nil, fmt.Errorf("fleet: a rotation needs a thing group or things to target: %w", ErrInvalid)
	case len(o.Things) > 100:
		// AWS's CreateJob takes at most 100 targets; a thing group holds more.
		return nil, fmt.Errorf("fleet: %d things: a job targets at most 100; put them in a thing group: %w", len(o.Things), ErrInvalid)
	}
	var arns []string
	for _, name := range o.Things {
		out, err := api.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: &name})
		if err != nil {
			return nil, fmt.Errorf("fleet: thing %s: %w", name, err)
		}
		arns = append(arns, str(out.ThingArn))
	}
	slices.Sort(arns)
	return slices.Compact(arns), nil
}

// ThingsFromAudit reads an audit report (Report as JSON) and lists the
// things whose certificates have a finding that rotation cures.
func ThingsFromAudit(file string) ([]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("fleet: reading audit report %s: %w", file, err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("fleet: audit report %s is not an audit's JSON: %w", file, err)
	}
	var things []string
	for _, f := range r.Findings {
		if rotationCures(f.Check) && f.Thing != "" {
			things = append(things, f.Thing)
		}
	}
	slices.Sort(things)
	return slices.Compact(things), nil
}

// Progress is a rotation job's execution counts at one moment.
type Progress struct {
	At         time.Time      `json:"at"`
	JobStatus  string         `json:"jobStatus"`
	Counts     map[string]int `json:"counts"`
	Total      int            `json:"total"`
	Done       int            `json:"done"` // in a terminal status
	PerMinute  float64        `json:"perMinute"`
	ETA        time.Duration  `json:"eta,omitempty"`
	Terminated bool           `json:"terminated"` // the job itself completed or was canceled
}

// JobProgress reads a job's execution counts; since and started give the
// rate and ETA (the rate is Done over the time since started).
func JobProgress(ctx context.Context, api API, jobID string, started, now time.Time) (Progress, error) {
	out, err := api.DescribeJob(ctx, &iot.DescribeJobInput{JobId: &jobID})
	if err != nil {
		return Progress{}, fmt.Errorf("fleet: describing job %s: %w", jobID, err)
	}
	p := Progress{At: now, Counts: map[string]int{}}
	if out.Job == nil {
		return p, fmt.Errorf("fleet: job %s: DescribeJob answered without a job", jobID)
	}
	p.JobStatus = string(out.Job.Status)
	p.Terminated = out.Job.Status == types.JobStatusCompleted || out.Job.Status == types.JobStatusCanceled || out.Job.Status == types.JobStatusDeletionInProgress
	if d := out.Job.JobProcessDetails; d != nil {
		for k, v := range map[string]*int32{
			"QUEUED": d.NumberOfQueuedThings, "IN_PROGRESS": d.NumberOfInProgressThings, "SUCCEEDED": d.NumberOfSucceededThings,
			"FAILED": d.NumberOfFailedThings, "TIMED_OUT": d.NumberOfTimedOutThings, "REJECTED": d.NumberOfRejectedThings,
			"CANCELED": d.NumberOfCanceledThings, "REMOVED": d.NumberOfRemovedThings,
		} {
			if v != nil && *v > 0 {
				p.Counts[k] = int(*v)
				p.Total += int(*v)
				if k != "QUEUED" && k != "IN_PROGRESS" {
					p.Done += int(*v)
				}
			}
		}
	}
	if el := now.Sub(started); el > 0 && p.Done > 0 {
		p.PerMinute = float64(p.Done) / el.Minutes()
		if left := p.Total - p.Done; left > 0 {
			p.ETA = time.Duration(float64(left) / p.PerMinute * float64(time.Minute)).Round(time.Second)
		}
	}
	return p, nil
}

// Line is the progress as one line of text.
func (p Progress) Line() string {
	var parts []string
	for _, k := range []string{"QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "CANCELED", "REMOVED"} {
		if n := p.Counts[k]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, n))
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "no executions yet")
	}
	s := fmt.Sprintf("job %s: %d/%d done (%s), %.1f/min", p.JobStatus, p.Done, p.Total, strings.Join(parts, ", "), p.PerMinute)
	if p.ETA > 0 {
		s += ", ETA " + p.ETA.String()
	}
	return s
}

// Finished reports whether every execution reached a terminal status (or
// the job itself ended).
func (p Progress) Finished() bool {
	return p.Terminated || (p.Total > 0 && p.Done == p.Total)
}
