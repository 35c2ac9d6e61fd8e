package main

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/thingcert/thingcert/keystore/all"
)

// Set by the release build (tools/dist, `make dist`) with
//
//	-ldflags "-X main.version=v1.2.3 -X main.commit=<full hash> -X main.date=<RFC 3339>"
//
// -X can only set package-level string variables, which is why these three
// are the one piece of package-level state here; nothing assigns them at run
// time. Empty in a plain `go build`: then the Go build information is used.
var (
	version string
	commit  string
	date    string
)

// buildFacts is what `thingcert version` reports.
type buildFacts struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	Date      string `json:"date,omitempty"`
	GoVersion string `json:"go_version"`
	// Platform is GOOS/GOARCH, with the ARM variant (linux/arm/v6).
	Platform  string   `json:"platform"`
	Cgo       bool     `json:"cgo"`
	KeyStores []string `json:"key_stores"`
}

// collectBuildFacts prefers the values linked in by the release build and
// falls back to what the go command recorded (module version for
// `go install …@v1.2.3`, VCS stamps when built with -buildvcs).
func collectBuildFacts(ldVersion, ldCommit, ldDate string, bi *debug.BuildInfo, goos, goarch string, stores []string) buildFacts {
	f := buildFacts{Version: ldVersion, Commit: ldCommit, Date: ldDate, Platform: goos + "/" + goarch, KeyStores: stores}
	if bi == nil {
		bi = &debug.BuildInfo{}
	}
	f.GoVersion = bi.GoVersion
	if f.GoVersion == "" {
		f.GoVersion = runtime.Version()
	}
	if f.Version == "" {
		f.Version = bi.Main.Version
	}
	if f.Version == "" {
		f.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "CGO_ENABLED":
			f.Cgo = s.Value == "1"
		case "GOARM":
			if goarch == "arm" {
				f.Platform += "/v" + strings.TrimSuffix(strings.TrimSuffix(s.Value, ",softfloat"), ",hardfloat")
			}
		case "vcs.revision":
			if f.Commit == "" {
				f.Commit = s.Value
			}
		case "vcs.time":
			if f.Date == "" {
				f.Date = s.Value
			}
		}
	}
	return f
}

func (f buildFacts) writeText(w io.Writer) {
	onOff := map[bool]string{true: "on", false: "off"}
	fmt.Fprintf(w, "thingcert %s\n", f.Version)
	if f.Commit != "" {
		fmt.Fprintf(w, "  commit:     %s\n", f.Commit)
	}
	if f.Date != "" {
		fmt.Fprintf(w, "  date:       %s\n", f.Date)
	}
	fmt.Fprintf(w, "  go:         %s\n", f.GoVersion)
	fmt.Fprintf(w, "  platform:   %s\n", f.Platform)
	fmt.Fprintf(w, "  cgo:        %s\n", onOff[f.Cgo])
	stores := strings.Join(f.KeyStores, ", ")
	if !f.Cgo {
		stores += " (pkcs11 needs a build with CGO_ENABLED=1)"
	}
	fmt.Fprintf(w, "  key stores: %s\n", stores)
}

func newVersionCmd(env *cliEnv) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "version [--json]",
		Short: "Print thingcert's version and build: commit, date, Go, cgo, key stores",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			bi, _ := debug.ReadBuildInfo()
			f := collectBuildFacts(version, commit, date, bi, runtime.GOOS, runtime.GOARCH, all.Schemes())
			if asJSON {
				enc := json.NewEncoder(env.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(f)
			}
			f.writeText(env.stdout)
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the build facts as JSON")
	return c
}
