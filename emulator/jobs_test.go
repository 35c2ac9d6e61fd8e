package emulator

import (
	"encoding/json"
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
	r, err := Open(ctx, Config{Now: clock.Now, Accounts: []Account{{Name: "A"}}})
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
