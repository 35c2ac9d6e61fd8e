// Package atomicfile writes files so that a crash or power cut at any instant
// leaves either the old content or the new, never a torn mix or an empty file.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFile writes data to path atomically with permission perm: a temporary file
// in the same folder is written and fsynced, renamed over path, and the folder is
// fsynced so the rename itself survives a power cut.
func WriteFile(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
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
func CreateExclusive(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("atomicfile: creating %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }()
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
	if err = os.Link(tmp, path); err != nil {
		return fmt.Errorf("atomicfile: creating %s: %w", path, err)
	}
	return SyncDir(dir)
}

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
