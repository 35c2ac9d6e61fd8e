package crashfs

import (
	"errors"
	"io/fs"
	"testing"
)

func write(t *testing.T, f *FS, dir, data string, sync bool) string {
	t.Helper()
	fl, err := f.CreateTemp(dir, "x-*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fl.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := fl.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if err := fl.Close(); err != nil {
		t.Fatal(err)
	}
	return fl.Name()
}

func read(f *FS, p string) string {
	b, err := f.ReadFile(p)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

func TestWhatSurvives(t *testing.T) {
	f := New()
	if err := f.MkdirAll("/s", 0o700); err != nil {
		t.Fatal(err)
	}
	f.SyncAll()

	// Synced content under a synced name survives.
	a := write(t, f, "/s", "a", true)
	if err := f.Rename(a, "/s/a"); err != nil {
		t.Fatal(err)
	}
	if err := f.SyncDir("/s"); err != nil {
		t.Fatal(err)
	}
	// Unsynced content under a synced name survives empty.
	b := write(t, f, "/s", "b", false)
	if err := f.Rename(b, "/s/b"); err != nil {
		t.Fatal(err)
	}
	if err := f.SyncDir("/s"); err != nil {
		t.Fatal(err)
	}
	// Synced content renamed over a file without a folder sync: the old file.
	c := write(t, f, "/s", "a2", true)
	if err := f.Rename(c, "/s/a"); err != nil {
		t.Fatal(err)
	}
	// A folder never synced in its parent vanishes with what is in it.
	if err := f.MkdirAll("/s/new", 0o700); err != nil {
		t.Fatal(err)
	}
	d := write(t, f, "/s/new", "d", true)
	if err := f.Rename(d, "/s/new/d"); err != nil {
		t.Fatal(err)
	}
	if err := f.SyncDir("/s/new"); err != nil {
		t.Fatal(err)
	}
	if got := read(f, "/s/a"); got != "a2" {
		t.Fatalf("before the cut /s/a = %q", got)
	}

	// ReadDurable tells, before the cut, what the restart will find.
	for p, want := range map[string]string{"/s/a": "a", "/s/b": ""} {
		if got, err := f.ReadDurable(p); err != nil || string(got) != want {
			t.Errorf("ReadDurable(%s) = %q, %v; want %q", p, got, err, want)
		}
	}
	if _, err := f.ReadDurable("/s/new/d"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadDurable of a file in a folder never synced: %v", err)
	}
	if got := read(f, "/s/a"); got != "a2" {
		t.Fatalf("ReadDurable changed what is read now: /s/a = %q", got)
	}

	g := f.Restart()
	if got := read(g, "/s/a"); got != "a" {
		t.Errorf("/s/a = %q, want the synced old content a", got)
	}
	if got := read(g, "/s/b"); got != "" {
		t.Errorf("/s/b = %q, want empty (content never synced)", got)
	}
	if _, err := g.ReadFile("/s/new/d"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("/s/new/d survived in a folder whose entry was never synced: %v", err)
	}
	names, _ := g.ReadDir("/s")
	if len(names) != 2 {
		t.Errorf("/s holds %v, want [a b] (temporary names were never synced)", names)
	}
	if _, err := f.ReadFile("/s/a"); !errors.Is(err, ErrPowerCut) {
		t.Errorf("the old FS still answers: %v", err)
	}
}

func TestCutPowerAfter(t *testing.T) {
	f := New()
	f.CutPowerAfter(2)
	if err := f.MkdirAll("/a/b", 0o700); err != nil { // two operations
		t.Fatal(err)
	}
	if err := f.MkdirAll("/a/b/c", 0o700); !errors.Is(err, ErrPowerCut) {
		t.Fatalf("third operation: %v, want a power cut", err)
	}
	if _, err := f.ReadDir("/a"); !errors.Is(err, ErrPowerCut) {
		t.Fatalf("reads after the cut: %v", err)
	}
	if got := f.Ops(); got != 2 {
		t.Errorf("Ops = %d", got)
	}
}

func TestLock(t *testing.T) {
	f := New()
	l, err := f.Lock("/lock")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Lock("/lock"); err == nil {
		t.Fatal("second lock taken")
	}
	l.Close()
	if _, err := f.Lock("/lock"); err != nil {
		t.Fatal(err)
	}
}
