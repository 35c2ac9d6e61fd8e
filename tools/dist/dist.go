package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

type options struct {
	repo, out  string
	targets    []string
	maintainer string
}

// release is what every artifact of one run shares.
type release struct {
	repo     string
	commit   string
	mtime    time.Time // SOURCE_DATE_EPOCH: the last commit's time
	versions Versions
	work     string // scratch folder, removed at the end
	docs     string // man pages and completions from __gen-docs
	// files from the checkout, by their path in it
	files map[string][]byte
	o     options
}

func run(ctx context.Context, o options, stdout io.Writer) error {
	start := time.Now()
	var err error
	if o.repo == "" {
		if o.repo, err = git(ctx, ".", "rev-parse", "--show-toplevel"); err != nil {
			return err
		}
	}
	if o.out == "" {
		o.out = filepath.Join(o.repo, "dist")
	}
	var ts []target
	for _, name := range o.targets {
		i := slices.IndexFunc(targets, func(t target) bool { return t.Name == name })
		if i < 0 {
			return fmt.Errorf("no target %q; there are %s", name, strings.Join(targetNames(), ", "))
		}
		ts = append(ts, targets[i])
	}

	r := &release{repo: o.repo, o: o}
	if r.commit, err = git(ctx, o.repo, "rev-parse", "HEAD"); err != nil {
		return err
	}
	ct, err := git(ctx, o.repo, "log", "-1", "--format=%ct")
	if err != nil {
		return err
	}
	epoch, err := strconv.ParseInt(ct, 10, 64)
	if err != nil {
		return fmt.Errorf("git log printed %q for the commit time: %w", ct, err)
	}
	if e := os.Getenv("SOURCE_DATE_EPOCH"); e != "" {
		if epoch, err = strconv.ParseInt(e, 10, 64); err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a Unix time: %w", e, err)
		}
	}
	r.mtime = time.Unix(epoch, 0).UTC()
	describe, err := git(ctx, o.repo, "describe", "--tags", "--always", "--dirty", "--match", "v[0-9]*")
	if err != nil {
		return err
	}
	if r.versions, err = versionsFrom(describe, r.commit, r.mtime); err != nil {
		return err
	}
	if r.files, err = readRepoFiles(o.repo); err != nil {
		return err
	}
	if r.work, err = os.MkdirTemp("", "thingcert-dist-"); err != nil {
		return err
	}
	defer os.RemoveAll(r.work)
	if err := cleanOut(o.out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "thingcert %s (commit %.12s, %s) into %s\n", r.versions.Go, r.commit, r.mtime.Format(time.RFC3339), o.out)

	if err := r.genDocs(ctx); err != nil {
		return err
	}
	sbomTool, err := r.buildSBOMTool(ctx)
	if err != nil {
		return err
	}
	var made []string
	for _, t := range ts {
		bin, err := r.buildBinary(ctx, t)
		if err != nil {
			return err
		}
		names, err := r.artifacts(ctx, t, bin, sbomTool)
		if err != nil {
			return err
		}
		made = append(made, names...)
	}
	if err := writeSums(o.out, made); err != nil {
		return err
	}
	for _, n := range append(made, "SHA256SUMS") {
		fi, err := os.Stat(filepath.Join(o.out, n))
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "  %9d  %s\n", fi.Size(), n)
	}
	fmt.Fprintf(stdout, "done in %s\n", time.Since(start).Round(time.Second))
	return nil
}

// artifacts writes the tarball, the Debian package and the SBOM of one target.
func (r *release) artifacts(ctx context.Context, t target, bin []byte, sbomTool string) ([]string, error) {
	base := fmt.Sprintf("thingcert_%s_linux_%s", r.versions.File, t.Name)
	es, err := r.tarballEntries(bin)
	if err != nil {
		return nil, err
	}
	tgz, err := tarGz(base, es, r.mtime)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(r.o.out, base+".tar.gz"), tgz, 0o644); err != nil {
		return nil, err
	}
	deb, err := r.debPackage(t, bin)
	if err != nil {
		return nil, fmt.Errorf("%s: Debian package: %w", t.Name, err)
	}
	sbom := base + ".cdx.json"
	if err := r.sbom(ctx, sbomTool, t, bin, filepath.Join(r.o.out, sbom)); err != nil {
		return nil, err
	}
	return []string{base + ".tar.gz", deb, sbom}, nil
}

