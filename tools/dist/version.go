package main

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Versions are what one release build is called, in each naming scheme.
type Versions struct {
	// Go is the version `thingcert version` prints: the tag (v1.2.3), the tag
	// and the commits since it (v1.2.3-4-gabcdef0), or, before any tag, a Go
	// pseudo-version (v0.0.0-20261130104000-abcdef012345); "+dirty" when the
	// work tree had changes.
	Go string
	// File is Go without the leading v, for file names (thingcert_1.2.3_…).
	File string
	// Deb is a Debian (and RPM) version that sorts as the releases do: after
	// a tag come its later commits (1.2.3+4.gabcdef0), before it its release
	// candidates (1.3.0~rc.1) and every untagged pseudo-version (0.0.0~…).
	Deb string
}

var (
	describeAfterTag = regexp.MustCompile(`^(v\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?)-(\d+)-g([0-9a-f]+)$`)
	describeTag      = regexp.MustCompile(`^v(\d+\.\d+\.\d+)(?:-([0-9A-Za-z.]+))?$`)
	describeHash     = regexp.MustCompile(`^[0-9a-f]{4,40}$`)
)

// versionsFrom turns `git describe --tags --always --dirty --match 'v[0-9]*'`
// into the release's versions. commit is the full hash of HEAD and
// commitTime its committer time (a pseudo-version is dated by it, so a
// rebuild of the same commit gets the same name).
func versionsFrom(describe, commit string, commitTime time.Time) (Versions, error) {
	d, dirty := strings.CutSuffix(strings.TrimSpace(describe), "-dirty")
	var goV, debV string
	switch {
	case describeAfterTag.MatchString(d):
		m := describeAfterTag.FindStringSubmatch(d)
		goV = d
		debV = debOfTag(m[1]) + "+" + m[2] + ".g" + m[3]
	case describeTag.MatchString(d):
		goV = d
		debV = debOfTag(d)
	case describeHash.MatchString(d):
		if len(commit) < 12 || !strings.HasPrefix(commit, d) {
			return Versions{}, fmt.Errorf("git describe printed %q, which is not the start of HEAD's hash %q", d, commit)
		}
		stamp := commitTime.UTC().Format("20060102150405")
		goV = "v0.0.0-" + stamp + "-" + commit[:12]
		debV = "0.0.0~" + stamp + "." + commit[:12]
	default:
		return Versions{}, fmt.Errorf("git describe printed %q: tag releases vN.N.N (e.g. git tag -a v0.1.0)", describe)
	}
	if dirty {
		goV += "+dirty"
		debV += "+dirty"
	}
	return Versions{Go: goV, File: strings.TrimPrefix(goV, "v"), Deb: debV}, nil
}

// debOfTag: v1.2.3 → 1.2.3; v1.3.0-rc.1 → 1.3.0~rc.1 (a pre-release sorts
// before its release in dpkg and rpm only with a tilde).
func debOfTag(tag string) string {
	m := describeTag.FindStringSubmatch(tag)
	if m[2] == "" {
		return m[1]
	}
	return m[1] + "~" + m[2]
}
