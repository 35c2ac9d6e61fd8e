package emulator

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
)

func TestAPIThingGroups(t *testing.T) {
	e := startAPIEmu(t, Config{}, "prod")
	ctx := context.Background()
	c := newAPIClient(t, e.Emulator, "prod")
	for _, th := range names("dev-", 5) {
		if _, err := c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String(th)}); err != nil {
			t.Fatal(err)
		}
	}
	props := &types.ThingGroupProperties{ThingGroupDescription: aws.String("the lab"), AttributePayload: &types.AttributePayload{Attributes: map[string]string{"site": "lab-1"}}}
	g, err := c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("lab"), ThingGroupProperties: props})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(g.ThingGroupName) != "lab" || !strings.HasSuffix(aws.ToString(g.ThingGroupArn), ":thinggroup/lab") || aws.ToString(g.ThingGroupId) == "" {
		t.Fatalf("CreateThingGroup: %+v", g)
	}
	again, err := c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("lab"), ThingGroupProperties: props})
	if err != nil || aws.ToString(again.ThingGroupId) != aws.ToString(g.ThingGroupId) {
		t.Fatalf("CreateThingGroup again: %+v %v", again, err)
	}
	_, err = c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("lab")})
	wantAPIError(t, err, "ResourceAlreadyExistsException", http.StatusConflict)
	_, err = c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("bad name")})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	_, err = c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("child"), ParentGroupName: aws.String("lab")})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)

	d, err := c.DescribeThingGroup(ctx, &iot.DescribeThingGroupInput{ThingGroupName: aws.String("lab")})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(d.ThingGroupArn) != aws.ToString(g.ThingGroupArn) || d.Version != 1 || aws.ToString(d.ThingGroupProperties.ThingGroupDescription) != "the lab" ||
		d.ThingGroupProperties.AttributePayload.Attributes["site"] != "lab-1" || d.ThingGroupMetadata.CreationDate == nil {
		t.Fatalf("DescribeThingGroup: %+v", d)
	}
	_, err = c.DescribeThingGroup(ctx, &iot.DescribeThingGroupInput{ThingGroupName: aws.String("nope")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)

	// By name, and by ARN.
	for i, th := range names("dev-", 5) {
		in := &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("lab"), ThingName: aws.String(th)}
		if i%2 == 1 {
			in = &iot.AddThingToThingGroupInput{ThingGroupArn: g.ThingGroupArn, ThingArn: aws.String(strings.Replace(aws.ToString(g.ThingGroupArn), "thinggroup/lab", "thing/"+th, 1))}
		}
		if _, err := c.AddThingToThingGroup(ctx, in); err != nil {
			t.Fatalf("adding %s: %v", th, err)
		}
	}
	_, err = c.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("lab"), ThingName: aws.String("ghost")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	_, err = c.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("lab")})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	if _, err := c.RemoveThingFromThingGroup(ctx, &iot.RemoveThingFromThingGroupInput{ThingGroupName: aws.String("lab"), ThingName: aws.String("dev-02")}); err != nil {
		t.Fatal(err)
	}
	var members []string
	pages := 0
	pg := iot.NewListThingsInThingGroupPaginator(c, &iot.ListThingsInThingGroupInput{ThingGroupName: aws.String("lab"), MaxResults: aws.Int32(2)})
	for pg.HasMorePages() {
		out, err := pg.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		members = append(members, out.Things...)
	}
	if strings.Join(members, ",") != "dev-00,dev-01,dev-03,dev-04" || pages != 2 {
		t.Fatalf("members in %d pages: %v", pages, members)
	}
	_, err = c.ListThingsInThingGroup(ctx, &iot.ListThingsInThingGroupInput{ThingGroupName: aws.String("nope")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	_, err = c.ListThingsInThingGroup(ctx, &iot.ListThingsInThingGroupInput{ThingGroupName: aws.String("lab"), MaxResults: aws.Int32(251)})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)

	if _, err := c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("office")}); err != nil {
		t.Fatal(err)
	}
	all, err := c.ListThingGroups(ctx, &iot.ListThingGroupsInput{})
	if err != nil || len(all.ThingGroups) != 2 || aws.ToString(all.ThingGroups[0].GroupName) != "lab" || aws.ToString(all.ThingGroups[0].GroupArn) != aws.ToString(g.ThingGroupArn) {
		t.Fatalf("ListThingGroups: %+v %v", all, err)
	}
	some, err := c.ListThingGroups(ctx, &iot.ListThingGroupsInput{NamePrefixFilter: aws.String("off")})
	if err != nil || len(some.ThingGroups) != 1 || aws.ToString(some.ThingGroups[0].GroupName) != "office" {
		t.Fatalf("ListThingGroups off*: %+v %v", some, err)
	}
}