// goEnv is the environment of every go command: the caller's (for the
// caches, PATH, GOPROXY), with everything that changes the output pinned.
func goEnv(extra ...string) []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "CGO_ENABLED", "GOOS", "GOARCH", "GOARM", "GOAMD64", "GOARM64", "GOFLAGS", "GOEXPERIMENT", "GOTOOLCHAIN", "SOURCE_DATE_EPOCH":
			return true
		}
		return false
	})
	return append(env, append([]string{"GOFLAGS=-mod=readonly -buildvcs=false", "GOEXPERIMENT=", "GOTOOLCHAIN=local", "GOAMD64=v1", "GOARM64=v8.0"}, extra...)...)
}

// buildBinary builds the static thingcert for t. Without cgo there is no
// PKCS#11 store (docs/release.md says how to build one on the device).
func (r *release) buildBinary(ctx context.Context, t target) ([]byte, error) {
	out := filepath.Join(r.work, t.Name, "thingcert")
	ldflags := fmt.Sprintf("-s -w -buildid= -X main.version=%s -X main.commit=%s -X main.date=%s",
		r.versions.Go, r.commit, r.mtime.Format(time.RFC3339))
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", ldflags, "-o", out, "./cmd/thingcert")
	cmd.Dir = r.repo
	cmd.Env = goEnv("CGO_ENABLED=0", "GOOS=linux", "GOARCH="+t.GOARCH, "GOARM="+t.GOARM)
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build for %s: %w\n%s", t.Name, err, b)
	}
	return os.ReadFile(out)
}

// genDocs builds thingcert for this machine with the thingcert_gendocs tag
// and runs its hidden __gen-docs command: man pages and completions come from
// the command tree itself (package main of cmd/thingcert, which no other
// program can import).
func (r *release) genDocs(ctx context.Context) error {
	bin := filepath.Join(r.work, "gendocs", "thingcert")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-tags", "thingcert_gendocs", "-o", bin, "./cmd/thingcert")
	cmd.Dir = r.repo
	cmd.Env = goEnv("CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build -tags thingcert_gendocs: %w\n%s", err, b)
	}
	r.docs = filepath.Join(r.work, "gendocs", "out")
	cmd = exec.CommandContext(ctx, bin, "__gen-docs", r.docs)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+strconv.FormatInt(r.mtime.Unix(), 10))
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("thingcert __gen-docs: %w\n%s", err, b)
	}
	return nil
}

// manPages returns the generated man pages, gzipped (-9n), by file name.
func (r *release) manPages() (map[string][]byte, error) {
	dir := filepath.Join(r.docs, "man", "man1")
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	m := map[string][]byte{}
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			return nil, err
		}
		if m[de.Name()], err = gzipN(b); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (r *release) completion(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(r.docs, "completions", name))
}

// buildSBOMTool builds cyclonedx-gomod from this module's go.mod (a tool
// directive: its version is pinned in tools/go.sum, built from source).
func (r *release) buildSBOMTool(ctx context.Context) (string, error) {
	bin := filepath.Join(r.work, "cyclonedx-gomod")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-buildid=", "-o", bin, "github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod")
	cmd.Dir = filepath.Join(r.repo, "tools")
	cmd.Env = goEnv()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building cyclonedx-gomod: %w\n%s", err, b)
	}
	return bin, nil
}

