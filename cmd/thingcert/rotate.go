package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/thingcert/thingcert/internal/cli"
	"github.com/thingcert/thingcert/iot"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/rotation"
)

func newRotateCmd(env *cliEnv) *cobra.Command {
	var f rotationFlags
	var force bool
	c := &cobra.Command{
		Use:   "rotate --config FILE [--force]",
		Short: "Renew the device certificate if it is due (or now, with --force)",
		Long: `Renew the device's certificate when the renewal policy says it is due (rotation
in the config: a share of the lifetime, a maximum age, a time before expiry),
or at once with --force. A new key is made in the store, its certificate
obtained and checked (it is for the new key, valid now, of an allowed
algorithm, and chained to rotation.trust if set), and the connection moved to
it; if the new identity cannot connect, or the cloud does not confirm it, the
device goes back to its current identity. The old key and certificate are
deleted after the grace period (rotation.grace_period), by a later run.

A job whose document is {"operation": "rotate-certificate"} also starts a
rotation (rotation.jobs, on by default): the job is marked IN_PROGRESS, then
SUCCEEDED with the old and new certificate IDs, or FAILED with the reason.

A rotation that was interrupted (killed, powered off, or out of --timeout) is
resumed where it stopped. Without --force, a rotation that is not due prints
when it will be and exits 0. If the cloud refuses the device's certificate
(revoked) and claim.recover is set, the claim provisions the device again.`,
		Example: `  thingcert rotate --config /etc/thingcert/thingcert.yaml
  thingcert rotate --config /etc/thingcert/thingcert.yaml --force --json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "config"); err != nil {
				return err
			}
			cfg, err := config.Load(f.config)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(c.Context(), f.timeout)
			defer cancel()
			return runRotate(ctx, env, cfg, f, force)
		},
	}
	f.add(c)
	c.Flags().BoolVar(&force, "force", false, "rotate now, whether or not the policy says it is due")
	return c
}

// refused reports whether a connection failed because the cloud refused the
// identity, as opposed to the network failing (the agent decides the same).
func refused(err error) bool { return iot.IdentityRefused(err) }

// recoverByClaim provisions the device again with its claim (claim.recover).
func recoverByClaim(ctx context.Context, env *cliEnv, d *localDevice, f rotationFlags, why error) error {
	d.log.Warn("the device's identity was refused; provisioning again with the claim (claim.recover)", "error", why)
	claim := rotation.IdentityRecord{KeyURI: d.cfg.Claim.Key, CertFile: d.cfg.Claim.Cert, Claim: true}
	if _, err := d.runner.Recover(ctx, claim, cli.OneLine(why.Error())); err != nil {
		return err
	}
	return provisionWithClaim(ctx, env, d, f, "recovered: provisioned again with the claim")
}

// provisionWithClaim connects with the claim, which the state names as the
// current identity, and provisions.
func provisionWithClaim(ctx context.Context, env *cliEnv, d *localDevice, f rotationFlags, action string) error {
	s, err := d.runner.Load()
	if err != nil {
		return err
	}
	if err := d.connectCurrent(ctx, s); err != nil {
		return err
	}
	claim := rotation.IdentityRecord{KeyURI: d.cfg.Claim.Key, CertFile: d.cfg.Claim.Cert, Claim: true}
	if s, err = d.runner.Provision(ctx, claim); err != nil {
		return err
	}
	return d.output(env, f, s, action)
}

func notDue(dec rotation.Decision) string {
	return fmt.Sprintf("not due: renews at %s (%s); --force renews now", dec.At.UTC().Format(time.RFC3339), dec.Reason)
}

func runRotate(ctx context.Context, env *cliEnv, cfg *config.Config, f rotationFlags, force bool) error {
	d, err := openDevice(ctx, env, cfg)
	if err != nil {
		return err
	}
	defer d.close(context.WithoutCancel(ctx))
	s, err := d.state(ctx)
	if errors.Is(err, rotation.ErrNoState) {
		return fmt.Errorf("the state folder %s holds no identity: run `thingcert provision --config %s` first (or set key and cert in the config)", cfg.StateDir, cfg.Path)
	}
	if err != nil {
		return err
	}
	if s.Current.Claim {
		if cfg.Claim != nil && cfg.Claim.Recover {
			// A recovery that was interrupted, or a device that never
			// provisioned: with claim.recover the claim may provision it.
			return provisionWithClaim(ctx, env, d, f, "recovered: provisioned again with the claim")
		}
		return fmt.Errorf("the device is not provisioned yet (it holds only its claim): run `thingcert provision --config %s`", cfg.Path)
	}
	now := time.Now()
	dec, due := d.runner.Due(s, now)
	jobs := cfg.JobsEnabled()
	if !force && !s.InProgress() && !due && !jobs {
		if rotation.ActionFor(s, now) == rotation.ActRetire {
			if s, err = d.runner.Resume(ctx); err != nil {
				return err
			}
		}
		return d.output(env, f, s, notDue(dec))
	}
	if err := d.connectCurrent(ctx, s); err != nil {
		if !refused(err) || s.InProgress() {
			return err
		}
		if cfg.Claim == nil || !cfg.Claim.Recover {
			return fmt.Errorf("%w; if this device's certificate was revoked or deleted, provision it again: set claim.recover: true (with the claim) and run thingcert rotate, or re-provision it by hand", err)
		}
		return recoverByClaim(ctx, env, d, f, err)
	}
	switch {
	case s.InProgress():
		// The interrupted rotation is finished first; it is the one asked for.
		s, err = d.runner.Resume(ctx)
	case force:
		s, err = d.runner.Rotate(ctx, rotation.Trigger{Kind: rotation.TriggerOperator, Reason: "thingcert rotate --force"})
	default:
		var t *rotation.Trigger
		if jobs {
			// A job asking for a rotation counts as due.
			if t, err = d.session.Jobs().StartRotationJob(ctx); err != nil {
				d.log.Warn("could not look for rotation jobs", "error", err)
			}
		}
		if t == nil && due {
			t = &rotation.Trigger{Kind: rotation.TriggerTime, Reason: string(dec.Reason)}
		}
		if t == nil {
			if s, err = d.runner.Resume(ctx); err != nil { // retire what is due
				return err
			}
			return d.output(env, f, s, notDue(dec))
		}
		s, err = d.runner.Rotate(ctx, *t)
	}
	if err != nil {
		if s != nil && errors.Is(err, rotation.ErrRolledBack) && f.json {
			_ = d.output(env, f, s, "rolled back")
		}
		return err
	}
	return d.output(env, f, s, "rotated")
}