func TestAPIJobs(t *testing.T) {
	e := startAPIEmu(t, Config{}, "prod")
	ctx := context.Background()
	c := newAPIClient(t, e.Emulator, "prod")
	things := names("dev-", 4)
	for _, th := range things {
		if _, err := c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String(th)}); err != nil {
			t.Fatal(err)
		}
	}
	g, err := c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("fleet")})
	if err != nil {
		t.Fatal(err)
	}
	for _, th := range things[:3] {
		if _, err := c.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("fleet"), ThingName: aws.String(th)}); err != nil {
			t.Fatal(err)
		}
	}
	thingARN := strings.Replace(aws.ToString(g.ThingGroupArn), "thinggroup/fleet", "thing/dev-03", 1)
	in := &iot.CreateJobInput{
		JobId:           aws.String("rotate-1"),
		Targets:         []string{aws.ToString(g.ThingGroupArn), thingARN},
		Document:        aws.String(`{"operation":"rotate-certificate"}`),
		Description:     aws.String("rotate the fleet"),
		TargetSelection: types.TargetSelectionSnapshot,
		JobExecutionsRolloutConfig: &types.JobExecutionsRolloutConfig{ExponentialRate: &types.ExponentialRolloutRate{
			BaseRatePerMinute: aws.Int32(2), IncrementFactor: aws.Float64(1.5), RateIncreaseCriteria: &types.RateIncreaseCriteria{NumberOfSucceededThings: aws.Int32(1)}}},
		AbortConfig: &types.AbortConfig{CriteriaList: []types.AbortCriteria{{Action: types.AbortActionCancel, FailureType: types.JobExecutionFailureTypeAll,
			ThresholdPercentage: aws.Float64(75.5), MinNumberOfExecutedThings: aws.Int32(4)}}},
		TimeoutConfig:            &types.TimeoutConfig{InProgressTimeoutInMinutes: aws.Int64(30)},
		JobExecutionsRetryConfig: &types.JobExecutionsRetryConfig{CriteriaList: []types.RetryCriteria{{FailureType: types.RetryableFailureTypeFailed, NumberOfRetries: aws.Int32(2)}}},
	}
	created, err := c.CreateJob(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(created.JobId) != "rotate-1" || !strings.HasSuffix(aws.ToString(created.JobArn), ":job/rotate-1") || aws.ToString(created.Description) != "rotate the fleet" {
		t.Fatalf("CreateJob: %+v", created)
	}
	_, err = c.CreateJob(ctx, in)
	wantAPIError(t, err, "ResourceAlreadyExistsException", http.StatusConflict)
	for name, bad := range map[string]func(*iot.CreateJobInput){
		"job ID":   func(i *iot.CreateJobInput) { i.JobId = aws.String("a.b") },
		"document": func(i *iot.CreateJobInput) { i.Document = aws.String(`not json`) },
		"rate": func(i *iot.CreateJobInput) {
			i.JobExecutionsRolloutConfig = &types.JobExecutionsRolloutConfig{MaximumPerMinute: aws.Int32(5000)}
		},
		"retries": func(i *iot.CreateJobInput) {
			i.JobExecutionsRetryConfig.CriteriaList[0].NumberOfRetries = aws.Int32(11)
		},
		"timeout":       func(i *iot.CreateJobInput) { i.TimeoutConfig.InProgressTimeoutInMinutes = aws.Int64(0) },
		"docSource":     func(i *iot.CreateJobInput) { i.Document, i.DocumentSource = nil, aws.String("https://s3/x") },
		"selection":     func(i *iot.CreateJobInput) { i.TargetSelection = "ALWAYS" },
		"foreign ARN":   func(i *iot.CreateJobInput) { i.Targets = []string{"arn:aws:iot:us-east-1:000000000000:thing/dev-00"} },
		"abort percent": func(i *iot.CreateJobInput) { i.AbortConfig.CriteriaList[0].ThresholdPercentage = aws.Float64(101) },
	} {
		i := *in
		i.JobId = aws.String("bad-" + strings.ReplaceAll(name, " ", "-"))
		copied := *in.JobExecutionsRetryConfig
		copied.CriteriaList = slices.Clone(in.JobExecutionsRetryConfig.CriteriaList)
		i.JobExecutionsRetryConfig = &copied
		to := *in.TimeoutConfig
		i.TimeoutConfig = &to
		ab := *in.AbortConfig
		ab.CriteriaList = slices.Clone(in.AbortConfig.CriteriaList)
		i.AbortConfig = &ab
		bad(&i)
		_, err := c.CreateJob(ctx, &i)
		t.Run(name, func(t *testing.T) { wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest) })
	}
	_, err = c.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("lost"), Targets: []string{strings.Replace(thingARN, "dev-03", "ghost", 1)}, Document: aws.String(`{}`)})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)

	d, err := c.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("rotate-1")})
	if err != nil {
		t.Fatal(err)
	}
	j := d.Job
	if j.Status != types.JobStatusInProgress || j.TargetSelection != types.TargetSelectionSnapshot || len(j.Targets) != 2 || aws.ToString(j.Description) != "rotate the fleet" ||
		j.CreatedAt == nil || aws.ToInt32(j.JobExecutionsRolloutConfig.ExponentialRate.BaseRatePerMinute) != 2 ||
		aws.ToInt32(j.JobExecutionsRolloutConfig.ExponentialRate.RateIncreaseCriteria.NumberOfSucceededThings) != 1 ||
		aws.ToFloat64(j.AbortConfig.CriteriaList[0].ThresholdPercentage) != 75.5 || aws.ToInt64(j.TimeoutConfig.InProgressTimeoutInMinutes) != 30 ||
		aws.ToInt32(j.JobExecutionsRetryConfig.CriteriaList[0].NumberOfRetries) != 2 {
		t.Fatalf("DescribeJob: %+v", j)
	}
	pd := j.JobProcessDetails
	if aws.ToInt32(pd.NumberOfQueuedThings) != 4 || len(pd.ProcessingTargets) != 2 {
		t.Fatalf("jobProcessDetails at creation (rate 2): %+v", pd)
	}
	_, err = c.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("nope")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
	docOut, err := c.GetJobDocument(ctx, &iot.GetJobDocumentInput{JobId: aws.String("rotate-1")})
	if err != nil || aws.ToString(docOut.Document) != `{"operation":"rotate-certificate"}` {
		t.Fatalf("GetJobDocument: %+v %v", docOut, err)
	}

	// Devices work: dev-00 succeeds, dev-01 starts.
	if _, ok := e.handleJobs("prod", "dev-00", "rotate-1/update", []byte(`{"status":"SUCCEEDED","statusDetails":{"newCertificateId":"abc"}}`)); !ok {
		t.Fatal("not handled")
	}
	e.handleJobs("prod", "dev-01", "start-next", nil)

	x, err := c.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("rotate-1"), ThingName: aws.String("dev-00")})
	if err != nil {
		t.Fatal(err)
	}
	ex := x.Execution
	if ex.Status != types.JobExecutionStatusSucceeded || ex.StatusDetails.DetailsMap["newCertificateId"] != "abc" || aws.ToInt64(ex.ExecutionNumber) != 1 ||
		ex.VersionNumber != 2 || !strings.HasSuffix(aws.ToString(ex.ThingArn), ":thing/dev-00") || ex.QueuedAt == nil || ex.LastUpdatedAt == nil {
		t.Fatalf("DescribeJobExecution: %+v", ex)
	}
	x, err = c.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("rotate-1"), ThingName: aws.String("dev-01"), ExecutionNumber: aws.Int64(1)})
	if err != nil || x.Execution.Status != types.JobExecutionStatusInProgress || x.Execution.StartedAt == nil || aws.ToInt64(x.Execution.ApproximateSecondsBeforeTimedOut) != 30*60 {
		t.Fatalf("DescribeJobExecution number 1: %+v %v", x, err)
	}
	_, err = c.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("rotate-1"), ThingName: aws.String("dev-01"), ExecutionNumber: aws.Int64(2)})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)

	forJob, err := c.ListJobExecutionsForJob(ctx, &iot.ListJobExecutionsForJobInput{JobId: aws.String("rotate-1")})
	if err != nil || len(forJob.ExecutionSummaries) != 4 || !strings.HasSuffix(aws.ToString(forJob.ExecutionSummaries[0].ThingArn), "thing/dev-00") ||
		forJob.ExecutionSummaries[0].JobExecutionSummary.Status != types.JobExecutionStatusSucceeded {
		t.Fatalf("ListJobExecutionsForJob: %+v %v", forJob, err)
	}
	queued, err := c.ListJobExecutionsForJob(ctx, &iot.ListJobExecutionsForJobInput{JobId: aws.String("rotate-1"), Status: types.JobExecutionStatusQueued, MaxResults: aws.Int32(1)})
	if err != nil || len(queued.ExecutionSummaries) != 1 || aws.ToString(queued.NextToken) == "" {
		t.Fatalf("ListJobExecutionsForJob QUEUED, 1 a page: %+v %v", queued, err)
	}
	_, err = c.ListJobExecutionsForJob(ctx, &iot.ListJobExecutionsForJobInput{JobId: aws.String("rotate-1"), Status: "DONE"})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	forThing, err := c.ListJobExecutionsForThing(ctx, &iot.ListJobExecutionsForThingInput{ThingName: aws.String("dev-01")})
	if err != nil || len(forThing.ExecutionSummaries) != 1 || aws.ToString(forThing.ExecutionSummaries[0].JobId) != "rotate-1" ||
		forThing.ExecutionSummaries[0].JobExecutionSummary.Status != types.JobExecutionStatusInProgress {
		t.Fatalf("ListJobExecutionsForThing: %+v %v", forThing, err)
	}
	if other, err := c.ListJobExecutionsForThing(ctx, &iot.ListJobExecutionsForThingInput{ThingName: aws.String("dev-01"), JobId: aws.String("other")}); err != nil || len(other.ExecutionSummaries) != 0 {
		t.Fatalf("ListJobExecutionsForThing of another job: %+v %v", other, err)
	}
	_, err = c.ListJobExecutionsForThing(ctx, &iot.ListJobExecutionsForThingInput{ThingName: aws.String("ghost")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)

	// CancelJobExecution: IN_PROGRESS needs force; a stale version conflicts;
	// a terminal execution cannot be canceled.
	_, err = c.CancelJobExecution(ctx, &iot.CancelJobExecutionInput{JobId: aws.String("rotate-1"), ThingName: aws.String("dev-01")})
	wantAPIError(t, err, "InvalidStateTransitionException", http.StatusConflict)
	_, err = c.CancelJobExecution(ctx, &iot.CancelJobExecutionInput{JobId: aws.String("rotate-1"), ThingName: aws.String("dev-01"), Force: true, ExpectedVersion: aws.Int64(1)})
	wantAPIError(t, err, "VersionConflictException", http.StatusConflict)
	_, err = c.CancelJobExecution(ctx, &iot.CancelJobExecutionInput{JobId: aws.String("rotate-1"), ThingName: aws.String("dev-00")})
	wantAPIError(t, err, "InvalidStateTransitionException", http.StatusConflict)
	if _, err := c.CancelJobExecution(ctx, &iot.CancelJobExecutionInput{JobId: aws.String("rotate-1"), ThingName: aws.String("dev-01"), Force: true, ExpectedVersion: aws.Int64(2),
		StatusDetails: map[string]string{"why": "operator"}}); err != nil {
		t.Fatal(err)
	}
	x, _ = c.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("rotate-1"), ThingName: aws.String("dev-01")})
	if x.Execution.Status != types.JobExecutionStatusCanceled || !aws.ToBool(x.Execution.ForceCanceled) || x.Execution.StatusDetails.DetailsMap["why"] != "operator" {
		t.Fatalf("after CancelJobExecution: %+v", x.Execution)
	}
	_, err = c.DeleteJobExecution(ctx, &iot.DeleteJobExecutionInput{JobId: aws.String("rotate-1"), ThingName: aws.String("dev-02"), ExecutionNumber: aws.Int64(1)})
	wantAPIError(t, err, "InvalidStateTransitionException", http.StatusConflict)
	if _, err := c.DeleteJobExecution(ctx, &iot.DeleteJobExecutionInput{JobId: aws.String("rotate-1"), ThingName: aws.String("dev-01"), ExecutionNumber: aws.Int64(1)}); err != nil {
		t.Fatal(err)
	}
	_, err = c.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("rotate-1"), ThingName: aws.String("dev-01")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)

	listed, err := c.ListJobs(ctx, &iot.ListJobsInput{Status: types.JobStatusInProgress, ThingGroupName: aws.String("fleet")})
	if err != nil || len(listed.Jobs) != 1 || aws.ToString(listed.Jobs[0].JobId) != "rotate-1" || listed.Jobs[0].TargetSelection != types.TargetSelectionSnapshot {
		t.Fatalf("ListJobs: %+v %v", listed, err)
	}
	_, err = c.CancelJob(ctx, &iot.CancelJobInput{JobId: aws.String("rotate-1"), ReasonCode: aws.String("bad code")})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
	_, err = c.DeleteJob(ctx, &iot.DeleteJobInput{JobId: aws.String("rotate-1")})
	wantAPIError(t, err, "InvalidStateTransitionException", http.StatusConflict)
	canceled, err := c.CancelJob(ctx, &iot.CancelJobInput{JobId: aws.String("rotate-1"), ReasonCode: aws.String("BAD_KEY_2"), Comment: aws.String("stop the rollout"), Force: true})
	if err != nil || aws.ToString(canceled.JobArn) != aws.ToString(created.JobArn) {
		t.Fatalf("CancelJob: %+v %v", canceled, err)
	}
	d, err = c.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("rotate-1")})
	if err != nil || d.Job.Status != types.JobStatusCanceled || aws.ToString(d.Job.ReasonCode) != "BAD_KEY_2" || aws.ToString(d.Job.Comment) != "stop the rollout" ||
		!aws.ToBool(d.Job.ForceCanceled) || aws.ToInt32(d.Job.JobProcessDetails.NumberOfCanceledThings) != 2 || aws.ToInt32(d.Job.JobProcessDetails.NumberOfSucceededThings) != 1 {
		t.Fatalf("after CancelJob: %+v %v", d.Job, err)
	}
	_, err = c.CancelJob(ctx, &iot.CancelJobInput{JobId: aws.String("rotate-1")})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest) // already CANCELED
	if _, err := c.DeleteJob(ctx, &iot.DeleteJobInput{JobId: aws.String("rotate-1")}); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetJobDocument(ctx, &iot.GetJobDocumentInput{JobId: aws.String("rotate-1")})
	wantAPIError(t, err, "ResourceNotFoundException", http.StatusNotFound)
}

