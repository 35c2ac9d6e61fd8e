package emulator

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

type jobsReply struct {
	Execution *struct {
		JobID           string            `json:"jobId"`
		ThingName       string            `json:"thingName"`
		Status          string            `json:"status"`
		StatusDetails   map[string]string `json:"statusDetails"`
		VersionNumber   int64             `json:"versionNumber"`
		ExecutionNumber int64             `json:"executionNumber"`
		QueuedAt        int64             `json:"queuedAt"`
		JobDocument     map[string]any    `json:"jobDocument"`
	} `json:"execution"`
	ExecutionState *struct {
		Status        string            `json:"status"`
		StatusDetails map[string]string `json:"statusDetails"`
		VersionNumber int64             `json:"versionNumber"`
	} `json:"executionState"`
	InProgressJobs []map[string]any `json:"inProgressJobs"`
	QueuedJobs     []map[string]any `json:"queuedJobs"`
	Timestamp      int64            `json:"timestamp"`
	ClientToken    string           `json:"clientToken"`
	Code           string           `json:"code"`
	Message        string           `json:"message"`
}

func TestJobsOverMQTT(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	d := issue(t, ca, "dev", certOpts{})
	register(t, e, "A", d, CertificateOptions{Thing: "sensor-1"})
	c := mustDial(t, e, d, "sensor-1", dialOpts{account: "A"})
	const p = "$aws/things/sensor-1/jobs/"
	c.subscribe(t, p+"notify-next", p+"notify")

	if _, err := e.CreateJob(ctx, "A", Job{ID: "rotate-1", Document: json.RawMessage(`{"operation": "rotate-certificate"}`), Things: []string{"sensor-1"}}); err != nil {
		t.Fatal(err)
	}
	var r jobsReply
	c.await(t, p+"notify-next", &r)
	if r.Execution == nil || r.Execution.JobID != "rotate-1" || r.Execution.Status != "QUEUED" || r.Execution.JobDocument["operation"] != "rotate-certificate" {
		t.Fatalf("notify-next: %+v", r.Execution)
	}
	c.await(t, p+"notify", nil)

	// Replies reach the requester without a subscription, as on AWS IoT.
	c.publish(t, p+"$next/get", `{"clientToken": "t1"}`)
	r = jobsReply{}
	c.await(t, p+"$next/get/accepted", &r)
	if r.ClientToken != "t1" || r.Execution == nil || r.Execution.VersionNumber != 1 || r.Timestamp != e.clock.Now().Unix() {
		t.Fatalf("$next/get: %+v", r)
	}

	e.clock.Advance(time.Minute)
	c.publish(t, p+"start-next", `{"statusDetails": {"step": "key-generated"}}`)
	r = jobsReply{}
	c.await(t, p+"start-next/accepted", &r)
	if r.Execution == nil || r.Execution.Status != "IN_PROGRESS" || r.Execution.VersionNumber != 2 || r.Execution.StatusDetails["step"] != "key-generated" {
		t.Fatalf("start-next: %+v", r.Execution)
	}

	c.publish(t, p+"rotate-1/update", `{"status": "SUCCEEDED", "expectedVersion": 1, "clientToken": "t2"}`)
	r = jobsReply{}
	c.await(t, p+"rotate-1/update/rejected", &r)
	if r.Code != "VersionMismatch" || r.ExecutionState == nil || r.ExecutionState.VersionNumber != 2 || r.ClientToken != "t2" {
		t.Fatalf("stale version: %+v", r)
	}

	c.publish(t, p+"rotate-1/update", `{"status": "SUCCEEDED", "expectedVersion": 2, "statusDetails": {"oldCertificateId": "abc"}, "includeJobExecutionState": true}`)
	r = jobsReply{}
	c.await(t, p+"rotate-1/update/accepted", &r)
	if r.ExecutionState == nil || r.ExecutionState.Status != "SUCCEEDED" || r.ExecutionState.VersionNumber != 3 {
		t.Fatalf("update: %+v", r)
	}
	// The pending list emptied: notify-next without an execution.
	r = jobsReply{}
	c.await(t, p+"notify-next", &r)
	if r.Execution != nil {
		t.Fatalf("notify-next after completion: %+v", r.Execution)
	}

	ex, err := e.JobExecution(ctx, "A", "sensor-1", "rotate-1")
	if err != nil {
		t.Fatal(err)
	}
	if ex.Status != JobSucceeded || ex.StatusDetails["oldCertificateId"] != "abc" || ex.VersionNumber != 3 || ex.StartedAt.IsZero() {
		t.Fatalf("execution recorded: %+v", ex)
	}

	c.publish(t, p+"rotate-1/update", `{"status": "IN_PROGRESS"}`)
	r = jobsReply{}
	c.await(t, p+"rotate-1/update/rejected", &r)
	if r.Code != "InvalidStateTransition" {
		t.Fatalf("update after SUCCEEDED: %+v", r)
	}
	for _, tc := range []struct{ topic, payload, code string }{
		{p + "nope/update", `{"status": "IN_PROGRESS"}`, "ResourceNotFound"},
		{p + "rotate-1/update", `{"status": `, "InvalidJson"},
		{p + "rotate-1/update", `{"status": "CANCELED"}`, "InvalidRequest"},
		{p + "rotate-1/frobnicate", `{}`, "InvalidTopic"},
	} {
		c.publish(t, tc.topic, tc.payload)
		r = jobsReply{}
		c.await(t, tc.topic+"/rejected", &r)
		if r.Code != tc.code {
			t.Errorf("%s %s: code %q, want %s", tc.topic, tc.payload, r.Code, tc.code)
		}
	}
}

