package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/internal/cli"
)

// stateEnv names the state folder when --state is not given.
const stateEnv = "THINGCERT_EMULATOR_STATE"

func newEmulatorCmd(env *cliEnv) *cobra.Command {
	var state string
	cmd := &cobra.Command{
		Use:   "emulator",
		Short: "Run a local AWS IoT Core (mutual TLS, accounts by SNI, fleet provisioning, Jobs) and administer it",
		Long: `The emulator is the part of AWS IoT Core a device talks to, on one machine and with
no cloud account: MQTT over mutual TLS against a registry of certificates, accounts
chosen by SNI, the fleet-provisioning and Jobs MQTT APIs, and AWS IoT's certificate
rules. Its state (registry, its CAs, connection history) lives in a folder; clients
trust <state>/root-ca.pem.

The admin commands work whether the emulator is running (through its socket
<state>/admin.sock) or not (on the state files directly).

  thingcert emulator serve --state ./emu
  thingcert emulator add-account --state ./emu --name dev
  thingcert emulator register-ca --state ./emu --account dev --cert ca.pem
  thingcert emulator register-cert --state ./emu --account dev --cert device.pem --thing sensor-1
  thingcert emulator history --state ./emu`,
		SilenceUsage: true,
	}
	cmd.PersistentFlags().StringVar(&state, "state", os.Getenv(stateEnv), "state folder (default $"+stateEnv+")")
	stateDir := func(c *cobra.Command) (string, error) {
		if state == "" {
			return "", cli.UsageError{Err: errors.New(c.CommandPath() + " needs --state DIR (or $" + stateEnv + ")")}
		}
		return state, nil
	}
	// admin runs fn on the state folder's admin API, online or offline.
	admin := func(c *cobra.Command, fn func(ctx context.Context, a emulator.Admin) error) error {
		dir, err := stateDir(c)
		if err != nil {
			return err
		}
		a, online, err := emulator.OpenAdmin(c.Context(), emulator.Config{StateDir: dir, Logger: env.log})
		if err != nil {
			return err
		}
		defer a.Close()
		env.log.Debug("emulator admin", "state", dir, "online", online)
		return fn(c.Context(), a)
	}
	cmd.AddCommand(
		newEmulatorServeCmd(env, stateDir),
		newEmulatorAddAccountCmd(env, admin),
		newEmulatorRegisterCACmd(env, admin),
		newEmulatorRegisterCertCmd(env, admin),
		newEmulatorIssueCmd(env, admin),
		newEmulatorSetStatusCmd(env, admin),
		newEmulatorCreateThingCmd(env, admin),
		newEmulatorListCmd(env, admin),
		newEmulatorCreateTemplateCmd(env, admin),
		newEmulatorCreateJobCmd(env, admin),
		newEmulatorJobCmd(env, admin),
		newEmulatorCancelJobCmd(env, admin),
		newEmulatorHistoryCmd(env, admin),
		newEmulatorCredentialsCmd(env, stateDir),
		newEmulatorCreatePolicyCmd(env, admin),
		newEmulatorAttachPolicyCmd(env, admin),
	)
	return cmd
}

type adminFn func(c *cobra.Command, fn func(ctx context.Context, a emulator.Admin) error) error

