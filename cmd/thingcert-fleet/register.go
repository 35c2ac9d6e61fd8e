package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/fleet"
	"github.com/thingcert/thingcert/iot"
)

// accountClients makes a control-plane client for each profile named in
// list (comma-separated): one per AWS account the devices belong to.
func (g *globals) accountClients(ctx context.Context, list string) ([]fleet.Account, error) {
	var out []fleet.Account
	seen := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" || seen[name] {
			continue
		}
		seen[name] = true
		gp := *g
		gp.profile = name
		api, err := gp.client(ctx)
		if err != nil {
			return nil, fmt.Errorf("--accounts: profile %s: %w", name, err)
		}
		out = append(out, fleet.Account{Name: name, API: api})
	}
	if len(out) == 0 {
		return nil, usageError{fmt.Errorf("--accounts %q names no profile", list)}
	}
	return out, nil
}

func registerCmd(g *globals) *cobra.Command {
	var jobID, accounts, caFile string
	var o fleet.RegisterOptions
	var asJSON bool
	c := &cobra.Command{
		Use:   "register --job ID --ca FILE --accounts PROFILE,PROFILE",
		Short: "Register the new certificates rotating devices report in every account they belong to (a CA not registered with AWS IoT)",
		Long: `register is for devices whose certificates come from an owner's CA that is not
registered with AWS IoT, registered in several accounts without a CA (SNI_ONLY).
While such a device rotates, it reports its new certificate in the rotation
job's status details and waits until every account accepts it. register reads
the IN_PROGRESS executions of the job (in the account of --profile or the
environment), checks each reported certificate against the owner's CA (--ca)
and the thing's current certificate (same subject, a new key), and in every
account of --accounts (shared-config profile names) where the thing's current
certificate is registered, registers the new one ACTIVE with
RegisterCertificateWithoutCA and attaches the thing and the current
certificate's policies. A certificate that fails a check is registered
nowhere. Everything is read again from AWS, so it is safe to run again; once
the job succeeds, retire --accounts deactivates the old certificates in each.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if jobID == "" || caFile == "" || accounts == "" {
				return usageError{fmt.Errorf("register needs --job ID, --ca FILE and --accounts PROFILE,PROFILE")}
			}
			pool, err := iot.LoadCAFile(caFile)
			if err != nil {
				return fmt.Errorf("--ca: %w", err)
			}
			o.CA = pool
			jobAPI, err := g.client(cmd.Context())
			if err != nil {
				return err
			}
			accts, err := g.accountClients(cmd.Context(), accounts)
			if err != nil {
				return err
			}
			res, err := fleet.Register(cmd.Context(), jobAPI, jobID, accts, o, time.Now)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(g.out, res)
			}
			for _, d := range res.Decisions {
				verb := string(d.Step)
				if o.DryRun && (d.Step == fleet.RegisterRegister || d.Step == fleet.RegisterAttach) {
					verb = "would " + verb
				}
				line := fmt.Sprintf("%-16s %s", verb, d.Thing)
				if d.Account != "" {
					line += " in " + d.Account
				}
				if d.NewCert != "" {
					line += " new " + d.NewCert
				}
				if d.Reason != "" {
					line += ": " + d.Reason
				}
				if d.Error != "" {
					line += ": " + d.Error
				}
				fmt.Fprintln(g.out, line)
			}
			fmt.Fprintf(g.out, "job %s: %d actions taken, %d refused, %d errors\n", jobID, res.Acted, res.Refused, res.Errors)
			if res.Errors > 0 {
				return fmt.Errorf("job %s: %d registrations failed; run register again once the errors above are fixed", jobID, res.Errors)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&jobID, "job", "", "the rotation job's ID")
	f.StringVar(&caFile, "ca", "", "PEM file of the owner's CA certificates that sign the devices' certificates")
	f.StringVar(&accounts, "accounts", "", "shared-config profiles of every account the devices belong to, comma-separated")
	f.BoolVar(&o.DryRun, "dry-run", false, "say what would be done; change nothing")
	f.BoolVar(&asJSON, "json", false, "print every decision as JSON")
	return c
}
