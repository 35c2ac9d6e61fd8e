// Package crashfs is an in-memory file system that forgets what was not
// synced when the power is cut: a file's content survives only as of its last
// fsync, and a folder's entries (files created, renamed, removed, folders
// made) only as of the folder's last fsync. Tests write through it, cut the
// power after any operation, and restart from what survived, to prove that a
// writer's ordering of writes, syncs and renames is crash-safe.
//
// It models the guarantees POSIX gives and ext4 (data=ordered) or a typical
// flash file system does not go beyond: nothing reaches the disk by luck.
package crashfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// ErrPowerCut is returned by every operation from the cut on: the process
// "died" there.
var ErrPowerCut = errors.New("crashfs: power cut")

type node struct {
	dir     bool
	mode    fs.FileMode
	data    []byte           // what a reader sees now
	synced  []byte           // what survives a power cut
	entries map[string]*node // a folder's entries now
	durable map[string]*node // a folder's entries as of its last fsync
}

func newDir() *node {
	return &node{dir: true, mode: fs.ModeDir | 0o700, entries: map[string]*node{}, durable: map[string]*node{}}
}

// FS is the file system. Paths are absolute, slash-separated. Safe for
// concurrent use.
type FS struct {
	mu     sync.Mutex
	root   *node
	ops    int
	cutAt  int // the operation that fails first; <0: never
	cut    bool
	seq    int
	locked map[string]bool
}

// New is an empty file system whose root folder exists.
func New() *FS { return &FS{root: newDir(), cutAt: -1, locked: map[string]bool{}} }

// CutPowerAfter makes the power fail after n more changing operations: the
// (n+1)-th fails with ErrPowerCut, as does everything after it.
func (f *FS) CutPowerAfter(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cutAt = f.ops + n
}

// Ops is how many changing operations (mkdir, create, write, chmod, sync,
// close, rename, remove, folder sync) have been done.
func (f *FS) Ops() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ops
}

// PowerCut reports whether the power has been cut.
func (f *FS) PowerCut() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cut
}

// Restart is the file system after the power comes back: only what was
// synced, through synced folders, is there. The old FS stays dead.
func (f *FS) Restart() *FS {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cut = true
	return &FS{root: survive(f.root), cutAt: -1, locked: map[string]bool{}}
}

func survive(n *node) *node {
	if !n.dir {
		return &node{mode: n.mode, data: slices.Clone(n.synced), synced: slices.Clone(n.synced)}
	}
	d := newDir()
	d.mode = n.mode
	for name, c := range n.durable {
		s := survive(c)
		d.entries[name] = s
		d.durable[name] = s
	}
	return d
}

// SyncAll makes everything durable, as a clean shutdown would: for setting up
// the state a test starts from.
func (f *FS) SyncAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	var walk func(n *node)
	walk = func(n *node) {
		if !n.dir {
			n.synced = slices.Clone(n.data)
			return
		}
		n.durable = make(map[string]*node, len(n.entries))
		for k, v := range n.entries {
			n.durable[k] = v
			walk(v)
		}
	}
	walk(f.root)
}

// step counts a changing operation and fails it if the power is cut.
func (f *FS) step(op, name string) error {
	if f.cut {
		return &fs.PathError{Op: op, Path: name, Err: ErrPowerCut}
	}
	if f.cutAt >= 0 && f.ops >= f.cutAt {
		f.cut = true
		return &fs.PathError{Op: op, Path: name, Err: ErrPowerCut}
	}
	f.ops++
	return nil
}

func split(p string) ([]string, error) {
	if !path.IsAbs(p) {
		return nil, fmt.Errorf("crashfs: %q is not an absolute path", p)
	}
	p = path.Clean(p)
	if p == "/" {
		return nil, nil
	}
	return strings.Split(p[1:], "/"), nil
}

// lookup finds the node at p (nil, nil if absent); parent is its folder.
func (f *FS) lookup(p string) (parent, n *node, name string, err error) {
	parts, err := split(p)
	if err != nil {
		return nil, nil, "", err
	}
	if len(parts) == 0 {
		return nil, f.root, "/", nil
	}
	d := f.root
	for _, part := range parts[:len(parts)-1] {
		c, ok := d.entries[part]
		if !ok {
			return nil, nil, "", &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
		}
		if !c.dir {
			return nil, nil, "", &fs.PathError{Op: "open", Path: p, Err: errors.New("not a directory")}
		}
		d = c
	}
	name = parts[len(parts)-1]
	return d, d.entries[name], name, nil
}

