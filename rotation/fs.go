package rotation

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/thingcert/thingcert/internal/filelock"
)

// fileSystem is the file system the state folder is written through: the few
// primitives an atomic write is made of, so a test can put a layer underneath
// that forgets whatever was not synced (a power cut) and check that the
// ordering of writes, syncs and renames is right. osFS is the real one.
type fileSystem interface {
	MkdirAll(path string, perm fs.FileMode) error
	// CreateTemp makes a new file in dir, as os.CreateTemp.
	CreateTemp(dir, pattern string) (tempFile, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	ReadFile(name string) ([]byte, error)
	// ReadDir lists the names in a folder.
	ReadDir(name string) ([]string, error)
	// SyncDir makes the folder's entries (creations, renames, removals) durable.
	SyncDir(name string) error
	// Lock takes an exclusive lock named by path, failing at once if another
	// process holds it. Closing the result releases it.
	Lock(path string) (io.Closer, error)
}

// tempFile is a file being written.
type tempFile interface {
	io.Writer
	Name() string
	Chmod(fs.FileMode) error
	// Sync makes the content written so far durable.
	Sync() error
	Close() error
}

// ErrLocked: another process is working on the state folder.
var ErrLocked = errors.New("state folder in use")

// osFS is the operating system's file system.
type osFS struct{}

var _ fileSystem = osFS{}

func (osFS) MkdirAll(path string, perm fs.FileMode) error     { return os.MkdirAll(path, perm) }
func (osFS) CreateTemp(dir, pattern string) (tempFile, error) { return os.CreateTemp(dir, pattern) }
func (osFS) Rename(o, n string) error                         { return os.Rename(o, n) }
func (osFS) Remove(name string) error                         { return os.Remove(name) }
func (osFS) ReadFile(name string) ([]byte, error)             { return os.ReadFile(name) }

func (osFS) ReadDir(name string) ([]string, error) {
	es, err := os.ReadDir(name)
	names := make([]string, 0, len(es))
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names, err
}

func (osFS) SyncDir(name string) error {
	d, err := os.Open(name)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Lock uses an OS file lock (flock(2) on Linux), which the kernel releases
// when the holder dies, so a killed process never leaves the folder locked.
func (osFS) Lock(path string) (io.Closer, error) {
	l, err := filelock.Lock(path)
	var held *filelock.HeldError
	if errors.As(err, &held) {
		who := "another process"
		if held.PID != 0 {
			who = fmt.Sprintf("the process with pid %d", held.PID)
		}
		return nil, fmt.Errorf("%w: %s holds %s; wait for it to finish or stop it", ErrLocked, who, path)
	}
	return l, err
}

// writeAtomic replaces path with data so that a crash or power cut leaves the
// old content or the new: temporary file, write, fsync, rename, fsync of the
// folder.
func writeAtomic(fsys fileSystem, path string, data []byte, perm fs.FileMode) error {
	return replaceFile(fsys, path, data, perm, true)
}

// replaceFile is writeAtomic, with the folder's fsync left out when
// syncFolder is false: the rename may then be lost in a power cut (the old
// content comes back), but the content is synced before the rename, so the
// name never points at a torn or empty file, even if something else syncs the
// folder later.
func replaceFile(fsys fileSystem, path string, data []byte, perm fs.FileMode, syncFolder bool) (err error) {
	return replaceFileAfter(fsys, path, data, perm, syncFolder, nil)
}

// replaceFileAfter is replaceFile that also runs the syncs in before, each
// in its own goroutine while the new content is synced, and renames only
// once all of them have succeeded: what the new file refers to is durable
// before the new file's name is. Syncs of different files done together
// cost about one on a journaling file system, which commits them together.
func replaceFileAfter(fsys fileSystem, path string, data []byte, perm fs.FileMode, syncFolder bool, before []func() error) (err error) {
	dir := filepath.Dir(path)
	f, err := fsys.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = fsys.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = syncAll(append(before, f.Sync)); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = fsys.Rename(tmp, path); err != nil {
		return err
	}
	if !syncFolder {
		return nil
	}
	return fsys.SyncDir(dir)
}

// syncAll runs the syncs together, the last in this goroutine, and returns
// their errors joined.
func syncAll(syncs []func() error) error {
	switch len(syncs) {
	case 0:
		return nil
	case 1:
		return syncs[0]()
	}
	errs := make([]error, len(syncs))
	var wg sync.WaitGroup
	for i, sync := range syncs[:len(syncs)-1] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = sync()
		}()
	}
	errs[len(syncs)-1] = syncs[len(syncs)-1]()
	wg.Wait()
	return errors.Join(errs...)
}
