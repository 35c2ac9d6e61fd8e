package emulator

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// The control plane of AWS IoT Jobs: CreateJob with its targets and
// configurations (rollout, abort, timeout, retry), the job's life (rollout,
// abort, completion) and the operations that read and cancel jobs and
// executions. Decisions are taken on the registry's clock whenever the
// registry is asked about jobs and by the running emulator's ticker
// (AdvanceJobs), so a test moves the clock and sees the job move.

// AWS's limits on CreateJob and friends (API reference and quotas).
const (
	maxJobDocument        = 32 * 1024
	maxJobDescription     = 2028
	maxJobComment         = 2028
	maxReasonCode         = 128
	maxRolloutPerMinute   = 1000
	maxInProgressTimeout  = 10080 // minutes: 7 days
	maxRetriesPerCriteria = 10
	maxGroupsPerThing     = 10
)

// jobEffects collects what a change to an account's jobs must publish once
// the registry lock is released: each touched thing's pending list before the
// change (for notify and notify-next), and Jobs events.
type jobEffects struct {
	r      *Registry
	tx     *changeSet
	a      *accountRec
	now    time.Time
	before map[string][]string
	events []func()
}

func (r *Registry) jobEffectsFor(tx *changeSet, a *accountRec, now time.Time) *jobEffects {
	return &jobEffects{r: r, tx: tx, a: a, now: now, before: map[string][]string{}}
}

// execChanged marks a thing's execution of a job changed (to be saved).
func (fx *jobEffects) execChanged(jobID, thing string) {
	fx.tx.touchExec(fx.a.Name, jobID, thing)
}

// jobChanged marks a job's own record changed (to be saved).
func (fx *jobEffects) jobChanged(jobID string) {
	fx.tx.touchJob(fx.a.Name, jobID)
}

// touch records thing's pending executions before the first change to them.
func (fx *jobEffects) touch(thing string) {
	if _, ok := fx.before[thing]; ok {
		return
	}
	ids := []string{}
	for _, p := range pendingLocked(fx.a, thing, fx.now) {
		ids = append(ids, p.id)
	}
	fx.before[thing] = ids
}

// finish returns the publications: notifications first, then events.
func (fx *jobEffects) finish() []func() {
	return append(fx.r.jobNotificationsLocked(fx.a, fx.before, fx.now), fx.events...)
}

