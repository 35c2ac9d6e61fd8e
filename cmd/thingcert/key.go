package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/internal/cli"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
	"github.com/thingcert/thingcert/keystore/filestore"
)

func newKeyCmd(env *cliEnv) *cobra.Command {
	c := &cobra.Command{
		Use:   "key",
		Short: "Make, show, import and delete device keys",
		Long: `Manage the device's private keys. A key is named by its URI; the private half
stays where the URI says (TPM, PKCS#11 token or file) and only the public key
is ever printed.`,
	}
	c.AddCommand(newKeyGenerateCmd(env), newKeyShowCmd(env), newKeyImportCmd(env), newKeyDeleteCmd(env))
	return c
}

func newKeyGenerateCmd(env *cliEnv) *cobra.Command {
	var uri, alg string
	c := &cobra.Command{
		Use:   "generate --key URI [--alg ALG]",
		Short: "Make a new key inside its store and print its public key (PEM)",
		Long: `Make a new key inside the store the URI names. The private key is created
there and never leaves it; the public key is printed as PEM on stdout.

Algorithms AWS IoT accepts: ecdsa-p256 (default), ecdsa-p384, ecdsa-p521,
rsa-2048, rsa-3072, rsa-4096. An existing key is never overwritten.`,
		Example: `  thingcert key generate --key file:/var/lib/thingcert/keys/device.pem
  thingcert key generate --key 'tpm:blob=/var/lib/thingcert/keys/device.tpmkey' --alg rsa-2048`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "key"); err != nil {
				return err
			}
			a, err := keystore.ParseAlgorithm(alg)
			if err != nil {
				return err
			}
			ctx := c.Context()
			s, err := keystore.Open(ctx, uri, keystore.Options{Logger: env.log})
			if err != nil {
				return err
			}
			defer s.Close()
			done := progress(env, fmt.Sprintf("generating %s key in %s", a, keystore.RedactURI(uri)))
			k, err := s.Generate(ctx, uri, a)
			done()
			if err != nil {
				return err
			}
			return writePublicPEM(env, k)
		},
	}
	c.Flags().StringVar(&uri, "key", "", "key URI (file:, pkcs11: or tpm:)")
	c.Flags().StringVar(&alg, "alg", string(keystore.DefaultAlgorithm), "key algorithm")
	return c
}

// progress tells a person that a slow operation (RSA key creation takes seconds
// on a TPM chip) is still working. It prints nothing if the work ends within a
// second, so scripts and fast stores see no noise.
func progress(env *cliEnv, what string) (done func()) {
	stop := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		start := time.Now()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		printed := false
		for {
			select {
			case <-stop:
				if printed {
					fmt.Fprintf(env.stderr, " done in %.1fs\n", time.Since(start).Seconds())
				}
				return
			case <-t.C:
				if !printed {
					fmt.Fprintf(env.stderr, "%s (RSA keys take seconds on a TPM chip or token) ", what)
					printed = true
				}
				fmt.Fprint(env.stderr, ".")
			}
		}
	}()
	return func() { close(stop); <-finished }
}

