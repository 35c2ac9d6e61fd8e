package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the "deb" packager
	"github.com/goreleaser/nfpm/v2/files"
)

// Where the package puts things (Debian's and systemd's paths).
const (
	binPath     = "/usr/bin/thingcert"
	unitPath    = "/usr/lib/systemd/system/thingcert.service"
	dropInDir   = "/usr/share/thingcert/systemd"
	sysusersPth = "/usr/lib/sysusers.d/thingcert.conf"
	tmpfilesPth = "/usr/lib/tmpfiles.d/thingcert.conf"
	configPath  = "/etc/thingcert/thingcert.yaml"
	docDir      = "/usr/share/doc/thingcert"
)

// packagedUnitHeader replaces the checkout unit's by-hand install notes.
const packagedUnitHeader = `# thingcert device agent: keeps this device connected to AWS IoT and its
# X.509 identity renewed. Installed by the thingcert package: change it with a
# drop-in (systemctl edit thingcert), not here. Two are ready to link in:
#   ` + dropInDir + `/pkcs11.conf   keys in a PKCS#11 token
#   ` + dropInDir + `/no-tpm.conf   a device without a TPM
#   mkdir -p /etc/systemd/system/thingcert.service.d
#   ln -s ` + dropInDir + `/no-tpm.conf /etc/systemd/system/thingcert.service.d/
# ` + docDir + `/daemon.md explains each setting.

`

// packagedUnit is packaging/thingcert.service with the binary where the
// package puts it. The checkout's unit keeps /usr/local/bin, where a by-hand
// install belongs.
func packagedUnit(src []byte) ([]byte, error) {
	const from, to = "ExecStart=/usr/local/bin/thingcert ", "ExecStart=" + binPath + " "
	if n := bytes.Count(src, []byte(from)); n != 1 {
		return nil, fmt.Errorf("packaging/thingcert.service: %d lines start %q, want exactly one", n, from)
	}
	i := bytes.Index(src, []byte("\n[Unit]\n"))
	if i < 0 {
		return nil, fmt.Errorf("packaging/thingcert.service: no [Unit] section")
	}
	body := bytes.Replace(src[i+1:], []byte(from), []byte(to), 1)
	if bytes.Contains(body, []byte("/usr/local/")) {
		return nil, fmt.Errorf("packaging/thingcert.service names /usr/local/ outside ExecStart: the package has nothing there")
	}
	return append([]byte(packagedUnitHeader), body...), nil
}

// debFile is one file of the package: where it goes, its bytes and mode, and
// its nfpm type ("" for a plain file).
type debFile struct {
	dst  string
	data []byte
	mode fs.FileMode
	typ  string
}

func (r *release) debFiles(bin []byte) ([]debFile, error) {
	unit, err := packagedUnit(r.files["packaging/thingcert.service"])
	if err != nil {
		return nil, err
	}
	fs := []debFile{
		{dst: binPath, data: bin, mode: 0o755},
		{dst: unitPath, data: unit, mode: 0o644},
		{dst: dropInDir + "/pkcs11.conf", data: r.files["packaging/pkcs11.conf"], mode: 0o644},
		{dst: dropInDir + "/no-tpm.conf", data: r.files["packaging/no-tpm.conf"], mode: 0o644},
		{dst: sysusersPth, data: r.files["packaging/sysusers.conf"], mode: 0o644},
		{dst: tmpfilesPth, data: r.files["packaging/tmpfiles.conf"], mode: 0o644},
		// root:root in the archive (the group need not exist when dpkg
		// unpacks); tmpfiles.conf gives the agent's group read access.
		{dst: "/etc/thingcert", mode: 0o750, typ: files.TypeDir},
		{dst: configPath, data: r.files["packaging/thingcert.yaml"], mode: 0o640, typ: files.TypeConfigNoReplace},
		{dst: docDir + "/README.md", data: r.files["README.md"], mode: 0o644},
	}
	for _, d := range r.docNames() {
		fs = append(fs, debFile{dst: docDir + "/" + path.Base(d), data: r.files[d], mode: 0o644})
	}
	comps := map[string]string{
		"thingcert.bash": "/usr/share/bash-completion/completions/thingcert",
		"_thingcert":     "/usr/share/zsh/vendor-completions/_thingcert",
		"thingcert.fish": "/usr/share/fish/vendor_completions.d/thingcert.fish",
	}
	for src, dst := range comps {
		b, err := r.completion(src)
		if err != nil {
			return nil, err
		}
		fs = append(fs, debFile{dst: dst, data: b, mode: 0o644})
	}
	man, err := r.manPages()
	if err != nil {
		return nil, err
	}
	for name, b := range man {
		fs = append(fs, debFile{dst: "/usr/share/man/man1/" + name + ".gz", data: b, mode: 0o644})
	}
	slices.SortFunc(fs, func(a, b debFile) int { return strings.Compare(a.dst, b.dst) })
	return fs, nil
}