// ended follows an execution's move to a terminal status: its event, then a
// retry when the job's retry configuration allows one.
func (fx *jobEffects) ended(jobID string, j *jobRec, thing string, e *execRec) {
	fx.execEvent(jobID, thing, e, "")
	fx.retry(jobID, j, thing, e)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// awsAccountID is the 12-digit account ID in the account's ARNs (accountID).
func awsAccountID(a *accountRec) string { return accountID(a.Name) }

// iotARN is arn:aws:iot:REGION:ACCOUNT:resource.
func iotARN(a *accountRec, resource string) string {
	return "arn:aws:iot:" + a.Region + ":" + awsAccountID(a) + ":" + resource
}

// parseTargetARN reads a thing or thing-group ARN of account a.
func parseTargetARN(a *accountRec, arn string) (kind, name string, err error) {
	prefix := "arn:aws:iot:" + a.Region + ":" + awsAccountID(a) + ":"
	rest, ok := strings.CutPrefix(arn, prefix)
	if ok {
		kind, name, ok = strings.Cut(rest, "/")
	}
	if !ok || (kind != "thing" && kind != "thinggroup") || !isThingName(name) {
		return "", "", fmt.Errorf("emulator: target %q: %w: use %sthing/NAME or %sthinggroup/NAME", arn, ErrInvalid, prefix, prefix)
	}
	return kind, name, nil
}

func newEventID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := fmt.Sprintf("%x", b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// eventsEnabled reports whether account a publishes events of type kind
// (Config.JobEvents turns both Jobs kinds on everywhere).
func (r *Registry) eventsEnabled(a *accountRec, kind string) bool {
	return r.events.notify != nil && (r.cfg.JobEvents || a.Events[kind])
}

// execEvent publishes $aws/events/jobExecution/<jobId>/<status> as AWS IoT
// does when an execution reaches a terminal status (op overrides the
// operation: "deleted").
func (fx *jobEffects) execEvent(jobID, thing string, e *execRec, op string) {
	if !fx.r.eventsEnabled(fx.a, EventJobExecution) {
		return
	}
	status := e.status(fx.now)
	if op == "" {
		op = strings.ToLower(string(status))
	}
	m := map[string]any{
		"eventType": EventJobExecution, "eventId": newEventID(), "timestamp": fx.now.Unix(),
		"operation": op, "jobId": jobID, "thingArn": iotARN(fx.a, "thing/"+thing), "status": status,
	}
	if len(e.StatusDetails) > 0 {
		m["statusDetails"] = e.StatusDetails
	}
	payload, _ := json.Marshal(m)
	topic, account, notify := "$aws/events/jobExecution/"+jobID+"/"+op, fx.a.Name, fx.r.events.notify
	fx.events = append(fx.events, func() { notify(account, topic, payload) })
}

// jobEvent publishes $aws/events/job/<jobId>/<op> (completed, canceled,
// deleted).
func (fx *jobEffects) jobEvent(jobID string, j *jobRec, op string) {
	if !fx.r.eventsEnabled(fx.a, EventJob) {
		return
	}
	ms := func(t time.Time) int64 { return t.UnixMilli() }
	status := map[string]string{"completed": "SUCCEEDED", "canceled": "CANCELED", "deleted": "DELETED"}[op]
	m := map[string]any{
		"eventType": EventJob, "eventId": newEventID(), "timestamp": fx.now.Unix(), "operation": op,
		"jobId": jobID, "status": status, "targetSelection": j.targetSelection(), "targets": j.targetARNs(fx.a),
		"createdAt": ms(j.CreatedAt), "lastUpdatedAt": ms(j.LastUpdatedAt),
	}
	if j.Description != "" {
		m["description"] = j.Description
	}
	if j.Comment != "" {
		m["comment"] = j.Comment
	}
	if op == "completed" {
		m["completedAt"] = ms(j.CompletedAt)
	}
	if op == "canceled" {
		m["forceCanceled"] = j.ForceCanceled
	}
	if op != "deleted" {
		d := j.processDetails(fx.a, fx.now)
		m["jobProcessDetails"] = map[string]int{
			"numberOfCanceledThings": d.NumberOfCanceledThings, "numberOfRejectedThings": d.NumberOfRejectedThings,
			"numberOfFailedThings": d.NumberOfFailedThings, "numberOfRemovedThings": d.NumberOfRemovedThings,
			"numberOfSucceededThings": d.NumberOfSucceededThings, "numberOfTimedOutThings": d.NumberOfTimedOutThings,
		}
	}
	payload, _ := json.Marshal(m)
	topic, account, notify := "$aws/events/job/"+jobID+"/"+op, fx.a.Name, fx.r.events.notify
	fx.events = append(fx.events, func() { notify(account, topic, payload) })
}

func (j *jobRec) targetSelection() string {
	if j.TargetSelection == "" {
		return TargetSnapshot
	}
	return j.TargetSelection
}

func (j *jobRec) status() JobStatus {
	switch {
	case j.Status != "":
		return j.Status
	case j.Canceled:
		return JobStatusCanceled
	}
	return JobStatusInProgress
}

func (j *jobRec) targetARNs(a *accountRec) []string {
	out := make([]string, 0, len(j.Things)+len(j.Groups))
	for _, t := range j.Things {
		out = append(out, iotARN(a, "thing/"+t))
	}
	for _, g := range j.Groups {
		out = append(out, iotARN(a, "thinggroup/"+g))
	}
	return out
}

// processDetails counts the job's things by their latest execution's status.
func (j *jobRec) processDetails(a *accountRec, now time.Time) JobProcessDetails {
	var d JobProcessDetails
	rolling := false
	for _, e := range j.Executions {
		if e.AwaitingRollout {
			rolling = true
		}
		switch e.status(now) {
		case JobQueued:
			d.NumberOfQueuedThings++
		case JobInProgress:
			d.NumberOfInProgressThings++
		case JobSucceeded:
			d.NumberOfSucceededThings++
		case JobFailed:
			d.NumberOfFailedThings++
		case JobRejected:
			d.NumberOfRejectedThings++
		case JobCanceled:
			d.NumberOfCanceledThings++
		case JobTimedOut:
			d.NumberOfTimedOutThings++
		case JobRemoved:
			d.NumberOfRemovedThings++
		}
	}
	if rolling && j.status() == JobStatusInProgress {
		d.ProcessingTargets = j.targetARNs(a)
	}
	return d
}

func exportJob(a *accountRec, id string, j *jobRec) Job {
	out := Job{
		Account: a.Name, ID: id, Document: slices.Clone(j.Document), Things: slices.Clone(j.Things),
		ThingGroups: slices.Clone(j.Groups), Targets: j.targetARNs(a), TargetSelection: j.targetSelection(),
		Description: j.Description, ARN: iotARN(a, "job/"+id), Status: j.status(),
		CreatedAt: j.CreatedAt, LastUpdatedAt: j.LastUpdatedAt, CompletedAt: j.CompletedAt,
		Canceled: j.Canceled, ForceCanceled: j.ForceCanceled, ReasonCode: j.ReasonCode, Comment: j.Comment,
		// Copies: the caller must not reach into the registry.
		RolloutConfig: cloneConfig(j.Rollout), AbortConfig: cloneConfig(j.Abort), TimeoutConfig: cloneConfig(j.Timeout), RetryConfig: cloneConfig(j.Retry),
	}
	if out.LastUpdatedAt.IsZero() {
		out.LastUpdatedAt = j.CreatedAt
	}
	return out
}

// exportJobDetails is exportJob with the jobProcessDetails counts at now.
func exportJobDetails(a *accountRec, id string, j *jobRec, now time.Time) Job {
	out := exportJob(a, id, j)
	d := j.processDetails(a, now)
	out.ProcessDetails = &d
	return out
}

// printable: 1 to max characters, none of Unicode category C (AWS's
// [^\p{C}]+), valid UTF-8.
func printable(s string, max int) bool {
	if s == "" || utf8.RuneCountInString(s) > max || !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		if unicode.Is(unicode.C, c) {
			return false
		}
	}
	return true
}

// decimals reports whether f has at most n digits after the point.
func decimals(f float64, n int) bool {
	p := math.Pow(10, float64(n))
	return math.Abs(f*p-math.Round(f*p)) < 1e-6
}

// checkJobConfigs validates the four configurations as AWS does, strictly
// where its documentation leaves a doubt.
func checkJobConfigs(job Job) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("emulator: job %s: %w: %s", job.ID, ErrInvalid, fmt.Sprintf(format, args...))
	}
	if ro := job.RolloutConfig; ro != nil {
		if ro.MaximumPerMinute != 0 && (ro.MaximumPerMinute < 1 || ro.MaximumPerMinute > maxRolloutPerMinute) {
			return bad("jobExecutionsRolloutConfig.maximumPerMinute %d: use 1-%d", ro.MaximumPerMinute, maxRolloutPerMinute)
		}
		if ex := ro.ExponentialRate; ex != nil {
			if ro.MaximumPerMinute != 0 {
				return bad("jobExecutionsRolloutConfig: give maximumPerMinute or exponentialRate, not both")
			}
			if ex.BaseRatePerMinute < 1 || ex.BaseRatePerMinute > maxRolloutPerMinute {
				return bad("exponentialRate.baseRatePerMinute %d: use 1-%d", ex.BaseRatePerMinute, maxRolloutPerMinute)
			}
			if ex.IncrementFactor < 1.1 || ex.IncrementFactor > 5 || !decimals(ex.IncrementFactor, 1) {
				return bad("exponentialRate.incrementFactor %v: use 1.1-5 with at most one decimal", ex.IncrementFactor)
			}
			c := ex.RateIncreaseCriteria
			if (c.NumberOfNotifiedThings == 0) == (c.NumberOfSucceededThings == 0) || c.NumberOfNotifiedThings < 0 || c.NumberOfSucceededThings < 0 {
				return bad("exponentialRate.rateIncreaseCriteria: give one of numberOfNotifiedThings or numberOfSucceededThings, at least 1")
			}
		}
		if ro.MaximumPerMinute == 0 && ro.ExponentialRate == nil {
			return bad("jobExecutionsRolloutConfig is empty: give maximumPerMinute or exponentialRate")
		}
	}
	if ab := job.AbortConfig; ab != nil {
		if len(ab.CriteriaList) == 0 {
			return bad("abortConfig.criteriaList is empty")
		}
		for i, c := range ab.CriteriaList {
			switch c.FailureType {
			case "FAILED", "REJECTED", "TIMED_OUT", "ALL":
			default:
				return bad("abortConfig.criteriaList[%d].failureType %q: use FAILED, REJECTED, TIMED_OUT or ALL", i, c.FailureType)
			}
			if c.Action != "CANCEL" {
				return bad("abortConfig.criteriaList[%d].action %q: CANCEL is the only action", i, c.Action)
			}
			if c.ThresholdPercentage < 0 || c.ThresholdPercentage > 100 || !decimals(c.ThresholdPercentage, 2) {
				return bad("abortConfig.criteriaList[%d].thresholdPercentage %v: use 0-100 with at most two decimals", i, c.ThresholdPercentage)
			}
			if c.MinNumberOfExecutedThings < 1 {
				return bad("abortConfig.criteriaList[%d].minNumberOfExecutedThings %d: use 1 or more", i, c.MinNumberOfExecutedThings)
			}
		}
	}
	if to := job.TimeoutConfig; to != nil {
		if m := to.InProgressTimeoutInMinutes; m < 1 || m > maxInProgressTimeout {
			return bad("timeoutConfig.inProgressTimeoutInMinutes %d: use 1-%d", m, maxInProgressTimeout)
		}
	}
	if rc := job.RetryConfig; rc != nil {
		if len(rc.CriteriaList) == 0 || len(rc.CriteriaList) > 2 {
			return bad("jobExecutionsRetryConfig.criteriaList: give 1 or 2 criteria")
		}
		seen, total := map[string]bool{}, 0
		for i, c := range rc.CriteriaList {
			switch c.FailureType {
			case "FAILED", "TIMED_OUT", "ALL":
			default:
				return bad("jobExecutionsRetryConfig.criteriaList[%d].failureType %q: use FAILED, TIMED_OUT or ALL", i, c.FailureType)
			}
			if seen[c.FailureType] {
				return bad("jobExecutionsRetryConfig: failureType %s given twice", c.FailureType)
			}
			seen[c.FailureType] = true
			if c.NumberOfRetries < 0 || c.NumberOfRetries > maxRetriesPerCriteria {
				return bad("jobExecutionsRetryConfig.criteriaList[%d].numberOfRetries %d: use 0-%d", i, c.NumberOfRetries, maxRetriesPerCriteria)
			}
			total += c.NumberOfRetries
		}
		if seen["ALL"] && len(rc.CriteriaList) > 1 {
			return bad("jobExecutionsRetryConfig: ALL cannot be combined with another failure type")
		}
		if total > maxRetriesPerCriteria {
			return bad("jobExecutionsRetryConfig: %d retries in all, more than %d", total, maxRetriesPerCriteria)
		}
	}
	return nil
}