// sbom writes a CycloneDX 1.6 JSON SBOM of the Go modules linked into bin,
// read from the binary's own build information (`go version -m`): exactly
// what shipped, without serial number or timestamp so it is reproducible.
func (r *release) sbom(ctx context.Context, tool string, t target, bin []byte, out string) error {
	// The binary's path is not recorded; a fixed name keeps it that way.
	dir := filepath.Join(r.work, "sbom-"+t.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "thingcert"), bin, 0o755); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, tool, "bin", "-json", "-noserial", "-notimestamp", "-version", r.versions.Go, "-output", out, "thingcert")
	cmd.Dir = dir
	cmd.Env = goEnv()
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cyclonedx-gomod bin for %s: %w\n%s", t.Name, err, b)
	}
	return nil
}

// writeSums writes SHA256SUMS in the format of sha256sum(1), sorted by name,
// so `sha256sum -c SHA256SUMS` checks a download.
func writeSums(dir string, names []string) error {
	names = slices.Sorted(slices.Values(names))
	var b bytes.Buffer
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(sum[:]), n)
	}
	return os.WriteFile(filepath.Join(dir, "SHA256SUMS"), b.Bytes(), 0o644)
}

// cleanOut makes out an empty folder, removing only what an earlier run left
// (thingcert_* and SHA256SUMS): anything else there is an error, not deleted.
func cleanOut(out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	des, err := os.ReadDir(out)
	if err != nil {
		return err
	}
	for _, de := range des {
		n := de.Name()
		if !de.Type().IsRegular() || !(strings.HasPrefix(n, "thingcert_") || n == "SHA256SUMS") {
			return fmt.Errorf("%s holds %s, which dist did not make: give -out an empty or new folder", out, n)
		}
		if err := os.Remove(filepath.Join(out, n)); err != nil {
			return err
		}
	}
	return nil
}

// repoFiles are the checkout's files that ship, besides the binary.
var repoFiles = []string{
	"README.md",
	"packaging/thingcert.service",
	"packaging/pkcs11.conf",
	"packaging/no-tpm.conf",
	"packaging/sysusers.conf",
	"packaging/tmpfiles.conf",
	"packaging/thingcert.yaml",
	"packaging/deb/postinst",
	"packaging/deb/prerm",
	"packaging/deb/postrm",
}

func readRepoFiles(repo string) (map[string][]byte, error) {
	names := slices.Clone(repoFiles)
	docs, err := filepath.Glob(filepath.Join(repo, "docs", "*.md"))
	if err != nil {
		return nil, err
	}
	for _, d := range docs {
		names = append(names, "docs/"+filepath.Base(d))
	}
	m := map[string][]byte{}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(repo, filepath.FromSlash(n)))
		if err != nil {
			return nil, err
		}
		m[n] = b
	}
	return m, nil
}

func (r *release) docNames() []string {
	var d []string
	for n := range r.files {
		if strings.HasPrefix(n, "docs/") {
			d = append(d, n)
		}
	}
	slices.Sort(d)
	return d
}

// tarballEntries: the binary, README, docs, packaging files (the unit as in
// the checkout, for a by-hand install to /usr/local/bin), man pages and
// completions.
func (r *release) tarballEntries(bin []byte) ([]entry, error) {
	es := []entry{{"thingcert", 0o755, bin}, {"README.md", 0o644, r.files["README.md"]}}
	for _, d := range r.docNames() {
		es = append(es, entry{d, 0o644, r.files[d]})
	}
	for _, n := range repoFiles {
		if strings.HasPrefix(n, "packaging/") && !strings.HasPrefix(n, "packaging/deb/") {
			es = append(es, entry{n, 0o644, r.files[n]})
		}
	}
	err := filepath.WalkDir(r.docs, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		rel, err := filepath.Rel(r.docs, p)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		es = append(es, entry{filepath.ToSlash(rel), 0o644, b})
		return nil
	})
	return es, err
}

func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("git %s in %s: %w: %s", strings.Join(args, " "), dir, err, strings.TrimSpace(stderr.String()))
		}
		return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}