func newEmulatorServeCmd(env *cliEnv, stateDir func(*cobra.Command) (string, error)) *cobra.Command {
	var (
		listen, alpnListen string
		apiListen          string
		accounts           []string
		lifetime           time.Duration
		createRate         float64
		registerRate       float64
		connectRate        float64
		apiRate            float64
		verbose            bool
	)
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run the emulator until interrupted",
		Long: `Run the emulator until SIGINT or SIGTERM. On stdout it prints what clients need:
the listener addresses (with --api-listen, the AWS IoT control-plane API's URL:
see "emulator credentials"), the root CA file to trust, and each account's
endpoint (the SNI its devices send). Its log (stderr) has one line per refused connection
naming the rule, the certificate ID and the SNI.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			dir, err := stateDir(c)
			if err != nil {
				return err
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			cfg := emulator.Config{
				StateDir: dir, Listen: listen, ALPNListen: alpnListen, APIListen: apiListen,
				CertificateLifetime: lifetime, CreateCertificateRate: createRate,
				RegisterThingRate: registerRate, AccountConnectRate: connectRate, APIRate: apiRate,
				Logger: slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: level})),
			}
			for _, spec := range accounts {
				a, err := parseAccountSpec(spec)
				if err != nil {
					return cli.UsageError{Err: err}
				}
				cfg.Accounts = append(cfg.Accounts, a)
			}
			emu, err := emulator.Start(c.Context(), cfg)
			if err != nil {
				return err
			}
			defer emu.Close()
			fmt.Fprintf(env.stdout, "mqtt %s\n", emu.Addr())
			if a := emu.ALPNAddr(); a != "" {
				fmt.Fprintf(env.stdout, "mqtt-alpn %s\n", a)
			}
			if u := emu.APIURL(); u != "" {
				fmt.Fprintf(env.stdout, "api %s\n", u)
			}
			fmt.Fprintf(env.stdout, "root-ca %s\n", emu.RootCAFile())
			accts, err := emu.Accounts(c.Context())
			if err != nil {
				return err
			}
			for _, a := range accts {
				fmt.Fprintf(env.stdout, "endpoint %s %s\n", a.Name, a.Endpoint())
			}
			<-c.Context().Done()
			return emu.Close()
		},
	}
	f := c.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:8883", "MQTT over TLS listener (AWS's port 8883)")
	f.StringVar(&alpnListen, "alpn-listen", "", "port-443-style listener requiring ALPN x-amzn-mqtt-ca, e.g. 127.0.0.1:8443")
	f.StringVar(&apiListen, "api-listen", "", "AWS IoT control-plane API (HTTPS, SigV4) listener, e.g. 127.0.0.1:8444; see `emulator credentials`")
	f.StringArrayVar(&accounts, "account", nil, "account to add if missing, NAME[:PREFIX[:REGION]] (repeatable)")
	f.DurationVar(&lifetime, "cert-lifetime", 0, "validity of issued certificates (default: until 2049-12-31T23:59:59Z, as AWS)")
	f.Float64Var(&createRate, "create-cert-rate", 0, "CreateCertificateFromCsr limit per account and second (default 15, as AWS; negative: none)")
	f.Float64Var(&registerRate, "register-thing-rate", 0, "RegisterThing limit per account and second (default 10, as AWS; negative: none)")
	f.Float64Var(&connectRate, "account-connect-rate", 0, "CONNECT limit per account and second (default 500, as AWS; negative: none)")
	f.Float64Var(&apiRate, "api-rate", 0, "limit of each control-plane operation per account and second (default: none)")
	f.BoolVarP(&verbose, "verbose", "v", false, "debug logging")
	return c
}

// parseAccountSpec reads NAME[:PREFIX[:REGION]].
func parseAccountSpec(s string) (emulator.Account, error) {
	parts := strings.Split(s, ":")
	if len(parts) > 3 || parts[0] == "" {
		return emulator.Account{}, fmt.Errorf("--account %q: write NAME[:PREFIX[:REGION]]", s)
	}
	a := emulator.Account{Name: parts[0]}
	if len(parts) > 1 {
		a.Prefix = parts[1]
	}
	if len(parts) > 2 {
		a.Region = parts[2]
	}
	return a, nil
}

func newEmulatorAddAccountCmd(env *cliEnv, admin adminFn) *cobra.Command {
	var a emulator.Account
	c := &cobra.Command{
		Use:   "add-account",
		Short: "Add an account; prints its endpoint host name",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "name"); err != nil {
				return err
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				out, err := adm.AddAccount(ctx, a)
				if err != nil {
					return err
				}
				fmt.Fprintln(env.stdout, out.Endpoint())
				return nil
			})
		},
	}
	c.Flags().StringVar(&a.Name, "name", "", "account name, e.g. dev or 123456789012")
	c.Flags().StringVar(&a.Prefix, "prefix", "", "endpoint prefix (default: random, as AWS)")
	c.Flags().StringVar(&a.Region, "region", "", "region (default us-east-1)")
	return c
}

func readFlagFile(flag, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	return b, nil
}

func newEmulatorRegisterCACmd(env *cliEnv, admin adminFn) *cobra.Command {
	var account, certFile, mode, status string
	c := &cobra.Command{
		Use:   "register-ca",
		Short: "Register a CA certificate in an account (mode DEFAULT or SNI_ONLY); prints its ID",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "account", "cert"); err != nil {
				return err
			}
			m, err := emulator.ParseCertificateMode(mode)
			if err != nil {
				return cli.UsageError{Err: err}
			}
			pem, err := readFlagFile("cert", certFile)
			if err != nil {
				return err
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				ca, err := adm.RegisterCA(ctx, account, pem, emulator.CAOptions{Mode: m, Status: emulator.CertificateStatus(status)})
				if err != nil {
					return err
				}
				fmt.Fprintln(env.stdout, ca.ID)
				return nil
			})
		},
	}
	c.Flags().StringVar(&account, "account", "", "account name")
	c.Flags().StringVar(&certFile, "cert", "", "CA certificate (PEM)")
	c.Flags().StringVar(&mode, "mode", "DEFAULT", "DEFAULT (devices may omit SNI) or SNI_ONLY (multi-account registration)")
	c.Flags().StringVar(&status, "status", "", "ACTIVE (default) or INACTIVE")
	return c
}

func newEmulatorRegisterCertCmd(env *cliEnv, admin adminFn) *cobra.Command {
	var account, certFile, status, thing string
	var withoutCA bool
	c := &cobra.Command{
		Use:   "register-cert",
		Short: "Register a device certificate in an account; prints its ID",
		Long: `Register a device certificate (the first PEM certificate of --cert; any further
ones are intermediates to its CA). Without --without-ca a CA registered in the
account must have signed it. --thing creates the thing when missing and attaches
the certificate: the device must then connect with the thing name as client ID.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "account", "cert"); err != nil {
				return err
			}
			pem, err := readFlagFile("cert", certFile)
			if err != nil {
				return err
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				cert, err := adm.RegisterCertificate(ctx, account, pem, emulator.CertificateOptions{
					WithoutCA: withoutCA, Status: emulator.CertificateStatus(status), Thing: thing,
				})
				if err != nil {
					return err
				}
				fmt.Fprintln(env.stdout, cert.ID)
				return nil
			})
		},
	}
	c.Flags().StringVar(&account, "account", "", "account name")
	c.Flags().StringVar(&certFile, "cert", "", "device certificate (PEM)")
	c.Flags().BoolVar(&withoutCA, "without-ca", false, "register without a CA (RegisterCertificateWithoutCA: SNI_ONLY)")
	c.Flags().StringVar(&status, "status", "", "status (default ACTIVE)")
	c.Flags().StringVar(&thing, "thing", "", "attach to this thing (created when missing)")
	return c
}