func cloneConfig[T any](p *T) *T {
	if p == nil {
		return nil
	}
	b, _ := json.Marshal(p)
	var out T
	_ = json.Unmarshal(b, &out)
	return &out
}

// CreateJob creates a job with job.Document (a JSON object of at most 32 KiB,
// the device's jobDocument) for its targets: things and thing groups, by name
// (Things, ThingGroups) or ARN (Targets), which must exist in the account.
// Each thing gets a QUEUED execution, released to it at the rollout rate; a
// running emulator notifies the things (notify-next, notify) as they are
// released. A CONTINUOUS job also runs on things added to its groups later.
func (r *Registry) CreateJob(ctx context.Context, account string, job Job) (Job, error) {
	if err := ctx.Err(); err != nil {
		return Job{}, err
	}
	if !isJobID(job.ID) {
		return Job{}, fmt.Errorf("emulator: job ID %q: %w: use 1-64 letters, digits, '_' or '-'", job.ID, ErrInvalid)
	}
	if len(job.Document) > maxJobDocument {
		return Job{}, fmt.Errorf("emulator: job %s: %w: the document has %d bytes, more than %d", job.ID, ErrInvalid, len(job.Document), maxJobDocument)
	}
	var doc map[string]any
	if err := json.Unmarshal(job.Document, &doc); err != nil {
		return Job{}, fmt.Errorf("emulator: job %s: %w: the document must be a JSON object: %v", job.ID, ErrInvalid, err)
	}
	var compact bytes.Buffer
	_ = json.Compact(&compact, job.Document)
	sel := job.TargetSelection
	switch sel {
	case "":
		sel = TargetSnapshot
	case TargetSnapshot, TargetContinuous:
	default:
		return Job{}, fmt.Errorf("emulator: job %s: targetSelection %q: %w: use SNAPSHOT or CONTINUOUS", job.ID, sel, ErrInvalid)
	}
	if job.Description != "" && !printable(job.Description, maxJobDescription) {
		return Job{}, fmt.Errorf("emulator: job %s: %w: the description must have 1-%d characters, no control characters", job.ID, ErrInvalid, maxJobDescription)
	}
	if err := checkJobConfigs(job); err != nil {
		return Job{}, err
	}
	if len(job.Things)+len(job.ThingGroups)+len(job.Targets) == 0 {
		return Job{}, fmt.Errorf("emulator: job %s: %w: name at least one target (thing or thing group)", job.ID, ErrInvalid)
	}
	var out Job
	err := r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		if _, ok := a.Jobs[job.ID]; ok {
			return nil, fmt.Errorf("emulator: job %s in account %s: %w", job.ID, account, ErrExists)
		}
		things, groups := slices.Clone(job.Things), slices.Clone(job.ThingGroups)
		for _, arn := range job.Targets {
			kind, name, err := parseTargetARN(a, arn)
			if err != nil {
				return nil, err
			}
			if kind == "thing" {
				things = append(things, name)
			} else {
				groups = append(groups, name)
			}
		}
		slices.Sort(things)
		things = slices.Compact(things)
		slices.Sort(groups)
		groups = slices.Compact(groups)
		for _, t := range things {
			if _, ok := a.Things[t]; !ok {
				return nil, fmt.Errorf("emulator: job %s: thing %q in account %s: %w (create it, or register its certificate with a thing)", job.ID, t, account, ErrNotFound)
			}
		}
		members := slices.Clone(things)
		for _, g := range groups {
			gr, ok := a.Groups[g]
			if !ok {
				return nil, fmt.Errorf("emulator: job %s: thing group %q in account %s: %w (create it first)", job.ID, g, account, ErrNotFound)
			}
			for _, t := range sortedKeys(gr.Things) {
				if _, ok := a.Things[t]; ok { // a deleted thing leaves its groups
					members = append(members, t)
				}
			}
		}
		slices.Sort(members)
		members = slices.Compact(members)
		rec := &jobRec{
			Document: compact.Bytes(), Things: things, Groups: groups, TargetSelection: sel,
			Description: job.Description, Status: JobStatusInProgress, CreatedAt: now, LastUpdatedAt: now,
			Rollout: cloneConfig(job.RolloutConfig), Abort: cloneConfig(job.AbortConfig),
			Timeout: cloneConfig(job.TimeoutConfig), Retry: cloneConfig(job.RetryConfig),
			Executions: map[string]*execRec{}, Previous: map[string][]*execRec{},
		}
		a.Jobs[job.ID] = rec
		fx := r.jobEffectsFor(tx, a, now)
		fx.jobChanged(job.ID)
		for _, t := range members {
			fx.queue(job.ID, rec, t)
		}
		fx.release(job.ID, rec)
		fx.completeIfDone(job.ID, rec)
		out = exportJobDetails(a, job.ID, rec, now)
		return fx.finish(), nil
	})
	if err == nil {
		r.log.Info("emulator: job created", "account", account, "job_id", job.ID, "things", strings.Join(out.Things, ","),
			"thing_groups", strings.Join(out.ThingGroups, ","), "target_selection", out.TargetSelection)
	}
	return out, err
}

