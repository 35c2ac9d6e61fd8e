// Command dist builds thingcert's release artifacts from a git checkout:
// static binaries for linux/amd64, arm64, armv7 and armv6, a tarball and a
// Debian package of each, a CycloneDX SBOM of each binary's Go modules, and
// SHA256SUMS. `make dist` runs it; docs/release.md says what each file is.
//
// It lives in its own module (tools/go.mod) so nfpm's and cyclonedx-gomod's
// dependency trees never enter thingcert's go.mod, go.sum or binary.
//
// Two runs on one commit write the same bytes: -trimpath, an empty build ID,
// the version, commit and date linked in from git, and every archive's times
// set to the last commit's (SOURCE_DATE_EPOCH, if set, wins).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
)

func main() {
	var o options
	flag.StringVar(&o.repo, "repo", "", "the thingcert checkout (default: the git top level of the current folder)")
	flag.StringVar(&o.out, "out", "", "folder for the artifacts; its old artifacts are removed (default: REPO/dist)")
	arch := flag.String("arch", strings.Join(targetNames(), ","), "targets to build, comma-separated")
	flag.StringVar(&o.maintainer, "maintainer", "thingcert maintainers <maintainers@thingcert.invalid>", "the packages' Maintainer field")
	flag.Parse()
	o.targets = strings.Split(*arch, ",")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "dist: "+err.Error())
		os.Exit(1)
	}
}
