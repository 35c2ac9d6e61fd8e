package rotation

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// FS is the file system the state folder is written through: the few
// primitives an atomic write is made of, so a test can put a layer underneath
// that forgets whatever was not synced (a power cut) and check that the
// ordering of writes, syncs and renames is right. OSFS is the real one.
type FS interface {
	MkdirAll(path string, perm fs.FileMode) error
	// CreateTemp makes a new file in dir, as os.CreateTemp.
	CreateTemp(dir, pattern string) (File, error)
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

// File is a file being written.
type File interface {
	io.Writer
	Name() string
	Chmod(fs.FileMode) error
	// Sync makes the content written so far durable.
	Sync() error
	Close() error
}

// ErrLocked: another process is working on the state folder.
var ErrLocked = errors.New("state folder in use")

// OSFS is the operating system's file system.
type OSFS struct{}

var _ FS = OSFS{}

func (OSFS) MkdirAll(path string, perm fs.FileMode) error { return os.MkdirAll(path, perm) }
func (OSFS) CreateTemp(dir, pattern string) (File, error) { return os.CreateTemp(dir, pattern) }
func (OSFS) Rename(o, n string) error                     { return os.Rename(o, n) }
func (OSFS) Remove(name string) error                     { return os.Remove(name) }
func (OSFS) ReadFile(name string) ([]byte, error)         { return os.ReadFile(name) }

func (OSFS) ReadDir(name string) ([]string, error) {
	es, err := os.ReadDir(name)
	names := make([]string, 0, len(es))
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names, err
}

func (OSFS) SyncDir(name string) error {
	d, err := os.Open(name)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Lock uses flock(2), which the kernel releases when the holder dies, so a
// killed process never leaves the folder locked. The holder's PID is written
// in the file for the message another process gets.
func (OSFS) Lock(path string) (io.Closer, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			who := "another thingcert process"
			if pid, perr := strconv.Atoi(string(holder)); perr == nil {
				who += fmt.Sprintf(" (pid %d)", pid)
			}
			return nil, fmt.Errorf("%w: %s holds %s; wait for it to finish or stop it", ErrLocked, who, path)
		}
		return nil, err
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())), 0)
	return f, nil
}

// writeAtomic replaces path with data so that a crash or power cut leaves the
// old content or the new: temporary file, write, fsync, rename, fsync of the
// folder.
func writeAtomic(fsys FS, path string, data []byte, perm fs.FileMode) (err error) {
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
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = fsys.Rename(tmp, path); err != nil {
		return err
	}
	return fsys.SyncDir(dir)
}
