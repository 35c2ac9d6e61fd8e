package fleet

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/thingcert/thingcert/rotation"
)

// The fleet rotation daemon's cycle: audit → start a rotation wave for the
// things the policy says are due → retire what rotation jobs finished →
// report. It keeps no state of its own: the due things come from the
// certificates AWS holds, the things already rotating from the pending
// executions of rotation jobs, and a wave's job ID from its targets and the
// day, so a restarted daemon, or two running at once, find the same job.

// CycleOptions are the daemon's knobs.
type CycleOptions struct {
	// ThingGroup limits the fleet to a thing group; empty is every thing.
	ThingGroup string
	// Policy says when a certificate is due: the device's own knobs
	// (LifetimeRatio, MaxAge, BeforeExpiry; Jitter spreads things by name).
	Policy rotation.Policy
	// WaveSize is the most things one cycle starts rotating (a job targets
	// at most 100 things by name); zero is 100.
	WaveSize int
	// Rotate's rollout, abort and timeout settings for each wave.
	Rollout RotateOptions
	// Retire's settings for every rotation job.
	Retire RetireOptions
	// Audit thresholds.
	Audit AuditOptions
	// Accounts, if set, are every account the fleet's devices belong to, for
	// devices whose certificates come from a CA not registered with AWS IoT
	// (multi-account registration): each cycle registers in each the new
	// certificates that rotating devices report (Register, checked against
	// OwnerCA), and retires in each. The jobs are in the account of the
	// cycle's own API, which should be among them.
	Accounts []Account
	// OwnerCA are the CAs that sign the devices' certificates, for Accounts.
	OwnerCA *x509.CertPool
	// DryRun looks and decides, and changes nothing.
	DryRun bool
}

// DueThing is a thing whose certificate the policy says to rotate.
type DueThing struct {
	Thing         string          `json:"thing"`
	CertificateID string          `json:"certificateId"`
	At            time.Time       `json:"at"`
	Reason        rotation.Reason `json:"reason"`
}

// DueThings are the things whose newest ACTIVE certificate the policy says
// to renew by now, leaving out those already rotating: a pure function of
// the audit's listing.
func DueThings(things []Thing, p rotation.Policy, rotating map[string]bool, now time.Time) []DueThing {
	var out []DueThing
	for _, th := range things {
		if rotating[th.Name] {
			continue
		}
		var newest *Certificate
		for i, c := range th.Certificates {
			if c.Status == "ACTIVE" && (newest == nil || c.NotBefore.After(newest.NotBefore)) {
				newest = &th.Certificates[i]
			}
		}
		if newest == nil {
			continue
		}
		d := p.Decide(rotation.Input{NotBefore: newest.NotBefore, NotAfter: newest.NotAfter, Now: now, Seed: th.Name})
		if !d.At.After(now) {
			out = append(out, DueThing{Thing: th.Name, CertificateID: newest.ID, At: d.At, Reason: d.Reason})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].At.Equal(out[j].At) {
			return out[i].At.Before(out[j].At) // the most overdue first
		}
		return out[i].Thing < out[j].Thing
	})
	return out
}

// JobStatus is one rotation job's progress and its retirement.
type JobStatus struct {
	ID      string         `json:"jobId"`
	Status  string         `json:"status"`
	Counts  map[string]int `json:"counts"`
	Retired int            `json:"retired"` // by this cycle (in a dry run: that it would)
	// Registered counts the reported certificates registered (or attached)
	// in an account by this cycle, with CycleOptions.Accounts.
	Registered int `json:"registered,omitempty"`
	Reported   int `json:"reported"` // executions a person must look at
	Errors     int `json:"errors"`
}

// CycleReport is what one cycle saw and did: the daemon's status.
type CycleReport struct {
	At           time.Time      `json:"at"`
	Things       int            `json:"things"`
	Certificates int            `json:"certificates"`
	Findings     map[string]int `json:"findings"`
	Rotating     int            `json:"rotating"`
	Due          []DueThing     `json:"due"`
	Wave         *Job           `json:"wave,omitempty"`
	Jobs         []JobStatus    `json:"jobs"`
	DryRun       bool           `json:"dryRun,omitempty"`
	Problems     []Decision     `json:"problems,omitempty"`
	// Refused are the reported certificates Register would not register.
	Refused []RegisterDecision `json:"refused,omitempty"`
}