// debPackage writes thingcert_<version>_<arch>.deb with nfpm and returns its
// file name. nfpm reads each file from disk, so they are staged in the
// scratch folder first; their names there do not reach the package.
func (r *release) debPackage(t target, bin []byte) (string, error) {
	dfs, err := r.debFiles(bin)
	if err != nil {
		return "", err
	}
	stage := filepath.Join(r.work, t.Name, "deb")
	var contents files.Contents
	for i, f := range dfs {
		c := &files.Content{Destination: f.dst, Type: f.typ,
			FileInfo: &files.ContentFileInfo{Owner: "root", Group: "root", Mode: f.mode, MTime: r.mtime}}
		if f.typ != files.TypeDir {
			c.Source = filepath.Join(stage, fmt.Sprintf("%03d", i))
			if err := os.MkdirAll(stage, 0o755); err != nil {
				return "", err
			}
			if err := os.WriteFile(c.Source, f.data, 0o600); err != nil {
				return "", err
			}
			c.FileInfo.Size = int64(len(f.data))
		}
		contents = append(contents, c)
	}
	scripts := map[string]string{}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		p := filepath.Join(stage, "script-"+s)
		if err := os.WriteFile(p, r.files["packaging/deb/"+s], 0o755); err != nil {
			return "", err
		}
		scripts[s] = p
	}
	version := r.versions.Deb + t.DebSuffix
	info := &nfpm.Info{
		Name:          "thingcert",
		Arch:          t.Deb,
		Platform:      "linux",
		Version:       version,
		VersionSchema: "none",
		Section:       "admin",
		Priority:      "optional",
		Maintainer:    r.o.maintainer,
		Homepage:      "https://github.com/thingcert/thingcert",
		Description: "AWS IoT device identity whose private key never leaves secure storage\n" +
			"thingcert gives a Linux device an X.509 client identity for AWS IoT\n" +
			"Core whose private key stays in a TPM 2.0 or (least secure) a file:\n" +
			"it provisions by claim, connects over MQTT with mutual TLS and\n" +
			"renews the certificate before it ages out.\n" +
			"This build has no PKCS#11 support (it needs cgo); see\n" +
			docDir + "/release.md.",
		MTime: r.mtime,
		Overridables: nfpm.Overridables{
			Depends:  []string{"systemd"},
			Suggests: []string{"tpm-udev", "tpm2-tools"},
			Contents: contents,
			Scripts:  nfpm.Scripts{PostInstall: scripts["postinst"], PreRemove: scripts["prerm"], PostRemove: scripts["postrm"]},
			Deb:      nfpm.Deb{Compression: "xz"},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", err
	}
	pkgr, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	name := fmt.Sprintf("thingcert_%s_%s.deb", version, t.Deb)
	var buf bytes.Buffer
	if err := pkgr.Package(info, &buf); err != nil {
		return "", err
	}
	return name, os.WriteFile(filepath.Join(r.o.out, name), buf.Bytes(), 0o644)
}