// The Jobs API answered directly, without MQTT: each transition and error.
func TestJobsTransitions(t *testing.T) {
	clock := newClock()
	r, err := Open(ctx, storeChecked(t, Config{Now: clock.Now, Accounts: []Account{{Name: "A"}}}))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, thing := range []string{"t1", "t2"} {
		if _, err := r.CreateThing(ctx, "A", thing, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.CreateJob(ctx, "A", Job{ID: "j1", Document: json.RawMessage(`{"n":1}`), Things: []string{"t1", "t2"}}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if _, err := r.CreateJob(ctx, "A", Job{ID: "j2", Document: json.RawMessage(`{"n":2}`), Things: []string{"t1"}}); err != nil {
		t.Fatal(err)
	}
	call := func(thing, rest, payload string) (string, jobsReply) {
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
	// j2 was queued later: j1 is next; once j1 is IN_PROGRESS it stays first.
	if kind, out := call("t1", "$next/get", ""); kind != "accepted" || out.Execution.JobID != "j1" {
		t.Fatalf("next: %s %+v", kind, out.Execution)
	}
	if _, out := call("t1", "get", ""); len(out.QueuedJobs) != 2 || len(out.InProgressJobs) != 0 {
		t.Fatalf("pending: %+v", out)
	}
	if kind, out := call("t1", "j2/update", `{"status": "IN_PROGRESS"}`); kind != "accepted" || out.ExecutionState != nil {
		t.Fatalf("update j2: %s %+v", kind, out)
	}
	if _, out := call("t1", "start-next", ""); out.Execution.JobID != "j2" || out.Execution.VersionNumber != 2 {
		t.Fatalf("start-next returns the IN_PROGRESS one unchanged: %+v", out.Execution)
	}
	if kind, out := call("t1", "j1/update", `{"status": "REJECTED", "statusDetails": {"why": 3}}`); kind != "rejected" || out.Code != "InvalidRequest" {
		t.Fatalf("non-string statusDetails: %s %+v", kind, out)
	}
	if kind, _ := call("t1", "j1/update", `{"status": "REJECTED"}`); kind != "accepted" {
		t.Fatal("QUEUED -> REJECTED refused")
	}
	// Step timeout: IN_PROGRESS with stepTimeoutInMinutes ends TIMED_OUT.
	if kind, _ := call("t2", "j1/update", `{"status": "IN_PROGRESS", "stepTimeoutInMinutes": 5}`); kind != "accepted" {
		t.Fatal("update with step timeout refused")
	}
	clock.Advance(6 * time.Minute)
	ex, err := r.JobExecution(ctx, "A", "t2", "j1")
	if err != nil || ex.Status != JobTimedOut {
		t.Fatalf("after the step timeout: %+v %v", ex, err)
	}
	if kind, out := call("t2", "j1/update", `{"status": "SUCCEEDED"}`); kind != "rejected" || out.Code != "InvalidStateTransition" || out.ExecutionState.Status != "TIMED_OUT" {
		t.Fatalf("update after timeout: %s %+v", kind, out)
	}
	if _, ok := r.handleJobs("A", "t1", "j1/update/accepted", nil); ok {
		t.Fatal("a publish on a reply topic was treated as a request")
	}
	// Cancel: QUEUED becomes CANCELED; IN_PROGRESS only with force.
	if err := r.CancelJob(ctx, "A", "j2", false); err != nil {
		t.Fatal(err)
	}
	if ex, _ := r.JobExecution(ctx, "A", "t1", "j2"); ex.Status != JobInProgress {
		t.Fatalf("cancel without force changed an IN_PROGRESS execution: %s", ex.Status)
	}
	if err := r.CancelJob(ctx, "A", "j2", true); err != nil {
		t.Fatal(err)
	}
	if ex, _ := r.JobExecution(ctx, "A", "t1", "j2"); ex.Status != JobCanceled {
		t.Fatalf("forced cancel: %s", ex.Status)
	}
}

// jobEvent is the payload of $aws/events/jobExecution/... and $aws/events/job/...
type jobEvent struct {
	EventType     string             `json:"eventType"`
	EventID       string             `json:"eventId"`
	Operation     string             `json:"operation"`
	JobID         string             `json:"jobId"`
	ThingArn      string             `json:"thingArn"`
	Status        string             `json:"status"`
	StatusDetails map[string]string  `json:"statusDetails"`
	Timestamp     int64              `json:"timestamp"`
	Process       *JobProcessDetails `json:"jobProcessDetails"`
}

// Devices over MQTT work through a job with a rollout rate, a timeout, a
// retry and an abort configuration, on the emulator's clock; a cloud-side
// client follows it through the Jobs events.
func TestJobsRolloutTimeoutRetryAbortOverMQTT(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{JobEvents: true})
	var clients []*mqttClient
	things := names("sensor-", 4)
	for _, name := range append(slices.Clone(things), "operator") {
		d := issue(t, ca, name, certOpts{})
		register(t, e, "A", d, CertificateOptions{Thing: name})
		c := mustDial(t, e, d, name, dialOpts{account: "A"})
		if name == "operator" {
			c.subscribe(t, "$aws/events/jobExecution/rot/+", "$aws/events/job/rot/+")
		} else {
			c.subscribe(t, "$aws/things/"+name+"/jobs/notify-next")
		}
		clients = append(clients, c)
	}
	ops := clients[4]
	topic := func(i int, rest string) string { return "$aws/things/" + things[i] + "/jobs/" + rest }
	nextExecution := func(i int) *jobsReply {
		t.Helper()
		var r jobsReply
		clients[i].await(t, topic(i, "notify-next"), &r)
		return &r
	}
	request := func(i int, rest, payload string) jobsReply {
		t.Helper()
		clients[i].publish(t, topic(i, rest), payload)
		var r jobsReply
		clients[i].await(t, topic(i, rest+"/accepted"), &r)
		return r
	}
	event := func(kind, op string) jobEvent {
		t.Helper()
		var ev jobEvent
		ops.await(t, "$aws/events/"+kind+"/rot/"+op, &ev)
		if ev.JobID != "rot" || ev.Operation != op || ev.EventID == "" || ev.Timestamp != e.clock.Now().Unix() {
			t.Fatalf("%s %s event: %+v", kind, op, ev)
		}
		return ev
	}

	_, err := e.CreateJob(ctx, "A", Job{
		ID: "rot", Document: json.RawMessage(`{"operation":"rotate-certificate"}`), Things: things,
		RolloutConfig: &JobRolloutConfig{MaximumPerMinute: 2},
		AbortConfig:   abortCfg("FAILED", "CANCEL", 50, 4),
		TimeoutConfig: &JobTimeoutConfig{InProgressTimeoutInMinutes: 5},
		RetryConfig:   retryCfg("TIMED_OUT", 1),
	})
	if err != nil {
		t.Fatal(err)
	}
	// The rate: two things in the first minute, the others not yet.
	for i := range 2 {
		if r := nextExecution(i); r.Execution == nil || r.Execution.JobID != "rot" || r.Execution.ExecutionNumber != 1 {
			t.Fatalf("%s notify-next: %+v", things[i], r.Execution)
		}
	}
	for i := 2; i < 4; i++ {
		if r := request(i, "$next/get", ""); r.Execution != nil {
			t.Fatalf("%s sees the job in the first minute: %+v", things[i], r.Execution)
		}
	}
	if r := request(0, "start-next", `{"statusDetails":{"step":"started"}}`); r.Execution == nil || r.Execution.Status != "IN_PROGRESS" {
		t.Fatalf("start-next: %+v", r.Execution)
	}
	// Five minutes on: sensor-0's execution timed out (the job's timeout) and
	// is retried as execution 2; the next minute released sensor-2 and -3.
	e.clock.Advance(5 * time.Minute)
	if err := e.AdvanceJobs(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := event("jobExecution", "timed_out"); ev.Status != "TIMED_OUT" || !strings.HasSuffix(ev.ThingArn, ":thing/sensor-00") || ev.StatusDetails["step"] != "started" || ev.EventType != "JOB_EXECUTION" {
		t.Fatalf("timed_out event: %+v", ev)
	}
	if r := nextExecution(0); r.Execution == nil || r.Execution.ExecutionNumber != 2 || r.Execution.Status != "QUEUED" {
		t.Fatalf("the retry: %+v", r.Execution)
	}
	for i := 2; i < 4; i++ {
		if r := nextExecution(i); r.Execution == nil || r.Execution.JobID != "rot" {
			t.Fatalf("%s after a minute: %+v", things[i], r.Execution)
		}
	}
	request(0, "rot/update", `{"status":"SUCCEEDED","executionNumber":2,"statusDetails":{"newCertificateId":"c2"}}`)
	if ev := event("jobExecution", "succeeded"); ev.StatusDetails["newCertificateId"] != "c2" || ev.Status != "SUCCEEDED" {
		t.Fatalf("succeeded event: %+v", ev)
	}
	// One FAILED of four notified (25%): below the threshold.
	request(1, "rot/update", `{"status":"FAILED","statusDetails":{"reason":"no-space"}}`)
	event("jobExecution", "failed")
	if j, _ := e.DescribeJob(ctx, "A", "rot"); j.Status != JobStatusInProgress {
		t.Fatalf("at 25%% FAILED: %s", j.Status)
	}
	// Two of four (50%): the job is aborted, sensor-3's execution canceled.
	request(2, "rot/update", `{"status":"FAILED"}`)
	event("jobExecution", "failed")
	if err := e.AdvanceJobs(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := event("jobExecution", "canceled"); !strings.HasSuffix(ev.ThingArn, ":thing/sensor-03") {
		t.Fatalf("canceled event: %+v", ev)
	}
	if ev := event("job", "canceled"); ev.EventType != "JOB" || ev.Status != "CANCELED" || ev.Process == nil || ev.Process.NumberOfFailedThings != 2 || ev.Process.NumberOfCanceledThings != 1 {
		t.Fatalf("job canceled event: %+v %+v", ev, ev.Process)
	}
	if r := nextExecution(3); r.Execution != nil {
		t.Fatalf("sensor-03 after the abort: %+v", r.Execution)
	}
	j, err := e.DescribeJob(ctx, "A", "rot")
	if err != nil {
		t.Fatal(err)
	}
	if d := j.ProcessDetails; j.Status != JobStatusCanceled || d.NumberOfSucceededThings != 1 || d.NumberOfFailedThings != 2 || d.NumberOfCanceledThings != 1 {
		t.Fatalf("job after the abort: %s %+v", j.Status, d)
	}
	exs, _, err := e.ListJobExecutionsForThing(ctx, "A", "sensor-00", "", "", Page{})
	if err != nil || len(exs) != 2 || exs[0].Status != JobTimedOut || exs[1].Status != JobSucceeded || exs[1].ExecutionNumber != 2 {
		t.Fatalf("sensor-00's executions: %+v %v", exs, err)
	}
}

// Events are published only once enabled for the account, and a job's
// completion and deletion are announced as AWS does.
func TestJobEventsEnabledPerAccount(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	for _, th := range []string{"s1", "s2"} {
		if _, err := e.CreateThing(ctx, "A", th, nil); err != nil {
			t.Fatal(err)
		}
	}
	d := issue(t, ca, "operator", certOpts{})
	register(t, e, "A", d, CertificateOptions{Thing: "operator"})
	ops := mustDial(t, e, d, "operator", dialOpts{account: "A"})
	ops.subscribe(t, "$aws/events/jobExecution/+/+", "$aws/events/job/+/+")
	if _, err := e.CreateJob(ctx, "A", Job{ID: "j1", Document: json.RawMessage(`{}`), Things: []string{"s1", "s2"}}); err != nil {
		t.Fatal(err)
	}
	e.handleJobs("A", "s1", "j1/update", []byte(`{"status":"SUCCEEDED"}`))
	if err := e.UpdateEventConfigurations(ctx, "A", map[string]bool{EventJobExecution: true, EventJob: true}); err != nil {
		t.Fatal(err)
	}
	e.handleJobs("A", "s2", "j1/update", []byte(`{"status":"FAILED","statusDetails":{"reason":"x"}}`))
	var ev jobEvent
	ops.await(t, "$aws/events/jobExecution/j1/failed", &ev)
	if slices.Contains(ops.topics(), "$aws/events/jobExecution/j1/succeeded") {
		t.Fatal("an event was published before events were enabled")
	}
	if err := e.AdvanceJobs(ctx); err != nil {
		t.Fatal(err)
	}
	var done struct {
		jobEvent
		Targets     []string `json:"targets"`
		CompletedAt int64    `json:"completedAt"`
	}
	ops.await(t, "$aws/events/job/j1/completed", &done)
	if done.EventType != "JOB" || len(done.Targets) != 2 || done.CompletedAt != e.clock.Now().UnixMilli() || done.Process == nil ||
		done.Process.NumberOfSucceededThings != 1 || done.Process.NumberOfFailedThings != 1 {
		t.Fatalf("completed event: %+v %+v", done, done.Process)
	}
	if err := e.DeleteJob(ctx, "A", "j1", false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SUCCEEDED", "FAILED"} { // s1 then s2
		ev = jobEvent{}
		ops.await(t, "$aws/events/jobExecution/j1/deleted", &ev)
		if ev.Operation != "deleted" || ev.Status != want {
			t.Fatalf("deleted execution event: %+v, want status %s", ev, want)
		}
	}
	ev = jobEvent{}
	ops.await(t, "$aws/events/job/j1/deleted", &ev)
	if ev.Status != "DELETED" {
		t.Fatalf("deleted job event: %+v", ev)
	}
}
