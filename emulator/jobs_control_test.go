package emulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// openJobsRegistry opens an in-memory (or dir-backed) registry on a test
// clock with account A and the things named.
func openJobsRegistry(t *testing.T, dir string, things ...string) (*Registry, *testClock) {
	t.Helper()
	clock := newClock()
	r, err := Open(ctx, storeChecked(t, Config{Now: clock.Now, StateDir: dir, Accounts: []Account{{Name: "A", Prefix: "aaa"}}}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	for _, th := range things {
		if _, err := r.CreateThing(ctx, "A", th, nil); err != nil {
			t.Fatal(err)
		}
	}
	return r, clock
}

// dev calls the Jobs MQTT API as thing, returning "accepted" or
// "rejected" and the reply.
func dev(t *testing.T, r *Registry, thing, rest, payload string) (string, jobsReply) {
	t.Helper()
	m, ok := r.handleJobs("A", thing, rest, []byte(payload))
	if !ok {
		t.Fatalf("%s: not handled", rest)
	}
	var out jobsReply
	if err := json.Unmarshal(m.Payload, &out); err != nil {
		t.Fatal(err)
	}
	return m.Topic[strings.LastIndex(m.Topic, "/")+1:], out
}

// visible counts the things that see their execution of jobID: those
// notified by the rollout.
func visible(t *testing.T, r *Registry, jobID string, things []string) int {
	t.Helper()
	n := 0
	for _, th := range things {
		if _, out := dev(t, r, th, jobID+"/get", ""); out.Execution != nil {
			n++
		}
	}
	return n
}

func describe(t *testing.T, r *Registry, jobID string) Job {
	t.Helper()
	j, err := r.DescribeJob(ctx, "A", jobID)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%02d", prefix, i)
	}
	return out
}

const rotateDoc = `{"operation":"rotate-certificate"}`

func TestThingGroups(t *testing.T) {
	dir := t.TempDir()
	things := names("t", 5)
	r, _ := openJobsRegistry(t, dir, things...)
	g, err := r.CreateThingGroup(ctx, "A", ThingGroup{Name: "fleet", Description: "all of them", Attributes: map[string]string{"site": "lab-1"}})
	if err != nil {
		t.Fatal(err)
	}
	if g.ARN != "arn:aws:iot:us-east-1:"+awsAccountID(r.st.Accounts["A"])+":thinggroup/fleet" || g.ID == "" || g.Version != 1 {
		t.Fatalf("created: %+v", g)
	}
	// Again with the same properties: the same group; with others: a conflict.
	if again, err := r.CreateThingGroup(ctx, "A", ThingGroup{Name: "fleet", Description: "all of them", Attributes: map[string]string{"site": "lab-1"}}); err != nil || again.ID != g.ID {
		t.Fatalf("idempotent create: %+v %v", again, err)
	}
	if _, err := r.CreateThingGroup(ctx, "A", ThingGroup{Name: "fleet", Description: "other"}); !errors.Is(err, ErrExists) {
		t.Fatalf("create with other properties: %v", err)
	}
	for _, bad := range []ThingGroup{{Name: ""}, {Name: "has space"}, {Name: strings.Repeat("g", 129)}, {Name: "ok", Description: "line\nbreak"}, {Name: "ok", Description: "café"}, {Name: "ok", Attributes: map[string]string{"bad key": "v"}}} {
		if _, err := r.CreateThingGroup(ctx, "A", bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("create %+v: %v, want ErrInvalid", bad, err)
		}
	}
	for _, th := range things {
		if err := r.AddThingToThingGroup(ctx, "A", "fleet", th); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.AddThingToThingGroup(ctx, "A", "fleet", "t00"); err != nil {
		t.Fatalf("adding a member again: %v", err)
	}
	if err := r.AddThingToThingGroup(ctx, "A", "fleet", "ghost"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown thing: %v", err)
	}
	if err := r.AddThingToThingGroup(ctx, "A", "nogroup", "t00"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown group: %v", err)
	}
	if err := r.RemoveThingFromThingGroup(ctx, "A", "fleet", "t02"); err != nil {
		t.Fatal(err)
	}
	// Pages of 2: t00 t01 | t03 t04 | end.
	var got []string
	p := Page{MaxResults: 2}
	for pages := 0; ; pages++ {
		page, next, err := r.ListThingsInThingGroup(ctx, "A", "fleet", p)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 2 || pages > 3 {
			t.Fatalf("page %d: %v", pages, page)
		}
		got = append(got, page...)
		if next == "" {
			break
		}
		p.NextToken = next
	}
	if strings.Join(got, ",") != "t00,t01,t03,t04" {
		t.Fatalf("members: %v", got)
	}
	if _, _, err := r.ListThingsInThingGroup(ctx, "A", "fleet", Page{MaxResults: 251}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("maxResults 251: %v", err)
	}
	if _, _, err := r.ListThingsInThingGroup(ctx, "A", "fleet", Page{NextToken: "!!"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad token: %v", err)
	}
	// A thing belongs to at most 10 groups.
	for i := range 10 {
		name := fmt.Sprintf("g%d", i)
		if _, err := r.CreateThingGroup(ctx, "A", ThingGroup{Name: name}); err != nil {
			t.Fatal(err)
		}
		err := r.AddThingToThingGroup(ctx, "A", name, "t00")
		if i < 9 && err != nil {
			t.Fatalf("group %d: %v", i+2, err)
		}
		if i == 9 && !errors.Is(err, ErrInvalid) {
			t.Fatalf("an 11th group: %v", err)
		}
	}
	gs, next, err := r.ListThingGroups(ctx, "A", "g", Page{})
	if err != nil || len(gs) != 10 || next != "" {
		t.Fatalf("groups by prefix g: %d %q %v", len(gs), next, err)
	}
	// Groups and members survive a restart.
	r.Close()
	r2, _ := openJobsRegistry(t, dir)
	if d, err := r2.DescribeThingGroup(ctx, "A", "fleet"); err != nil || d.ID != g.ID || d.Attributes["site"] != "lab-1" {
		t.Fatalf("after restart: %+v %v", d, err)
	}
	if m, _, err := r2.ListThingsInThingGroup(ctx, "A", "fleet", Page{}); err != nil || len(m) != 4 {
		t.Fatalf("members after restart: %v %v", m, err)
	}
}

func TestCreateJobChecks(t *testing.T) {
	r, _ := openJobsRegistry(t, "", "t1")
	if _, err := r.CreateThingGroup(ctx, "A", ThingGroup{Name: "g"}); err != nil {
		t.Fatal(err)
	}
	a := r.st.Accounts["A"]
	ok := Job{ID: "j", Document: json.RawMessage(rotateDoc), Things: []string{"t1"}}
	with := func(f func(*Job)) Job { j := ok; f(&j); return j }
	for name, tc := range map[string]struct {
		job  Job
		want error
	}{
		"bad id":         {with(func(j *Job) { j.ID = "a b" }), ErrInvalid},
		"long id":        {with(func(j *Job) { j.ID = strings.Repeat("x", 65) }), ErrInvalid},
		"doc not object": {with(func(j *Job) { j.Document = json.RawMessage(`[1]`) }), ErrInvalid},
		"doc too big":    {with(func(j *Job) { j.Document = json.RawMessage(`{"a":"` + strings.Repeat("x", 32*1024) + `"}`) }), ErrInvalid},
		"no targets":     {with(func(j *Job) { j.Things = nil }), ErrInvalid},
		"bad selection":  {with(func(j *Job) { j.TargetSelection = "SOMETIMES" }), ErrInvalid},
		"rate 0 config":  {with(func(j *Job) { j.RolloutConfig = &JobRolloutConfig{} }), ErrInvalid},
		"rate 1001":      {with(func(j *Job) { j.RolloutConfig = &JobRolloutConfig{MaximumPerMinute: 1001} }), ErrInvalid},
		"both rates": {with(func(j *Job) {
			j.RolloutConfig = &JobRolloutConfig{MaximumPerMinute: 5, ExponentialRate: expRate(1, 2, 1, 0)}
		}), ErrInvalid},
		"factor 1.05":        {with(func(j *Job) { j.RolloutConfig = &JobRolloutConfig{ExponentialRate: expRate(1, 1.05, 1, 0)} }), ErrInvalid},
		"factor 1.55":        {with(func(j *Job) { j.RolloutConfig = &JobRolloutConfig{ExponentialRate: expRate(1, 1.55, 1, 0)} }), ErrInvalid},
		"two increase crit":  {with(func(j *Job) { j.RolloutConfig = &JobRolloutConfig{ExponentialRate: expRate(1, 2, 1, 1)} }), ErrInvalid},
		"abort action":       {with(func(j *Job) { j.AbortConfig = abortCfg("FAILED", "STOP", 10, 1) }), ErrInvalid},
		"abort type":         {with(func(j *Job) { j.AbortConfig = abortCfg("SLOW", "CANCEL", 10, 1) }), ErrInvalid},
		"abort pct 100.5":    {with(func(j *Job) { j.AbortConfig = abortCfg("ALL", "CANCEL", 100.5, 1) }), ErrInvalid},
		"abort pct 3 digits": {with(func(j *Job) { j.AbortConfig = abortCfg("ALL", "CANCEL", 10.999, 1) }), ErrInvalid},
		"abort min 0":        {with(func(j *Job) { j.AbortConfig = abortCfg("ALL", "CANCEL", 10, 0) }), ErrInvalid},
		"timeout 0":          {with(func(j *Job) { j.TimeoutConfig = &JobTimeoutConfig{} }), ErrInvalid},
		"timeout 8 days":     {with(func(j *Job) { j.TimeoutConfig = &JobTimeoutConfig{InProgressTimeoutInMinutes: 8 * 1440} }), ErrInvalid},
		"retries 11":         {with(func(j *Job) { j.RetryConfig = retryCfg("FAILED", 11) }), ErrInvalid},
		"retry REJECTED":     {with(func(j *Job) { j.RetryConfig = retryCfg("REJECTED", 1) }), ErrInvalid},
		"retries 6+5": {with(func(j *Job) {
			j.RetryConfig = &JobRetryConfig{CriteriaList: []JobRetryCriteria{{"FAILED", 6}, {"TIMED_OUT", 5}}}
		}), ErrInvalid},
		"bad description": {with(func(j *Job) { j.Description = "a\x00b" }), ErrInvalid},
		"unknown thing":   {with(func(j *Job) { j.Things = []string{"ghost"} }), ErrNotFound},
		"unknown group":   {with(func(j *Job) { j.Things, j.ThingGroups = nil, []string{"ghost"} }), ErrNotFound},
		"foreign arn":     {with(func(j *Job) { j.Things, j.Targets = nil, []string{"arn:aws:iot:eu-west-1:123456789012:thing/t1"} }), ErrInvalid},
		"arn of a policy": {with(func(j *Job) { j.Things, j.Targets = nil, []string{iotARN(a, "policy/p")} }), ErrInvalid},
	} {
		if _, err := r.CreateJob(ctx, "A", tc.job); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	j, err := r.CreateJob(ctx, "A", Job{ID: "j", Document: json.RawMessage(rotateDoc), Targets: []string{iotARN(a, "thing/t1"), iotARN(a, "thinggroup/g")}, Description: "rotate"})
	if err != nil {
		t.Fatal(err)
	}
	if j.Status != JobStatusInProgress || j.TargetSelection != TargetSnapshot || len(j.Targets) != 2 || j.ARN != iotARN(a, "job/j") || j.ProcessDetails.NumberOfQueuedThings != 1 {
		t.Fatalf("created: %+v %+v", j, j.ProcessDetails)
	}
	if _, err := r.CreateJob(ctx, "A", ok); !errors.Is(err, ErrExists) {
		t.Fatalf("same ID again: %v", err)
	}
}

func expRate(base int, factor float64, notified, succeeded int) *JobExponentialRate {
	return &JobExponentialRate{BaseRatePerMinute: base, IncrementFactor: factor, RateIncreaseCriteria: JobRateIncreaseCriteria{NumberOfNotifiedThings: notified, NumberOfSucceededThings: succeeded}}
}

func abortCfg(ft, action string, pct float64, min int) *JobAbortConfig {
	return &JobAbortConfig{CriteriaList: []JobAbortCriteria{{FailureType: ft, Action: action, ThresholdPercentage: pct, MinNumberOfExecutedThings: min}}}
}

func retryCfg(ft string, n int) *JobRetryConfig {
	return &JobRetryConfig{CriteriaList: []JobRetryCriteria{{FailureType: ft, NumberOfRetries: n}}}
}

// A constant rollout rate: 2 things a minute, on the injected clock.
func TestJobRolloutConstantRate(t *testing.T) {
	things := names("t", 5)
	r, clock := openJobsRegistry(t, "", things...)
	if _, err := r.CreateThingGroup(ctx, "A", ThingGroup{Name: "g"}); err != nil {
		t.Fatal(err)
	}
	for _, th := range things {
		if err := r.AddThingToThingGroup(ctx, "A", "g", th); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.CreateJob(ctx, "A", Job{ID: "j", Document: json.RawMessage(rotateDoc), ThingGroups: []string{"g"}, RolloutConfig: &JobRolloutConfig{MaximumPerMinute: 2}}); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		advance time.Duration
		want    int
	}{{0, 2}, {59 * time.Second, 2}, {time.Second, 4}, {30 * time.Second, 4}, {30 * time.Second, 5}, {time.Hour, 5}} {
		clock.Advance(step.advance)
		if err := r.AdvanceJobs(ctx); err != nil {
			t.Fatal(err)
		}
		if n := visible(t, r, "j", things); n != step.want {
			t.Fatalf("at %s: %d things see the job, want %d", clock.Now().Format(time.TimeOnly), n, step.want)
		}
		d := describe(t, r, "j").ProcessDetails
		if d.NumberOfQueuedThings != 5 || (len(d.ProcessingTargets) > 0) != (step.want < 5) {
			t.Fatalf("at %s: %+v", clock.Now().Format(time.TimeOnly), d)
		}
	}
}

// An exponential rate: base 1, factor 2, raised after each 2 notified things.
func TestJobRolloutExponentialRate(t *testing.T) {
	things := names("t", 10)
	r, clock := openJobsRegistry(t, "", things...)
	if _, err := r.CreateJob(ctx, "A", Job{ID: "j", Document: json.RawMessage(rotateDoc), Things: things, RolloutConfig: &JobRolloutConfig{ExponentialRate: expRate(1, 2, 2, 0)}}); err != nil {
		t.Fatal(err)
	}
	// minute 0: rate 1 → 1; 1: 1 (1 notified < 2) → 2; 2: 2 → 4; 3: 4 → 8; 4: 16 → 10.
	for i, want := range []int{1, 2, 4, 8, 10} {
		if i > 0 {
			clock.Advance(time.Minute)
		}
		if err := r.AdvanceJobs(ctx); err != nil {
			t.Fatal(err)
		}
		if n := visible(t, r, "j", things); n != want {
			t.Fatalf("minute %d: %d notified, want %d", i, n, want)
		}
	}
}

// Rate raised by succeeded things: nothing speeds up until devices succeed.
func TestJobRolloutBySucceeded(t *testing.T) {
	things := names("t", 6)
	r, clock := openJobsRegistry(t, "", things...)
	if _, err := r.CreateJob(ctx, "A", Job{ID: "j", Document: json.RawMessage(rotateDoc), Things: things, RolloutConfig: &JobRolloutConfig{ExponentialRate: expRate(1, 3, 0, 1)}}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	if err := r.AdvanceJobs(ctx); err != nil {
		t.Fatal(err)
	}
	if n := visible(t, r, "j", things); n != 2 {
		t.Fatalf("no success yet: %d notified, want 2", n)
	}
	if kind, _ := dev(t, r, "t00", "j/update", `{"status":"SUCCEEDED"}`); kind != "accepted" {
		t.Fatal("update refused")
	}
	clock.Advance(time.Minute)
	if err := r.AdvanceJobs(ctx); err != nil {
		t.Fatal(err)
	}
	if n := visible(t, r, "j", things); n != 5 { // one success: rate 3
		t.Fatalf("after one success: %d notified, want 5", n)
	}
}

func TestJobAbort(t *testing.T) {
	things := names("t", 4)
	r, _ := openJobsRegistry(t, "", things...)
	_, err := r.CreateJob(ctx, "A", Job{ID: "j", Document: json.RawMessage(rotateDoc), Things: things, AbortConfig: abortCfg("FAILED", "CANCEL", 50, 2)})
	if err != nil {
		t.Fatal(err)
	}
	dev(t, r, "t00", "start-next", "")
	dev(t, r, "t01", "j/update", `{"status":"FAILED"}`)
	if j := describe(t, r, "j"); j.Status != JobStatusInProgress {
		t.Fatalf("25%% failed: %s", j.Status)
	}
	dev(t, r, "t02", "j/update", `{"status":"REJECTED"}`) // not FAILED: does not count
	if j := describe(t, r, "j"); j.Status != JobStatusInProgress {
		t.Fatalf("25%% failed, 25%% rejected: %s", j.Status)
	}
	dev(t, r, "t03", "j/update", `{"status":"FAILED"}`)
	j := describe(t, r, "j")
	d := j.ProcessDetails
	if j.Status != JobStatusCanceled || !strings.Contains(j.Comment, "aborted") || d.NumberOfFailedThings != 2 || d.NumberOfRejectedThings != 1 || d.NumberOfCanceledThings != 1 {
		t.Fatalf("at 50%% FAILED: %+v %+v", j, d)
	}
	if ex, _ := r.DescribeJobExecution(ctx, "A", "j", "t00", 0); ex.Status != JobCanceled || !ex.ForceCanceled {
		t.Fatalf("the IN_PROGRESS execution: %+v", ex)
	}
	if _, err := r.CancelJobWith(ctx, "A", "j", CancelJobOptions{}); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("cancelling a canceled job: %v", err)
	}
}

func TestJobTimeoutAndRetry(t *testing.T) {
	r, clock := openJobsRegistry(t, "", "t1", "t2")
	_, err := r.CreateJob(ctx, "A", Job{ID: "j", Document: json.RawMessage(rotateDoc), Things: []string{"t1", "t2"},
		TimeoutConfig: &JobTimeoutConfig{InProgressTimeoutInMinutes: 5}, RetryConfig: retryCfg("TIMED_OUT", 1)})
	if err != nil {
		t.Fatal(err)
	}
	// The step timer (60 min) is longer: the job's in-progress timeout wins.
	if _, out := dev(t, r, "t1", "start-next", `{"stepTimeoutInMinutes": 60}`); out.Execution == nil || out.Execution.ExecutionNumber != 1 {
		t.Fatalf("start-next: %+v", out)
	}
	dev(t, r, "t2", "j/update", `{"status":"SUCCEEDED"}`)
	clock.Advance(4 * time.Minute)
	dev(t, r, "t1", "j/update", `{"status":"IN_PROGRESS","statusDetails":{"step":"key"}}`) // updates do not move it
	clock.Advance(time.Minute)
	if err := r.AdvanceJobs(ctx); err != nil {
		t.Fatal(err)
	}
	first, err := r.DescribeJobExecution(ctx, "A", "j", "t1", 1)
	if err != nil || first.Status != JobTimedOut {
		t.Fatalf("execution 1: %+v %v", first, err)
	}
	retry, err := r.DescribeJobExecution(ctx, "A", "j", "t1", 0)
	if err != nil || retry.ExecutionNumber != 2 || retry.Status != JobQueued || retry.RetryAttempt != 1 || retry.VersionNumber != 1 {
		t.Fatalf("the retry: %+v %v", retry, err)
	}
	if _, out := dev(t, r, "t1", "$next/get", ""); out.Execution == nil || out.Execution.ExecutionNumber != 2 {
		t.Fatalf("the device sees: %+v", out.Execution)
	}
	// Updates must name the current execution number.
	if kind, out := dev(t, r, "t1", "j/update", `{"status":"IN_PROGRESS","executionNumber":1}`); kind != "rejected" || out.Code != "ResourceNotFound" {
		t.Fatalf("update of execution 1: %s %+v", kind, out)
	}
	dev(t, r, "t1", "j/update", `{"status":"IN_PROGRESS","executionNumber":2}`)
	clock.Advance(5 * time.Minute)
	// No retry left: TIMED_OUT stays, and the job completes.
	j := describe(t, r, "j")
	if j.Status != JobStatusCompleted || j.ProcessDetails.NumberOfTimedOutThings != 1 || j.ProcessDetails.NumberOfSucceededThings != 1 || j.CompletedAt.IsZero() {
		t.Fatalf("after the second timeout: %+v %+v", j, j.ProcessDetails)
	}
	exs, _, err := r.ListJobExecutionsForThing(ctx, "A", "t1", "", "", Page{})
	if err != nil || len(exs) != 2 || exs[0].ExecutionNumber != 1 || exs[1].ExecutionNumber != 2 {
		t.Fatalf("executions of t1: %+v %v", exs, err)
	}
	if exs, _, _ := r.ListJobExecutionsForThing(ctx, "A", "t1", JobTimedOut, "", Page{MaxResults: 1}); len(exs) != 1 {
		t.Fatalf("TIMED_OUT, one a page: %+v", exs)
	}
}

func TestJobRetryFailed(t *testing.T) {
	r, _ := openJobsRegistry(t, "", "t1")
	if _, err := r.CreateJob(ctx, "A", Job{ID: "j", Document: json.RawMessage(rotateDoc), Things: []string{"t1"}, RetryConfig: retryCfg("ALL", 2)}); err != nil {
		t.Fatal(err)
	}
	for attempt := int64(1); attempt <= 3; attempt++ {
		if _, out := dev(t, r, "t1", "start-next", ""); out.Execution == nil || out.Execution.ExecutionNumber != attempt {
			t.Fatalf("attempt %d: %+v", attempt, out.Execution)
		}
		dev(t, r, "t1", "j/update", `{"status":"FAILED","statusDetails":{"reason":"disk-full"}}`)
	}
	if _, out := dev(t, r, "t1", "$next/get", ""); out.Execution != nil {
		t.Fatalf("a fourth attempt: %+v", out.Execution)
	}
	if j := describe(t, r, "j"); j.Status != JobStatusCompleted || j.ProcessDetails.NumberOfFailedThings != 1 {
		t.Fatalf("job: %+v", j)
	}
}

func TestContinuousJob(t *testing.T) {
	r, _ := openJobsRegistry(t, "", "t1", "t2", "t3")
	if _, err := r.CreateThingGroup(ctx, "A", ThingGroup{Name: "g"}); err != nil {
		t.Fatal(err)
	}
	if err := r.AddThingToThingGroup(ctx, "A", "g", "t1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateJob(ctx, "A", Job{ID: "cont", Document: json.RawMessage(rotateDoc), ThingGroups: []string{"g"}, TargetSelection: TargetContinuous}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateJob(ctx, "A", Job{ID: "snap", Document: json.RawMessage(rotateDoc), ThingGroups: []string{"g"}}); err != nil {
		t.Fatal(err)
	}
	dev(t, r, "t1", "cont/update", `{"status":"SUCCEEDED"}`)
	dev(t, r, "t1", "snap/update", `{"status":"SUCCEEDED"}`)
	if j := describe(t, r, "snap"); j.Status != JobStatusCompleted {
		t.Fatalf("snapshot job: %s", j.Status)
	}
	if j := describe(t, r, "cont"); j.Status != JobStatusInProgress {
		t.Fatalf("continuous job: %s", j.Status)
	}
	if err := r.AddThingToThingGroup(ctx, "A", "g", "t2"); err != nil {
		t.Fatal(err)
	}
	if err := r.AddThingToThingGroup(ctx, "A", "g", "t3"); err != nil {
		t.Fatal(err)
	}
	if _, out := dev(t, r, "t2", "$next/get", ""); out.Execution == nil || out.Execution.JobID != "cont" {
		t.Fatalf("t2 joined the group: %+v", out.Execution)
	}
	if _, err := r.DescribeJobExecution(ctx, "A", "snap", "t2", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the snapshot job ran on a later member: %v", err)
	}
	if err := r.RemoveThingFromThingGroup(ctx, "A", "g", "t3"); err != nil {
		t.Fatal(err)
	}
	if ex, _ := r.DescribeJobExecution(ctx, "A", "cont", "t3", 0); ex.Status != JobRemoved {
		t.Fatalf("t3 left the group: %+v", ex)
	}
	d := describe(t, r, "cont").ProcessDetails
	if d.NumberOfSucceededThings != 1 || d.NumberOfQueuedThings != 1 || d.NumberOfRemovedThings != 1 {
		t.Fatalf("counts: %+v", d)
	}
	// Back in the group: a new execution, number 2.
	if err := r.AddThingToThingGroup(ctx, "A", "g", "t3"); err != nil {
		t.Fatal(err)
	}
	if ex, _ := r.DescribeJobExecution(ctx, "A", "cont", "t3", 0); ex.Status != JobQueued || ex.ExecutionNumber != 2 {
		t.Fatalf("t3 back: %+v", ex)
	}
	// A deleted thing leaves its groups; its pending execution is REMOVED.
	if err := r.AddThingToThingGroup(ctx, "A", "g", "t4"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown thing: %v", err)
	}
	if _, err := r.CreateThing(ctx, "A", "t4", nil); err != nil {
		t.Fatal(err)
	}
	if err := r.AddThingToThingGroup(ctx, "A", "g", "t4"); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteThing(ctx, "A", "t4"); err != nil {
		t.Fatal(err)
	}
	if ex, _ := r.DescribeJobExecution(ctx, "A", "cont", "t4", 0); ex.Status != JobRemoved {
		t.Fatalf("t4 deleted: %+v", ex)
	}
	if _, err := r.CreateThing(ctx, "A", "t4", nil); err != nil {
		t.Fatal(err)
	}
	if m, _, _ := r.ListThingsInThingGroup(ctx, "A", "g", Page{}); slices.Contains(m, "t4") {
		t.Fatalf("a thing made again under a deleted one's name is in its groups: %v", m)
	}
	jobs, _, err := r.ListJobs(ctx, "A", JobFilter{TargetSelection: TargetContinuous, ThingGroupName: "g"}, Page{})
	if err != nil || len(jobs) != 1 || jobs[0].ID != "cont" {
		t.Fatalf("continuous jobs of g: %+v %v", jobs, err)
	}
	jobs, _, _ = r.ListJobs(ctx, "A", JobFilter{Status: JobStatusCompleted}, Page{})
	if len(jobs) != 1 || jobs[0].ID != "snap" {
		t.Fatalf("completed jobs: %+v", jobs)
	}
}

func TestCancelAndDeleteExecutions(t *testing.T) {
	r, _ := openJobsRegistry(t, "", "t1", "t2", "t3")
	if _, err := r.CreateJob(ctx, "A", Job{ID: "j", Document: json.RawMessage(rotateDoc), Things: []string{"t1", "t2", "t3"}}); err != nil {
		t.Fatal(err)
	}
	dev(t, r, "t2", "start-next", "")
	dev(t, r, "t3", "j/update", `{"status":"SUCCEEDED"}`)
	v := int64(7)
	for _, tc := range []struct {
		thing string
		opts  CancelExecutionOptions
		want  error
	}{
		{"t1", CancelExecutionOptions{ExpectedVersion: &v}, ErrVersionConflict},
		{"t2", CancelExecutionOptions{}, ErrInvalidState},
		{"t3", CancelExecutionOptions{Force: true}, ErrInvalidState},
		{"ghost", CancelExecutionOptions{}, ErrNotFound},
		{"t1", CancelExecutionOptions{StatusDetails: map[string]string{"why": "a\tb"}}, ErrInvalid},
	} {
		if err := r.CancelJobExecution(ctx, "A", "j", tc.thing, tc.opts); !errors.Is(err, tc.want) {
			t.Errorf("cancel %s %+v: %v, want %v", tc.thing, tc.opts, err, tc.want)
		}
	}
	if err := r.CancelJobExecution(ctx, "A", "j", "t1", CancelExecutionOptions{StatusDetails: map[string]string{"why": "operator"}}); err != nil {
		t.Fatal(err)
	}
	if err := r.CancelJobExecution(ctx, "A", "j", "t2", CancelExecutionOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	ex, _ := r.DescribeJobExecution(ctx, "A", "j", "t2", 0)
	if ex.Status != JobCanceled || !ex.ForceCanceled {
		t.Fatalf("forced: %+v", ex)
	}
	if j := describe(t, r, "j"); j.Status != JobStatusCompleted || j.ProcessDetails.NumberOfCanceledThings != 2 {
		t.Fatalf("job: %+v %+v", j, j.ProcessDetails)
	}
	if err := r.DeleteJobExecution(ctx, "A", "j", "t3", 2, false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete execution 2: %v", err)
	}
	if err := r.DeleteJobExecution(ctx, "A", "j", "t3", 1, false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.DescribeJobExecution(ctx, "A", "j", "t3", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted execution: %v", err)
	}
	// A job in progress is deleted only with force.
	if _, err := r.CreateJob(ctx, "A", Job{ID: "k", Document: json.RawMessage(rotateDoc), Things: []string{"t1"}}); err != nil {
		t.Fatal(err)
	}
	dev(t, r, "t1", "start-next", "")
	if err := r.DeleteJobExecution(ctx, "A", "k", "t1", 1, false); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("delete IN_PROGRESS execution: %v", err)
	}
	if err := r.DeleteJob(ctx, "A", "k", false); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("delete IN_PROGRESS job: %v", err)
	}
	if err := r.DeleteJob(ctx, "A", "k", true); err != nil {
		t.Fatal(err)
	}
	if _, err := r.DescribeJob(ctx, "A", "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted job: %v", err)
	}
	if _, err := r.CancelJobWith(ctx, "A", "j", CancelJobOptions{ReasonCode: "lower"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("reasonCode in lower case: %v", err)
	}
	if _, err := r.CancelJobWith(ctx, "A", "j", CancelJobOptions{}); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("cancel a COMPLETED job: %v", err)
	}
}

func TestStatusDetailsChecked(t *testing.T) {
	r, _ := openJobsRegistry(t, "", "t1")
	if _, err := r.CreateJob(ctx, "A", Job{ID: "j", Document: json.RawMessage(rotateDoc), Things: []string{"t1"}}); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("é", 1024)
	for _, tc := range []struct {
		details string
		ok      bool
		names   string // the key the message must name
	}{
		{`{"oldCertificateId":"ab12","step:1_a-b":"x"}`, true, ""},
		{`{"reason":"` + long + `"}`, true, ""},
		{`{"reason":"` + long + `x"}`, false, "reason"},
		{`{"reason":"line one\nline two"}`, false, "reason"},
		{`{"reason":"zero\u200bwidth"}`, false, "reason"},
		{`{"reason":""}`, false, "reason"},
		{`{"bad key":"v"}`, false, "bad key"},
		{`{"":"v"}`, false, `""`},
		{`{"` + strings.Repeat("k", 129) + `":"v"}`, false, strings.Repeat("k", 129)},
	} {
		for _, rest := range []string{"j/update", "start-next"} {
			payload := `{"status":"IN_PROGRESS","statusDetails":` + tc.details + `}`
			kind, out := dev(t, r, "t1", rest, payload)
			if tc.ok != (kind == "accepted") {
				t.Errorf("%s %.60s: %s %+v", rest, tc.details, kind, out)
				continue
			}
			if !tc.ok && (out.Code != "InvalidRequest" || !strings.Contains(out.Message, tc.names)) {
				t.Errorf("%s %.60s: %s %q, want InvalidRequest naming %q", rest, tc.details, out.Code, out.Message, tc.names)
			}
		}
	}
	if ex, _ := r.JobExecution(ctx, "A", "t1", "j"); ex.StatusDetails["reason"] != long {
		t.Fatalf("statusDetails kept: %.40v", ex.StatusDetails)
	}
}

// Jobs created before groups and configurations existed still load and run.
func TestLegacyJobRecord(t *testing.T) {
	dir := t.TempDir()
	r, _ := openJobsRegistry(t, dir, "t1")
	r.mu.Lock()
	r.st.Accounts["A"].Jobs["old"] = &jobRec{Document: json.RawMessage(rotateDoc), Things: []string{"t1"}, CreatedAt: r.cfg.now(),
		Executions: map[string]*execRec{"t1": {Status: JobQueued, Version: 1, Number: 1, Seq: 1}}}
	var c changeSet
	c.touchJob("A", "old")
	c.touchExec("A", "old", "t1")
	err := r.store.commit(r.st, &c)
	r.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	r2, _ := openJobsRegistry(t, dir)
	if _, out := dev(t, r2, "t1", "$next/get", ""); out.Execution == nil || out.Execution.JobID != "old" {
		t.Fatalf("legacy execution: %+v", out.Execution)
	}
	dev(t, r2, "t1", "old/update", `{"status":"SUCCEEDED"}`)
	if j := describe(t, r2, "old"); j.Status != JobStatusCompleted || j.TargetSelection != TargetSnapshot {
		t.Fatalf("legacy job: %+v", j)
	}
}

// A rollout, its configurations and the executions' attempts survive a
// restart of the registry.
func TestJobStateSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	things := names("t", 3)
	r, clock := openJobsRegistry(t, dir, things...)
	_, err := r.CreateJob(ctx, "A", Job{ID: "j", Document: json.RawMessage(rotateDoc), Things: things,
		RolloutConfig: &JobRolloutConfig{MaximumPerMinute: 1}, RetryConfig: retryCfg("FAILED", 1), TimeoutConfig: &JobTimeoutConfig{InProgressTimeoutInMinutes: 10}})
	if err != nil {
		t.Fatal(err)
	}
	dev(t, r, "t00", "j/update", `{"status":"FAILED"}`) // retried: execution 2
	r.Close()

	clock2 := newClock()
	clock2.Advance(clock.Now().Sub(clock2.Now()) + time.Minute)
	r2, err := Open(ctx, Config{Now: clock2.Now, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if err := r2.AdvanceJobs(ctx); err != nil {
		t.Fatal(err)
	}
	if n := visible(t, r2, "j", things); n != 2 {
		t.Fatalf("a minute after the restart: %d notified, want 2", n)
	}
	j, err := r2.DescribeJob(ctx, "A", "j")
	if err != nil || j.RolloutConfig == nil || j.RolloutConfig.MaximumPerMinute != 1 || j.RetryConfig == nil || j.TimeoutConfig.InProgressTimeoutInMinutes != 10 {
		t.Fatalf("configurations after the restart: %+v %v", j, err)
	}
	if ex, err := r2.DescribeJobExecution(ctx, "A", "j", "t00", 1); err != nil || ex.Status != JobFailed {
		t.Fatalf("execution 1 after the restart: %+v %v", ex, err)
	}
	if ex, _ := r2.DescribeJobExecution(ctx, "A", "j", "t00", 0); ex.ExecutionNumber != 2 || ex.RetryAttempt != 1 {
		t.Fatalf("the retry after the restart: %+v", ex)
	}
}
