package device

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/jobs"
	"github.com/thingcert/thingcert/rotation"
)

// maxSleep caps a wait for the next renewal, so a wall clock that jumps (a
// device without a real-time clock setting its time from NTP after boot) is
// noticed within the hour.
const maxSleep = time.Hour

// Next is what an idle device does next, decided from its state and the time
// alone (see NextStep).
type Next struct {
	// Step is what to do now; StepWait means nothing until At.
	Step Step
	// Trigger is the rotation's reason, for StepRotate.
	Trigger rotation.Trigger
	// At is when to decide again, for StepWait.
	At time.Time
	// Renewal is the renewal policy's decision for the device's own
	// certificate (zero for a claim).
	Renewal rotation.Decision
}

// Step is one kind of work for an idle device.
type Step string

// The steps NextStep chooses.
const (
	StepWait      Step = "wait"
	StepProvision Step = "provision" // the claim is current: provision
	StepResume    Step = "resume"    // a rotation is in progress, or old keys are due to go
	StepRotate    Step = "rotate"    // the policy says renew now
)

// NextStep decides, for an idle device, what to do at now: provision,
// resume, rotate, or wait until a time. It is a pure function of the state,
// the runner's policy and now.
func NextStep(r *rotation.Runner, st *rotation.State, now time.Time) Next {
	if st == nil || st.Current == nil {
		return Next{Step: StepWait, At: now.Add(maxSleep)}
	}
	if st.Current.Claim {
		// After a provisioning that rolled back, wait out its backoff; one
		// in progress resumes.
		if !st.InProgress() && now.Before(st.NextRetry) {
			return Next{Step: StepWait, At: minTime(st.NextRetry, now.Add(maxSleep))}
		}
		return Next{Step: StepProvision}
	}
	if st.InProgress() {
		return Next{Step: StepResume}
	}
	dec, due := r.Due(st, now)
	if due {
		return Next{Step: StepRotate, Trigger: rotation.Trigger{Kind: rotation.TriggerTime, Reason: string(dec.Reason)}, Renewal: dec}
	}
	if rotation.ActionFor(st, now) == rotation.ActRetire {
		return Next{Step: StepResume, Renewal: dec}
	}
	at := dec.At
	if w := st.WakeAt(now); !w.IsZero() && w.Before(at) {
		at = w
	}
	return Next{Step: StepWait, At: minTime(maxTime(at, now), now.Add(maxSleep)), Renewal: dec}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Run keeps the device's identity until ctx ends: it connects (retrying with
// backoff and jitter), provisions by claim while the device has no identity
// of its own, resumes an interrupted rotation, renews when the policy says so
// or a rotation job asks, and retries what failed. It returns ctx's error, or
// an error no retry can fix (no identity to start from, a key that does not
// open).
//
// Run is for a program that embeds the device; the thingcert agent schedules
// the same steps itself, beside its reloads, socket and metrics.
func (m *Manager) Run(ctx context.Context) error {
	jobc := make(chan string, 8)
	if !m.Options().NoJobs {
		m.mu.Lock()
		m.jobSink = func(e *jobs.Execution) {
			select {
			case jobc <- e.JobID:
			default: // the next check finds it again
			}
		}
		m.mu.Unlock()
	}
	err := m.ConnectRetry(ctx, func(_ *rotation.State, err error, retryIn time.Duration) error {
		m.log.Warn("device: cannot connect; trying again", "retry_in", retryIn.String(), "error", err)
		return nil
	})
	if err != nil {
		return err
	}
	failures := 0
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r := m.Runner()
		st, err := r.Load()
		if err != nil {
			return err
		}
		now := m.now()
		err = nil
		next := NextStep(r, st, now)
		switch next.Step {
		case StepProvision:
			_, err = m.Provision(ctx)
			if errors.Is(err, rotation.ErrAlreadyProvisioned) {
				err = nil
			}
		case StepResume:
			_, err = m.Resume(ctx)
		case StepRotate:
			_, err = m.Rotate(ctx, next.Trigger)
		case StepWait:
			t := time.NewTimer(next.At.Sub(now))
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			case id := <-jobc:
				t.Stop()
				_, _, err = m.RunJob(ctx, id, nil)
			}
		}
		switch {
		case err == nil || errors.Is(err, rotation.ErrRolledBack):
			// A rollback keeps a working identity; the state says when to try again.
			failures = 0
		case ctx.Err() != nil:
			return ctx.Err()
		default:
			failures++
			delay := m.Options().Machine.Backoff.Delay(rotation.Retry{Failures: failures, Random: m.rand()})
			m.log.Error("device: step failed; trying again later", "step", next.Step, "retry_in", delay.String(), "error", err)
			if err := sleep(ctx, delay); err != nil {
				return err
			}
		}
	}
}