func writePublicPEM(env *cliEnv, k keystore.Key) error {
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		return fmt.Errorf("encoding public key of %s: %w", keystore.RedactURI(k.URI()), err)
	}
	return pem.Encode(env.stdout, &pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// keyReport is what `key show` prints; its JSON form is a contract for scripts.
type keyReport struct {
	URI         string               `json:"uri"`
	Algorithm   keystore.Algorithm   `json:"algorithm"`
	Fingerprint string               `json:"spki_sha256"`
	PublicKey   string               `json:"public_key_pem"`
	Protection  *keystore.Protection `json:"protection,omitempty"`
}

func newKeyShowCmd(env *cliEnv) *cobra.Command {
	var uri string
	var asJSON bool
	c := &cobra.Command{
		Use:   "show --key URI [--json]",
		Short: "Show a key's algorithm, public key and how it is protected",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "key"); err != nil {
				return err
			}
			ctx := c.Context()
			s, k, err := keystore.OpenKey(ctx, uri, keystore.Options{Logger: env.log})
			if err != nil {
				return err
			}
			defer s.Close()
			r, err := describeKey(ctx, k)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(env.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			fmt.Fprintf(env.stdout, "URI:          %s\nAlgorithm:    %s\nSPKI SHA-256: %s\n", r.URI, r.Algorithm, r.Fingerprint)
			if p := r.Protection; p != nil {
				fmt.Fprintf(env.stdout, "Backend:      %s\nHardware:     %t\n", p.Backend, p.Hardware)
				for _, a := range p.Attributes {
					fmt.Fprintf(env.stdout, "  %-22s %s\n", a.Name+":", a.Value)
				}
			}
			fmt.Fprint(env.stdout, r.PublicKey)
			return nil
		},
	}
	c.Flags().StringVar(&uri, "key", "", "key URI")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func describeKey(ctx context.Context, k keystore.Key) (keyReport, error) {
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		return keyReport{}, err
	}
	sum := sha256.Sum256(der)
	r := keyReport{
		URI:         keystore.RedactURI(k.URI()),
		Algorithm:   k.Algorithm(),
		Fingerprint: hex.EncodeToString(sum[:]),
		PublicKey:   string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})),
	}
	if pr, ok := k.(keystore.ProtectionReporter); ok {
		p, err := pr.Protection(ctx)
		if err != nil {
			return r, err
		}
		r.Protection = &p
	}
	return r, nil
}

func newKeyImportCmd(env *cliEnv) *cobra.Command {
	var uri, from string
	c := &cobra.Command{
		Use:   "import --key file:... --from PEM",
		Short: "Store a key made elsewhere (file store only)",
		Long: `Import a private key made elsewhere — for instance the key AWS IoT returns with
CreateKeysAndCertificate — into the file store, under the same algorithm policy
as generated keys. PKCS#8, PKCS#1 and SEC1 PEM are read. TPM and PKCS#11 stores
refuse imports: a key that existed outside secure storage gains nothing by being
put there, and thingcert will not pretend it does.`,
		Example: `  thingcert key import --key file:/var/lib/thingcert/keys/aws.pem --from private.pem.key`,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "key", "from"); err != nil {
				return err
			}
			data, err := os.ReadFile(from)
			if err != nil {
				return fmt.Errorf("reading %s: %w", from, err)
			}
			priv, err := filestore.ParsePrivateKeyPEM(data)
			if err != nil {
				return fmt.Errorf("%s: %w", from, err)
			}
			ctx := c.Context()
			s, err := keystore.Open(ctx, uri, keystore.Options{Logger: env.log})
			if err != nil {
				return err
			}
			defer s.Close()
			imp, ok := s.(keystore.Importer)
			if !ok {
				return fmt.Errorf("%s: %w: only the file store imports keys; a TPM or PKCS#11 key must be generated inside the device", keystore.RedactURI(uri), keystore.ErrUnsupported)
			}
			k, err := imp.Import(ctx, uri, priv)
			if err != nil {
				return err
			}
			return writePublicPEM(env, k)
		},
	}
	c.Flags().StringVar(&uri, "key", "", "file: key URI to create")
	c.Flags().StringVar(&from, "from", "", "PEM file holding the private key")
	return c
}

func newKeyDeleteCmd(env *cliEnv) *cobra.Command {
	var uri string
	c := &cobra.Command{
		Use:   "delete --key URI",
		Short: "Delete a key from its store (for a key pair, both halves)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := cli.Required(c, "key"); err != nil {
				return err
			}
			ctx := c.Context()
			s, err := keystore.Open(ctx, uri, keystore.Options{Logger: env.log})
			if err != nil {
				return err
			}
			defer s.Close()
			if err := s.Delete(ctx, uri); err != nil {
				if errors.Is(err, keystore.ErrNotFound) {
					return fmt.Errorf("%w (nothing was deleted)", err)
				}
				return err
			}
			fmt.Fprintf(env.stderr, "deleted %s\n", keystore.RedactURI(uri))
			return nil
		},
	}
	c.Flags().StringVar(&uri, "key", "", "key URI")
	return c
}
