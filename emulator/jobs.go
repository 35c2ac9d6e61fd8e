package emulator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

type jobRec struct {
	Document json.RawMessage `json:"document"`
	// Things and Groups are the job's targets by name.
	Things          []string  `json:"things"`
	Groups          []string  `json:"thingGroups,omitempty"`
	TargetSelection string    `json:"targetSelection,omitempty"`
	Description     string    `json:"description,omitempty"`
	Status          JobStatus `json:"status,omitempty"`
	CreatedAt       time.Time `json:"createdAt"`
	LastUpdatedAt   time.Time `json:"lastUpdatedAt,omitzero"`
	CompletedAt     time.Time `json:"completedAt,omitzero"`
	Canceled        bool      `json:"canceled,omitempty"`
	ForceCanceled   bool      `json:"forceCanceled,omitempty"`
	ReasonCode      string    `json:"reasonCode,omitempty"`
	Comment         string    `json:"comment,omitempty"`

	Rollout *JobRolloutConfig `json:"rollout,omitempty"`
	Abort   *JobAbortConfig   `json:"abort,omitempty"`
	Timeout *JobTimeoutConfig `json:"timeout,omitempty"`
	Retry   *JobRetryConfig   `json:"retry,omitempty"`
	// Notified counts the executions released to their things by the rollout;
	// WindowStart and WindowCount are the current rollout minute and how many
	// were released in it.
	Notified    int       `json:"notified,omitempty"`
	WindowStart time.Time `json:"rolloutWindowStart,omitzero"`
	WindowCount int       `json:"rolloutWindowCount,omitempty"`

	// Executions holds each thing's latest execution, Previous its earlier
	// ones (retried, or before a CONTINUOUS job's thing came back to a group).
	Executions map[string]*execRec   `json:"executions"`
	Previous   map[string][]*execRec `json:"previousExecutions,omitempty"`
}

type execRec struct {
	Status        JobExecutionStatus `json:"status"`
	StatusDetails map[string]string  `json:"statusDetails,omitempty"`
	QueuedAt      time.Time          `json:"queuedAt"`
	StartedAt     time.Time          `json:"startedAt,omitzero"`
	LastUpdatedAt time.Time          `json:"lastUpdatedAt"`
	StepTimeoutAt time.Time          `json:"stepTimeoutAt,omitzero"`
	// InProgressTimeoutAt is set from the job's timeoutConfig when the
	// execution starts; unlike the step timer, updates do not move it.
	InProgressTimeoutAt time.Time `json:"inProgressTimeoutAt,omitzero"`
	Version             int64     `json:"versionNumber"`
	Number              int64     `json:"executionNumber"`
	// Seq orders executions as they were queued, across jobs.
	Seq int64 `json:"seq"`
	// AwaitingRollout: queued but not yet released to the thing by the
	// job's rollout rate; the device sees nothing of it until then.
	AwaitingRollout bool `json:"awaitingRollout,omitempty"`
	ForceCanceled   bool `json:"forceCanceled,omitempty"`
	RetryAttempt    int  `json:"retryAttempt,omitempty"`
	// Retries counts the retries made so far by failure type.
	Retries map[string]int `json:"retries,omitempty"`
}

// timeoutAt is when an IN_PROGRESS execution times out: the earlier of its
// step timer and the job's in-progress timeout, or zero.
func (e *execRec) timeoutAt() time.Time {
	t := e.StepTimeoutAt
	if !e.InProgressTimeoutAt.IsZero() && (t.IsZero() || e.InProgressTimeoutAt.Before(t)) {
		t = e.InProgressTimeoutAt
	}
	return t
}

// status is the execution's status at now: an IN_PROGRESS execution whose
// timer ran out is TIMED_OUT even before anyone wrote that down.
func (e *execRec) status(now time.Time) JobExecutionStatus {
	if t := e.timeoutAt(); e.Status == JobInProgress && !t.IsZero() && !now.Before(t) {
		return JobTimedOut
	}
	return e.Status
}

// settle writes a timeout down, reporting whether it did.
func (e *execRec) settle(now time.Time) bool {
	if s := e.status(now); s != e.Status {
		e.Status, e.LastUpdatedAt, e.Version = s, e.timeoutAt(), e.Version+1
		return true
	}
	return false
}