// queue adds a QUEUED execution of j for thing, awaiting the rollout; a
// thing whose latest execution ended keeps it among the previous ones.
func (fx *jobEffects) queue(jobID string, j *jobRec, thing string) *execRec {
	r, now := fx.r, fx.now
	fx.execChanged(jobID, thing)
	fx.tx.touchSeq()
	number := int64(1)
	if old, ok := j.Executions[thing]; ok {
		number = old.Number + 1
		if j.Previous == nil {
			j.Previous = map[string][]*execRec{}
		}
		j.Previous[thing] = append(j.Previous[thing], old)
	}
	r.st.Seq++
	e := &execRec{Status: JobQueued, QueuedAt: now, LastUpdatedAt: now, Version: 1, Number: number, Seq: r.st.Seq, AwaitingRollout: true}
	j.Executions[thing] = e
	return e
}

// startTimers starts the job's in-progress timer on an execution that just
// became IN_PROGRESS.
func startTimers(j *jobRec, e *execRec, now time.Time) {
	if j != nil && j.Timeout != nil && j.Timeout.InProgressTimeoutInMinutes > 0 {
		e.InProgressTimeoutAt = now.Add(time.Duration(j.Timeout.InProgressTimeoutInMinutes) * time.Minute)
	}
}

// rolloutRate is how many executions the job may release per minute now.
func (j *jobRec) rolloutRate() int {
	ro := j.Rollout
	switch {
	case ro == nil:
		return math.MaxInt
	case ro.ExponentialRate == nil:
		return ro.MaximumPerMinute
	}
	ex := ro.ExponentialRate
	count, step := j.Notified, ex.RateIncreaseCriteria.NumberOfNotifiedThings
	if step == 0 {
		step = ex.RateIncreaseCriteria.NumberOfSucceededThings
		count = 0
		for _, e := range j.Executions {
			if e.Status == JobSucceeded {
				count++
			}
		}
	}
	rate := float64(ex.BaseRatePerMinute) * math.Pow(ex.IncrementFactor, float64(count/step))
	return int(min(rate, maxRolloutPerMinute))
}

// release hands queued executions to their things at the job's rollout rate:
// at most rolloutRate() in each minute since the job was created.
func (fx *jobEffects) release(jobID string, j *jobRec) {
	var waiting []string
	for t, e := range j.Executions {
		if e.AwaitingRollout {
			waiting = append(waiting, t)
		}
	}
	if len(waiting) == 0 {
		return
	}
	sort.Slice(waiting, func(i, k int) bool { return j.Executions[waiting[i]].Seq < j.Executions[waiting[k]].Seq })
	n := len(waiting)
	if j.Rollout != nil {
		if j.WindowStart.IsZero() {
			j.WindowStart, j.WindowCount = fx.now, 0
			fx.tx.touchJob(fx.a.Name, jobID)
		} else if d := fx.now.Sub(j.WindowStart); d >= time.Minute {
			j.WindowStart, j.WindowCount = j.WindowStart.Add(d.Truncate(time.Minute)), 0
			fx.tx.touchJob(fx.a.Name, jobID)
		}
		n = min(n, max(0, j.rolloutRate()-j.WindowCount))
	}
	for _, t := range waiting[:n] {
		fx.touch(t)
		j.Executions[t].AwaitingRollout = false
		j.Notified++
		j.WindowCount++
		fx.execChanged(jobID, t)
		fx.jobChanged(jobID)
	}
	if n > 0 {
		fx.r.log.Debug("emulator: job executions released", "account", fx.a.Name, "job_id", jobID, "released", n, "waiting", len(waiting)-n)
	}
}

