package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/fleet"
	"github.com/thingcert/thingcert/internal/atomicfile"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all" // a claim key may live in any store
)

type globals struct {
	endpointURL, profile, region string
	out, errOut                  io.Writer
}

// client is an AWS IoT control-plane client from the SDK's standard chain
// (environment, shared config and credentials files, SSO, instance roles;
// AWS_ENDPOINT_URL_IOT and AWS_CA_BUNDLE included), with the command line's
// overrides.
func (g *globals) client(ctx context.Context) (*iot.Client, error) {
	var opts []func(*awsconfig.LoadOptions) error
	if g.profile != "" {
		opts = append(opts, awsconfig.WithSharedConfigProfile(g.profile))
	}
	if g.region != "" {
		opts = append(opts, awsconfig.WithRegion(g.region))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("loading AWS configuration (check --profile and AWS_* variables): %w", err)
	}
	if cfg.Region == "" {
		return nil, usageError{fmt.Errorf("no AWS region: give --region or set AWS_REGION")}
	}
	return iot.NewFromConfig(cfg, func(o *iot.Options) {
		if g.endpointURL != "" {
			o.BaseEndpoint = aws.String(g.endpointURL)
		}
	}), nil
}

func newRootCmd(out, errOut io.Writer) *cobra.Command {
	g := &globals{out: out, errOut: errOut}
	root := &cobra.Command{
		Use:           "thingcert-fleet",
		Short:         "Set up, audit, rotate and retire the certificates of an AWS IoT fleet",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.endpointURL, "endpoint-url", "", "AWS IoT control-plane endpoint (default: AWS_ENDPOINT_URL_IOT, else AWS's for the region)")
	pf.StringVar(&g.profile, "profile", "", "shared config profile (default: AWS_PROFILE, else default)")
	pf.StringVar(&g.region, "region", "", "AWS region (default: AWS_REGION or the profile's)")
	root.AddCommand(setupCmd(g), rotateCmd(g), registerCmd(g), retireCmd(g), auditCmd(g), runCmd(g), statusCmd(g))
	return root
}

func printJSON(w io.Writer, v any) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(v)
}

