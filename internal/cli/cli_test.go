package cli

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestRequiredNamesTheMissingFlags(t *testing.T) {
	c := &cobra.Command{Use: "connect"}
	c.Flags().String("key", "", "")
	c.Flags().String("cert", "", "")
	c.Flags().String("endpoint", "", "")
	if err := c.Flags().Parse([]string{"--cert", "c.pem"}); err != nil {
		t.Fatal(err)
	}
	err := Required(c, "endpoint", "key", "cert")
	if err == nil || !IsUsage(fmt.Errorf("wrapped: %w", err)) {
		t.Fatalf("Required: %v, want a usage error", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "--endpoint and --key") || strings.Contains(msg, "--cert") {
		t.Errorf("message %q should name --endpoint and --key, not --cert", msg)
	}
	if err := Required(c, "cert"); err != nil {
		t.Errorf("a given flag: %v", err)
	}
	if IsUsage(errors.New("other")) {
		t.Error("a plain error taken for a usage error")
	}
}