// retry queues a new attempt of an execution that ended FAILED or TIMED_OUT
// when the job's retry configuration has retries left for that failure.
func (fx *jobEffects) retry(jobID string, j *jobRec, thing string, e *execRec) {
	if j.Retry == nil || j.status() != JobStatusInProgress || j.Executions[thing] != e {
		return
	}
	ft := string(e.status(fx.now))
	if ft != string(JobFailed) && ft != string(JobTimedOut) {
		return
	}
	limit, used := -1, 0
	for _, c := range j.Retry.CriteriaList {
		switch c.FailureType {
		case ft:
			limit, used = c.NumberOfRetries, e.Retries[ft]
		case "ALL":
			if limit < 0 {
				limit, used = c.NumberOfRetries, e.RetryAttempt
			}
		}
	}
	if used >= limit {
		return
	}
	n := fx.queue(jobID, j, thing)
	n.AwaitingRollout = false
	n.RetryAttempt = e.RetryAttempt + 1
	n.Retries = map[string]int{}
	for k, v := range e.Retries {
		n.Retries[k] = v
	}
	n.Retries[ft]++
	fx.r.log.Info("emulator: job execution retried", "account", fx.a.Name, "job_id", jobID, "thing", thing, "failure", ft, "execution_number", n.Number)
}

// abortIfDue cancels the job when one of its abort criteria is met, reporting
// whether it did.
func (fx *jobEffects) abortIfDue(jobID string, j *jobRec) bool {
	if j.Abort == nil || j.Notified == 0 {
		return false
	}
	count := map[JobExecutionStatus]int{}
	for _, e := range j.Executions {
		count[e.status(fx.now)]++
	}
	for _, c := range j.Abort.CriteriaList {
		if j.Notified < c.MinNumberOfExecutedThings {
			continue
		}
		var failed int
		switch c.FailureType {
		case "ALL":
			failed = count[JobFailed] + count[JobRejected] + count[JobTimedOut]
		default:
			failed = count[JobExecutionStatus(c.FailureType)]
		}
		pct := float64(failed) * 100 / float64(j.Notified)
		if failed > 0 && pct >= c.ThresholdPercentage {
			comment := fmt.Sprintf("aborted: %d of %d notified things %s (%.2f%%), threshold %.2f%%", failed, j.Notified, c.FailureType, pct, c.ThresholdPercentage)
			fx.cancelJob(jobID, j, CancelJobOptions{Force: true, Comment: comment}, true)
			fx.r.log.Info("emulator: job aborted", "account", fx.a.Name, "job_id", jobID, "reason", comment)
			return true
		}
	}
	return false
}

// cancelJob cancels j: its QUEUED executions (and with opts.Force its
// IN_PROGRESS ones) become CANCELED.
func (fx *jobEffects) cancelJob(jobID string, j *jobRec, opts CancelJobOptions, abort bool) {
	j.Status, j.Canceled, j.LastUpdatedAt = JobStatusCanceled, true, fx.now
	j.ForceCanceled = opts.Force && !abort
	j.ReasonCode, j.Comment = opts.ReasonCode, opts.Comment
	fx.jobChanged(jobID)
	for _, t := range sortedKeys(j.Executions) {
		e := j.Executions[t]
		if e.settle(fx.now) {
			fx.execChanged(jobID, t)
			fx.ended(jobID, j, t, e)
		}
		if e.Status == JobQueued || (opts.Force && e.Status == JobInProgress) {
			fx.touch(t)
			fx.execChanged(jobID, t)
			e.ForceCanceled = e.Status == JobInProgress
			e.Status, e.LastUpdatedAt, e.Version, e.AwaitingRollout = JobCanceled, fx.now, e.Version+1, false
			fx.ended(jobID, j, t, e)
		}
	}
	fx.jobEvent(jobID, j, "canceled")
}

// completeIfDone marks a SNAPSHOT job COMPLETED once every execution ended.
func (fx *jobEffects) completeIfDone(jobID string, j *jobRec) {
	if j.status() != JobStatusInProgress || j.targetSelection() != TargetSnapshot {
		return
	}
	for _, e := range j.Executions {
		if e.AwaitingRollout || !e.status(fx.now).Terminal() {
			return
		}
	}
	j.Status, j.CompletedAt, j.LastUpdatedAt = JobStatusCompleted, fx.now, fx.now
	fx.jobChanged(jobID)
	fx.jobEvent(jobID, j, "completed")
	fx.r.log.Info("emulator: job completed", "account", fx.a.Name, "job_id", jobID)
}

// stepLocked brings every job of the account to now: timeouts written down
// (with their events and retries), aborts, rollout releases, completions.
func (fx *jobEffects) stepLocked() {
	for _, id := range sortedKeys(fx.a.Jobs) {
		j := fx.a.Jobs[id]
		if j.status() == JobStatusCompleted {
			continue
		}
		// Only the few executions due are sorted (for a stable order of
		// events), not the job's thousands.
		var due []string
		for t, e := range j.Executions {
			if e.status(fx.now) != e.Status {
				due = append(due, t)
			}
		}
		sort.Strings(due)
		for _, t := range due {
			e := j.Executions[t]
			fx.touch(t)
			e.settle(fx.now)
			fx.execChanged(id, t)
			fx.ended(id, j, t, e)
		}
		if j.status() != JobStatusInProgress {
			continue
		}
		if fx.abortIfDue(id, j) {
			continue
		}
		fx.release(id, j)
		fx.completeIfDone(id, j)
	}
}

// AdvanceJobs brings every job to the registry's clock: executions past
// their timeout become TIMED_OUT (and are retried as configured), jobs whose
// abort criteria are met are canceled, queued executions are released at the
// rollout rate, and finished SNAPSHOT jobs complete. Every call about jobs
// does this first; a running emulator also does it every second, so devices
// get their notifications without anyone asking.
func (r *Registry) AdvanceJobs(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		var after []func()
		for _, name := range sortedKeys(r.st.Accounts) {
			fx := r.jobEffectsFor(tx, r.st.Accounts[name], now)
			fx.stepLocked()
			after = append(after, fx.finish()...)
		}
		return after, nil
	})
}

