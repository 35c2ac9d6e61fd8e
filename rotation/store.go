package rotation

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/thingcert/thingcert/internal/pemcert"
)

// Names inside the state folder.
const (
	StateFile = "state.json"
	CertsDir  = "certs"
	lockFile  = "lock"
)

// ErrNoState: the state folder holds no state yet (a device never provisioned
// or set up).
var ErrNoState = errors.New("no rotation state")

// ErrDamagedState: the state file holds something the machine cannot act on.
var ErrDamagedState = errors.New("rotation state damaged")

// StateStore reads and writes the state folder: state.json and the
// certificates under certs/, every write atomic and synced.
type StateStore struct {
	// Dir is the state folder (/var/lib/thingcert by default).
	Dir string
	// fsys is the file system; nil is the real one (tests put a crash-
	// simulating one there).
	fsys fileSystem
}

func (s StateStore) fs() fileSystem {
	if s.fsys == nil {
		return osFS{}
	}
	return s.fsys
}

// Path is the state file's path.
func (s StateStore) Path() string { return filepath.Join(s.Dir, StateFile) }

// Load reads the state. A missing file is ErrNoState; anything unreadable is
// an error naming the file, since guessing at a device's identity is worse
// than stopping.
func (s StateStore) Load() (*State, error) {
	data, err := s.read()
	if err != nil {
		return nil, err
	}
	return decodeState(data, s.Path())
}

// read is the state file's content.
func (s StateStore) read() ([]byte, error) {
	data, err := s.fs().ReadFile(s.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("rotation: %s: %w", s.Path(), ErrNoState)
	}
	if err != nil {
		return nil, fmt.Errorf("rotation: reading state %s: %w", s.Path(), err)
	}
	return data, nil
}

func decodeState(data []byte, where string) (*State, error) {
	var st State
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("rotation: state file %s is damaged (%v); restore it from a backup or move it away and provision again", where, err)
	}
	if st.Version > StateVersion {
		return nil, fmt.Errorf("rotation: state file %s has format %d, newer than this thingcert understands (%d); use the thingcert that wrote it", where, st.Version, StateVersion)
	}
	if st.Phase == "" {
		st.Phase = PhaseIdle
	}
	known := false
	for _, p := range Phases() {
		known = known || p == st.Phase
	}
	if !known {
		return nil, fmt.Errorf("rotation: state file %s: unknown phase %q", where, st.Phase)
	}
	// A rotation in progress replaces an identity for a reason: the machine
	// needs both on every path (the switch moves Current to Previous, a new
	// start names who started the one under way), and before the commit it
	// needs the identity it moves to.
	if st.InProgress() {
		var missing []string
		if st.Current == nil {
			missing = append(missing, "the current identity (current)")
		}
		if st.Trigger == nil {
			missing = append(missing, "what started it (trigger)")
		}
		if st.Pending == nil && st.Phase != PhaseCommitted && st.Phase != PhaseRolledBack {
			missing = append(missing, "the identity it moves to (pending)")
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("rotation: state file %s: a rotation in phase %s without %s; restore the file from a backup or move it away and provision again: %w",
				where, st.Phase, strings.Join(missing, ", "), ErrDamagedState)
		}
	}
	return &st, nil
}

// Save writes the state atomically and durably: when Save returns, a power
// cut leaves this state or a later one.
func (s StateStore) Save(st *State) error { return s.save(st, Durable) }

// save records st as d says (see Durability): nothing for InMemory.
func (s StateStore) save(st *State, d Durability) error {
	_, err := s.saveData(st, d)
	return err
}

// saveData is save, returning what was written (nil for InMemory).
func (s StateStore) saveData(st *State, d Durability) ([]byte, error) {
	return s.saveDataAfter(st, d, nil)
}

// saveDataAfter is saveData that runs the syncs in before (the files st
// names, written since the last save) together with the new content's, and
// renames only once they have all succeeded. An InMemory save writes nothing:
// the caller keeps before for the next save that writes.
func (s StateStore) saveDataAfter(st *State, d Durability, before []func() error) ([]byte, error) {
	if d == InMemory {
		return nil, nil
	}
	data, err := encodeState(st)
	if err != nil {
		return nil, fmt.Errorf("rotation: encoding state: %w", err)
	}
	if err := replaceFileAfter(s.fs(), s.Path(), data, 0o600, d == Durable, before); err != nil {
		return nil, fmt.Errorf("rotation: saving state %s: %w", s.Path(), err)
	}
	return data, nil
}

// Init creates the state folder (0700) and its certs/ folder, durably.
func (s StateStore) Init() error {
	fsys := s.fs()
	for _, d := range []string{s.Dir, filepath.Join(s.Dir, CertsDir)} {
		if err := fsys.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("rotation: creating state folder %s: %w", d, err)
		}
		if err := fsys.SyncDir(filepath.Dir(d)); err != nil {
			return fmt.Errorf("rotation: syncing %s: %w", filepath.Dir(d), err)
		}
	}
	return nil
}

