package emulator

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The Jobs control plane and thing groups over the API. Shapes from
// aws-sdk-go-v2 service/iot (serializers.go, deserializers.go).

// jobsAPIError names the Jobs sentinels as AWS does; the others pass to
// apiErrorCode as they are.
func jobsAPIError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrInvalidState):
		return apiErrorf("InvalidStateTransitionException", http.StatusConflict, "%v", err)
	case errors.Is(err, ErrVersionConflict):
		return apiErrorf("VersionConflictException", http.StatusConflict, "%v", err)
	}
	return err
}

// epochOrNil is a timestamp for the answer, or nil (left out) when unset.
func epochOrNil(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return epoch(t)
}

// putTime sets m[key] to t unless t is unset.
func putTime(m map[string]any, key string, t time.Time) {
	if v := epochOrNil(t); v != nil {
		m[key] = v
	}
}

// queryPage reads maxResults and nextToken.
func queryPage(c *apiCall) (Page, error) {
	n, err := c.QueryInt("maxResults", 1, MaxPageSize, 0)
	if err != nil {
		return Page{}, err
	}
	return Page{NextToken: c.Query("nextToken"), MaxResults: n}, nil
}

// withNext adds nextToken to an answer when there is one.
func withNext(m map[string]any, next string) map[string]any {
	if next != "" {
		m["nextToken"] = next
	}
	return m
}