// jobsMutate runs fn on an account's jobs after bringing them to now, saving
// and publishing what changed.
func (r *Registry) jobsMutate(ctx context.Context, account string, fn func(fx *jobEffects) error) error {
	return r.jobsUpdate(ctx, account, true, fn)
}

// jobsUpdate is jobsMutate, with the step over every job only when step is
// set: a thing joining a group (ten thousand of them as a fleet provisions)
// need not scan every job's executions.
func (r *Registry) jobsUpdate(ctx context.Context, account string, step bool, fn func(fx *jobEffects) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var opErr error
	err := r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		fx := r.jobEffectsFor(tx, a, now)
		if step {
			fx.stepLocked()
		}
		// When the operation fails, the step's changes (marked) stand; the
		// operation's own changed nothing.
		opErr = fn(fx)
		return fx.finish(), nil
	})
	if err != nil {
		return err
	}
	return opErr
}

func (r *Registry) jobLocked(a *accountRec, jobID string) (*jobRec, error) {
	j, ok := a.Jobs[jobID]
	if !ok {
		return nil, fmt.Errorf("emulator: job %s in account %s: %w", jobID, a.Name, ErrNotFound)
	}
	return j, nil
}

// CancelJob cancels a job: its QUEUED executions become CANCELED, and with force
// its IN_PROGRESS ones too (as AWS's CancelJob --force).
func (r *Registry) CancelJob(ctx context.Context, account, jobID string, force bool) error {
	_, err := r.CancelJobWith(ctx, account, jobID, CancelJobOptions{Force: force})
	return err
}

// CancelJobWith is AWS's CancelJob: the job becomes CANCELED with the reason
// code and comment given; its QUEUED executions become CANCELED, and with
// Force its IN_PROGRESS ones too. A COMPLETED job cannot be canceled; a
// CANCELED one only to force what was left IN_PROGRESS.
func (r *Registry) CancelJobWith(ctx context.Context, account, jobID string, opts CancelJobOptions) (Job, error) {
	if opts.ReasonCode != "" && !isReasonCode(opts.ReasonCode) {
		return Job{}, fmt.Errorf("emulator: job %s: reasonCode %q: %w: use 1-%d upper-case letters, digits or '_'", jobID, opts.ReasonCode, ErrInvalid, maxReasonCode)
	}
	if opts.Comment != "" && !printable(opts.Comment, maxJobComment) {
		return Job{}, fmt.Errorf("emulator: job %s: %w: the comment must have 1-%d characters, no control characters", jobID, ErrInvalid, maxJobComment)
	}
	var out Job
	err := r.jobsMutate(ctx, account, func(fx *jobEffects) error {
		j, err := r.jobLocked(fx.a, jobID)
		if err != nil {
			return err
		}
		switch j.status() {
		case JobStatusCompleted:
			return fmt.Errorf("emulator: job %s in account %s is COMPLETED: %w: only an IN_PROGRESS job can be canceled", jobID, fx.a.Name, ErrInvalidState)
		case JobStatusCanceled:
			if !opts.Force {
				return fmt.Errorf("emulator: job %s in account %s is already CANCELED: %w (force cancels its IN_PROGRESS executions)", jobID, fx.a.Name, ErrInvalidState)
			}
		}
		fx.cancelJob(jobID, j, opts, false)
		out = exportJobDetails(fx.a, jobID, j, fx.now)
		return nil
	})
	if err == nil {
		r.log.Info("emulator: job canceled", "account", account, "job_id", jobID, "force", opts.Force)
	}
	return out, err
}