// Lock keeps other thingcert processes out of the folder while a rotation
// runs; Close releases it.
func (s StateStore) Lock() (io.Closer, error) {
	// The folders are made, and their entries synced, once: a rotation does
	// not pay two folder syncs for them every time. A process that died
	// between making them and syncing them is covered by the Init the first
	// save of a state does (Runner.Adopt): no state is ever written in a
	// folder whose own entry is not durable.
	if _, err := s.fs().ReadDir(filepath.Join(s.Dir, CertsDir)); err != nil {
		if err := s.Init(); err != nil {
			return nil, err
		}
	}
	c, err := s.fs().Lock(filepath.Join(s.Dir, lockFile))
	if err != nil {
		return nil, fmt.Errorf("rotation: state folder %s: %w", s.Dir, err)
	}
	return c, nil
}

// CertPath is where the certificate with this ID is kept.
func (s StateStore) CertPath(certID string) string {
	return filepath.Join(s.Dir, CertsDir, certID+".pem")
}

// WriteChain saves a certificate chain (leaf first) as PEM under certs/,
// named by the leaf's certificate ID, and returns the path.
func (s StateStore) WriteChain(certID string, chain []*x509.Certificate) (string, error) {
	if !validCertID(certID) {
		return "", fmt.Errorf("rotation: certificate ID %q is not 64 hex digits", certID)
	}
	var b bytes.Buffer
	for _, c := range chain {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	path := s.CertPath(certID)
	if err := writeAtomic(s.fs(), path, b.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("rotation: saving certificate %s: %w", path, err)
	}
	return path, nil
}

// writeChainUnsynced is WriteChain with the syncs left for later: the file
// has its name and content now, and sync (the content's fsync beside the
// certs/ folder's) makes both durable. Until sync has returned, no durable
// state may name the file; a power cut before that may leave it empty, and
// Tidy removes it since nothing names it. sync closes the file; it must be
// called once, whatever happens.
func (s StateStore) writeChainUnsynced(certID string, chain []*x509.Certificate) (path string, sync func() error, err error) {
	if !validCertID(certID) {
		return "", nil, fmt.Errorf("rotation: certificate ID %q is not 64 hex digits", certID)
	}
	var b bytes.Buffer
	for _, c := range chain {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	path = s.CertPath(certID)
	fsys := s.fs()
	dir := filepath.Dir(path)
	f, err := fsys.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", nil, fmt.Errorf("rotation: saving certificate %s: %w", path, err)
	}
	tmp := f.Name()
	if err = f.Chmod(0o644); err == nil {
		if _, err = f.Write(b.Bytes()); err == nil {
			err = fsys.Rename(tmp, path)
		}
	}
	if err != nil {
		_ = f.Close()
		_ = fsys.Remove(tmp)
		return "", nil, fmt.Errorf("rotation: saving certificate %s: %w", path, err)
	}
	sync = func() error {
		serr := syncAll([]func() error{func() error { return fsys.SyncDir(dir) }, f.Sync})
		if cerr := f.Close(); serr == nil {
			serr = cerr
		}
		if serr != nil {
			return fmt.Errorf("rotation: saving certificate %s: %w", path, serr)
		}
		return nil
	}
	return path, sync, nil
}

// ReadChain reads a PEM certificate chain written by WriteChain (or given by
// the user).
func (s StateStore) ReadChain(path string) ([]*x509.Certificate, error) {
	data, err := s.fs().ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("rotation: certificate file: %w", err)
	}
	return ParseChainPEM(data, path)
}

// ParseChainPEM reads the CERTIFICATE blocks of a PEM file, leaf first.
func ParseChainPEM(data []byte, where string) ([]*x509.Certificate, error) {
	chain, err := pemcert.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("rotation: %s: %w", where, err)
	}
	return chain, nil
}

// RemoveFile deletes a file in the state folder durably; a missing file is
// not an error.
func (s StateStore) RemoveFile(path string) error { return s.removeFile(path, true) }

// removeFile is RemoveFile, with the folder's sync left out if sync is false.
func (s StateStore) removeFile(path string, sync bool) error {
	if err := s.fs().Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("rotation: removing %s: %w", path, err)
	}
	if !sync {
		return nil
	}
	return s.fs().SyncDir(filepath.Dir(path))
}

// Tidy removes certificate files and temporary files no record refers to:
// what a crash between writing a certificate and saving the state leaves.
func (s StateStore) Tidy(st *State) error {
	keep := map[string]bool{}
	for _, r := range []*IdentityRecord{st.Current, st.Pending} {
		if r != nil {
			keep[filepath.Clean(r.CertFile)] = true
		}
	}
	for _, p := range st.Previous {
		keep[filepath.Clean(p.CertFile)] = true
	}
	var errs []error
	for _, d := range []string{filepath.Join(s.Dir, CertsDir), s.Dir} {
		names, err := s.fs().ReadDir(d)
		if err != nil {
			continue
		}
		for _, n := range names {
			p := filepath.Join(d, n)
			// In the state folder only the state file's own temporary files are
			// ours: other writers (the daemon's record) share the folder and may
			// be between writing and renaming theirs right now.
			ours := d == s.Dir && strings.HasPrefix(n, "."+StateFile+".tmp-") ||
				d != s.Dir && (strings.HasPrefix(n, ".") && strings.Contains(n, ".tmp-") ||
					strings.HasSuffix(n, ".pem") && validCertID(strings.TrimSuffix(n, ".pem")))
			if ours && !keep[p] {
				if err := s.RemoveFile(p); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// certificateID is AWS IoT's name for a certificate: the SHA-256 of its DER
// as 64 lowercase hex digits.
func certificateID(c *x509.Certificate) string { return pemcert.ID(c.Raw) }

func validCertID(id string) bool {
	if len(id) != 64 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}