func newEmulatorIssueCmd(env *cliEnv, admin adminFn) *cobra.Command {
	var account, csrFile, out, status, thing string
	var lifetime time.Duration
	c := &cobra.Command{
		Use:   "issue",
		Short: "Issue and register a certificate from a CSR (as CreateCertificateFromCsr); prints the PEM",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "account", "csr"); err != nil {
				return err
			}
			csr, err := readFlagFile("csr", csrFile)
			if err != nil {
				return err
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				cert, err := adm.IssueCertificate(ctx, account, csr, emulator.IssueOptions{
					Status: emulator.CertificateStatus(status), Thing: thing, Lifetime: lifetime,
				})
				if err != nil {
					return err
				}
				fmt.Fprintf(env.stderr, "certificate %s issued in account %s, expires %s\n", cert.ID, account, cert.NotAfter.UTC().Format(time.RFC3339))
				if out == "" {
					_, err = io.WriteString(env.stdout, cert.PEM)
					return err
				}
				return os.WriteFile(out, []byte(cert.PEM), 0o644)
			})
		},
	}
	c.Flags().StringVar(&account, "account", "", "account name")
	c.Flags().StringVar(&csrFile, "csr", "", "certificate signing request (PEM)")
	c.Flags().StringVar(&out, "out", "", "write the certificate here instead of stdout")
	c.Flags().StringVar(&status, "status", "", "status (default ACTIVE)")
	c.Flags().StringVar(&thing, "thing", "", "attach to this thing (created when missing)")
	c.Flags().DurationVar(&lifetime, "lifetime", 0, "validity (default: the emulator's, 2049-12-31 as AWS)")
	return c
}

