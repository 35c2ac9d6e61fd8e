package atomicfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/thingcert/thingcert/internal/crashfs"
)

// crashFS runs CreateExclusive on crashfs, which keeps only what was synced.
type crashFS struct{ *crashfs.FS }

func (c crashFS) CreateTemp(dir, pattern string) (tempFile, error) {
	f, err := c.FS.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// TestCreateExclusiveLeavesNoHiddenCopyAfterAPowerCut cuts the power after
// every operation of CreateExclusive: what survives is no file or the whole
// file under its name, never a second copy of the secret under a temporary
// name that nothing would ever delete.
func TestCreateExclusiveLeavesNoHiddenCopyAfterAPowerCut(t *testing.T) {
	secret := []byte("-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n")
	for n := 0; ; n++ {
		cfs := crashfs.New()
		if err := cfs.MkdirAll("/keys", 0o700); err != nil {
			t.Fatal(err)
		}
		cfs.SyncAll()
		cfs.CutPowerAfter(n)
		err := createExclusive(crashFS{cfs}, "/keys/device.pem", secret, 0o600)
		cut := cfs.PowerCut()
		if err != nil && !cut {
			t.Fatalf("cut after %d operations: CreateExclusive failed without a power cut: %v", n, err)
		}
		after := cfs.Restart()
		names, err := after.ReadDir("/keys")
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case len(names) == 0 && cut:
		case slices.Equal(names, []string{"device.pem"}):
			if got, _ := after.ReadFile("/keys/device.pem"); !bytes.Equal(got, secret) {
				t.Fatalf("cut after %d operations: device.pem holds %q", n, got)
			}
		default:
			t.Fatalf("cut after %d operations (CreateExclusive: %v): the folder holds %q after the restart; want nothing or device.pem alone", n, err, names)
		}
		if !cut {
			if len(names) != 1 {
				t.Fatalf("CreateExclusive returned nil, but after a power cut the file is gone")
			}
			return // every cut point was tried
		}
	}
}

// TestCreateExclusiveUnsyncedPowerCut cuts the power after every operation
// of CreateExclusiveUnsynced and its sync: once sync has returned the whole
// file is there under its name; before, no file or the name alone (any
// content: its reader must refuse a damaged one); never a temporary name.
func TestCreateExclusiveUnsyncedPowerCut(t *testing.T) {
	secret := []byte("-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n")
	for n := 0; ; n++ {
		cfs := crashfs.New()
		if err := cfs.MkdirAll("/keys", 0o700); err != nil {
			t.Fatal(err)
		}
		cfs.SyncAll()
		cfs.CutPowerAfter(n)
		synced := false
		sync, err := createExclusiveUnsynced(crashFS{cfs}, "/keys/device.pem", secret, 0o600)
		if err == nil {
			err = sync()
			synced = err == nil
		}
		cut := cfs.PowerCut()
		if err != nil && !cut {
			t.Fatalf("cut after %d operations: failed without a power cut: %v", n, err)
		}
		after := cfs.Restart()
		names, err := after.ReadDir("/keys")
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case len(names) == 0 && !synced:
		case slices.Equal(names, []string{"device.pem"}):
			if got, _ := after.ReadFile("/keys/device.pem"); synced && !bytes.Equal(got, secret) {
				t.Fatalf("cut after %d operations: synced, but device.pem holds %q", n, got)
			}
		default:
			t.Fatalf("cut after %d operations (synced %v): the folder holds %q after the restart; want nothing or device.pem alone", n, synced, names)
		}
		if !cut {
			if !synced || len(names) != 1 {
				t.Fatalf("sync returned nil, but after a power cut the file is gone")
			}
			return // every cut point was tried
		}
	}
}

func TestSweepTemporaryRemovesLeftovers(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{".device.pem.tmp-12345", ".state.json.tmp-9", "device.pem", ".hidden", "x.tmp-1", ".a.tmp-x1"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("k"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := SweepTemporary(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{".device.pem.tmp-12345", ".state.json.tmp-9"}) {
		t.Errorf("removed %q", removed)
	}
	entries, _ := os.ReadDir(dir)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if !slices.Equal(left, []string{".a.tmp-x1", ".hidden", "device.pem", "x.tmp-1"}) {
		t.Errorf("left %q", left)
	}
	if _, err := SweepTemporary(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sweeping a missing folder: %v", err)
	}
}
