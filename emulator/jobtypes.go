package emulator

import (
	"errors"
	"time"
)

// Sentinels of the Jobs control plane, beside those in types.go.
var (
	// ErrInvalidState: the job or execution's status forbids the change (AWS:
	// InvalidStateTransitionException), e.g. cancelling an IN_PROGRESS
	// execution without force.
	ErrInvalidState = errors.New("invalid state transition")
	// ErrVersionConflict: an expectedVersion did not match (AWS:
	// VersionConflictException).
	ErrVersionConflict = errors.New("version conflict")
)

// JobStatus is the status of a job as a whole, with AWS IoT's names.
type JobStatus string

// The job statuses AWS IoT reports.
const (
	JobStatusInProgress         JobStatus = "IN_PROGRESS"
	JobStatusCompleted          JobStatus = "COMPLETED"
	JobStatusCanceled           JobStatus = "CANCELED"
	JobStatusDeletionInProgress JobStatus = "DELETION_IN_PROGRESS"
)

// Target selections of a job: SNAPSHOT runs on the targets' members at
// creation; CONTINUOUS also on things added to a target group later.
const (
	TargetSnapshot   = "SNAPSHOT"
	TargetContinuous = "CONTINUOUS"
)

// JobRolloutConfig is AWS's jobExecutionsRolloutConfig: how many things are
// notified of the job per minute, at a constant rate or one that grows.
type JobRolloutConfig struct {
	MaximumPerMinute int                 `json:"maximumPerMinute,omitempty"`
	ExponentialRate  *JobExponentialRate `json:"exponentialRate,omitempty"`
}

// JobExponentialRate starts at BaseRatePerMinute and multiplies the rate by
// IncrementFactor each time another RateIncreaseCriteria's worth of things was
// notified (or succeeded).
type JobExponentialRate struct {
	BaseRatePerMinute    int                     `json:"baseRatePerMinute"`
	IncrementFactor      float64                 `json:"incrementFactor"`
	RateIncreaseCriteria JobRateIncreaseCriteria `json:"rateIncreaseCriteria"`
}

// JobRateIncreaseCriteria: exactly one of the two is set.
type JobRateIncreaseCriteria struct {
	NumberOfNotifiedThings  int `json:"numberOfNotifiedThings,omitempty"`
	NumberOfSucceededThings int `json:"numberOfSucceededThings,omitempty"`
}

// JobAbortConfig is AWS's abortConfig: the job is canceled when one criterion
// is met.
type JobAbortConfig struct {
	CriteriaList []JobAbortCriteria `json:"criteriaList"`
}

// JobAbortCriteria: once MinNumberOfExecutedThings were notified, the job is
// canceled when executions of FailureType (FAILED, REJECTED, TIMED_OUT or ALL)
// reach ThresholdPercentage of them. Action is CANCEL, the only one AWS has.
type JobAbortCriteria struct {
	FailureType               string  `json:"failureType"`
	Action                    string  `json:"action"`
	ThresholdPercentage       float64 `json:"thresholdPercentage"`
	MinNumberOfExecutedThings int     `json:"minNumberOfExecutedThings"`
}

// JobTimeoutConfig is AWS's timeoutConfig: an execution still IN_PROGRESS
// this long after it started becomes TIMED_OUT, whatever its step timer says.
type JobTimeoutConfig struct {
	InProgressTimeoutInMinutes int64 `json:"inProgressTimeoutInMinutes,omitempty"`
}

// JobRetryConfig is AWS's jobExecutionsRetryConfig: an execution that ends
// FAILED or TIMED_OUT is queued again, with the next execution number, up to
// NumberOfRetries times per failure type (FAILED, TIMED_OUT or ALL).
type JobRetryConfig struct {
	CriteriaList []JobRetryCriteria `json:"criteriaList"`
}

// JobRetryCriteria is one failure type's number of retries (0-10).
type JobRetryCriteria struct {
	FailureType     string `json:"failureType"`
	NumberOfRetries int    `json:"numberOfRetries"`
}

// JobProcessDetails counts a job's things by the status of their latest
// execution, as AWS's DescribeJob does. ProcessingTargets are the targets still
// being rolled out to.
type JobProcessDetails struct {
	ProcessingTargets        []string `json:"processingTargets,omitempty"`
	NumberOfCanceledThings   int      `json:"numberOfCanceledThings"`
	NumberOfSucceededThings  int      `json:"numberOfSucceededThings"`
	NumberOfFailedThings     int      `json:"numberOfFailedThings"`
	NumberOfRejectedThings   int      `json:"numberOfRejectedThings"`
	NumberOfQueuedThings     int      `json:"numberOfQueuedThings"`
	NumberOfInProgressThings int      `json:"numberOfInProgressThings"`
	NumberOfRemovedThings    int      `json:"numberOfRemovedThings"`
	NumberOfTimedOutThings   int      `json:"numberOfTimedOutThings"`
}

// ThingGroup is a static thing group.
type ThingGroup struct {
	Account     string            `json:"account"`
	Name        string            `json:"thingGroupName"`
	ID          string            `json:"thingGroupId"`
	ARN         string            `json:"thingGroupArn"`
	Description string            `json:"description,omitempty"`
	Attributes  map[string]string `json:"attributes,omitempty"`
	Version     int64             `json:"version"`
	CreatedAt   time.Time         `json:"createdAt"`
}

// Page asks for one page of a list: MaxResults items (0 is DefaultPageSize)
// after NextToken, the token the previous page returned ("" starts).
type Page struct {
	NextToken  string `json:"nextToken,omitempty"`
	MaxResults int    `json:"maxResults,omitempty"`
}

// DefaultPageSize and MaxPageSize bound a Page's MaxResults (AWS's lists take
// 1-250).
const (
	DefaultPageSize = 25
	MaxPageSize     = 250
)

// JobFilter selects jobs in ListJobs; zero fields match every job.
type JobFilter struct {
	Status          JobStatus `json:"status,omitempty"`
	TargetSelection string    `json:"targetSelection,omitempty"`
	ThingGroupName  string    `json:"thingGroupName,omitempty"`
}

// CancelJobOptions are CancelJob's choices: Force also cancels IN_PROGRESS
// executions; ReasonCode and Comment are recorded on the job.
type CancelJobOptions struct {
	Force      bool   `json:"force,omitempty"`
	ReasonCode string `json:"reasonCode,omitempty"`
	Comment    string `json:"comment,omitempty"`
}

// CancelExecutionOptions are CancelJobExecution's choices: Force is needed for
// an IN_PROGRESS execution; ExpectedVersion, when set, must match.
type CancelExecutionOptions struct {
	Force           bool              `json:"force,omitempty"`
	ExpectedVersion *int64            `json:"expectedVersion,omitempty"`
	StatusDetails   map[string]string `json:"statusDetails,omitempty"`
}

// Event types of UpdateEventConfigurations that the emulator publishes.
const (
	EventJob          = "JOB"
	EventJobExecution = "JOB_EXECUTION"
)
