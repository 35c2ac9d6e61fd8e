package doctor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestFolderResult(t *testing.T) {
	for _, c := range []struct {
		mode fs.FileMode
		want Status
	}{
		{fs.ModeDir | 0o700, OK},
		{fs.ModeDir | 0o750, Warn},
		{fs.ModeDir | 0o755, Warn},
		{fs.ModeDir | 0o770, Fail},
		{fs.ModeDir | 0o777, Fail},
		{fs.ModeDir | 0o300, Fail},
		{0o600, Fail}, // not a folder
	} {
		r := FolderResult("state folder", "/var/lib/thingcert", c.mode, "thingcert:thingcert", nil)
		if r.Status != c.want {
			t.Errorf("mode %v: %s, want %s (%s)", c.mode, r.Status, c.want, r.Detail)
		}
		if r.Status != OK && r.Fix == "" {
			t.Errorf("mode %v: no fix", c.mode)
		}
	}
	if r := FolderResult("state folder", "/x", 0, "", fs.ErrNotExist); r.Status != Warn {
		t.Errorf("missing folder: %s", r.Status)
	}
}

func TestSecretFileResult(t *testing.T) {
	if r := SecretFileResult("pkcs11 PIN file", "PIN file", "/etc/thingcert/pin", 0o640, "root:thingcert", nil); r.Status != Fail || r.Fix != "chmod 600 /etc/thingcert/pin" {
		t.Errorf("0640: %+v", r)
	}
	if r := SecretFileResult("pkcs11 PIN file", "PIN file", "/etc/thingcert/pin", 0o400, "thingcert:thingcert", nil); r.Status != OK {
		t.Errorf("0400: %+v", r)
	}
	if r := SecretFileResult("key file", "key", "/k", 0, "", fs.ErrNotExist); r.Status != Fail {
		t.Errorf("missing: %+v", r)
	}
}

func TestTPMDeviceResults(t *testing.T) {
	find := func(rs []Result, check string) Result {
		for _, r := range rs {
			if r.Check == check {
				return r
			}
		}
		t.Fatalf("no %s in %+v", check, rs)
		return Result{}
	}
	rs := TPMDeviceResults("/dev/tpm0", nil, &fs.PathError{Op: "open", Path: "/dev/tpm0", Err: syscall.EACCES})
	if r := find(rs, "tpm resource manager"); r.Status != Warn {
		t.Errorf("raw TPM: %+v", r)
	}
	if r := find(rs, "tpm access"); r.Status != Fail || !strings.Contains(r.Fix, "usermod -aG tss") {
		t.Errorf("EACCES: %+v", r)
	}
	rs = TPMDeviceResults("/dev/tpmrm0", nil, nil)
	for _, r := range rs {
		if r.Status != OK {
			t.Errorf("healthy tpmrm0: %+v", r)
		}
	}
	rs = TPMDeviceResults("/dev/tpmrm0", &fs.PathError{Op: "stat", Path: "/dev/tpmrm0", Err: syscall.ENOENT}, nil)
	if len(rs) != 1 || rs[0].Status != Fail {
		t.Errorf("no device: %+v", rs)
	}
}

func TestClockResult(t *testing.T) {
	nb := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	built := time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
	if r := ClockResult(nb.Add(time.Hour), nb, built); r.Status != OK {
		t.Errorf("after both: %+v", r)
	}
	if r := ClockResult(nb.Add(-time.Second), nb, built); r.Status != Fail || !strings.Contains(r.Detail, "notBefore") {
		t.Errorf("before notBefore: %+v", r)
	}
	// A Pi without RTC boots at 1970: before the build date, with no certificate yet.
	if r := ClockResult(time.Unix(0, 0), time.Time{}, built); r.Status != Fail || !strings.Contains(r.Detail, "built") {
		t.Errorf("before the build: %+v", r)
	}
	if r := ClockResult(time.Unix(0, 0), time.Time{}, time.Time{}); r.Status != OK {
		t.Errorf("nothing to compare with: %+v", r)
	}
}

func TestNTPResult(t *testing.T) {
	if r := NTPResult(NTP{Source: "chrony", Synced: true}); r.Status != OK {
		t.Errorf("%+v", r)
	}
	if r := NTPResult(NTP{Source: "timedatectl", Synced: false, Note: "NTPSynchronized=no"}); r.Status != Warn || r.Fix == "" {
		t.Errorf("%+v", r)
	}
	if r := NTPResult(NTP{}); r.Status != Warn || r.Fix == "" {
		t.Errorf("%+v", r)
	}
}

func TestConfigResultNamesTheLine(t *testing.T) {
	err := fmt.Errorf("config /etc/thingcert/thingcert.yaml: line 7: unknown key %q", "renewal_interval")
	r := ConfigResult("/etc/thingcert/thingcert.yaml", err, "")
	if r.Status != Fail || !strings.Contains(r.Fix, "+7 /etc/thingcert/thingcert.yaml") {
		t.Errorf("%+v", r)
	}
	_, statErr := os.Stat("/nonexistent/thingcert.yaml")
	r = ConfigResult("/nonexistent/thingcert.yaml", fmt.Errorf("config: %w", statErr), "")
	if r.Status != Fail || !strings.Contains(r.Detail, "does not exist") {
		t.Errorf("%+v", r)
	}
	if !errors.Is(statErr, fs.ErrNotExist) {
		t.Fatal(statErr)
	}
}

func TestExitCode(t *testing.T) {
	var r Report
	r.add(ok("a", ""), skip("b", ""))
	if r.ExitCode() != 0 {
		t.Error("ok and skipped: not 0")
	}
	r.add(warn("c", "x", ""))
	if r.ExitCode() != 1 {
		t.Error("warning: not 1")
	}
	r.add(fail("d", "x", ""))
	if r.ExitCode() != 2 {
		t.Error("failure: not 2")
	}
}

func TestTPMServiceAccessResult(t *testing.T) {
	for _, c := range []struct {
		mode         fs.FileMode
		owner, group string
		want         Status
	}{
		{0o660, "tss", "tss", OK},
		{0o660, "root", "tss", OK},
		{0o600, "root", "root", Fail},
		{0o660, "root", "root", Fail},
		{0o666, "root", "root", OK},
		{0o600, "thingcert", "root", OK},
	} {
		r := TPMServiceAccessResult("/dev/tpmrm0", fs.ModeDevice|fs.ModeCharDevice|c.mode, c.owner, c.group)
		if r.Status != c.want || (r.Status == Fail && !strings.Contains(r.Fix, "tpm-udev")) {
			t.Errorf("%s:%s %04o: %+v", c.owner, c.group, c.mode, r)
		}
	}
}