// MkdirAll makes p and its missing parents. Each new folder's entry in its
// parent is durable only once the parent is synced.
func (f *FS) MkdirAll(p string, perm fs.FileMode) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut {
		return &fs.PathError{Op: "mkdir", Path: p, Err: ErrPowerCut}
	}
	parts, err := split(p)
	if err != nil {
		return err
	}
	d := f.root
	for _, part := range parts {
		c, ok := d.entries[part]
		if !ok {
			if err := f.step("mkdir", p); err != nil {
				return err
			}
			c = newDir()
			c.mode = fs.ModeDir | perm
			d.entries[part] = c
		} else if !c.dir {
			return &fs.PathError{Op: "mkdir", Path: p, Err: errors.New("not a directory")}
		}
		d = c
	}
	return nil
}

// File is an open file.
type File struct {
	fs   *FS
	name string
	n    *node
	done bool
}

// CreateTemp makes a new empty file in dir whose name is pattern with its
// last "*" replaced by a number, as os.CreateTemp does.
func (f *FS) CreateTemp(dir, pattern string) (*File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, d, _, err := f.lookup(dir)
	if err != nil {
		return nil, err
	}
	if d == nil || !d.dir {
		return nil, &fs.PathError{Op: "createtemp", Path: dir, Err: fs.ErrNotExist}
	}
	if err := f.step("createtemp", dir); err != nil {
		return nil, err
	}
	f.seq++
	name := pattern + strconv.Itoa(f.seq)
	if i := strings.LastIndex(pattern, "*"); i >= 0 {
		name = pattern[:i] + strconv.Itoa(f.seq) + pattern[i+1:]
	}
	n := &node{mode: 0o600}
	d.entries[name] = n
	return &File{fs: f, name: path.Join(dir, name), n: n}, nil
}

// Name is the file's path.
func (fl *File) Name() string { return fl.name }

func (fl *File) Write(b []byte) (int, error) {
	fl.fs.mu.Lock()
	defer fl.fs.mu.Unlock()
	if fl.done {
		return 0, fs.ErrClosed
	}
	if err := fl.fs.step("write", fl.name); err != nil {
		return 0, err
	}
	fl.n.data = append(fl.n.data, b...)
	return len(b), nil
}

// Chmod sets the mode (kept, not enforced).
func (fl *File) Chmod(m fs.FileMode) error {
	fl.fs.mu.Lock()
	defer fl.fs.mu.Unlock()
	if err := fl.fs.step("chmod", fl.name); err != nil {
		return err
	}
	fl.n.mode = m
	return nil
}

// Sync makes the content durable (not the file's name: that is its folder's).
func (fl *File) Sync() error {
	fl.fs.mu.Lock()
	defer fl.fs.mu.Unlock()
	if err := fl.fs.step("sync", fl.name); err != nil {
		return err
	}
	fl.n.synced = slices.Clone(fl.n.data)
	return nil
}

// Close closes the file; it syncs nothing.
func (fl *File) Close() error {
	fl.fs.mu.Lock()
	defer fl.fs.mu.Unlock()
	if fl.done {
		return fs.ErrClosed
	}
	fl.done = true
	return fl.fs.step("close", fl.name)
}

// Rename moves an entry, replacing any file at newpath.
func (f *FS) Rename(oldpath, newpath string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	op, on, oname, err := f.lookup(oldpath)
	if err != nil {
		return err
	}
	if on == nil || op == nil {
		return &fs.PathError{Op: "rename", Path: oldpath, Err: fs.ErrNotExist}
	}
	np, nn, nname, err := f.lookup(newpath)
	if err != nil {
		return err
	}
	if np == nil {
		return &fs.PathError{Op: "rename", Path: newpath, Err: fs.ErrNotExist}
	}
	if nn != nil && nn.dir {
		return &fs.PathError{Op: "rename", Path: newpath, Err: errors.New("is a directory")}
	}
	if err := f.step("rename", newpath); err != nil {
		return err
	}
	delete(op.entries, oname)
	np.entries[nname] = on
	return nil
}

