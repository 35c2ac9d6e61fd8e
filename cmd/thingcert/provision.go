package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/internal/cli"
	"github.com/thingcert/thingcert/rotation"
)

// rotationFlags are the flags provision and rotate share.
type rotationFlags struct {
	config  string
	json    bool
	timeout time.Duration
}

func (f *rotationFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.config, "config", "", "device configuration file (YAML; see docs/config.md)")
	c.Flags().BoolVar(&f.json, "json", false, "print the result as JSON")
	c.Flags().DurationVar(&f.timeout, "timeout", 5*time.Minute, "give up waiting after this long; an interrupted rotation resumes on the next run")
}

func newProvisionCmd(env *cliEnv) *cobra.Command {
	var f rotationFlags
	c := &cobra.Command{
		Use:   "provision --config FILE",
		Short: "Provision the device's own identity by claim (fleet provisioning, or the owner's step-ca)",
		Long: `Replace the claim identity by the device's own: connect with the claim key and
certificate (claim.key, claim.cert), make a new key in the device's store
(store), send its CSR to AWS IoT (CreateCertificateFromCsr), register the thing
with the template (RegisterThing), and connect with the new identity before
adopting it. The claim is never used again (unless claim.recover is set and the
device's identity is revoked).

Every step is saved in the state folder (state_dir) before it is taken: killed or
powered off at any point, the next run resumes where it stopped, and the device
is left with the claim or its new identity, never neither. Run on a device that
is provisioned already, it says so and changes nothing.

With provisioning.issuer: step-ca the claim is a factory certificate that the
owner's step-ca trusts: it signs a one-time token for the first certificate
and never connects to AWS IoT, which registers the new certificate by
just-in-time provisioning on its first connection (closed; the next one is
accepted, as the log says).`,
		Example: `  thingcert provision --config /etc/thingcert/thingcert.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "config"); err != nil {
				return err
			}
			cfg, err := config.Load(f.config)
			if err != nil {
				return err
			}
			if cfg.Claim == nil {
				return fmt.Errorf("config %s has no claim (claim.key and claim.cert): provisioning by claim needs one", cfg.Path)
			}
			ctx, cancel := context.WithTimeout(c.Context(), f.timeout)
			defer cancel()
			return runProvision(ctx, env, cfg, f)
		},
	}
	f.add(c)
	return c
}

func runProvision(ctx context.Context, env *cliEnv, cfg *config.Config, f rotationFlags) error {
	d, err := openDevice(ctx, env, cfg)
	if err != nil {
		return err
	}
	defer d.close(context.WithoutCancel(ctx))
	claim := rotation.IdentityRecord{KeyURI: cfg.Claim.Key, CertFile: cfg.Claim.Cert, Claim: true}
	s, err := d.runner.Load()
	switch {
	case errors.Is(err, rotation.ErrNoState):
		if s, err = d.runner.Adopt(ctx, claim); err != nil {
			return err
		}
	case err != nil:
		return err
	case !s.Current.Claim && !s.InProgress():
		return d.output(env, f, s, "already provisioned; nothing to do (thingcert rotate renews the certificate)")
	}
	if err := d.connectCurrent(ctx, s); err != nil {
		return err
	}
	s, err = d.runner.Provision(ctx, claim)
	if errors.Is(err, rotation.ErrAlreadyProvisioned) {
		return d.output(env, f, s, "already provisioned; nothing to do (thingcert rotate renews the certificate)")
	}
	if err != nil {
		return err
	}
	return d.output(env, f, s, "provisioned")
}

func (d *localDevice) output(env *cliEnv, f rotationFlags, s *rotation.State, action string) error {
	r := d.report(s, action)
	if f.json {
		return writeJSON(env.stdout, r)
	}
	printIdentity(env, r)
	return nil
}