func (e *execRec) export(a *accountRec, jobID, thing string, now time.Time) JobExecution {
	return JobExecution{
		Account: a.Name, JobID: jobID, ThingName: thing, Status: e.status(now),
		StatusDetails: maps.Clone(e.StatusDetails), QueuedAt: e.QueuedAt, StartedAt: e.StartedAt,
		LastUpdatedAt: e.LastUpdatedAt, VersionNumber: e.Version, ExecutionNumber: e.Number, StepTimeoutAt: e.StepTimeoutAt,
		InProgressTimeoutAt: e.InProgressTimeoutAt, ThingARN: iotARN(a, "thing/"+thing),
		ForceCanceled: e.ForceCanceled, RetryAttempt: e.RetryAttempt,
	}
}

// Jobs lists an account's jobs by ID.
func (r *Registry) Jobs(ctx context.Context, account string) ([]Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := r.AdvanceJobs(ctx); err != nil {
		return nil, err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, err := r.accountLocked(account)
	if err != nil {
		return nil, err
	}
	out := make([]Job, 0, len(a.Jobs))
	for id, j := range a.Jobs {
		out = append(out, exportJob(a, id, j))
	}
	sort.Slice(out, func(i, k int) bool { return out[i].ID < out[k].ID })
	return out, nil
}

// JobExecution is one job's latest execution on one thing: the status and
// status details the device reported.
func (r *Registry) JobExecution(ctx context.Context, account, thing, jobID string) (JobExecution, error) {
	return r.DescribeJobExecution(ctx, account, jobID, thing, 0)
}

// JobExecutions lists the latest executions on a thing ("" lists every
// thing's) in the order they were queued.
func (r *Registry) JobExecutions(ctx context.Context, account, thing string) ([]JobExecution, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := r.AdvanceJobs(ctx); err != nil {
		return nil, err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, err := r.accountLocked(account)
	if err != nil {
		return nil, err
	}
	now := r.cfg.now()
	type item struct {
		seq int64
		ex  JobExecution
	}
	var items []item
	for id, j := range a.Jobs {
		for t, e := range j.Executions {
			if thing == "" || t == thing {
				items = append(items, item{e.Seq, e.export(a, id, t, now)})
			}
		}
	}
	sort.Slice(items, func(i, k int) bool { return items[i].seq < items[k].seq })
	out := make([]JobExecution, len(items))
	for i, it := range items {
		out[i] = it.ex
	}
	return out, nil
}

// pending is a thing's non-terminal executions: IN_PROGRESS first, then QUEUED,
// each in queue order, as AWS IoT Jobs orders them.
type pendingExec struct {
	id string
	e  *execRec
}

func pendingLocked(a *accountRec, thing string, now time.Time) []pendingExec {
	var out []pendingExec
	for id, j := range a.Jobs {
		if e, ok := j.Executions[thing]; ok && !e.AwaitingRollout && !e.status(now).Terminal() {
			out = append(out, pendingExec{id, e})
		}
	}
	sort.Slice(out, func(i, k int) bool {
		pi, pk := out[i].e.Status == JobInProgress, out[k].e.Status == JobInProgress
		if pi != pk {
			return pi
		}
		return out[i].e.Seq < out[k].e.Seq
	})
	return out
}

func (r *Registry) pendingByThingLocked(a *accountRec, things []string, now time.Time) map[string][]string {
	out := map[string][]string{}
	for _, t := range things {
		var ids []string
		for _, p := range pendingLocked(a, t, now) {
			ids = append(ids, p.id)
		}
		out[t] = ids
	}
	return out
}

// jobNotificationsLocked compares each thing's pending executions with before
// and returns the publications AWS IoT would make: notify-next when the next
// execution changed, notify when the pending list changed.
func (r *Registry) jobNotificationsLocked(a *accountRec, before map[string][]string, now time.Time) []func() {
	if r.events.notify == nil {
		return nil
	}
	var out []func()
	for thing, old := range before {
		cur := pendingLocked(a, thing, now)
		ids := make([]string, len(cur))
		for i, p := range cur {
			ids[i] = p.id
		}
		if slices.Equal(ids, old) {
			continue
		}
		prefix := "$aws/things/" + thing + "/jobs/"
		ts := now.Unix()
		// notify-next
		if len(old) == 0 || len(ids) == 0 || old[0] != ids[0] {
			msg := map[string]any{"timestamp": ts}
			if len(cur) > 0 {
				msg["execution"] = execJSON(cur[0].id, thing, a.Jobs[cur[0].id], cur[0].e, true, now)
			}
			payload, _ := json.Marshal(msg)
			out = append(out, func() { r.events.notify(a.Name, prefix+"notify-next", payload) })
		}
		// notify: the summaries of pending executions by status
		jobs := map[string][]any{}
		for _, p := range cur {
			s := string(p.e.status(now))
			jobs[s] = append(jobs[s], summaryJSON(p.id, p.e))
		}
		payload, _ := json.Marshal(map[string]any{"timestamp": ts, "jobs": jobs})
		out = append(out, func() { r.events.notify(a.Name, prefix+"notify", payload) })
	}
	return out
}

// execJSON is a JobExecution as the Jobs MQTT API writes it (times in seconds).
func execJSON(jobID, thing string, j *jobRec, e *execRec, withDoc bool, now time.Time) map[string]any {
	m := map[string]any{
		"jobId": jobID, "thingName": thing, "status": e.status(now),
		"queuedAt": e.QueuedAt.Unix(), "lastUpdatedAt": e.LastUpdatedAt.Unix(),
		"versionNumber": e.Version, "executionNumber": e.Number,
	}
	if !e.StartedAt.IsZero() {
		m["startedAt"] = e.StartedAt.Unix()
	}
	if len(e.StatusDetails) > 0 {
		m["statusDetails"] = e.StatusDetails
	}
	if t := e.timeoutAt(); !t.IsZero() && e.status(now) == JobInProgress {
		m["approximateSecondsBeforeTimedOut"] = int64(t.Sub(now).Seconds())
	}
	if withDoc {
		m["jobDocument"] = json.RawMessage(j.Document)
	}
	return m
}

func summaryJSON(jobID string, e *execRec) map[string]any {
	m := map[string]any{
		"jobId": jobID, "queuedAt": e.QueuedAt.Unix(), "lastUpdatedAt": e.LastUpdatedAt.Unix(),
		"versionNumber": e.Version, "executionNumber": e.Number,
	}
	if !e.StartedAt.IsZero() {
		m["startedAt"] = e.StartedAt.Unix()
	}
	return m
}

func stateJSON(e *execRec, now time.Time) map[string]any {
	m := map[string]any{"status": e.status(now), "versionNumber": e.Version}
	if len(e.StatusDetails) > 0 {
		m["statusDetails"] = e.StatusDetails
	}
	return m
}

// Error codes of the Jobs MQTT API.
const (
	jobsInvalidTopic           = "InvalidTopic"
	jobsInvalidJSON            = "InvalidJson"
	jobsInvalidRequest         = "InvalidRequest"
	jobsInvalidStateTransition = "InvalidStateTransition"
	jobsResourceNotFound       = "ResourceNotFound"
	jobsVersionMismatch        = "VersionMismatch"
	jobsInternalError          = "InternalError"
)

// message is an MQTT message the emulator sends.
type message struct {
	Topic   string
	Payload []byte
}

type jobsError struct {
	code, msg string
	state     map[string]any
}

type jobsRequest struct {
	ClientToken              string         `json:"clientToken"`
	IncludeJobDocument       *bool          `json:"includeJobDocument"`
	IncludeJobExecutionState bool           `json:"includeJobExecutionState"`
	Status                   string         `json:"status"`
	StatusDetails            map[string]any `json:"statusDetails"`
	ExpectedVersion          json.Number    `json:"expectedVersion"`
	ExecutionNumber          json.Number    `json:"executionNumber"`
	StepTimeoutInMinutes     json.Number    `json:"stepTimeoutInMinutes"`
}

// handleJobs answers a thing's request on the Jobs MQTT API
// ($aws/things/<thing>/jobs/...). The reply goes to the requesting connection
// only, as AWS IoT sends it whether or not the device subscribed; ok is false
// for a topic that is not a request (a device publishing on a reply topic).
func (r *Registry) handleJobs(account, thing, rest string, payload []byte) (reply message, ok bool) {
	prefix := "$aws/things/" + thing + "/jobs/"
	topic := prefix + rest
	if strings.HasSuffix(rest, "/accepted") || strings.HasSuffix(rest, "/rejected") || rest == "notify" || rest == "notify-next" {
		return message{}, false
	}
	var req jobsRequest
	var jerr *jobsError
	var accepted map[string]any
	if len(bytes.TrimSpace(payload)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(payload))
		dec.UseNumber()
		if err := dec.Decode(&req); err != nil {
			jerr = &jobsError{code: jobsInvalidJSON, msg: "the payload is not a JSON object: " + err.Error()}
		}
	}
	if jerr == nil {
		err := r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
			a, err := r.accountLocked(account)
			if err != nil {
				jerr = &jobsError{code: jobsInternalError, msg: err.Error()}
				return nil, nil
			}
			fx := r.jobEffectsFor(tx, a, now)
			fx.touch(thing)
			// Timeouts due on this thing are written down (with their
			// events and retries) before the request sees the executions.
			for _, id := range sortedKeys(a.Jobs) {
				j := a.Jobs[id]
				if e, ok := j.Executions[thing]; ok && e.settle(now) {
					fx.execChanged(id, thing)
					fx.ended(id, j, thing, e)
				}
			}
			accepted, jerr = jobsOperationLocked(fx, thing, rest, &req)
			return fx.finish(), nil
		})
		if err != nil {
			jerr = &jobsError{code: jobsInternalError, msg: err.Error()}
		}
	}
	now := r.cfg.now().Unix()
	if jerr != nil {
		m := map[string]any{"code": jerr.code, "message": jerr.msg, "timestamp": now}
		if req.ClientToken != "" {
			m["clientToken"] = req.ClientToken
		}
		if jerr.state != nil {
			m["executionState"] = jerr.state
		}
		b, _ := json.Marshal(m)
		r.log.Info("emulator: jobs request rejected", "account", account, "thing", thing, "topic", topic, "code", jerr.code, "message", jerr.msg)
		return message{Topic: topic + "/rejected", Payload: b}, true
	}
	accepted["timestamp"] = now
	if req.ClientToken != "" {
		accepted["clientToken"] = req.ClientToken
	}
	b, _ := json.Marshal(accepted)
	return message{Topic: topic + "/accepted", Payload: b}, true
}

