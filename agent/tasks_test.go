package agent

import (
	"testing"
	"time"
)

func TestTaskQueueDropsDuplicates(t *testing.T) {
	q := newTaskQueue(func(int) time.Duration { return time.Minute }, task{kind: taskConnect})
	now := time.Unix(1000, 0)
	if q.add(task{kind: taskConnect}) {
		t.Fatal("a second connect was queued")
	}
	q.add(task{kind: taskJob, jobID: "a"}, task{kind: taskJob, jobID: "b"}, task{kind: taskJob, jobID: "a"})
	if len(q.queue) != 3 {
		t.Fatalf("queue %+v: want connect, job a, job b", q.queue)
	}
	c, ok := q.start(now)
	if !ok || c.kind != taskConnect {
		t.Fatalf("first task %+v %v", c, ok)
	}
	if q.add(task{kind: taskConnect}) {
		t.Fatal("a connect was queued while one runs")
	}
	if _, ok := q.start(now); ok {
		t.Fatal("a second task started while one runs")
	}
	q.succeeded()
	a, _ := q.start(now)
	q.succeeded()
	if a.jobID != "a" || q.add(task{kind: taskJob, jobID: "a"}) {
		t.Fatalf("job a carried out (%+v) yet queued again", a)
	}
}

func TestTaskQueueBacksOffAfterFailures(t *testing.T) {
	var asked []int
	q := newTaskQueue(func(n int) time.Duration { asked = append(asked, n); return time.Duration(n) * time.Minute },
		task{kind: taskRotate}, task{kind: taskCheckJobs})
	now := time.Unix(1000, 0)
	r, _ := q.start(now)
	if d := q.failed(now); d != time.Minute {
		t.Fatalf("first failure: wait %v", d)
	}
	if _, ok := q.start(now.Add(59 * time.Second)); ok {
		t.Fatal("a task started inside the backoff")
	}
	if w := q.waiting(now); w != time.Minute {
		t.Fatalf("waiting %v, want 1m", w)
	}
	again, ok := q.start(now.Add(time.Minute))
	if !ok || again != r {
		t.Fatalf("after the backoff: %+v %v, want the failed task again first", again, ok)
	}
	now = now.Add(time.Minute)
	if d := q.failed(now); d != 2*time.Minute {
		t.Fatalf("second failure in a row: wait %v, want 2m", d)
	}
	now = now.Add(2 * time.Minute)
	q.start(now)
	q.succeeded()
	cj, _ := q.start(now)
	if cj.kind != taskCheckJobs {
		t.Fatalf("next %+v", cj)
	}
	if d := q.failed(now); d != time.Minute {
		t.Fatalf("a failure after a success: wait %v, want 1m (count reset)", d)
	}
	if !q.idle() {
		t.Fatalf("a failed jobs check was queued again: %+v", q.queue)
	}
	if len(asked) != 3 || asked[0] != 1 || asked[1] != 2 || asked[2] != 1 {
		t.Fatalf("backoff asked for %v", asked)
	}
}

func TestTaskQueueInterruptAndHold(t *testing.T) {
	q := newTaskQueue(func(int) time.Duration { return time.Hour }, task{kind: taskConnect}, task{kind: taskProvision})
	now := time.Unix(1000, 0)
	q.start(now)
	q.interrupted()
	if c, _ := q.start(now); c.kind != taskConnect {
		t.Fatalf("an interrupted task did not run again first: %+v", c)
	}
	q.settled()
	q.addFirst(task{kind: taskRecover})
	q.holdUntil(now.Add(30 * time.Second))
	q.holdUntil(now.Add(10 * time.Second)) // an earlier hold does not shorten it
	if _, ok := q.start(now.Add(29 * time.Second)); ok {
		t.Fatal("started inside the hold")
	}
	if r, ok := q.start(now.Add(30 * time.Second)); !ok || r.kind != taskRecover {
		t.Fatalf("after the hold: %+v %v", r, ok)
	}
}
