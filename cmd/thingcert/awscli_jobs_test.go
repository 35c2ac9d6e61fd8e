package main

import (
	"testing"
)

// TestAWSCLIJobsStory drives thing groups and the Jobs control plane with the
// real aws CLI: what a fleet operator's rotation script does before and
// after its devices work.
func TestAWSCLIJobsStory(t *testing.T) {
	s := newAWSStory(t)
	want := s.want
	s.run("things and a group", `
for n in 1 2 3; do iot create-thing --thing-name "gw-$n" > /dev/null; done
iot create-thing-group --thing-group-name fleet --thing-group-properties '{"thingGroupDescription":"all gateways","attributePayload":{"attributes":{"site":"berlin"}}}' > group.json
field group.json thingGroupArn > group.arn
for n in 1 2; do iot add-thing-to-thing-group --thing-group-name fleet --thing-name "gw-$n"; done
iot add-thing-to-thing-group --thing-group-arn "$(cat group.arn)" --thing-arn "$(sed 's#thinggroup/fleet#thing/gw-3#' group.arn)"`, true)
	out := s.run("list-things-in-thing-group", `iot list-things-in-thing-group --thing-group-name fleet --query things --output text`, true)
	want(out, "gw-1", "gw-2", "gw-3")
	out = s.run("describe-thing-group", `iot describe-thing-group --thing-group-name fleet`, true)
	want(out, `"thingGroupDescription": "all gateways"`, `"site": "berlin"`)
	s.run("remove-thing-from-thing-group", `iot remove-thing-from-thing-group --thing-group-name fleet --thing-name gw-3`, true)
	out = s.run("list-thing-groups", `iot list-thing-groups --name-prefix-filter fl --query thingGroups[].groupName --output text`, true)
	want(out, "fleet")

	s.run("update-event-configurations", `iot update-event-configurations --event-configurations '{"JOB_EXECUTION":{"Enabled":true}}'`, true)
	out = s.run("describe-event-configurations", `iot describe-event-configurations --query eventConfigurations.JOB_EXECUTION.Enabled --output text`, true)
	want(out, "True")

	out = s.run("create-job", `iot create-job --job-id rotate-1 --targets "$(cat group.arn)" \
  --document '{"operation":"rotate-certificate"}' --description "certificate rotation" --target-selection CONTINUOUS \
  --job-executions-rollout-config '{"exponentialRate":{"baseRatePerMinute":5,"incrementFactor":2,"rateIncreaseCriteria":{"numberOfSucceededThings":5}}}' \
  --abort-config '{"criteriaList":[{"failureType":"FAILED","action":"CANCEL","thresholdPercentage":20,"minNumberOfExecutedThings":10}]}' \
  --timeout-config '{"inProgressTimeoutInMinutes":60}' \
  --job-executions-retry-config '{"criteriaList":[{"failureType":"TIMED_OUT","numberOfRetries":2}]}'`, true)
	want(out, `"jobId": "rotate-1"`, ":job/rotate-1")
	s.run("create-job again", `iot create-job --job-id rotate-1 --targets "$(cat group.arn)" --document '{}'`, false)
	out = s.run("create-job with a bad rate", `iot create-job --job-id bad --targets "$(cat group.arn)" --document '{}' --job-executions-rollout-config '{"maximumPerMinute":5000}' 2>&1`, false)
	want(out, "InvalidRequestException")

	out = s.run("describe-job", `iot describe-job --job-id rotate-1`, true)
	want(out, `"status": "IN_PROGRESS"`, `"targetSelection": "CONTINUOUS"`, `"numberOfQueuedThings": 2`, `"inProgressTimeoutInMinutes": 60`, `"baseRatePerMinute": 5`)
	out = s.run("get-job-document", `iot get-job-document --job-id rotate-1 --query document --output text`, true)
	want(out, `{"operation":"rotate-certificate"}`)
	out = s.run("list-jobs", `iot list-jobs --status IN_PROGRESS --thing-group-name fleet --query jobs[].jobId --output text`, true)
	want(out, "rotate-1")

	// gw-3 joins the group: the CONTINUOUS job reaches it.
	s.run("add gw-3 again", `iot add-thing-to-thing-group --thing-group-name fleet --thing-name gw-3`, true)
	out = s.run("list-job-executions-for-job", `iot list-job-executions-for-job --job-id rotate-1 --query executionSummaries[].[thingArn,jobExecutionSummary.status] --output text`, true)
	want(out, "thing/gw-1\tQUEUED", "thing/gw-3\tQUEUED")
	out = s.run("list-job-executions-for-thing", `iot list-job-executions-for-thing --thing-name gw-3 --status QUEUED --query executionSummaries[].jobId --output text`, true)
	want(out, "rotate-1")
	out = s.run("describe-job-execution", `iot describe-job-execution --job-id rotate-1 --thing-name gw-1 --execution-number 1`, true)
	want(out, `"status": "QUEUED"`, `"executionNumber": 1`)

	s.run("cancel-job-execution", `iot cancel-job-execution --job-id rotate-1 --thing-name gw-2 --status-details '{"why":"replaced"}'`, true)
	out = s.run("describe-job-execution canceled", `iot describe-job-execution --job-id rotate-1 --thing-name gw-2 --query execution.[status,statusDetails.detailsMap.why] --output text`, true)
	want(out, "CANCELED\treplaced")
	out = s.run("cancel-job-execution again", `iot cancel-job-execution --job-id rotate-1 --thing-name gw-2 2>&1`, false)
	want(out, "InvalidStateTransitionException")
	s.run("delete-job-execution", `iot delete-job-execution --job-id rotate-1 --thing-name gw-2 --execution-number 1`, true)

	out = s.run("delete-job in progress", `iot delete-job --job-id rotate-1 2>&1`, false)
	want(out, "InvalidStateTransitionException")
	s.run("cancel-job", `iot cancel-job --job-id rotate-1 --reason-code OPERATOR_STOP --comment "wrong group" --force`, true)
	out = s.run("describe-job canceled", `iot describe-job --job-id rotate-1 --query job.[status,reasonCode,comment,jobProcessDetails.numberOfCanceledThings] --output text`, true)
	want(out, "CANCELED\tOPERATOR_STOP\twrong group\t2")
	s.run("delete-job", `iot delete-job --job-id rotate-1`, true)
	out = s.run("describe-job deleted", `iot describe-job --job-id rotate-1 2>&1`, false)
	want(out, "ResourceNotFoundException")
}
