package packaging

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/internal/testpeers"
)

// distRun is one `make dist` output folder and what its SHA256SUMS lists.
type distRun struct {
	dir  string
	sums map[string]string // file name → hex SHA-256
	raw  []byte
}

// runDist runs the release build (tools/dist, what `make dist` runs) into a
// new temporary folder.
func runDist(t *testing.T, goTool, repo string) distRun {
	t.Helper()
	out := t.TempDir()
	cmd := exec.Command(goTool, "-C", filepath.Join(repo, "tools"), "run", "./dist", "-repo", repo, "-out", out)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tools/dist: %v\n%s", err, b)
	}
	t.Logf("tools/dist:\n%s", b)
	raw, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	r := distRun{dir: out, sums: map[string]string{}, raw: raw}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q is not in sha256sum's format", line)
		}
		r.sums[name] = sum
	}
	return r
}

// TestReleaseArtifacts builds every release artifact twice and compares the
// two SHA256SUMS, checks each sum, checks every package with dpkg-deb and
// file, and installs, removes and purges the amd64 package on this machine.
func TestReleaseArtifacts(t *testing.T) {
	if testing.Short() && !testpeers.Required() {
		t.Skip("builds four architectures twice; not in -short")
	}
	tools := testpeers.Need(t, "git", "dpkg", "dpkg-deb", "dpkg-query", "file", "systemd-analyze")
	dpkgDeb, fileTool := tools[2], tools[4]
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		testpeers.Missing(t, "no go command next to this test's toolchain: "+err.Error())
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}

	first := runDist(t, goTool, repo)
	second := runDist(t, goTool, repo)
	if !bytes.Equal(first.raw, second.raw) {
		t.Errorf("two builds of one commit differ:\n%s\n%s", first.raw, second.raw)
	}
	for name, sum := range first.sums {
		b, err := os.ReadFile(filepath.Join(first.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := sha256.Sum256(b); hex.EncodeToString(got[:]) != sum {
			t.Errorf("SHA256SUMS lists %s for %s; it is %x", sum, name, got)
		}
	}

	// Every target: a tarball, an SBOM and a Debian package of the right
	// architecture, holding a static binary for it.
	want := []struct{ name, debArch, debSuffix, file, goarm string }{
		{"amd64", "amd64", "", "x86-64", ""},
		{"arm64", "arm64", "", "ARM aarch64", ""},
		{"armv7", "armhf", "", "ARM, EABI5", "7"},
		{"armv6", "armhf", "+rpi1", "ARM, EABI5", "6"},
	}
	var version string // the Go version of this release, from the tarball names
	for _, w := range want {
		var tarball, deb, sbom string
		for name := range first.sums {
			switch {
			case strings.HasSuffix(name, "_linux_"+w.name+".tar.gz"):
				tarball = name
				version = strings.TrimSuffix(strings.TrimPrefix(name, "thingcert_"), "_linux_"+w.name+".tar.gz")
			case strings.HasSuffix(name, "_linux_"+w.name+".cdx.json"):
				sbom = name
			case strings.HasSuffix(name, w.debSuffix+"_"+w.debArch+".deb") && (w.debSuffix != "" || !strings.Contains(name, "+rpi")):
				deb = name
			}
		}
		if tarball == "" || deb == "" || sbom == "" {
			t.Errorf("%s: missing artifacts: tarball %q, deb %q, sbom %q", w.name, tarball, deb, sbom)
			continue
		}
		debPath := filepath.Join(first.dir, deb)
		info, err := exec.Command(dpkgDeb, "--info", debPath).CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg-deb --info %s: %v\n%s", deb, err, info)
		}
		for _, field := range []string{"Package: thingcert\n", "Architecture: " + w.debArch + "\n", "Depends: systemd\n", " conffiles", " postinst", " prerm", " postrm"} {
			if !strings.Contains(string(info), field) {
				t.Errorf("%s: dpkg-deb --info lacks %q:\n%s", deb, field, info)
			}
		}
		contents, err := exec.Command(dpkgDeb, "--contents", debPath).CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg-deb --contents %s: %v\n%s", deb, err, contents)
		}
		for _, line := range []string{
			"-rwxr-xr-x root/root .* ./usr/bin/thingcert",
			"-rw-r--r-- root/root .* ./usr/lib/systemd/system/thingcert.service",
			"-rw-r--r-- root/root .* ./usr/lib/sysusers.d/thingcert.conf",
			"-rw-r--r-- root/root .* ./usr/lib/tmpfiles.d/thingcert.conf",
			"drwxr-x--- root/root .* ./etc/thingcert/",
			"-rw-r----- root/root .* ./etc/thingcert/thingcert.yaml",
			"./usr/share/thingcert/systemd/pkcs11.conf",
			"./usr/share/thingcert/systemd/no-tpm.conf",
			"./usr/share/bash-completion/completions/thingcert",
			"./usr/share/zsh/vendor-completions/_thingcert",
			"./usr/share/fish/vendor_completions.d/thingcert.fish",
			"./usr/share/man/man1/thingcert.1.gz",
			"./usr/share/man/man1/thingcert-run.1.gz",
			"./usr/share/doc/thingcert/gateway-guide.md",
			"./usr/share/doc/thingcert/release.md",
		} {
			if !matchLine(string(contents), line) {
				t.Errorf("%s: no entry like %q in dpkg-deb --contents:\n%s", deb, line, contents)
			}
		}
		if strings.Contains(string(contents), "/var/lib/thingcert") {
			t.Errorf("%s ships files under /var/lib/thingcert, which dpkg would then delete on purge", deb)
		}
		// The binary inside: its architecture and that it is static, by file(1);
		// the ARM variant and cgo from the Go build information.
		x := t.TempDir()
		if out, err := exec.Command(dpkgDeb, "-x", debPath, x).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x %s: %v\n%s", deb, err, out)
		}
		bin := filepath.Join(x, "usr", "bin", "thingcert")
		desc, err := exec.Command(fileTool, "-b", bin).CombinedOutput()
		if err != nil {
			t.Fatalf("file %s: %v\n%s", bin, err, desc)
		}
		if !strings.Contains(string(desc), w.file) || !strings.Contains(string(desc), "statically linked") {
			t.Errorf("%s: file says %q; want %q and statically linked", deb, strings.TrimSpace(string(desc)), w.file)
		}
		bi, err := exec.Command(goTool, "version", "-m", bin).CombinedOutput()
		if err != nil {
			t.Fatalf("go version -m %s: %v\n%s", bin, err, bi)
		}
		for _, s := range []string{"build\tCGO_ENABLED=0", "build\t-trimpath=true"} {
			if !strings.Contains(string(bi), s) {
				t.Errorf("%s: go version -m lacks %q:\n%s", deb, s, bi)
			}
		}
		// -trimpath leaves -ldflags out of the build information: look for
		// the linked-in version in the binary itself.
		if b, err := os.ReadFile(bin); err != nil || !bytes.Contains(b, []byte("v"+version)) {
			t.Errorf("%s: the release version v%s is not linked in (%v)", deb, version, err)
		}
		if w.goarm != "" && !strings.Contains(string(bi), "build\tGOARM="+w.goarm+"\n") {
			t.Errorf("%s: not a GOARM=%s build:\n%s", deb, w.goarm, bi)
		}
		var bom struct {
			BOMFormat  string `json:"bomFormat"`
			Components []struct {
				Name string `json:"name"`
			} `json:"components"`
		}
		b, err := os.ReadFile(filepath.Join(first.dir, sbom))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &bom); err != nil || bom.BOMFormat != "CycloneDX" {
			t.Errorf("%s: not a CycloneDX JSON document (%v)", sbom, err)
		}
		var names []string
		for _, c := range bom.Components {
			names = append(names, c.Name)
		}
		for _, m := range []string{"github.com/google/go-tpm", "github.com/eclipse/paho.mqtt.golang"} {
			if !strings.Contains(strings.Join(names, " "), m) {
				t.Errorf("%s: %s is linked in but not listed: %v", sbom, m, names)
			}
		}
		if strings.Contains(strings.Join(names, " "), "crypto11") || strings.Contains(strings.Join(names, " "), "goreleaser/nfpm") {
			t.Errorf("%s lists a module a CGO_ENABLED=0 thingcert does not link: %v", sbom, names)
		}
		if w.name == "amd64" {
			t.Run("install", func(t *testing.T) { testInstall(t, debPath, version, repo) })
		}
	}
}

// matchLine reports whether a line of text contains the parts of pattern
// (split at ".*") in order.
func matchLine(text, pattern string) bool {
	parts := strings.Split(pattern, " .* ")
	for _, line := range strings.Split(text, "\n") {
		rest, ok := line, true
		for _, p := range parts {
			i := strings.Index(rest, p)
			if i < 0 {
				ok = false
				break
			}
			rest = rest[i+len(p):]
		}
		if ok {
			return true
		}
	}
	return false
}
