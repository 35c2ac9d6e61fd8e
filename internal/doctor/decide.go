package doctor

import (
	"errors"
	"io/fs"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/thingcert/thingcert/rotation"
)

// The decisions: pure functions from what a probe saw to a Result.

// lineRE finds a YAML error's line number. It is compiled when used, not at
// start-up: every thingcert command links this package.
func lineRE() *regexp.Regexp { return regexp.MustCompile(`line (\d+)`) }

// ConfigResult judges config.Load's error for path (nil: it loaded).
func ConfigResult(path string, err error, summary string) Result {
	if err == nil {
		return ok("config", "%s: %s", path, summary)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && errors.Is(err, fs.ErrNotExist) && pe.Path == path {
		fix := "sudo apt-get install --reinstall -o Dpkg::Options::=--force-confmiss thingcert  (puts the package's /etc/thingcert/thingcert.yaml back; then edit it, see docs/config.md)"
		if path != "/etc/thingcert/thingcert.yaml" {
			fix = "ls -l /etc/thingcert/  (give the file with --config, or write " + shellQuote(path) + ": see docs/config.md)"
		}
		return fail("config", fix, "%s does not exist", path)
	}
	return fail("config", editFix(path, err.Error()), "%s", oneLine(err.Error()))
}

// editFix opens path at the line msg names, if it names one.
func editFix(path, msg string) string {
	edit := "${EDITOR:-vi} " + shellQuote(path)
	if m := lineRE().FindStringSubmatch(msg); m != nil {
		edit = "${EDITOR:-vi} +" + m[1] + " " + shellQuote(path)
	}
	return edit + "  (then: systemctl reload thingcert)"
}

// FolderResult judges a folder that holds state or keys: it must be
// 0700-like (no access for group or others); group- or world-writable is a
// failure (anyone could replace a key or the state), readable a warning.
func FolderResult(check, path string, mode fs.FileMode, owner string, err error) Result {
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return warn(check, "systemctl enable --now thingcert  (the agent makes it, mode 0700, at its first start)", "%s does not exist yet", path)
		}
		return fail(check, "ls -ld "+shellQuote(path), "%s: %v", path, err)
	}
	if !mode.IsDir() {
		return fail(check, "ls -ld "+shellQuote(path), "%s is not a folder", path)
	}
	perm := mode.Perm()
	fix := "chmod 700 " + shellQuote(path)
	switch {
	case perm&0o022 != 0:
		return fail(check, fix, "%s (owner %s) has mode %04o: group or others can write in it", path, owner, perm)
	case perm&0o077 != 0:
		return warn(check, fix, "%s (owner %s) has mode %04o: group or others can read it", path, owner, perm)
	case perm&0o700 != 0o700:
		return fail(check, fix, "%s (owner %s) has mode %04o: its owner cannot use it", path, owner, perm)
	}
	return ok(check, "%s, owner %s, mode %04o", path, owner, perm)
}

// SecretFileResult judges a file only its owner may read: a key file, a PIN
// file. The content is never read here.
func SecretFileResult(check, what, path string, mode fs.FileMode, owner string, err error) Result {
	if err != nil {
		return fail(check, "ls -l "+shellQuote(path), "%s %s: %v", what, path, err)
	}
	if !mode.IsRegular() {
		return fail(check, "ls -l "+shellQuote(path), "%s %s is not a regular file", what, path)
	}
	if perm := mode.Perm(); perm&0o077 != 0 {
		return fail(check, "chmod 600 "+shellQuote(path), "%s %s (owner %s) has mode %04o: group or others can read it", what, path, owner, perm)
	}
	return ok(check, "%s %s, owner %s, mode %04o", what, path, owner, mode.Perm())
}

// TPMDeviceResults judge a TPM device node: present (statErr), the kernel's
// resource manager or the raw device, and whether this user can open it
// (openErr; nil when it opened).
func TPMDeviceResults(device string, statErr, openErr error) []Result {
	if strings.HasPrefix(device, "tcp:") {
		return []Result{ok("tpm device", "%s (a TPM simulator over TCP, such as swtpm)", device)}
	}
	if statErr != nil {
		return []Result{fail("tpm device",
			"ls -l /dev/tpm*; dmesg | grep -i tpm  (enable the TPM in firmware or, on a Raspberry Pi, add its overlay such as dtoverlay=tpm-slb9670 to /boot/firmware/config.txt and reboot; without a TPM, use a file: or pkcs11: store)",
			"%s: no such device: this device has no TPM, or its driver is not loaded", device)}
	}
	out := []Result{ok("tpm device", "%s present", device)}
	if isResourceManager(device) {
		out = append(out, ok("tpm resource manager", "%s is the kernel's resource manager (several programs may use the TPM)", device))
	} else {
		out = append(out, warn("tpm resource manager", "set device=/dev/tpmrm0 in the store and key URIs (store: tpm:?device=/dev/tpmrm0)",
			"%s is the raw TPM: one program at a time, and objects left loaded by a crash fill its slots", device))
	}
	switch {
	case openErr == nil:
		out = append(out, ok("tpm access", "this user can open %s", device))
	case errors.Is(openErr, fs.ErrPermission):
		out = append(out, fail("tpm access", "sudo usermod -aG tss thingcert  (the service user; the unit adds SupplementaryGroups=tss, and a shell needs a new login)",
			"this user cannot open %s: %v", device, openErr))
	case errors.Is(openErr, syscall.EBUSY):
		out = append(out, fail("tpm access", "fuser -v "+device+"  (stop the program holding it, or use /dev/tpmrm0)",
			"%s is busy: another program holds the raw TPM", device))
	default:
		out = append(out, fail("tpm access", "ls -l "+device, "opening %s: %v", device, openErr))
	}
	return out
}

