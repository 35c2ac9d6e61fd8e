package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/internal/atomicfile"
	"github.com/thingcert/thingcert/internal/cli"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
)

func newCSRCmd(env *cliEnv) *cobra.Command {
	var uri, subject, sigAlg, out string
	c := &cobra.Command{
		Use:   "csr --key URI --subject \"CN=...,O=...\" [--sig-alg NAME] [--out FILE]",
		Short: "Make a CSR signed by a device key, as AWS IoT's CreateCertificateFromCsr accepts",
		Long: `Make a PKCS#10 certificate signing request for the key at URI. The key signs
inside its store. The signature algorithm defaults to the key's natural one
(ECDSA-WITH-SHA256/384/512 by curve, SHA256WITHRSA); any name AWS IoT lists may be
asked for: SHA256WITHRSA, SHA384WITHRSA, SHA512WITHRSA, SHA256WITHRSAANDMGF1,
SHA384WITHRSAANDMGF1, SHA512WITHRSAANDMGF1, ECDSA-WITH-SHA256, ECDSA-WITH-SHA384,
ECDSA-WITH-SHA512. The CSR is verified before it is printed.`,
		Example: `  thingcert csr --key file:/var/lib/thingcert/keys/device.pem --subject CN=gateway-17 --out device.csr`,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "key", "subject"); err != nil {
				return err
			}
			var opts keystore.CSROptions
			if sigAlg != "" {
				sa, err := keystore.ParseSignatureAlgorithm(sigAlg)
				if err != nil {
					return err
				}
				opts.SignatureAlgorithm = sa
			}
			ctx := c.Context()
			s, k, err := keystore.OpenKey(ctx, uri, keystore.Options{Logger: env.log})
			if err != nil {
				return err
			}
			defer s.Close()
			der, err := keystore.CreateCSR(k, subject, opts)
			if err != nil {
				return err
			}
			pemCSR := keystore.EncodeCSR(der)
			if out == "" {
				_, err := env.stdout.Write(pemCSR)
				return err
			}
			if err := atomicfile.WriteFile(out, pemCSR, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(env.stderr, "wrote %s\n", out)
			return nil
		},
	}
	c.Flags().StringVar(&uri, "key", "", "key URI")
	c.Flags().StringVar(&subject, "subject", "", `subject, e.g. "CN=gateway-17,O=Acme"`)
	c.Flags().StringVar(&sigAlg, "sig-alg", "", "signature algorithm (AWS IoT's name)")
	c.Flags().StringVar(&out, "out", "", "write the CSR (PEM) to this file instead of stdout")
	return c
}