func isReasonCode(s string) bool {
	if s == "" || len(s) > maxReasonCode {
		return false
	}
	for _, c := range s {
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// DescribeJob is one job with its jobProcessDetails counts.
func (r *Registry) DescribeJob(ctx context.Context, account, jobID string) (Job, error) {
	var out Job
	err := r.jobsRead(ctx, account, func(a *accountRec, now time.Time) error {
		j, err := r.jobLocked(a, jobID)
		if err != nil {
			return err
		}
		out = exportJobDetails(a, jobID, j, now)
		return nil
	})
	return out, err
}

// jobsRead brings the jobs to now, then reads under the read lock.
func (r *Registry) jobsRead(ctx context.Context, account string, fn func(a *accountRec, now time.Time) error) error {
	if err := r.AdvanceJobs(ctx); err != nil {
		return err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, err := r.accountLocked(account)
	if err != nil {
		return err
	}
	return fn(a, r.cfg.now())
}

// ListJobs is AWS's ListJobs: the account's jobs matching f, by job ID, one
// page at a time.
func (r *Registry) ListJobs(ctx context.Context, account string, f JobFilter, p Page) ([]Job, string, error) {
	switch f.Status {
	case "", JobStatusInProgress, JobStatusCompleted, JobStatusCanceled, JobStatusDeletionInProgress:
	default:
		return nil, "", fmt.Errorf("emulator: job status %q: %w: use IN_PROGRESS, COMPLETED, CANCELED or DELETION_IN_PROGRESS", f.Status, ErrInvalid)
	}
	switch f.TargetSelection {
	case "", TargetSnapshot, TargetContinuous:
	default:
		return nil, "", fmt.Errorf("emulator: targetSelection %q: %w: use SNAPSHOT or CONTINUOUS", f.TargetSelection, ErrInvalid)
	}
	if f.ThingGroupName != "" && !isThingName(f.ThingGroupName) {
		return nil, "", fmt.Errorf("emulator: thing group name %q: %w: use 1-128 letters, digits, ':', '_' or '-'", f.ThingGroupName, ErrInvalid)
	}
	var all []Job
	err := r.jobsRead(ctx, account, func(a *accountRec, now time.Time) error {
		for _, id := range sortedKeys(a.Jobs) {
			j := a.Jobs[id]
			if (f.Status == "" || j.status() == f.Status) && (f.TargetSelection == "" || j.targetSelection() == f.TargetSelection) &&
				(f.ThingGroupName == "" || slices.Contains(j.Groups, f.ThingGroupName)) {
				all = append(all, exportJob(a, id, j))
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return listPage(all, func(j Job) string { return j.ID }, p)
}

// listPage cuts one page out of items sorted by key (pageOf), after checking
// the page's size and token.
func listPage[T any](items []T, key func(T) string, p Page) ([]T, string, error) {
	n := p.MaxResults
	if n == 0 {
		n = DefaultPageSize
	}
	if n < 1 || n > MaxPageSize {
		return nil, "", fmt.Errorf("emulator: maxResults %d: %w: use 1-%d", p.MaxResults, ErrInvalid, MaxPageSize)
	}
	if p.NextToken != "" {
		if raw, err := base64.RawURLEncoding.DecodeString(p.NextToken); err != nil || len(raw) == 0 {
			return nil, "", fmt.Errorf("emulator: nextToken %q: %w: pass the token a previous page returned", p.NextToken, ErrInvalid)
		}
	}
	page, next, err := pageOf(items, key, p.NextToken, n)
	if page == nil {
		page = []T{}
	}
	return page, next, err
}

func checkExecStatus(s JobExecutionStatus) error {
	switch s {
	case "", JobQueued, JobInProgress, JobSucceeded, JobFailed, JobTimedOut, JobRejected, JobRemoved, JobCanceled:
		return nil
	}
	return fmt.Errorf("emulator: job execution status %q: %w: use QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, TIMED_OUT, REJECTED, REMOVED or CANCELED", s, ErrInvalid)
}

// ListJobExecutionsForJob lists a job's latest execution on each thing (of
// the status given, "" for all), by thing name, one page at a time.
func (r *Registry) ListJobExecutionsForJob(ctx context.Context, account, jobID string, status JobExecutionStatus, p Page) ([]JobExecution, string, error) {
	if err := checkExecStatus(status); err != nil {
		return nil, "", err
	}
	var all []JobExecution
	err := r.jobsRead(ctx, account, func(a *accountRec, now time.Time) error {
		j, err := r.jobLocked(a, jobID)
		if err != nil {
			return err
		}
		for _, t := range sortedKeys(j.Executions) {
			if e := j.Executions[t]; status == "" || e.status(now) == status {
				all = append(all, e.export(a, jobID, t, now))
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return listPage(all, func(x JobExecution) string { return x.ThingName }, p)
}

// ListJobExecutionsForThing lists every execution on a thing (earlier
// attempts too) of the status given and of the job given ("" for all), in the
// order they were queued, one page at a time.
func (r *Registry) ListJobExecutionsForThing(ctx context.Context, account, thing string, status JobExecutionStatus, jobID string, p Page) ([]JobExecution, string, error) {
	if err := checkExecStatus(status); err != nil {
		return nil, "", err
	}
	type item struct {
		key string
		ex  JobExecution
	}
	var all []item
	err := r.jobsRead(ctx, account, func(a *accountRec, now time.Time) error {
		if _, ok := a.Things[thing]; !ok {
			return fmt.Errorf("emulator: thing %q in account %s: %w", thing, a.Name, ErrNotFound)
		}
		for id, j := range a.Jobs {
			if jobID != "" && id != jobID {
				continue
			}
			for _, e := range append(slices.Clone(j.Previous[thing]), j.Executions[thing]) {
				if e != nil && (status == "" || e.status(now) == status) {
					all = append(all, item{fmt.Sprintf("%020d", e.Seq), e.export(a, id, thing, now)})
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	sort.Slice(all, func(i, k int) bool { return all[i].key < all[k].key })
	page, next, err := listPage(all, func(x item) string { return x.key }, p)
	out := make([]JobExecution, len(page))
	for i, x := range page {
		out[i] = x.ex
	}
	return out, next, err
}

// findExec finds a thing's execution of j by number (0: the latest).
func findExec(j *jobRec, thing string, number int64) (*execRec, bool) {
	if e, ok := j.Executions[thing]; ok && (number == 0 || e.Number == number) {
		return e, true
	}
	if number != 0 {
		for _, e := range j.Previous[thing] {
			if e.Number == number {
				return e, false
			}
		}
	}
	return nil, false
}

// DescribeJobExecution is one execution of a job on a thing: executionNumber
// 0 asks for the latest.
func (r *Registry) DescribeJobExecution(ctx context.Context, account, jobID, thing string, executionNumber int64) (JobExecution, error) {
	var out JobExecution
	err := r.jobsRead(ctx, account, func(a *accountRec, now time.Time) error {
		if j, ok := a.Jobs[jobID]; ok {
			if e, _ := findExec(j, thing, executionNumber); e != nil {
				out = e.export(a, jobID, thing, now)
				return nil
			}
		}
		n := ""
		if executionNumber != 0 {
			n = " number " + strconv.FormatInt(executionNumber, 10)
		}
		return fmt.Errorf("emulator: execution%s of job %s on thing %q in account %s: %w", n, jobID, thing, a.Name, ErrNotFound)
	})
	return out, err
}

// CancelJobExecution cancels a job's latest execution on a thing: a QUEUED one,
// or with Force an IN_PROGRESS one; a terminal one cannot be (AWS:
// InvalidStateTransitionException).
func (r *Registry) CancelJobExecution(ctx context.Context, account, jobID, thing string, opts CancelExecutionOptions) error {
	if err := checkStatusDetails(opts.StatusDetails); err != nil {
		return fmt.Errorf("emulator: %w: %v", ErrInvalid, err)
	}
	if len(opts.StatusDetails) > 10 {
		return fmt.Errorf("emulator: %w: statusDetails has %d pairs, more than 10", ErrInvalid, len(opts.StatusDetails))
	}
	return r.jobsMutate(ctx, account, func(fx *jobEffects) error {
		j, err := r.jobLocked(fx.a, jobID)
		if err != nil {
			return err
		}
		e, ok := j.Executions[thing]
		if !ok {
			return fmt.Errorf("emulator: execution of job %s on thing %q in account %s: %w", jobID, thing, fx.a.Name, ErrNotFound)
		}
		if opts.ExpectedVersion != nil && *opts.ExpectedVersion != e.Version {
			return fmt.Errorf("emulator: execution of job %s on thing %q is at version %d, not %d: %w", jobID, thing, e.Version, *opts.ExpectedVersion, ErrVersionConflict)
		}
		switch e.Status {
		case JobQueued:
		case JobInProgress:
			if !opts.Force {
				return fmt.Errorf("emulator: execution of job %s on thing %q is IN_PROGRESS: %w: cancel it with force", jobID, thing, ErrInvalidState)
			}
		default:
			return fmt.Errorf("emulator: execution of job %s on thing %q is %s, a terminal status: %w", jobID, thing, e.Status, ErrInvalidState)
		}
		fx.touch(thing)
		fx.execChanged(jobID, thing)
		e.ForceCanceled = e.Status == JobInProgress
		e.Status, e.LastUpdatedAt, e.Version, e.AwaitingRollout = JobCanceled, fx.now, e.Version+1, false
		if opts.StatusDetails != nil {
			e.StatusDetails = opts.StatusDetails
		}
		fx.ended(jobID, j, thing, e)
		fx.completeIfDone(jobID, j)
		return nil
	})
}

// DeleteJobExecution deletes one execution (by number) of a job on a thing: a
// terminal one, or with force any. AWS's rule that a thing's latest
// execution is what devices see holds: deleting it makes the previous one
// (if any) the latest.
func (r *Registry) DeleteJobExecution(ctx context.Context, account, jobID, thing string, executionNumber int64, force bool) error {
	if executionNumber < 1 {
		return fmt.Errorf("emulator: executionNumber %d: %w: give the number of the execution to delete", executionNumber, ErrInvalid)
	}
	return r.jobsMutate(ctx, account, func(fx *jobEffects) error {
		j, err := r.jobLocked(fx.a, jobID)
		if err != nil {
			return err
		}
		e, latest := findExec(j, thing, executionNumber)
		if e == nil {
			return fmt.Errorf("emulator: execution %d of job %s on thing %q in account %s: %w", executionNumber, jobID, thing, fx.a.Name, ErrNotFound)
		}
		if !e.Status.Terminal() && !force {
			return fmt.Errorf("emulator: execution %d of job %s on thing %q is %s: %w: only a terminal execution can be deleted without force", executionNumber, jobID, thing, e.Status, ErrInvalidState)
		}
		fx.touch(thing)
		fx.execChanged(jobID, thing)
		fx.execEvent(jobID, thing, e, "deleted")
		if latest {
			prev := j.Previous[thing]
			if len(prev) > 0 {
				j.Executions[thing] = prev[len(prev)-1]
				j.Previous[thing] = prev[:len(prev)-1]
			} else {
				delete(j.Executions, thing)
			}
		} else {
			j.Previous[thing] = slices.DeleteFunc(j.Previous[thing], func(x *execRec) bool { return x == e })
		}
		if len(j.Previous[thing]) == 0 {
			delete(j.Previous, thing)
		}
		return nil
	})
}

// DeleteJob deletes a job and its executions: a finished one, or with force an
// IN_PROGRESS one (AWS first reports DELETION_IN_PROGRESS; here the deletion
// is done when the call returns).
func (r *Registry) DeleteJob(ctx context.Context, account, jobID string, force bool) error {
	err := r.jobsMutate(ctx, account, func(fx *jobEffects) error {
		j, err := r.jobLocked(fx.a, jobID)
		if err != nil {
			return err
		}
		if j.status() == JobStatusInProgress && !force {
			return fmt.Errorf("emulator: job %s in account %s is IN_PROGRESS: %w: cancel it first, or delete with force", jobID, fx.a.Name, ErrInvalidState)
		}
		// As on AWS, each execution's event says "deleted" with the
		// status it had.
		for _, t := range sortedKeys(j.Executions) {
			fx.touch(t)
			fx.execEvent(jobID, t, j.Executions[t], "deleted")
		}
		fx.jobEvent(jobID, j, "deleted")
		delete(fx.a.Jobs, jobID)
		fx.jobChanged(jobID) // its executions go with it
		return nil
	})
	if err == nil {
		r.log.Info("emulator: job deleted", "account", account, "job_id", jobID, "force", force)
	}
	return err
}

// UpdateEventConfigurations turns event types on or off for an account, as
// AWS's UpdateEventConfigurations: JOB and JOB_EXECUTION are published
// ($aws/events/job/..., $aws/events/jobExecution/...); AWS's other types are
// recorded only.
func (r *Registry) UpdateEventConfigurations(ctx context.Context, account string, enabled map[string]bool) error {
	for k := range enabled {
		if !slices.Contains(awsEventTypes(), k) {
			return fmt.Errorf("emulator: event type %q: %w: use one of %s", k, ErrInvalid, strings.Join(awsEventTypes(), ", "))
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return r.mutate(func(tx *changeSet, _ time.Time) ([]func(), error) {
		a, err := r.accountLocked(account)
		if err != nil {
			return nil, err
		}
		if a.Events == nil {
			a.Events = map[string]bool{}
		}
		for k, v := range enabled {
			a.Events[k] = v
		}
		tx.touchAccount(account)
		return nil, nil
	})
}

// EventConfigurations reports each AWS event type's switch for an account.
func (r *Registry) EventConfigurations(ctx context.Context, account string) (map[string]bool, error) {
	return readAccount(ctx, r, account, func(a *accountRec) (map[string]bool, error) {
		out := map[string]bool{}
		for _, k := range awsEventTypes() {
			out[k] = a.Events[k] || (r.cfg.JobEvents && (k == EventJob || k == EventJobExecution))
		}
		return out, nil
	})
}

// awsEventTypes are the event types of AWS's UpdateEventConfigurations.
func awsEventTypes() []string {
	return []string{"THING", "THING_GROUP", "THING_TYPE", "THING_GROUP_MEMBERSHIP", "THING_GROUP_HIERARCHY",
		"THING_TYPE_ASSOCIATION", EventJob, EventJobExecution, "POLICY", "CERTIFICATE", "CA_CERTIFICATE"}
}