func newEmulatorSetStatusCmd(_ *cliEnv, admin adminFn) *cobra.Command {
	var account, id, status string
	var ca bool
	c := &cobra.Command{
		Use:   "set-status",
		Short: "Set a certificate's status (ACTIVE, INACTIVE or REVOKED, as AWS's UpdateCertificate; REVOKED is final); a running emulator disconnects it when not ACTIVE",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "account", "cert-id", "status"); err != nil {
				return err
			}
			s, err := emulator.ParseCertificateStatus(status)
			if err != nil {
				return cli.UsageError{Err: err}
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				if ca {
					return adm.SetCAStatus(ctx, account, id, s)
				}
				return adm.SetCertificateStatus(ctx, account, id, s)
			})
		},
	}
	c.Flags().StringVar(&account, "account", "", "account name")
	c.Flags().StringVar(&id, "cert-id", "", "certificate ID (SHA-256 of the DER, hex)")
	c.Flags().StringVar(&status, "status", "", "new status")
	c.Flags().BoolVar(&ca, "ca", false, "the ID is a registered CA's")
	return c
}

func newEmulatorCreateThingCmd(_ *cliEnv, admin adminFn) *cobra.Command {
	var account, thing, certID string
	c := &cobra.Command{
		Use:   "create-thing",
		Short: "Create a thing, and attach a certificate to it with --cert-id",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "account", "thing"); err != nil {
				return err
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				if _, err := adm.CreateThing(ctx, account, thing, nil); err != nil && !(certID != "" && errors.Is(err, emulator.ErrExists)) {
					return err
				}
				if certID != "" {
					return adm.AttachCertificate(ctx, account, thing, certID)
				}
				return nil
			})
		},
	}
	c.Flags().StringVar(&account, "account", "", "account name")
	c.Flags().StringVar(&thing, "thing", "", "thing name")
	c.Flags().StringVar(&certID, "cert-id", "", "certificate to attach")
	return c
}