// The rollout through the API: DescribeJob's counts move with the emulator's
// clock, and a CONTINUOUS job reaches a thing added to its group later.
func TestAPIJobRolloutAndContinuous(t *testing.T) {
	e := startAPIEmu(t, Config{}, "prod")
	ctx := context.Background()
	c := newAPIClient(t, e.Emulator, "prod")
	if _, err := c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("g")}); err != nil {
		t.Fatal(err)
	}
	for _, th := range names("d", 3) {
		if _, err := c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String(th)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, th := range names("d", 2) {
		if _, err := c.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("g"), ThingName: aws.String(th)}); err != nil {
			t.Fatal(err)
		}
	}
	g, _ := c.DescribeThingGroup(ctx, &iot.DescribeThingGroupInput{ThingGroupName: aws.String("g")})
	if _, err := c.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("c1"), Targets: []string{aws.ToString(g.ThingGroupArn)}, Document: aws.String(`{"op":"x"}`),
		TargetSelection: types.TargetSelectionContinuous, JobExecutionsRolloutConfig: &types.JobExecutionsRolloutConfig{MaximumPerMinute: aws.Int32(1)}}); err != nil {
		t.Fatal(err)
	}
	processing := func() int {
		t.Helper()
		d, err := c.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("c1")})
		if err != nil {
			t.Fatal(err)
		}
		return len(d.Job.JobProcessDetails.ProcessingTargets)
	}
	if processing() == 0 {
		t.Fatal("one of two released at a rate of 1/min: still processing")
	}
	e.clock.Advance(time.Minute)
	if n := processing(); n != 0 {
		t.Fatalf("a minute later: processingTargets %d", n)
	}
	if _, err := c.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("g"), ThingName: aws.String("d02")}); err != nil {
		t.Fatal(err)
	}
	x, err := c.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("c1"), ThingName: aws.String("d02")})
	if err != nil || x.Execution.Status != types.JobExecutionStatusQueued {
		t.Fatalf("the later member: %+v %v", x, err)
	}
	listed, err := c.ListJobs(ctx, &iot.ListJobsInput{TargetSelection: types.TargetSelectionContinuous})
	if err != nil || len(listed.Jobs) != 1 {
		t.Fatalf("ListJobs CONTINUOUS: %+v %v", listed, err)
	}
}

func TestAPIEventConfigurations(t *testing.T) {
	e := startAPIEmu(t, Config{}, "prod")
	ctx := context.Background()
	c := newAPIClient(t, e.Emulator, "prod")
	if _, err := c.UpdateEventConfigurations(ctx, &iot.UpdateEventConfigurationsInput{EventConfigurations: map[string]types.Configuration{
		"JOB_EXECUTION": {Enabled: true}, "JOB": {Enabled: false}}}); err != nil {
		t.Fatal(err)
	}
	out, err := c.DescribeEventConfigurations(ctx, &iot.DescribeEventConfigurationsInput{})
	if err != nil || !out.EventConfigurations["JOB_EXECUTION"].Enabled || out.EventConfigurations["JOB"].Enabled || len(out.EventConfigurations) != len(awsEventTypes()) {
		t.Fatalf("DescribeEventConfigurations: %+v %v", out, err)
	}
	_, err = c.UpdateEventConfigurations(ctx, &iot.UpdateEventConfigurationsInput{EventConfigurations: map[string]types.Configuration{"NOPE": {Enabled: true}}})
	wantAPIError(t, err, "InvalidRequestException", http.StatusBadRequest)
}