// ServiceUser and ServiceGroup are what packaging/thingcert.service runs as:
// User=thingcert with SupplementaryGroups=tss.
const (
	ServiceUser  = "thingcert"
	ServiceGroup = "tss"
)

// TPMServiceAccessResult judges whether the service can open a TPM device
// node whose owner, group and mode are given: whoever runs doctor (often
// root) may open it when the service cannot.
func TPMServiceAccessResult(device string, mode fs.FileMode, owner, group string) Result {
	perm := mode.Perm()
	switch {
	case perm&0o006 == 0o006:
		return ok("tpm service access", "%s (mode %04o) is open to every user, the service's too", device, perm)
	case group == ServiceGroup && perm&0o060 == 0o060:
		return ok("tpm service access", "%s is group %s, mode %04o: the service (SupplementaryGroups=%s) can open it", device, group, perm, ServiceGroup)
	case owner == ServiceUser && perm&0o600 == 0o600:
		return ok("tpm service access", "%s is owned by %s: the service can open it", device, ServiceUser)
	}
	return fail("tpm service access", "sudo apt install tpm-udev && sudo udevadm trigger  (its udev rules make "+device+" group tss, mode 0660)",
		"%s is %s:%s, mode %04o: the service (user %s, groups %s and %s) cannot open it", device, owner, group, perm, ServiceUser, ServiceUser, ServiceGroup)
}

// isResourceManager reports whether a TPM device node is the kernel's
// resource manager (/dev/tpmrmN) rather than the raw TPM (/dev/tpmN).
func isResourceManager(device string) bool {
	return !strings.HasPrefix(device, "tcp:") && strings.HasPrefix(filepath.Base(device), "tpmrm")
}

// ClockResult judges the clock against the certificate's notBefore and the
// build's date: a device without a real-time clock (a Raspberry Pi) boots in
// the past until NTP sets it, and then no certificate is valid yet.
func ClockResult(now, notBefore, built time.Time) Result {
	fix := "timedatectl set-ntp true  (or: chronyc makestep; then check with timedatectl status)"
	switch {
	case !notBefore.IsZero() && now.Before(notBefore):
		return fail("clock", fix, "the clock says %s, before the certificate's notBefore %s: the clock is wrong (no NTP yet, or no real-time clock), and TLS will refuse the certificate",
			now.UTC().Format(time.RFC3339), notBefore.UTC().Format(time.RFC3339))
	case !built.IsZero() && now.Before(built):
		return fail("clock", fix, "the clock says %s, before this program was built (%s): the clock is wrong",
			now.UTC().Format(time.RFC3339), built.UTC().Format(time.RFC3339))
	}
	var after []string
	if !notBefore.IsZero() {
		after = append(after, "the certificate's notBefore")
	}
	if !built.IsZero() {
		after = append(after, "the build date")
	}
	if len(after) == 0 {
		return ok("clock", "%s (no certificate or build date to compare it with)", now.UTC().Format(time.RFC3339))
	}
	return ok("clock", "%s, after %s", now.UTC().Format(time.RFC3339), strings.Join(after, " and "))
}

// NTP is what the time service says.
type NTP struct {
	// Source is who said it ("systemd-timesyncd", "timedatectl", "chrony"),
	// "" when no time service could be asked.
	Source string
	Synced bool
	// Note is what was seen, for the detail.
	Note string
}

// NTPResult judges the time service's answer.
func NTPResult(n NTP) Result {
	switch {
	case n.Source == "":
		return warn("ntp", "sudo apt install systemd-timesyncd && sudo timedatectl set-ntp true",
			"cannot tell whether the clock is synchronised: neither systemd-timesyncd nor chrony answered (%s)", n.Note)
	case !n.Synced:
		return warn("ntp", "timedatectl set-ntp true; timedatectl timesync-status  (or: chronyc sources; UDP port 123 must reach the NTP servers)",
			"the clock is not synchronised (%s: %s)", n.Source, n.Note)
	}
	return ok("ntp", "synchronised (%s)", n.Source)
}

// RenewalResult judges the certificate's validity and the renewal policy's
// decision d at now.
func RenewalResult(cur *rotation.IdentityRecord, d rotation.Decision, due bool, now time.Time) Result {
	if !now.Before(cur.NotAfter) {
		return fail("renewal", "thingcert status  (then set claim.recover: true with the claim and restart the agent, or install a new key and certificate)",
			"the certificate expired at %s: the device cannot connect with it", cur.NotAfter.UTC().Format(time.RFC3339))
	}
	left := cur.NotAfter.Sub(now).Round(time.Minute)
	if d.Emergency {
		return warn("renewal", "systemctl start thingcert  (the agent renews at once; or: thingcert rotate --config FILE --force with the agent stopped)",
			"the certificate expires in %s, inside the emergency window: renewal is urgent", left)
	}
	if due {
		return ok("renewal", "due now (%s); the running agent renews it", d.Reason)
	}
	return ok("renewal", "next renewal %s (%s), expires in %s", d.At.UTC().Format(time.RFC3339), d.Reason, left)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// shellQuote quotes a path for a shell command when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:=@,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