func apiCreateJob(ctx context.Context, c *apiCall) (any, error) {
	var in struct {
		Targets                    []string          `json:"targets"`
		Document                   *string           `json:"document"`
		Description                string            `json:"description"`
		TargetSelection            string            `json:"targetSelection"`
		JobExecutionsRolloutConfig *JobRolloutConfig `json:"jobExecutionsRolloutConfig"`
		AbortConfig                *JobAbortConfig   `json:"abortConfig"`
		TimeoutConfig              *JobTimeoutConfig `json:"timeoutConfig"`
		JobExecutionsRetryConfig   *JobRetryConfig   `json:"jobExecutionsRetryConfig"`
		// Accepted and ignored: tags have no effect in the emulator.
		Tags []struct{ Key, Value string } `json:"tags"`
		// Not emulated: refused rather than ignored.
		DocumentSource             *string         `json:"documentSource"`
		JobTemplateArn             *string         `json:"jobTemplateArn"`
		PresignedURLConfig         json.RawMessage `json:"presignedUrlConfig"`
		SchedulingConfig           json.RawMessage `json:"schedulingConfig"`
		NamespaceID                *string         `json:"namespaceId"`
		DestinationPackageVersions []string        `json:"destinationPackageVersions"`
		DocumentParameters         json.RawMessage `json:"documentParameters"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	switch {
	case in.DocumentSource != nil, in.JobTemplateArn != nil, in.PresignedURLConfig != nil, in.SchedulingConfig != nil,
		in.NamespaceID != nil, in.DestinationPackageVersions != nil, in.DocumentParameters != nil:
		return nil, invalidRequest("the emulator takes the job document inline (document) and does not emulate documentSource, job templates, presigned URLs, scheduling, namespaces or software packages")
	case in.Document == nil:
		return nil, invalidRequest("document is required")
	case len(in.Targets) == 0:
		return nil, invalidRequest("targets is required: thing or thing group ARNs")
	}
	j, err := c.Emu.CreateJob(ctx, c.Account, Job{
		ID: c.Path("jobId"), Document: json.RawMessage(*in.Document), Targets: in.Targets, Description: in.Description,
		TargetSelection: in.TargetSelection, RolloutConfig: in.JobExecutionsRolloutConfig, AbortConfig: in.AbortConfig,
		TimeoutConfig: in.TimeoutConfig, RetryConfig: in.JobExecutionsRetryConfig,
	})
	if err != nil {
		return nil, jobsAPIError(err)
	}
	out := map[string]any{"jobId": j.ID, "jobArn": j.ARN}
	if j.Description != "" {
		out["description"] = j.Description
	}
	return out, nil
}

// jobJSON is a Job as DescribeJob answers it.
func jobJSON(j Job) map[string]any {
	m := map[string]any{
		"jobId": j.ID, "jobArn": j.ARN, "status": j.Status, "targetSelection": j.TargetSelection,
		"targets": j.Targets, "forceCanceled": j.ForceCanceled, "isConcurrent": false,
	}
	putTime(m, "createdAt", j.CreatedAt)
	putTime(m, "lastUpdatedAt", j.LastUpdatedAt)
	putTime(m, "completedAt", j.CompletedAt)
	for k, v := range map[string]string{"description": j.Description, "comment": j.Comment, "reasonCode": j.ReasonCode} {
		if v != "" {
			m[k] = v
		}
	}
	if j.RolloutConfig != nil {
		m["jobExecutionsRolloutConfig"] = j.RolloutConfig
	}
	if j.AbortConfig != nil {
		m["abortConfig"] = j.AbortConfig
	}
	if j.TimeoutConfig != nil {
		m["timeoutConfig"] = j.TimeoutConfig
	}
	if j.RetryConfig != nil {
		m["jobExecutionsRetryConfig"] = j.RetryConfig
	}
	if j.ProcessDetails != nil {
		m["jobProcessDetails"] = j.ProcessDetails
	}
	return m
}

func apiDescribeJob(ctx context.Context, c *apiCall) (any, error) {
	if _, err := c.QueryBool("beforeSubstitution", false); err != nil {
		return nil, err
	}
	j, err := c.Emu.DescribeJob(ctx, c.Account, c.Path("jobId"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"job": jobJSON(j)}, nil
}

func apiGetJobDocument(ctx context.Context, c *apiCall) (any, error) {
	j, err := c.Emu.DescribeJob(ctx, c.Account, c.Path("jobId"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"document": string(j.Document)}, nil
}

func apiListJobs(ctx context.Context, c *apiCall) (any, error) {
	p, err := queryPage(c)
	if err != nil {
		return nil, err
	}
	if c.Query("namespaceId") != "" || c.Query("thingGroupId") != "" {
		return nil, invalidRequest("the emulator filters jobs by status, targetSelection and thingGroupName only")
	}
	f := JobFilter{Status: JobStatus(c.Query("status")), TargetSelection: c.Query("targetSelection"), ThingGroupName: c.Query("thingGroupName")}
	jobs, next, err := c.Emu.ListJobs(ctx, c.Account, f, p)
	if err != nil {
		return nil, err
	}
	list := make([]any, len(jobs))
	for i, j := range jobs {
		m := map[string]any{"jobId": j.ID, "jobArn": j.ARN, "status": j.Status, "targetSelection": j.TargetSelection, "isConcurrent": false}
		putTime(m, "createdAt", j.CreatedAt)
		putTime(m, "lastUpdatedAt", j.LastUpdatedAt)
		putTime(m, "completedAt", j.CompletedAt)
		list[i] = m
	}
	return withNext(map[string]any{"jobs": list}, next), nil
}

// execSummaryJSON is a JobExecutionSummary.
func execSummaryJSON(x JobExecution) map[string]any {
	m := map[string]any{"status": x.Status, "executionNumber": x.ExecutionNumber, "retryAttempt": x.RetryAttempt}
	putTime(m, "queuedAt", x.QueuedAt)
	putTime(m, "startedAt", x.StartedAt)
	putTime(m, "lastUpdatedAt", x.LastUpdatedAt)
	return m
}

func apiListJobExecutionsForJob(ctx context.Context, c *apiCall) (any, error) {
	p, err := queryPage(c)
	if err != nil {
		return nil, err
	}
	exs, next, err := c.Emu.ListJobExecutionsForJob(ctx, c.Account, c.Path("jobId"), JobExecutionStatus(c.Query("status")), p)
	if err != nil {
		return nil, err
	}
	list := make([]any, len(exs))
	for i, x := range exs {
		list[i] = map[string]any{"thingArn": x.ThingARN, "jobExecutionSummary": execSummaryJSON(x)}
	}
	return withNext(map[string]any{"executionSummaries": list}, next), nil
}

func apiListJobExecutionsForThing(ctx context.Context, c *apiCall) (any, error) {
	p, err := queryPage(c)
	if err != nil {
		return nil, err
	}
	if c.Query("namespaceId") != "" {
		return nil, invalidRequest("the emulator does not emulate job namespaces")
	}
	exs, next, err := c.Emu.ListJobExecutionsForThing(ctx, c.Account, c.Path("thingName"), JobExecutionStatus(c.Query("status")), c.Query("jobId"), p)
	if err != nil {
		return nil, err
	}
	list := make([]any, len(exs))
	for i, x := range exs {
		list[i] = map[string]any{"jobId": x.JobID, "jobExecutionSummary": execSummaryJSON(x)}
	}
	return withNext(map[string]any{"executionSummaries": list}, next), nil
}

func apiDescribeJobExecution(ctx context.Context, c *apiCall) (any, error) {
	var number int64
	if v := c.Query("executionNumber"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return nil, invalidRequest("executionNumber=%q: must be a positive integer", v)
		}
		number = n
	}
	x, err := c.Emu.DescribeJobExecution(ctx, c.Account, c.Path("jobId"), c.Path("thingName"), number)
	if err != nil {
		return nil, err
	}
	m := map[string]any{
		"jobId": x.JobID, "status": x.Status, "thingArn": x.ThingARN, "versionNumber": x.VersionNumber,
		"executionNumber": x.ExecutionNumber, "forceCanceled": x.ForceCanceled,
		"statusDetails": map[string]any{"detailsMap": x.StatusDetails},
	}
	putTime(m, "queuedAt", x.QueuedAt)
	putTime(m, "startedAt", x.StartedAt)
	putTime(m, "lastUpdatedAt", x.LastUpdatedAt)
	if x.Status == JobInProgress {
		t := x.StepTimeoutAt
		if !x.InProgressTimeoutAt.IsZero() && (t.IsZero() || x.InProgressTimeoutAt.Before(t)) {
			t = x.InProgressTimeoutAt
		}
		if !t.IsZero() {
			m["approximateSecondsBeforeTimedOut"] = int64(t.Sub(c.Emu.cfg.now()).Seconds())
		}
	}
	return map[string]any{"execution": m}, nil
}

func apiCancelJob(ctx context.Context, c *apiCall) (any, error) {
	force, err := c.QueryBool("force", false)
	if err != nil {
		return nil, err
	}
	var in struct {
		Comment    string `json:"comment"`
		ReasonCode string `json:"reasonCode"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	j, err := c.Emu.CancelJobWith(ctx, c.Account, c.Path("jobId"), CancelJobOptions{Force: force, Comment: in.Comment, ReasonCode: in.ReasonCode})
	if errors.Is(err, ErrInvalidState) {
		// CancelJob has no InvalidStateTransitionException in AWS's model.
		return nil, invalidRequest("%v", err)
	}
	if err != nil {
		return nil, err
	}
	out := map[string]any{"jobId": j.ID, "jobArn": j.ARN}
	if j.Description != "" {
		out["description"] = j.Description
	}
	return out, nil
}

func apiCancelJobExecution(ctx context.Context, c *apiCall) (any, error) {
	force, err := c.QueryBool("force", false)
	if err != nil {
		return nil, err
	}
	var in struct {
		ExpectedVersion *int64            `json:"expectedVersion"`
		StatusDetails   map[string]string `json:"statusDetails"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	err = c.Emu.CancelJobExecution(ctx, c.Account, c.Path("jobId"), c.Path("thingName"), CancelExecutionOptions{Force: force, ExpectedVersion: in.ExpectedVersion, StatusDetails: in.StatusDetails})
	return nil, jobsAPIError(err)
}

func apiDeleteJobExecution(ctx context.Context, c *apiCall) (any, error) {
	force, err := c.QueryBool("force", false)
	if err != nil {
		return nil, err
	}
	if c.Query("namespaceId") != "" {
		return nil, invalidRequest("the emulator does not emulate job namespaces")
	}
	n, err := strconv.ParseInt(c.Path("executionNumber"), 10, 64)
	if err != nil {
		return nil, invalidRequest("executionNumber %q: must be an integer", c.Path("executionNumber"))
	}
	return nil, jobsAPIError(c.Emu.DeleteJobExecution(ctx, c.Account, c.Path("jobId"), c.Path("thingName"), n, force))
}

func apiDeleteJob(ctx context.Context, c *apiCall) (any, error) {
	force, err := c.QueryBool("force", false)
	if err != nil {
		return nil, err
	}
	if c.Query("namespaceId") != "" {
		return nil, invalidRequest("the emulator does not emulate job namespaces")
	}
	return nil, jobsAPIError(c.Emu.DeleteJob(ctx, c.Account, c.Path("jobId"), force))
}

func apiCreateThingGroup(ctx context.Context, c *apiCall) (any, error) {
	var in struct {
		ParentGroupName      *string `json:"parentGroupName"`
		ThingGroupProperties *struct {
			ThingGroupDescription string `json:"thingGroupDescription"`
			AttributePayload      *struct {
				Attributes map[string]string `json:"attributes"`
				Merge      bool              `json:"merge"`
			} `json:"attributePayload"`
		} `json:"thingGroupProperties"`
		Tags []struct{ Key, Value string } `json:"tags"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	if in.ParentGroupName != nil {
		return nil, invalidRequest("the emulator has no thing group hierarchies (parentGroupName)")
	}
	g := ThingGroup{Name: c.Path("thingGroupName")}
	if p := in.ThingGroupProperties; p != nil {
		g.Description = p.ThingGroupDescription
		if p.AttributePayload != nil {
			g.Attributes = p.AttributePayload.Attributes
		}
	}
	out, err := c.Emu.CreateThingGroup(ctx, c.Account, g)
	if err != nil {
		return nil, err
	}
	return map[string]any{"thingGroupName": out.Name, "thingGroupArn": out.ARN, "thingGroupId": out.ID}, nil
}

func apiDescribeThingGroup(ctx context.Context, c *apiCall) (any, error) {
	g, err := c.Emu.DescribeThingGroup(ctx, c.Account, c.Path("thingGroupName"))
	if err != nil {
		return nil, err
	}
	attrs := g.Attributes
	if attrs == nil {
		attrs = map[string]string{}
	}
	props := map[string]any{"attributePayload": map[string]any{"attributes": attrs}}
	if g.Description != "" {
		props["thingGroupDescription"] = g.Description
	}
	return map[string]any{
		"thingGroupName": g.Name, "thingGroupId": g.ID, "thingGroupArn": g.ARN, "version": g.Version,
		"thingGroupProperties": props, "thingGroupMetadata": map[string]any{"creationDate": epoch(g.CreatedAt)},
	}, nil
}

// groupAndThing reads AddThingToThingGroup's and RemoveThingFromThingGroup's
// body: the group and the thing, each by name or ARN.
func groupAndThing(c *apiCall) (group, thing string, err error) {
	var in struct {
		ThingGroupName        string `json:"thingGroupName"`
		ThingGroupArn         string `json:"thingGroupArn"`
		ThingName             string `json:"thingName"`
		ThingArn              string `json:"thingArn"`
		OverrideDynamicGroups bool   `json:"overrideDynamicGroups"`
	}
	if err := c.Decode(&in); err != nil {
		return "", "", err
	}
	pick := func(name, arn, kind string) (string, error) {
		switch {
		case name != "" && arn != "" && arn != c.ARN(kind+"/"+name):
			return "", invalidRequest("%s name %q and ARN %q disagree", kind, name, arn)
		case name != "":
			return name, nil
		case arn != "":
			n, ok := strings.CutPrefix(arn, c.ARN(kind+"/"))
			if !ok || n == "" {
				return "", invalidRequest("%q is not a %s ARN of this account (%s)", arn, kind, c.ARN(kind+"/NAME"))
			}
			return n, nil
		}
		return "", invalidRequest("give the %s's name or ARN", kind)
	}
	if group, err = pick(in.ThingGroupName, in.ThingGroupArn, "thinggroup"); err != nil {
		return "", "", err
	}
	if thing, err = pick(in.ThingName, in.ThingArn, "thing"); err != nil {
		return "", "", err
	}
	return group, thing, nil
}

func apiAddThingToThingGroup(ctx context.Context, c *apiCall) (any, error) {
	group, thing, err := groupAndThing(c)
	if err != nil {
		return nil, err
	}
	return map[string]any{}, c.Emu.AddThingToThingGroup(ctx, c.Account, group, thing)
}

func apiRemoveThingFromThingGroup(ctx context.Context, c *apiCall) (any, error) {
	group, thing, err := groupAndThing(c)
	if err != nil {
		return nil, err
	}
	return map[string]any{}, c.Emu.RemoveThingFromThingGroup(ctx, c.Account, group, thing)
}

func apiListThingsInThingGroup(ctx context.Context, c *apiCall) (any, error) {
	p, err := queryPage(c)
	if err != nil {
		return nil, err
	}
	if _, err := c.QueryBool("recursive", false); err != nil {
		return nil, err
	}
	things, next, err := c.Emu.ListThingsInThingGroup(ctx, c.Account, c.Path("thingGroupName"), p)
	if err != nil {
		return nil, err
	}
	return withNext(map[string]any{"things": things}, next), nil
}

func apiListThingGroups(ctx context.Context, c *apiCall) (any, error) {
	p, err := queryPage(c)
	if err != nil {
		return nil, err
	}
	if c.Query("parentGroup") != "" {
		return nil, invalidRequest("the emulator has no thing group hierarchies (parentGroup)")
	}
	if _, err := c.QueryBool("recursive", false); err != nil {
		return nil, err
	}
	groups, next, err := c.Emu.ListThingGroups(ctx, c.Account, c.Query("namePrefixFilter"), p)
	if err != nil {
		return nil, err
	}
	list := make([]any, len(groups))
	for i, g := range groups {
		list[i] = map[string]any{"groupName": g.Name, "groupArn": g.ARN}
	}
	return withNext(map[string]any{"thingGroups": list}, next), nil
}

func apiUpdateEventConfigurations(ctx context.Context, c *apiCall) (any, error) {
	var in struct {
		EventConfigurations map[string]struct {
			Enabled bool `json:"Enabled"`
		} `json:"eventConfigurations"`
	}
	if err := c.Decode(&in); err != nil {
		return nil, err
	}
	on := map[string]bool{}
	for k, v := range in.EventConfigurations {
		on[k] = v.Enabled
	}
	return map[string]any{}, c.Emu.UpdateEventConfigurations(ctx, c.Account, on)
}

func apiDescribeEventConfigurations(ctx context.Context, c *apiCall) (any, error) {
	on, err := c.Emu.EventConfigurations(ctx, c.Account)
	if err != nil {
		return nil, err
	}
	out := map[string]any{}
	for k, v := range on {
		out[k] = map[string]bool{"Enabled": v}
	}
	return map[string]any{"eventConfigurations": out}, nil
}
