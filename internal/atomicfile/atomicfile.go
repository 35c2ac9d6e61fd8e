// Package atomicfile writes files so that a crash or power cut at any instant
// leaves either the old content or the new, never a torn mix or an empty file.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// WriteFile writes data to path atomically with permission perm: a temporary file
// in the same folder is written and fsynced, renamed over path, and the folder is
// fsynced so the rename itself survives a power cut.
func WriteFile(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, tempPrefix(path)+"*")
	if err != nil {
		return fmt.Errorf("atomicfile: writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	// CreateTemp makes the file 0600; perm is applied before any data is written so
	// a secret is never briefly readable by others.
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("atomicfile: writing %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("atomicfile: writing %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("atomicfile: syncing %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("atomicfile: writing %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("atomicfile: replacing %s: %w", path, err)
	}
	return SyncDir(dir)
}

// CreateExclusive writes a new file atomically and fails with an error satisfying
// errors.Is(err, fs.ErrExist) if path already exists. It is for secrets that must
// never be overwritten, such as private keys: the content is made in a temporary
// file and hard-linked into place, which fails if the name is taken.
//
// The temporary name is removed before the folder is synced, so one sync makes
// the new name and the removal durable together: a power cut leaves either no
// file or the file, never a hidden second copy of a secret under the temporary
// name. (Another writer's sync of the same folder can still make a temporary
// name durable before it is removed; SweepTemporary removes such leftovers.)
func CreateExclusive(path string, data []byte, perm os.FileMode) error {
	return createExclusive(osFS{}, path, data, perm)
}

func createExclusive(fsys fileSystem, path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := fsys.CreateTemp(dir, tempPrefix(path)+"*")
	if err != nil {
		return fmt.Errorf("atomicfile: creating %s: %w", path, err)
	}
	tmp := f.Name()
	removed := false
	defer func() {
		if !removed {
			_ = fsys.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err == nil {
		if _, err = f.Write(data); err == nil {
			err = f.Sync()
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("atomicfile: creating %s: %w", path, err)
	}
	if err = fsys.Link(tmp, path); err != nil {
		return fmt.Errorf("atomicfile: creating %s: %w", path, err)
	}
	removed = true
	if err = fsys.Remove(tmp); err != nil {
		return fmt.Errorf("atomicfile: removing the temporary copy %s of %s: %w", tmp, path, err)
	}
	return fsys.SyncDir(dir)
}

// CreateExclusiveUnsynced is CreateExclusive with the syncs left to the
// caller: the file has its name and content when it returns, and sync (the
// content's fsync and the folder's, together) makes them durable. Until sync
// has returned a power cut may leave no file, the file, or the name with
// empty or partial content, but never a second copy under a temporary name.
// It lets a caller sync the file together with other files it must make
// durable at the same point. sync closes the file: call it exactly once.
func CreateExclusiveUnsynced(path string, data []byte, perm os.FileMode) (sync func() error, err error) {
	return createExclusiveUnsynced(osFS{}, path, data, perm)
}

func createExclusiveUnsynced(fsys fileSystem, path string, data []byte, perm os.FileMode) (func() error, error) {
	dir := filepath.Dir(path)
	f, err := fsys.CreateTemp(dir, tempPrefix(path)+"*")
	if err != nil {
		return nil, fmt.Errorf("atomicfile: creating %s: %w", path, err)
	}
	tmp := f.Name()
	if err = f.Chmod(perm); err == nil {
		if _, err = f.Write(data); err == nil {
			err = fsys.Link(tmp, path)
		}
	}
	if err != nil {
		_ = f.Close()
		_ = fsys.Remove(tmp)
		return nil, fmt.Errorf("atomicfile: creating %s: %w", path, err)
	}
	// Removed before the folder's sync, as in CreateExclusive.
	if err = fsys.Remove(tmp); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("atomicfile: removing the temporary copy %s of %s: %w", tmp, path, err)
	}
	return func() error {
		dirErr := make(chan error, 1)
		go func() { dirErr <- fsys.SyncDir(dir) }()
		err := f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if derr := <-dirErr; err == nil {
			err = derr
		}
		if err != nil {
			return fmt.Errorf("atomicfile: syncing %s: %w", path, err)
		}
		return nil
	}, nil
}

// tempPrefix is the name temporary files for path start with: hidden, and
// named after the file so a leftover says what it was.
func tempPrefix(path string) string {
	return "." + filepath.Base(path) + ".tmp-"
}

// IsTemporary reports whether name (a base name) is one of this package's
// temporary files.
func IsTemporary(name string) bool {
	i := strings.LastIndex(name, ".tmp-")
	if !strings.HasPrefix(name, ".") || i < 1 || i+len(".tmp-") == len(name) {
		return false
	}
	return strings.Trim(name[i+len(".tmp-"):], "0123456789") == ""
}

// SweepTemporary removes the temporary files WriteFile and CreateExclusive
// left in dir when the power failed or the process died mid-write, and syncs
// the folder; it returns the names removed. Run it where the folder's only
// writer starts (a key store opening its folder), never while another writer
// may be mid-write in it.
func SweepTemporary(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("atomicfile: sweeping %s: %w", dir, err)
	}
	var removed []string
	for _, e := range entries {
		if e.Type().IsRegular() && IsTemporary(e.Name()) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return removed, fmt.Errorf("atomicfile: sweeping %s: %w", dir, err)
			}
			removed = append(removed, e.Name())
		}
	}
	if len(removed) == 0 {
		return nil, nil
	}
	return removed, SyncDir(dir)
}

// fileSystem is what CreateExclusive needs of the file system, so a test can
// run it on one that loses what was not synced (internal/crashfs).
type fileSystem interface {
	CreateTemp(dir, pattern string) (tempFile, error)
	Link(oldname, newname string) error
	Remove(name string) error
	SyncDir(dir string) error
}

type tempFile interface {
	Name() string
	Write(b []byte) (int, error)
	Chmod(mode os.FileMode) error
	Sync() error
	Close() error
}

type osFS struct{}

func (osFS) CreateTemp(dir, pattern string) (tempFile, error) { return os.CreateTemp(dir, pattern) }
func (osFS) Link(oldname, newname string) error               { return os.Link(oldname, newname) }
func (osFS) Remove(name string) error                         { return os.Remove(name) }
func (osFS) SyncDir(dir string) error                         { return SyncDir(dir) }

// SyncDir fsyncs a folder so that entries created, renamed or removed in it are
// on disk.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("atomicfile: syncing folder %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("atomicfile: syncing folder %s: %w", dir, err)
	}
	return nil
}