// ConnectRetry connects with the current identity, with backoff and jitter,
// until it works or ctx ends. After each failed attempt it calls onFail (if
// set) with the state it tried, the error and the wait before the next
// attempt; an error from onFail ends the retries with that error. A state
// folder with no identity to start from ends them at once.
func (m *Manager) ConnectRetry(ctx context.Context, onFail func(st *rotation.State, err error, retryIn time.Duration) error) error {
	for failures := 0; ; failures++ {
		st, err := m.Connect(ctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrNoIdentity) || ctx.Err() != nil {
			return err
		}
		delay := m.Options().ConnectBackoff.Delay(failures, m.rand())
		if onFail != nil {
			if err := onFail(st, err, delay); err != nil {
				return err
			}
		}
		if err := sleep(ctx, delay); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// RunJob carries out a rotation job: it marks the job IN_PROGRESS and
// rotates (the runner then reports SUCCEEDED or FAILED to the job), or
// resumes the rotation already running for it. rotated says whether a
// rotation ran; a job no longer pending is skipped. started, if set, is
// called as the rotation starts or resumes.
func (m *Manager) RunJob(ctx context.Context, jobID string, started func(resumed bool)) (st *rotation.State, rotated bool, err error) {
	if started == nil {
		started = func(bool) {}
	}
	r := m.Runner()
	st, err = r.Load()
	if err != nil {
		return nil, false, err
	}
	trig := rotation.Trigger{Kind: rotation.TriggerJob, JobID: jobID, Reason: jobs.RotateOperation}
	if st.InProgress() && st.Trigger != nil && st.Trigger.JobID == jobID {
		started(true)
		st, err := r.Resume(ctx)
		return st, true, err
	}
	if lr := st.LastResult; lr != nil && lr.Trigger.JobID == jobID {
		m.log.Info("job already carried out", "job", jobID, "outcome", lr.Outcome)
		return st, false, nil
	}
	details := map[string]string{"step": "rotating", "certificateId": st.Current.CertificateID}
	if err := m.Session().Jobs().Update(ctx, jobID, jobs.StatusInProgress, details); err != nil {
		var je *jobs.Error
		if errors.As(err, &je) && (je.Code == "InvalidStateTransition" || je.Code == "ResourceNotFound" || je.Code == "TerminalStateReached") {
			m.log.Info("rotation job no longer pending; skipped", "job", jobID, "reason", je.Error())
			return st, false, nil
		}
		return st, false, fmt.Errorf("device: marking job %s IN_PROGRESS: %w", jobID, err)
	}
	started(false)
	st, err = r.Rotate(ctx, trig)
	return st, true, err
}

// ListenJobs subscribes, on the current connection, to the thing's job
// notifications and calls h for each rotation job that is QUEUED or
// IN_PROGRESS: the next pending job when it is one, and otherwise those
// found by looking through the pending jobs whenever the list changes (a
// rotation queued behind another program's job is found too; that job is
// left alone). h must return quickly.
func (m *Manager) ListenJobs(ctx context.Context, h func(*jobs.Execution)) error {
	j := m.Session().Jobs()
	scan := func() {
		// Not on the MQTT client's delivery goroutine: the look-up makes requests.
		go func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*iot.DefaultRequestTimeout)
			defer cancel()
			if err := m.checkJobs(cctx, j, h); err != nil {
				m.log.Warn("device: looking through pending jobs for a rotation", "error", err)
			}
		}()
	}
	if err := j.OnNext(ctx, func(e *jobs.Execution) {
		switch {
		case isPendingRotation(e):
			h(e)
		case e != nil:
			scan() // another operation's job is next: a rotation may wait behind it
		}
	}); err != nil {
		return err
	}
	return j.OnNotify(ctx, scan)
}

// CheckJobs looks through the thing's pending jobs (some may have been
// queued while the device was offline) and calls h for each pending
// rotation among them; jobs of other operations are left alone.
func (m *Manager) CheckJobs(ctx context.Context, h func(*jobs.Execution)) error {
	return m.checkJobs(ctx, m.Session().Jobs(), h)
}

func (m *Manager) checkJobs(ctx context.Context, j *jobs.Client, h func(*jobs.Execution)) error {
	found, err := j.PendingRotations(ctx)
	for _, e := range found {
		h(e)
	}
	return err
}

// isPendingRotation reports whether e asks for a certificate rotation that is
// still to be done.
func isPendingRotation(e *jobs.Execution) bool {
	return e != nil && e.IsRotation() && (e.Status == jobs.StatusQueued || e.Status == jobs.StatusInProgress)
}

// onDeviceIdentity is called after each switch to the device's own identity:
// Run's job listener follows the connection.
func (m *Manager) onDeviceIdentity(ctx context.Context) {
	m.mu.Lock()
	sink := m.jobSink
	m.mu.Unlock()
	if sink == nil {
		return
	}
	if err := m.ListenJobs(ctx, sink); err != nil {
		m.log.Warn("device: cannot listen for rotation jobs; they are checked at each connect instead", "error", err)
	}
	go func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), iot.DefaultRequestTimeout)
		defer cancel()
		if err := m.CheckJobs(cctx, sink); err != nil {
			m.log.Warn("device: checking for pending rotation jobs", "error", err)
		}
	}()
}