// jobsOperationLocked carries out one Jobs API request on fx's account, under
// the lock.
func jobsOperationLocked(fx *jobEffects, thing, rest string, req *jobsRequest) (map[string]any, *jobsError) {
	a, now := fx.a, fx.now
	withDoc := req.IncludeJobDocument == nil || *req.IncludeJobDocument
	switch {
	case rest == "get":
		inProgress, queued := []any{}, []any{}
		for _, p := range pendingLocked(a, thing, now) {
			if p.e.Status == JobInProgress {
				inProgress = append(inProgress, summaryJSON(p.id, p.e))
			} else {
				queued = append(queued, summaryJSON(p.id, p.e))
			}
		}
		return map[string]any{"inProgressJobs": inProgress, "queuedJobs": queued}, nil
	case rest == "$next/get":
		out := map[string]any{}
		if p := pendingLocked(a, thing, now); len(p) > 0 {
			out["execution"] = execJSON(p[0].id, thing, a.Jobs[p[0].id], p[0].e, withDoc, now)
		}
		return out, nil
	case rest == "start-next":
		details, jerr := stringDetails(req.StatusDetails)
		if jerr != nil {
			return nil, jerr
		}
		timeout, jerr := stepTimeout(req.StepTimeoutInMinutes)
		if jerr != nil {
			return nil, jerr
		}
		out := map[string]any{}
		p := pendingLocked(a, thing, now)
		if len(p) == 0 {
			return out, nil
		}
		e := p[0].e
		if e.Status == JobQueued {
			fx.execChanged(p[0].id, thing)
			e.Status, e.StartedAt, e.LastUpdatedAt, e.Version = JobInProgress, now, now, e.Version+1
			startTimers(a.Jobs[p[0].id], e, now)
			if details != nil {
				e.StatusDetails = details
			}
			if timeout > 0 {
				e.StepTimeoutAt = now.Add(timeout)
			}
		}
		out["execution"] = execJSON(p[0].id, thing, a.Jobs[p[0].id], e, true, now)
		return out, nil
	}
	jobID, op, found := strings.Cut(rest, "/")
	if !found || strings.Contains(op, "/") || !isJobID(jobID) || (op != "get" && op != "update") {
		return nil, &jobsError{code: jobsInvalidTopic, msg: "no Jobs API operation at $aws/things/" + thing + "/jobs/" + rest}
	}
	j, ok := a.Jobs[jobID]
	var e *execRec
	if ok {
		e = j.Executions[thing]
	}
	if e == nil || e.AwaitingRollout {
		return nil, &jobsError{code: jobsResourceNotFound, msg: fmt.Sprintf("job %s has no execution on thing %s", jobID, thing)}
	}
	if n, err := req.ExecutionNumber.Int64(); req.ExecutionNumber != "" && (err != nil || n != e.Number) {
		return nil, &jobsError{code: jobsResourceNotFound, msg: fmt.Sprintf("job %s on thing %s has no execution number %s", jobID, thing, req.ExecutionNumber)}
	}
	if op == "get" {
		return map[string]any{"execution": execJSON(jobID, thing, j, e, withDoc, now)}, nil
	}
	// update
	status := JobExecutionStatus(req.Status)
	switch status {
	case JobInProgress, JobSucceeded, JobFailed, JobRejected:
	case "":
		return nil, &jobsError{code: jobsInvalidRequest, msg: "status is required: IN_PROGRESS, SUCCEEDED, FAILED or REJECTED"}
	default:
		return nil, &jobsError{code: jobsInvalidRequest, msg: fmt.Sprintf("status %q cannot be set by a device: use IN_PROGRESS, SUCCEEDED, FAILED or REJECTED", req.Status)}
	}
	details, jerr := stringDetails(req.StatusDetails)
	if jerr != nil {
		return nil, jerr
	}
	timeout, jerr := stepTimeout(req.StepTimeoutInMinutes)
	if jerr != nil {
		return nil, jerr
	}
	if req.ExpectedVersion != "" {
		v, err := req.ExpectedVersion.Int64()
		if err != nil {
			return nil, &jobsError{code: jobsInvalidRequest, msg: "expectedVersion must be a number"}
		}
		if v != e.Version {
			return nil, &jobsError{code: jobsVersionMismatch, msg: fmt.Sprintf("expected version %d, the execution is at version %d", v, e.Version), state: stateJSON(e, now)}
		}
	}
	if e.Status.Terminal() {
		return nil, &jobsError{code: jobsInvalidStateTransition, msg: fmt.Sprintf("the execution of job %s is %s, a terminal status: it cannot become %s", jobID, e.Status, status), state: stateJSON(e, now)}
	}
	fx.execChanged(jobID, thing)
	if e.Status == JobQueued && status == JobInProgress {
		e.StartedAt = now
		startTimers(j, e, now)
	}
	e.Status, e.LastUpdatedAt, e.Version = status, now, e.Version+1
	if details != nil {
		e.StatusDetails = details
	}
	switch {
	case status.Terminal():
		e.StepTimeoutAt = time.Time{}
	case timeout > 0:
		e.StepTimeoutAt = now.Add(timeout)
	case timeout < 0:
		e.StepTimeoutAt = time.Time{}
	}
	out := map[string]any{}
	if req.IncludeJobExecutionState {
		out["executionState"] = stateJSON(e, now)
	}
	if req.IncludeJobDocument != nil && *req.IncludeJobDocument {
		out["jobDocument"] = json.RawMessage(j.Document)
	}
	if status.Terminal() {
		// The event and any retry come after the reply is composed: the
		// reply describes this execution, not its retry.
		fx.ended(jobID, j, thing, e)
	}
	return out, nil
}