func newEmulatorListCmd(env *cliEnv, admin adminFn) *cobra.Command {
	var account, thing string
	var asJSON bool
	c := &cobra.Command{
		Use:       "list accounts|certs|cas|things|templates|jobs|executions",
		Short:     "List what the registry holds",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"accounts", "certs", "cas", "things", "templates", "jobs", "executions"},
		RunE: func(c *cobra.Command, args []string) error {
			what := args[0]
			needsAccount := what == "templates" || what == "jobs" || what == "executions"
			if needsAccount && account == "" {
				return cli.UsageError{Err: fmt.Errorf("%s %s needs --account", c.CommandPath(), what)}
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				var v any
				var rows [][]string
				var header []string
				var err error
				switch what {
				case "accounts":
					var as []emulator.Account
					as, err = adm.Accounts(ctx)
					header = []string{"NAME", "ENDPOINT"}
					for _, a := range as {
						rows = append(rows, []string{a.Name, a.Endpoint()})
					}
					v = as
				case "certs", "certificates":
					var cs []emulator.Certificate
					cs, err = adm.Certificates(ctx, account)
					header = []string{"ACCOUNT", "CERTIFICATE ID", "STATUS", "MODE", "THINGS", "NOT AFTER", "SUBJECT"}
					for _, x := range cs {
						rows = append(rows, []string{x.Account, x.ID, string(x.Status), string(x.Mode), strings.Join(x.Things, ","), x.NotAfter.UTC().Format(time.RFC3339), x.Subject})
					}
					v = cs
				case "cas":
					var cs []emulator.CA
					cs, err = adm.CAs(ctx, account)
					header = []string{"ACCOUNT", "CA ID", "STATUS", "MODE", "SUBJECT"}
					for _, x := range cs {
						rows = append(rows, []string{x.Account, x.ID, string(x.Status), string(x.Mode), x.Subject})
					}
					v = cs
				case "things":
					var ts []emulator.Thing
					ts, err = adm.Things(ctx, account)
					header = []string{"ACCOUNT", "THING", "CERTIFICATES"}
					for _, x := range ts {
						rows = append(rows, []string{x.Account, x.Name, strings.Join(x.Certificates, ",")})
					}
					v = ts
				case "templates":
					var ts []emulator.Template
					ts, err = adm.Templates(ctx, account)
					header = []string{"TEMPLATE", "DISABLED"}
					for _, x := range ts {
						rows = append(rows, []string{x.Name, fmt.Sprint(x.Disabled)})
					}
					v = ts
				case "jobs":
					var js []emulator.Job
					js, err = adm.Jobs(ctx, account)
					header = []string{"JOB", "STATUS", "THINGS", "THING GROUPS", "DOCUMENT"}
					for _, x := range js {
						rows = append(rows, []string{x.ID, string(x.Status), orDash(strings.Join(x.Things, ",")), orDash(strings.Join(x.ThingGroups, ",")), string(x.Document)})
					}
					v = js
				case "executions":
					var es []emulator.JobExecution
					es, err = adm.JobExecutions(ctx, account, thing)
					header = []string{"JOB", "THING", "STATUS", "VERSION", "STATUS DETAILS"}
					for _, x := range es {
						d := "-"
						if len(x.StatusDetails) > 0 {
							b, _ := json.Marshal(x.StatusDetails)
							d = string(b)
						}
						rows = append(rows, []string{x.JobID, x.ThingName, string(x.Status), fmt.Sprint(x.VersionNumber), d})
					}
					v = es
				default:
					return cli.UsageError{Err: fmt.Errorf("%s: unknown list %q (accounts, certs, cas, things, templates, jobs, executions)", c.CommandPath(), what)}
				}
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(env.stdout, v)
				}
				return writeTable(env.stdout, header, rows)
			})
		},
	}
	c.Flags().StringVar(&account, "account", "", "account name (default: every account, where that makes sense)")
	c.Flags().StringVar(&thing, "thing", "", "only this thing's executions")
	c.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return c
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func writeTable(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func newEmulatorCreateTemplateCmd(_ *cliEnv, admin adminFn) *cobra.Command {
	var account, name, file, prefix, param string
	c := &cobra.Command{
		Use:   "create-template",
		Short: "Add a fleet-provisioning template (an AWS template body, or a simple thing-name rule)",
		Long: `Add a fleet-provisioning template to an account, either from a template body in
AWS's own JSON format (--file), or made from a rule: the thing is named
--thing-name-prefix followed by the value of the parameter --thing-name-param, the
new certificate is attached to it and activated.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "account", "name"); err != nil {
				return err
			}
			if (file == "") == (param == "") {
				return cli.UsageError{Err: fmt.Errorf("%s needs either --file or --thing-name-param", c.CommandPath())}
			}
			t := emulator.Template{Name: name}
			if file != "" {
				b, err := readFlagFile("file", file)
				if err != nil {
					return err
				}
				t.Body = b
			} else {
				t.Body = emulator.SimpleTemplate(prefix, param)
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				return adm.CreateTemplate(ctx, account, t)
			})
		},
	}
	c.Flags().StringVar(&account, "account", "", "account name")
	c.Flags().StringVar(&name, "name", "", "template name (the <name> in $aws/provisioning-templates/<name>/provision/json)")
	c.Flags().StringVar(&file, "file", "", "template body in AWS's JSON format")
	c.Flags().StringVar(&prefix, "thing-name-prefix", "", "thing name prefix, with --thing-name-param")
	c.Flags().StringVar(&param, "thing-name-param", "", "parameter whose value names the thing, e.g. SerialNumber")
	return c
}

func newEmulatorCreateJobCmd(env *cliEnv, admin adminFn) *cobra.Command {
	var account, jobID, docFile, docJSON string
	var things []string
	c := &cobra.Command{
		Use:   "create-job",
		Short: "Create a job for things with a JSON document; running devices get notify-next at once",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "account", "job-id", "thing"); err != nil {
				return err
			}
			if (docFile == "") == (docJSON == "") {
				return cli.UsageError{Err: fmt.Errorf("%s needs either --document FILE or --document-json JSON", c.CommandPath())}
			}
			doc := []byte(docJSON)
			if docFile != "" {
				var err error
				if doc, err = readFlagFile("document", docFile); err != nil {
					return err
				}
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				_, err := adm.CreateJob(ctx, account, emulator.Job{ID: jobID, Document: doc, Things: things})
				return err
			})
		},
	}
	c.Flags().StringVar(&account, "account", "", "account name")
	c.Flags().StringVar(&jobID, "job-id", "", "job ID")
	c.Flags().StringArrayVar(&things, "thing", nil, "target thing (repeatable)")
	c.Flags().StringVar(&docFile, "document", "", "job document file (JSON object)")
	c.Flags().StringVar(&docJSON, "document-json", "", "job document given inline")
	return c
}

func newEmulatorJobCmd(env *cliEnv, admin adminFn) *cobra.Command {
	var account, jobID, thing string
	var asJSON bool
	c := &cobra.Command{
		Use:   "job",
		Short: "Show a job's execution on a thing: the status and status details the device reported",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "account", "job-id", "thing"); err != nil {
				return err
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				ex, err := adm.JobExecution(ctx, account, thing, jobID)
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(env.stdout, ex)
				}
				d, _ := json.Marshal(ex.StatusDetails)
				fmt.Fprintf(env.stdout, "%s %s %s version=%d details=%s\n", ex.JobID, ex.ThingName, ex.Status, ex.VersionNumber, d)
				return nil
			})
		},
	}
	c.Flags().StringVar(&account, "account", "", "account name")
	c.Flags().StringVar(&jobID, "job-id", "", "job ID")
	c.Flags().StringVar(&thing, "thing", "", "thing name")
	c.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return c
}

func newEmulatorCancelJobCmd(_ *cliEnv, admin adminFn) *cobra.Command {
	var account, jobID string
	var force bool
	c := &cobra.Command{
		Use:   "cancel-job",
		Short: "Cancel a job (QUEUED executions; IN_PROGRESS ones too with --force)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "account", "job-id"); err != nil {
				return err
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				return adm.CancelJob(ctx, account, jobID, force)
			})
		},
	}
	c.Flags().StringVar(&account, "account", "", "account name")
	c.Flags().StringVar(&jobID, "job-id", "", "job ID")
	c.Flags().BoolVar(&force, "force", false, "cancel IN_PROGRESS executions too")
	return c
}

func newEmulatorHistoryCmd(env *cliEnv, admin adminFn) *cobra.Command {
	var q emulator.HistoryQuery
	var outcome string
	var asJSON bool
	c := &cobra.Command{
		Use:   "history",
		Short: "Show the connection history: accepted, refused (with the rule and reason) and ended connections",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			switch emulator.Outcome(outcome) {
			case "", emulator.Accepted, emulator.Refused, emulator.Disconnected, emulator.Denied:
				q.Outcome = emulator.Outcome(outcome)
			default:
				return cli.UsageError{Err: fmt.Errorf("--outcome %q: use accepted, refused, disconnected or denied", outcome)}
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				evs, err := adm.History(ctx, q)
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(env.stdout, evs)
				}
				for _, e := range evs {
					fmt.Fprintln(env.stdout, e.String())
				}
				return nil
			})
		},
	}
	c.Flags().StringVar(&q.Account, "account", "", "only this account")
	c.Flags().StringVar(&q.CertificateID, "cert-id", "", "only this certificate")
	c.Flags().StringVar(&q.ClientID, "client-id", "", "only this client ID")
	c.Flags().StringVar(&outcome, "outcome", "", "accepted, refused, disconnected or denied (by policy)")
	c.Flags().IntVar(&q.Limit, "limit", 0, "only the newest N events")
	c.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return c
}

// orDash is s, or "-" for an empty table cell.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
