package agent

import (
	"time"

	"github.com/thingcert/thingcert/rotation"
)

// task is one piece of work the agent does at a time: connecting,
// provisioning and rotating all move the one connection.
type task struct {
	kind    taskKind
	trigger rotation.Trigger
	jobID   string
	why     string // for a recovery: the refusal
}

type taskKind string

const (
	taskConnect   taskKind = "connect"
	taskProvision taskKind = "provision"
	taskResume    taskKind = "resume"
	taskRotate    taskKind = "rotate"
	taskJob       taskKind = "job"
	taskCheckJobs taskKind = "check-jobs"
	taskRecover   taskKind = "recover"
)

// same reports whether two tasks are the same work (a job is its own).
func (t task) same(o task) bool { return t.kind == o.kind && t.jobID == o.jobID }

// taskQueue is the agent's schedule: tasks run one at a time in order; a
// task already queued or running is not queued again; a failed task goes
// back to the front and holds the queue until its backoff has passed; a
// job is carried out once however often it is notified. It does no I/O and
// reads no clock: the loop passes the time in, so it is tested alone.
type taskQueue struct {
	queue     []task
	running   *task
	notBefore time.Time // nothing starts before this (a failure's backoff, a recovery's spacing)
	failures  int       // consecutive failed tasks
	jobsSeen  map[string]bool
	// backoff is the wait after the n-th consecutive failure (n ≥ 1).
	backoff func(n int) time.Duration
}

func newTaskQueue(backoff func(n int) time.Duration, first ...task) *taskQueue {
	q := &taskQueue{jobsSeen: map[string]bool{}, backoff: backoff}
	q.add(first...)
	return q
}

// has reports whether t is queued or running.
func (q *taskQueue) has(t task) bool {
	if q.running != nil && q.running.same(t) {
		return true
	}
	for _, u := range q.queue {
		if u.same(t) {
			return true
		}
	}
	return false
}

// add queues the tasks not queued or running already, and jobs not carried
// out already. It reports whether it queued any.
func (q *taskQueue) add(ts ...task) bool {
	added := false
	for _, t := range ts {
		if q.has(t) || t.kind == taskJob && q.jobsSeen[t.jobID] {
			continue
		}
		q.queue = append(q.queue, t)
		added = true
	}
	return added
}

// addFirst puts t at the front, unless it is queued or running already.
func (q *taskQueue) addFirst(t task) {
	if !q.has(t) {
		q.queue = append([]task{t}, q.queue...)
	}
}

// holdUntil keeps any task from starting before at.
func (q *taskQueue) holdUntil(at time.Time) {
	if q.notBefore.Before(at) {
		q.notBefore = at
	}
}

// start takes the next task if none runs, one waits and its time has come.
func (q *taskQueue) start(now time.Time) (task, bool) {
	if q.running != nil || len(q.queue) == 0 || now.Before(q.notBefore) {
		return task{}, false
	}
	t := q.queue[0]
	q.queue = q.queue[1:]
	q.running = &t
	if t.kind == taskJob {
		q.jobsSeen[t.jobID] = true
	}
	return t, true
}

// idle reports whether nothing runs and nothing waits.
func (q *taskQueue) idle() bool { return q.running == nil && len(q.queue) == 0 }

// waiting is how long until a waiting task may start (zero when none waits
// or it may start now).
func (q *taskQueue) waiting(now time.Time) time.Duration {
	if q.running != nil || len(q.queue) == 0 || !now.Before(q.notBefore) {
		return 0
	}
	return q.notBefore.Sub(now)
}

// succeeded ends the running task well: the failure count starts again.
func (q *taskQueue) succeeded() {
	q.running = nil
	q.failures = 0
}

// failed ends the running task badly: it is tried again first (but for a
// check of jobs, which the next connect repeats anyway), after the backoff
// for one more consecutive failure. It returns that backoff.
func (q *taskQueue) failed(now time.Time) time.Duration {
	t := *q.running
	q.running = nil
	q.failures++
	delay := q.backoff(q.failures)
	q.holdUntil(now.Add(delay))
	if t.kind != taskCheckJobs {
		q.addFirst(t)
	}
	return delay
}

// interrupted ends the running task without a verdict (it was stopped for a
// reload): it runs again first.
func (q *taskQueue) interrupted() {
	t := *q.running
	q.running = nil
	q.addFirst(t)
}

// settled ends the running task with no effect on the failure count (a
// rotation that rolled back keeps a working identity: its own backoff is in
// the state).
func (q *taskQueue) settled() { q.running = nil }