func stringDetails(in map[string]any) (map[string]string, *jobsError) {
	if in == nil {
		return nil, nil
	}
	out := make(map[string]string, len(in))
	for _, k := range sortedKeys(in) {
		s, ok := in[k].(string)
		if !ok {
			return nil, &jobsError{code: jobsInvalidRequest, msg: fmt.Sprintf("statusDetails[%q] must be a string", k)}
		}
		out[k] = s
	}
	if err := checkStatusDetails(out); err != nil {
		return nil, &jobsError{code: jobsInvalidRequest, msg: err.Error()}
	}
	return out, nil
}

// checkStatusDetails applies AWS's rules for statusDetails: keys of 1-128
// characters [a-zA-Z0-9:_-], values of 1-1,024 characters none of which is a
// control, format or other Unicode "C" character (the pattern [^\p{C}]+).
func checkStatusDetails(m map[string]string) error {
	for _, k := range sortedKeys(m) {
		if !isName(k, 128, ":_-") {
			return fmt.Errorf("statusDetails key %q: use 1-128 letters, digits, ':', '_' or '-'", k)
		}
		v := m[k]
		if v == "" {
			return fmt.Errorf("statusDetails[%q] is empty: values must have 1-1024 characters", k)
		}
		if n := utf8.RuneCountInString(v); n > 1024 {
			return fmt.Errorf("statusDetails[%q] has %d characters, more than 1024", k, n)
		}
		for i, c := range v {
			if c == utf8.RuneError || unicode.Is(unicode.C, c) {
				return fmt.Errorf("statusDetails[%q] holds the control character %U at byte %d: values must be printable", k, c, i)
			}
		}
	}
	return nil
}

// stepTimeout reads stepTimeoutInMinutes: positive sets a step timer, -1
// cancels it (AWS's convention), absent leaves it.
func stepTimeout(n json.Number) (time.Duration, *jobsError) {
	if n == "" {
		return 0, nil
	}
	m, err := n.Int64()
	if err != nil || m == 0 || m < -1 || m > 10080 {
		return 0, &jobsError{code: jobsInvalidRequest, msg: "stepTimeoutInMinutes must be 1-10080, or -1 to cancel the step timer"}
	}
	if m == -1 {
		return -1, nil
	}
	return time.Duration(m) * time.Minute, nil
}