// Link makes newpath a second name of the file at oldpath (a hard link); it
// fails with fs.ErrExist if newpath is taken. Like any entry, the new name
// survives a power cut only once its folder is synced.
func (f *FS) Link(oldpath, newpath string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, on, _, err := f.lookup(oldpath)
	if err != nil {
		return err
	}
	if on == nil || on.dir {
		return &fs.PathError{Op: "link", Path: newpath, Err: fs.ErrNotExist}
	}
	np, nn, nname, err := f.lookup(newpath)
	if err != nil {
		return err
	}
	if np == nil {
		return &fs.PathError{Op: "link", Path: newpath, Err: fs.ErrNotExist}
	}
	if nn != nil {
		return &fs.PathError{Op: "link", Path: newpath, Err: fs.ErrExist}
	}
	if err := f.step("link", newpath); err != nil {
		return err
	}
	np.entries[nname] = on
	return nil
}

// Remove deletes a file or an empty folder.
func (f *FS) Remove(p string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	parent, n, name, err := f.lookup(p)
	if err != nil {
		return err
	}
	if n == nil || parent == nil {
		return &fs.PathError{Op: "remove", Path: p, Err: fs.ErrNotExist}
	}
	if n.dir && len(n.entries) > 0 {
		return &fs.PathError{Op: "remove", Path: p, Err: errors.New("directory not empty")}
	}
	if err := f.step("remove", p); err != nil {
		return err
	}
	delete(parent.entries, name)
	return nil
}

// ReadFile reads a file's current content.
func (f *FS) ReadFile(p string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut {
		return nil, &fs.PathError{Op: "read", Path: p, Err: ErrPowerCut}
	}
	_, n, _, err := f.lookup(p)
	if err != nil {
		return nil, err
	}
	if n == nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	}
	if n.dir {
		return nil, &fs.PathError{Op: "read", Path: p, Err: errors.New("is a directory")}
	}
	return slices.Clone(n.data), nil
}

// ReadDir lists a folder's names, sorted.
func (f *FS) ReadDir(p string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut {
		return nil, &fs.PathError{Op: "readdir", Path: p, Err: ErrPowerCut}
	}
	_, n, _, err := f.lookup(p)
	if err != nil {
		return nil, err
	}
	if n == nil || !n.dir {
		return nil, &fs.PathError{Op: "readdir", Path: p, Err: fs.ErrNotExist}
	}
	names := make([]string, 0, len(n.entries))
	for k := range n.entries {
		names = append(names, k)
	}
	slices.Sort(names)
	return names, nil
}

// SyncDir makes a folder's entries durable.
func (f *FS) SyncDir(p string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, n, _, err := f.lookup(p)
	if err != nil {
		return err
	}
	if n == nil || !n.dir {
		return &fs.PathError{Op: "fsync", Path: p, Err: fs.ErrNotExist}
	}
	if err := f.step("fsync", p); err != nil {
		return err
	}
	n.durable = make(map[string]*node, len(n.entries))
	for k, v := range n.entries {
		n.durable[k] = v
	}
	return nil
}

// Lock takes an in-memory exclusive lock; a power cut releases every lock.
func (f *FS) Lock(p string) (io.Closer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut {
		return nil, &fs.PathError{Op: "lock", Path: p, Err: ErrPowerCut}
	}
	if f.locked[p] {
		return nil, fmt.Errorf("crashfs: %s is locked", p)
	}
	f.locked[p] = true
	return closer(func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.locked, p)
		return nil
	}), nil
}

type closer func() error

func (c closer) Close() error { return c() }

// ReadDurable is what ReadFile(p) would return after a power cut now: the
// file's synced content, reached through folders' synced entries. It changes
// nothing, so a test can check at any instant what a restart would find.
func (f *FS) ReadDurable(p string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	parts, err := split(p)
	if err != nil {
		return nil, err
	}
	n := f.root
	for _, name := range parts {
		if !n.dir {
			return nil, &fs.PathError{Op: "read", Path: p, Err: fs.ErrNotExist}
		}
		c, ok := n.durable[name]
		if !ok {
			return nil, &fs.PathError{Op: "read", Path: p, Err: fs.ErrNotExist}
		}
		n = c
	}
	if n.dir {
		return nil, &fs.PathError{Op: "read", Path: p, Err: errors.New("is a folder")}
	}
	return slices.Clone(n.synced), nil
}