// Cycle runs one round of the daemon at now.
func Cycle(ctx context.Context, api API, o CycleOptions, now time.Time) (*CycleReport, error) {
	// Which things are rotating is read before their certificates: a thing
	// whose execution ends in between has its new certificate attached by
	// then (a device reports SUCCEEDED only after it), so the audit sees it.
	// The other order would miss both and start a second wave for it.
	jobIDs, err := rotationJobs(ctx, api)
	if err != nil {
		return nil, err
	}
	rotating, err := rotatingThings(ctx, api, jobIDs)
	if err != nil {
		return nil, err
	}
	rep, err := Audit(ctx, api, AuditOptions{ThingGroup: o.ThingGroup, ExpiringWithin: o.Audit.ExpiringWithin, MaxAge: o.Audit.MaxAge}, now)
	if err != nil {
		return nil, err
	}
	cr := &CycleReport{At: now, Things: len(rep.Things), Findings: map[string]int{}, DryRun: o.DryRun, Jobs: []JobStatus{}}
	for _, th := range rep.Things {
		cr.Certificates += len(th.Certificates)
	}
	for _, f := range rep.Findings {
		cr.Findings[f.Check]++
	}
	cr.Rotating = len(rotating)
	cr.Due = DueThings(rep.Things, o.Policy, rotating, now)
	if cr.Due == nil {
		cr.Due = []DueThing{} // JSON [] for "none"
	}
	if len(cr.Due) > 0 {
		size := o.WaveSize
		if size <= 0 || size > 100 {
			size = 100
		}
		var wave []string
		for _, d := range cr.Due[:min(size, len(cr.Due))] {
			wave = append(wave, d.Thing)
		}
		ro := o.Rollout
		ro.ThingGroup, ro.Things, ro.DryRun = "", wave, o.DryRun
		ro.Round = "auto-" + now.UTC().Format("20060102")
		job, err := Rotate(ctx, api, ro)
		if err != nil {
			return cr, err
		}
		cr.Wave = &job
		if !slices.Contains(jobIDs, job.ID) && !job.DryRun {
			jobIDs = append(jobIDs, job.ID)
		}
	}
	ret := o.Retire
	ret.DryRun = o.DryRun
	for _, id := range jobIDs {
		p, err := JobProgress(ctx, api, id, now, now)
		if err != nil {
			return cr, err
		}
		js := JobStatus{ID: id, Status: p.JobStatus, Counts: p.Counts}
		clock := func() time.Time { return now }
		if len(o.Accounts) > 0 && p.Counts["IN_PROGRESS"] > 0 {
			reg, err := Register(ctx, api, id, o.Accounts, RegisterOptions{CA: o.OwnerCA, DryRun: o.DryRun}, clock)
			if err != nil {
				return cr, err
			}
			js.Errors += reg.Errors
			for _, d := range reg.Decisions {
				switch {
				case d.Executed || o.DryRun && (d.Step == RegisterRegister || d.Step == RegisterAttach):
					js.Registered++
				case d.Step == RegisterRefuse:
					cr.Refused = append(cr.Refused, d)
				}
			}
		}
		targets := []API{api}
		if len(o.Accounts) > 0 {
			targets = targets[:0]
			for _, a := range o.Accounts {
				targets = append(targets, a.API)
			}
		}
		for _, certAPI := range targets {
			res, err := RetireIn(ctx, api, certAPI, id, ret, clock, nil)
			if err != nil {
				return cr, err
			}
			js.Retired += res.Acted
			js.Errors += res.Errors
			if o.DryRun { // what a real cycle would retire
				js.Retired += res.Counts[string(StepDeactivate)] + res.Counts[string(StepDelete)]
			}
			for _, d := range res.Decisions {
				if d.Step == StepReport {
					js.Reported++
					cr.Problems = append(cr.Problems, d)
				}
			}
		}
		cr.Jobs = append(cr.Jobs, js)
	}
	return cr, nil
}

// rotationJobs lists the IDs of every rotation job fleet created.
func rotationJobs(ctx context.Context, api API) ([]string, error) {
	var ids []string
	var token *string
	for {
		page, err := api.ListJobs(ctx, &iot.ListJobsInput{NextToken: token})
		if err != nil {
			return nil, fmt.Errorf("fleet: listing jobs: %w", err)
		}
		for _, j := range page.Jobs {
			if id := str(j.JobId); strings.HasPrefix(id, JobIDPrefix) && j.Status != types.JobStatusDeletionInProgress {
				ids = append(ids, id)
			}
		}
		if token = page.NextToken; token == nil || *token == "" {
			sort.Strings(ids)
			return ids, nil
		}
	}
}

// rotatingThings are the things with a QUEUED or IN_PROGRESS execution of
// a rotation job: a wave must not ask them again.
func rotatingThings(ctx context.Context, api API, jobIDs []string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, id := range jobIDs {
		for _, st := range []types.JobExecutionStatus{types.JobExecutionStatusQueued, types.JobExecutionStatusInProgress} {
			var token *string
			for {
				page, err := api.ListJobExecutionsForJob(ctx, &iot.ListJobExecutionsForJobInput{JobId: &id, Status: st, NextToken: token})
				if err != nil {
					return nil, fmt.Errorf("fleet: listing executions of job %s: %w", id, err)
				}
				for _, e := range page.ExecutionSummaries {
					out[thingFromARN(str(e.ThingArn))] = true
				}
				if token = page.NextToken; token == nil || *token == "" {
					break
				}
			}
		}
	}
	return out, nil
}
