package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/internal/cli"
)

// newEmulatorCreatePolicyCmd creates an IoT policy (AWS's CreatePolicy).
func newEmulatorCreatePolicyCmd(_ *cliEnv, admin adminFn) *cobra.Command {
	var account, name, file, docJSON string
	c := &cobra.Command{
		Use:   "create-policy",
		Short: "Create an IoT policy from a policy document (AWS's JSON); certificates connect only as their policies allow",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "account", "name"); err != nil {
				return err
			}
			if (file == "") == (docJSON == "") {
				return cli.UsageError{Err: fmt.Errorf("%s needs either --file FILE or --document-json JSON", c.CommandPath())}
			}
			doc := docJSON
			if file != "" {
				b, err := readFlagFile("file", file)
				if err != nil {
					return err
				}
				doc = string(b)
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				_, err := adm.CreatePolicy(ctx, account, name, doc)
				return err
			})
		},
	}
	c.Flags().StringVar(&account, "account", "", "account name")
	c.Flags().StringVar(&name, "name", "", "policy name")
	c.Flags().StringVar(&file, "file", "", "policy document file")
	c.Flags().StringVar(&docJSON, "document-json", "", "policy document given inline")
	return c
}

// newEmulatorAttachPolicyCmd attaches a policy to a certificate (AWS's AttachPolicy).
func newEmulatorAttachPolicyCmd(_ *cliEnv, admin adminFn) *cobra.Command {
	var account, name, target string
	c := &cobra.Command{
		Use:   "attach-policy",
		Short: "Attach an IoT policy to a certificate (its ID or ARN)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "account", "name", "cert-id"); err != nil {
				return err
			}
			return admin(c, func(ctx context.Context, adm emulator.Admin) error {
				return adm.AttachPolicy(ctx, account, name, target)
			})
		},
	}
	c.Flags().StringVar(&account, "account", "", "account name")
	c.Flags().StringVar(&name, "name", "", "policy name")
	c.Flags().StringVar(&target, "cert-id", "", "certificate ID (SHA-256 of the DER, hex) or ARN")
	return c
}
