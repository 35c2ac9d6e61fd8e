package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/emulator"
)

func newEmulatorCredentialsCmd(env *cliEnv, stateDir func(*cobra.Command) (string, error)) *cobra.Command {
	var account string
	c := &cobra.Command{
		Use:   "credentials",
		Short: "Print the environment for the aws CLI and the AWS SDKs to call the running emulator's control-plane API",
		Long: `Print NAME=value lines for an account's access key, region, the control-plane
API's URL and the CA bundle to trust, as the running emulator (serve --api-listen)
recorded them in its state folder. In a shell:

  set -a; eval "$(thingcert emulator credentials --state ./emu --account dev)"; set +a
  aws iot list-things --endpoint-url "$AWS_ENDPOINT_URL_IOT"

aws CLI versions before 2.13 (Debian 12 has 2.9) ignore AWS_ENDPOINT_URL_IOT:
give them --endpoint-url as above. AWS_CA_BUNDLE is honoured by all.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			dir, err := stateDir(c)
			if err != nil {
				return err
			}
			if dir, err = filepath.Abs(dir); err != nil {
				return err
			}
			cr, err := emulator.ReadCredentials(dir, account)
			switch {
			case errors.Is(err, emulator.ErrInvalid):
				return fmt.Errorf("%w (choose one with --account)", err)
			case errors.Is(err, emulator.ErrNoAPI):
				return fmt.Errorf("%w (`thingcert emulator serve --api-listen 127.0.0.1:PORT`)", err)
			case err != nil:
				return err
			}
			for _, kv := range [][2]string{
				{"AWS_ACCESS_KEY_ID", cr.AccessKeyID},
				{"AWS_SECRET_ACCESS_KEY", cr.SecretAccessKey},
				{"AWS_REGION", cr.Region},
				{"AWS_DEFAULT_REGION", cr.Region},
				{"AWS_ENDPOINT_URL_IOT", cr.EndpointURL},
				{"AWS_CA_BUNDLE", cr.CABundle},
			} {
				fmt.Fprintf(env.stdout, "%s=%s\n", kv[0], shellWord(kv[1]))
			}
			return nil
		},
	}
	c.Flags().StringVar(&account, "account", "", "account name (default: the only one)")
	return c
}

// shellWord quotes s for a POSIX shell when it needs it (a state folder with
// spaces); keys, regions and URLs never do.
func shellWord(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=:._-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