func setupCmd(g *globals) *cobra.Command {
	var o fleet.SetupOptions
	var asJSON bool
	var alg string
	c := &cobra.Command{
		Use:   "setup --template NAME",
		Short: "Create the device and claim policies, the provisioning template and a claim certificate, where missing",
		Long: `setup creates, where they are missing, the least-privilege device policy
(NAME-device), the claim policy (NAME-claim), the fleet-provisioning template
NAME (which attaches the device policy) and, with --claim-key, a claim
certificate for a key made in any key store (file:, pkcs11:, tpm:), written to
--claim-cert-out. Running it again changes nothing; a resource that exists
with other content is reported, not changed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Template == "" {
				return usageError{fmt.Errorf("setup needs --template NAME")}
			}
			if o.ClaimKey != "" && o.ClaimCertFile == "" {
				return usageError{fmt.Errorf("--claim-key needs --claim-cert-out FILE for the claim certificate")}
			}
			if alg != "" {
				a, err := keystore.ParseAlgorithm(alg)
				if err != nil {
					return usageError{err}
				}
				o.ClaimAlgorithm = a
			}
			api, err := g.client(cmd.Context())
			if err != nil {
				return err
			}
			changes, err := fleet.Setup(cmd.Context(), api, o)
			if asJSON {
				if perr := printJSON(g.out, map[string]any{"dryRun": o.DryRun, "changes": changes}); perr != nil && err == nil {
					err = perr
				}
			} else {
				for _, ch := range changes {
					line := fmt.Sprintf("%-13s %-22s %s", ch.Action, ch.Kind, ch.Name)
					if ch.Detail != "" {
						line += " (" + ch.Detail + ")"
					}
					fmt.Fprintln(g.out, line)
				}
			}
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&o.Template, "template", "", "fleet-provisioning template name (policies are named after it)")
	f.StringVar(&o.ThingPrefix, "thing-prefix", "", "put before the device's SerialNumber to name its thing")
	f.StringVar(&o.RoleARN, "provisioning-role-arn", "", "IAM role AWS IoT assumes to provision (needed to create the template)")
	f.StringVar(&o.ClaimKey, "claim-key", "", "key URI of the claim key, made when missing (file:, pkcs11:, tpm:)")
	f.StringVar(&o.ClaimCertFile, "claim-cert-out", "", "file that receives the claim certificate")
	f.StringVar(&alg, "claim-key-alg", "", "algorithm of a claim key made by setup (default ecdsa-p256)")
	f.BoolVar(&o.DryRun, "dry-run", false, "say what would be created; change nothing")
	f.BoolVar(&asJSON, "json", false, "print the changes as JSON")
	return c
}

// parseExponential reads BASE,FACTOR.
func parseExponential(s string) (int32, float64, error) {
	b, f, ok := strings.Cut(s, ",")
	base, err1 := strconv.ParseInt(b, 10, 32)
	factor, err2 := strconv.ParseFloat(f, 64)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, usageError{fmt.Errorf("--exponential %q: want BASE,FACTOR such as 10,2", s)}
	}
	return int32(base), factor, nil
}

// parseRate reads N or N/min.
func parseRate(s string) (int32, error) {
	n, err := strconv.ParseInt(strings.TrimSuffix(s, "/min"), 10, 32)
	if err != nil {
		return 0, usageError{fmt.Errorf("--rate %q: want N/min such as 100/min", s)}
	}
	return int32(n), nil
}

func rotateCmd(g *globals) *cobra.Command {
	var o fleet.RotateOptions
	var things, fromAudit, rate, expo string
	var wait, asJSON bool
	var poll time.Duration
	c := &cobra.Command{
		Use:   "rotate (--thing-group G | --things a,b | --from-audit FILE)",
		Short: "Start (or find) the AWS IoT Jobs job that rotates the targets' certificates",
		Long: `rotate creates one job with the document {"operation":"rotate-certificate"}
for a thing group, a list of things, or the things an audit report (audit
--json) flags. Its ID is derived from the targets (and --round), so running
rotate again finds the same job instead of starting a second one. --wait
follows the job until every execution has finished.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n := 0
			for _, s := range []string{o.ThingGroup, things, fromAudit} {
				if s != "" {
					n++
				}
			}
			if n != 1 {
				return usageError{fmt.Errorf("rotate takes one of --thing-group, --things and --from-audit")}
			}
			if things != "" {
				o.Things = strings.Split(things, ",")
			}
			if fromAudit != "" {
				list, err := fleet.ThingsFromAudit(fromAudit)
				if err != nil {
					return err
				}
				if len(list) == 0 {
					fmt.Fprintf(g.out, "the audit report %s flags no thing for rotation; nothing to do\n", fromAudit)
					return nil
				}
				o.Things = list
			}
			var err error
			if rate != "" {
				if o.MaxPerMinute, err = parseRate(rate); err != nil {
					return err
				}
			}
			if expo != "" {
				if o.ExponentialBase, o.ExponentialFactor, err = parseExponential(expo); err != nil {
					return err
				}
			}
			api, err := g.client(cmd.Context())
			if err != nil {
				return err
			}
			job, err := fleet.Rotate(cmd.Context(), api, o)
			if err != nil {
				return err
			}
			if asJSON && !wait {
				return printJSON(g.out, job)
			}
			switch {
			case job.DryRun:
				fmt.Fprintf(g.out, "would create job %s for %s\n", job.ID, strings.Join(job.Targets, ", "))
				return nil
			case job.Created:
				fmt.Fprintf(g.out, "created job %s for %s\n", job.ID, strings.Join(job.Targets, ", "))
			default:
				fmt.Fprintf(g.out, "job %s exists already (%s); not starting another\n", job.ID, job.Status)
			}
			if !wait {
				return nil
			}
			return follow(cmd.Context(), api, job.ID, g.out, poll, asJSON)
		},
	}
	f := c.Flags()
	f.StringVar(&o.ThingGroup, "thing-group", "", "rotate every thing in this thing group")
	f.StringVar(&things, "things", "", "rotate these things (comma-separated, at most 100)")
	f.StringVar(&fromAudit, "from-audit", "", "rotate the things an audit report (audit --json) flags")
	f.StringVar(&o.Round, "round", "", "a name for a later rotation of the same targets (a new job)")
	f.StringVar(&rate, "rate", "", "rollout rate, N/min (AWS: 1–1000)")
	f.StringVar(&expo, "exponential", "", "exponential rollout BASE,FACTOR instead of a fixed --rate")
	f.Float64Var(&o.AbortFailedPercent, "abort-failed-pct", 0, "cancel the job when this percentage of executions failed")
	f.Int64Var(&o.TimeoutMinutes, "timeout", 0, "in-progress timeout per execution, in minutes")
	f.BoolVar(&o.DryRun, "dry-run", false, "say which job would be created")
	f.BoolVar(&wait, "wait", false, "follow the job until every execution finished")
	f.DurationVar(&poll, "poll", 5*time.Second, "how often --wait asks for the job's progress")
	f.BoolVar(&asJSON, "json", false, "print the job (and, with --wait, each progress) as JSON")
	return c
}

// follow prints a job's progress until it finishes: one line rewritten in
// place on a terminal, a line per change otherwise.
func follow(ctx context.Context, api fleet.API, jobID string, out io.Writer, poll time.Duration, asJSON bool) error {
	tty := isTerminal(out)
	started := time.Now()
	last := ""
	for {
		p, err := fleet.JobProgress(ctx, api, jobID, started, time.Now())
		if err != nil {
			return err
		}
		switch line := p.Line(); {
		case asJSON:
			if line != last {
				_ = json.NewEncoder(out).Encode(p)
			}
		case tty:
			fmt.Fprintf(out, "\r\033[K%s", line)
		case line != last:
			fmt.Fprintln(out, line)
		}
		last = p.Line()
		if p.Finished() {
			if tty && !asJSON {
				fmt.Fprintln(out)
			}
			if n := p.Counts["FAILED"] + p.Counts["TIMED_OUT"] + p.Counts["REJECTED"]; n > 0 {
				return fmt.Errorf("job %s: %d executions did not succeed; `thingcert-fleet retire --job %s --dry-run` names them and their reasons", jobID, n, jobID)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func retireCmd(g *globals) *cobra.Command {
	var o fleet.RetireOptions
	var jobID, accounts string
	var asJSON bool
	c := &cobra.Command{
		Use:   "retire --job ID",
		Short: "Deactivate (and later delete) the certificates a rotation job replaced",
		Long: `retire looks at every execution of the rotation job. For a SUCCEEDED one it
checks that the new certificate (newCertificateId in the status details) is
ACTIVE and attached to the thing, then sets the old one (oldCertificateId)
INACTIVE after --grace; after --delete-after it detaches and deletes it. It
never deactivates a thing's only ACTIVE certificate and never touches a
certificate attached to other things; FAILED and TIMED_OUT executions are
reported with their reason. Everything is read again from AWS each time, so
it is safe to interrupt and run again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if jobID == "" {
				return usageError{fmt.Errorf("retire needs --job ID")}
			}
			api, err := g.client(cmd.Context())
			if err != nil {
				return err
			}
			if accounts != "" {
				return retireAccounts(cmd.Context(), g, api, jobID, accounts, o, asJSON)
			}
			res, err := fleet.Retire(cmd.Context(), api, jobID, o, time.Now, nil)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(g.out, res)
			}
			return printRetire(g, jobID, o, res)
		},
	}
	f := c.Flags()
	f.StringVar(&jobID, "job", "", "the rotation job's ID")
	f.StringVar(&accounts, "accounts", "", "retire in each of these accounts (shared-config profiles), for devices registered in several; the job is read in --profile's")
	f.DurationVar(&o.Grace, "grace", 0, "keep the old certificate ACTIVE this long after the execution succeeded")
	f.DurationVar(&o.DeleteAfter, "delete-after", 0, "delete the old certificate this long after deactivation (0: keep it INACTIVE)")
	f.BoolVar(&o.DryRun, "dry-run", false, "say what would be done; change nothing")
	f.IntVar(&o.Workers, "workers", 4, "executions handled at once")
	f.BoolVar(&asJSON, "json", false, "print every decision as JSON")
	return c
}

// retireAccounts retires in every account of a multi-account job.
func retireAccounts(ctx context.Context, g *globals, jobAPI fleet.API, jobID, list string, o fleet.RetireOptions, asJSON bool) error {
	accts, err := g.accountClients(ctx, list)
	if err != nil {
		return err
	}
	all := map[string]fleet.RetireResult{}
	errs := 0
	for _, a := range accts {
		res, err := fleet.RetireIn(ctx, jobAPI, a.API, jobID, o, time.Now, nil)
		if err != nil {
			return fmt.Errorf("account %s: %w", a.Name, err)
		}
		all[a.Name] = res
		errs += res.Errors
		if !asJSON {
			fmt.Fprintf(g.out, "account %s:\n", a.Name)
			_ = printRetire(g, jobID, o, res) // its error is the count, summed below
		}
	}
	if asJSON {
		return printJSON(g.out, all)
	}
	if errs > 0 {
		return fmt.Errorf("job %s: %d certificates could not be retired; run retire again once the errors above are fixed", jobID, errs)
	}
	return nil
}

func printRetire(g *globals, jobID string, o fleet.RetireOptions, res fleet.RetireResult) error {
	for _, d := range res.Decisions {
		if d.Step == fleet.StepNothing && d.Done {
			continue
		}
		verb := string(d.Step)
		if o.DryRun && (d.Step == fleet.StepDeactivate || d.Step == fleet.StepDelete) {
			verb = "would " + verb
		}
		line := fmt.Sprintf("%-16s %s", verb, d.Thing)
		if d.OldCert != "" && d.Step != fleet.StepReport {
			line += " old " + d.OldCert
		}
		if d.Reason != "" {
			line += ": " + d.Reason
		}
		if !d.At.IsZero() {
			line += " (at " + d.At.UTC().Format(time.RFC3339) + ")"
		}
		if d.Error != "" {
			line += ": " + d.Error
		}
		fmt.Fprintln(g.out, line)
	}
	fmt.Fprintf(g.out, "job %s: %d executions, %d actions taken, %d errors", jobID, len(res.Decisions), res.Acted, res.Errors)
	if res.Acted == 0 && res.Errors == 0 && res.Counts[string(fleet.StepDeactivate)] == 0 && res.Counts[string(fleet.StepDelete)] == 0 {
		fmt.Fprint(g.out, "; nothing to do")
	}
	fmt.Fprintln(g.out)
	if res.Errors > 0 {
		return fmt.Errorf("job %s: %d certificates could not be retired; run retire again once the errors above are fixed", jobID, res.Errors)
	}
	return nil
}

func auditCmd(g *globals) *cobra.Command {
	var o fleet.AuditOptions
	var asJSON, asCSV bool
	var htmlFile string
	c := &cobra.Command{
		Use:   "audit",
		Short: "List every thing's certificates and what is wrong with them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON && asCSV {
				return usageError{fmt.Errorf("audit takes --json or --csv, not both")}
			}
			api, err := g.client(cmd.Context())
			if err != nil {
				return err
			}
			r, err := fleet.Audit(cmd.Context(), api, o, time.Now())
			if err != nil {
				return err
			}
			if htmlFile != "" {
				var b strings.Builder
				if err := r.WriteHTML(&b); err != nil {
					return err
				}
				if err := atomicfile.WriteFile(htmlFile, []byte(b.String()), 0o644); err != nil {
					return fmt.Errorf("writing the audit page %s: %w", htmlFile, err)
				}
			}
			switch {
			case asJSON:
				return printJSON(g.out, r)
			case asCSV:
				return r.WriteCSV(g.out)
			}
			n := 0
			for _, th := range r.Things {
				n += len(th.Certificates)
			}
			fmt.Fprintf(g.out, "%s: %d things, %d certificates, %d findings\n", r.Scope, len(r.Things), n, len(r.Findings))
			for _, f := range r.Findings {
				fmt.Fprintf(g.out, "%-46s %-20s %.16s %s\n", f.Check, f.Thing+f.JobID, f.CertificateID, f.Detail)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&o.ThingGroup, "thing-group", "", "audit this thing group only")
	f.DurationVar(&o.ExpiringWithin, "expiring-within", 0, "flag certificates expiring sooner (default 720h, as Device Defender)")
	f.DurationVar(&o.MaxAge, "max-age", 0, "flag certificates older (default 8760h, as Device Defender)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON (rotate --from-audit reads it)")
	f.BoolVar(&asCSV, "csv", false, "print one CSV row per certificate")
	f.StringVar(&htmlFile, "html", "", "also write a self-contained HTML page with histograms and the findings")
	return c
}
