package rotation

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/internal/crashfs"
	"github.com/thingcert/thingcert/keystore"
)

// The durability rule (Needs), checked where it matters: at each effect
// outside the process, the state a power cut at that instant would leave is
// the one the effect needs; and a rotation makes exactly the durable writes
// the rule asks for, no more.

const durDir = "/var/lib/thingcert"

// effect is one action with an effect outside the process, and the state
// file a power cut at that instant would leave (nil: none that decodes).
type effect struct {
	kind, detail string
	durable      *State
	keySynced    bool // the durable state's pending key had been synced
}

func (e effect) String() string {
	p := Phase("none")
	if e.durable != nil {
		p = e.durable.Phase
	}
	return fmt.Sprintf("%s %s (durable phase %s)", e.kind, short(e.detail), p)
}

// watch records effects and the state file's writes on a crashfs device.
type watch struct {
	t       *testing.T
	cfs     *crashfs.FS
	effects []effect
	// durable and written are the phases of the state file's writes: synced
	// with the folder, or only renamed into place.
	durable, written []Phase
	renamed          bool  // state.json renamed since the folder's last sync
	renamedPhase     Phase // the phase it was renamed with
	// keySynced are the keys whose sync (keystore.UnsyncedGenerator) has
	// returned; unsyncedRename, a state renamed into place naming as pending
	// a key made unsynced and not synced yet.
	keySynced      map[string]bool
	keyUnsynced    map[string]bool
	unsyncedRename []string
	// deleted are the keys deleted without their sync (UnsyncedDeleter),
	// true once the sync has returned; forgotRename, states renamed into
	// place forgetting a key whose deletion was not synced yet.
	deleted      map[string]bool
	forgotRename []string
}

func (w *watch) durableState() *State {
	data, err := w.cfs.ReadDurable(path.Join(durDir, StateFile))
	if err != nil {
		return nil
	}
	s, err := decodeState(data, "state.json")
	if err != nil {
		return nil
	}
	return s
}

func (w *watch) saw(kind, detail string) {
	s := w.durableState()
	synced := s != nil && s.Pending != nil && w.keySynced[s.Pending.KeyURI]
	w.effects = append(w.effects, effect{kind, detail, s, synced})
}

func (w *watch) phaseNow() Phase {
	data, err := w.cfs.ReadFile(path.Join(durDir, StateFile))
	if err != nil {
		return "none"
	}
	s, err := decodeState(data, "state.json")
	if err != nil {
		return "damaged"
	}
	return s.Phase
}

// watchedFS counts the state file's writes.
type watchedFS struct {
	crashFS
	w *watch
}

func (f watchedFS) Rename(o, n string) error {
	if err := f.crashFS.Rename(o, n); err != nil {
		return err
	}
	if n == path.Join(durDir, StateFile) {
		if data, err := f.w.cfs.ReadFile(n); err == nil {
			if s, err := decodeState(data, n); err == nil {
				if s.Pending != nil && s.Phase != PhaseStarted && f.w.keyUnsynced[s.Pending.KeyURI] && !f.w.keySynced[s.Pending.KeyURI] {
					f.w.unsyncedRename = append(f.w.unsyncedRename, string(s.Phase))
				}
				for uri, synced := range f.w.deleted {
					if !synced && !names(s, uri) {
						f.w.forgotRename = append(f.w.forgotRename, string(s.Phase))
					}
				}
			}
		}
		if f.w.renamed {
			f.w.written = append(f.w.written, f.w.renamedPhase) // replaced before the folder was synced
		}
		f.w.renamed, f.w.renamedPhase = true, f.w.phaseNow()
	}
	return nil
}

func (f watchedFS) SyncDir(p string) error {
	if err := f.crashFS.SyncDir(p); err != nil {
		return err
	}
	if p == durDir && f.w.renamed {
		f.w.durable = append(f.w.durable, f.w.renamedPhase)
		f.w.renamed = false
	}
	return nil
}

// finish counts a last write that was renamed but not synced.
func (w *watch) finish() {
	if w.renamed {
		w.written = append(w.written, w.renamedPhase)
		w.renamed = false
	}
}

type watchedStore struct {
	keystore.Store
	w *watch
}

func (s watchedStore) Generate(ctx context.Context, uri string, alg keystore.Algorithm) (keystore.Key, error) {
	s.w.saw("generate", uri)
	return s.Store.Generate(ctx, uri, alg)
}

// GenerateUnsynced and SyncKey are the file store's, watched: the key's
// sync is recorded when it returns.
func (s watchedStore) GenerateUnsynced(ctx context.Context, uri string, alg keystore.Algorithm) (keystore.Key, func() error, error) {
	s.w.saw("generate", uri)
	k, sync, err := s.Store.(keystore.UnsyncedGenerator).GenerateUnsynced(ctx, uri, alg)
	if err != nil {
		return nil, nil, err
	}
	s.w.keyUnsynced[uri] = true
	return k, func() error {
		err := sync()
		if err == nil {
			s.w.keySynced[uri] = true
		}
		return err
	}, nil
}

func (s watchedStore) SyncKey(ctx context.Context, uri string) error {
	err := s.Store.(keystore.UnsyncedGenerator).SyncKey(ctx, uri)
	if err == nil {
		s.w.keySynced[uri] = true
	}
	return err
}

func (s watchedStore) DeleteUnsynced(ctx context.Context, uri string) (func() error, error) {
	s.w.saw("delete", uri)
	sync, err := s.Store.(keystore.UnsyncedDeleter).DeleteUnsynced(ctx, uri)
	if err != nil {
		return nil, err
	}
	s.w.deleted[uri] = false
	return func() error {
		err := sync()
		if err == nil {
			s.w.deleted[uri] = true
		}
		return err
	}, nil
}

// names reports whether s still refers to the key at uri.
func names(s *State, uri string) bool {
	for _, r := range []*IdentityRecord{s.Current, s.Pending} {
		if r != nil && r.KeyURI == uri {
			return true
		}
	}
	for _, p := range s.Previous {
		if p.KeyURI == uri {
			return true
		}
	}
	return false
}

func (s watchedStore) Delete(ctx context.Context, uri string) error {
	s.w.saw("delete", uri)
	return s.Store.Delete(ctx, uri)
}

type watchedCloud struct {
	*fakeCloud
	w *watch
}

func (c watchedCloud) Issue(ctx context.Context, der []byte) (*Issued, error) {
	c.w.saw("issue", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})))
	return c.fakeCloud.Issue(ctx, der)
}

func (c watchedCloud) Switch(ctx context.Context, id Identity) error {
	c.w.saw("switch", certificateID(id.Chain[0]))
	return c.fakeCloud.Switch(ctx, id)
}

func (c watchedCloud) Report(ctx context.Context, r Report) error {
	c.w.saw("report "+string(r.Outcome), r.NewCertificateID)
	return c.fakeCloud.Report(ctx, r)
}

// watchedDevice is a device on crashfs, set up and synced, whose runner's
// effects and writes are watched from here on.
func watchedDevice(t *testing.T, grace time.Duration) (*device, *watch) {
	cfs := crashfs.New()
	w := &watch{t: t, cfs: cfs, keySynced: map[string]bool{}, keyUnsynced: map[string]bool{}, deleted: map[string]bool{}}
	d := newDevice(t, watchedFS{crashFS{cfs}, w}, durDir)
	cfs.SyncAll()
	w.durable, w.written, w.renamed = nil, nil, false
	d.runner.Machine.GracePeriod = grace
	d.runner.Store = watchedStore{d.store, w}
	c := watchedCloud{d.cloud, w}
	d.runner.Issuer, d.runner.Connector, d.runner.Reporter = c, c, c
	return d, w
}

// checkEffects holds every effect to the rule: what must be durable first.
func checkEffects(t *testing.T, w *watch, old *IdentityRecord) {
	t.Helper()
	for _, e := range w.effects {
		s := e.durable
		if s == nil {
			t.Errorf("%v: no state would survive a power cut", e)
			continue
		}
		var bad string
		switch {
		case e.kind == "generate":
			if s.Phase != PhaseStarted || s.Pending == nil || s.Pending.KeyURI != e.detail {
				bad = "the key's name must be durable before the key is made"
			}
		case e.kind == "issue":
			if s.Phase != PhaseCSRSubmitted || s.CSR != e.detail {
				bad = "the CSR must be durable before it is sent"
			} else if !e.keySynced {
				bad = "the key must be durable before its CSR is sent"
			}
		case e.kind == "switch" && e.detail == old.CertificateID:
			// Going back to the current identity is no new effect.
		case e.kind == "switch":
			if s.Phase != PhaseVerified || s.Pending == nil || s.Pending.CertificateID != e.detail {
				bad = "the checked certificate must be durable before it is used"
			}
		case e.kind == "report "+string(Succeeded):
			if s.Phase != PhaseCommitted || s.Current.CertificateID != e.detail {
				bad = "the commit must be durable before the cloud is told (it then deactivates the old certificate)"
			}
		case e.kind == "report "+string(RolledBack):
			if s.Phase != PhaseRolledBack {
				bad = "the rollback must be durable before it is reported"
			}
		case e.kind == "delete":
			named := s.Current.KeyURI == e.detail || s.Pending != nil && s.Pending.KeyURI == e.detail && s.Phase != PhaseRolledBack
			if named {
				bad = "no state a power cut can bring back may still use a deleted key"
			}
		default:
			bad = "unexpected effect"
		}
		if bad != "" {
			t.Errorf("%v: %s", e, bad)
		}
	}
}

func kinds(es []effect) []string {
	var k []string
	for _, e := range es {
		k = append(k, strings.Fields(e.kind)[0])
	}
	return k
}

// TestDurableBeforeEveryEffect: a job's rotation, one whose replaced key is
// deleted in the same run (no grace period), and one that rolls back. At
// every effect outside the process the state that would survive a power cut
// is the one the effect needs, and the state file is made durable exactly
// before those effects: four durable writes per rotation, and one written
// without the folder sync where the run ends.
func TestDurableBeforeEveryEffect(t *testing.T) {
	ctx := context.Background()
	durablePhases := []Phase{PhaseStarted, PhaseCSRSubmitted, PhaseVerified, PhaseCommitted}
	for _, tc := range []struct {
		name    string
		grace   time.Duration
		effects []string
	}{
		{"job, grace period", time.Hour, []string{"generate", "issue", "switch", "report"}},
		{"job, no grace period", -1, []string{"generate", "issue", "switch", "report", "delete"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, w := watchedDevice(t, tc.grace)
			old := d.mustLoad(t).Current
			s, err := d.runner.Rotate(ctx, Trigger{Kind: TriggerJob, JobID: "j1"})
			if err != nil {
				t.Fatal(err)
			}
			w.finish()
			if got := kinds(w.effects); !slices.Equal(got, tc.effects) {
				t.Fatalf("effects %v, want %v", got, tc.effects)
			}
			checkEffects(t, w, old)
			if len(w.keyUnsynced) != 1 {
				t.Errorf("keys made unsynced: %v, want the new key", w.keyUnsynced)
			}
			if len(w.unsyncedRename) > 0 {
				t.Errorf("state file renamed into place in phases %v naming a key not yet synced", w.unsyncedRename)
			}
			if n := len(w.deleted); slices.Contains(tc.effects, "delete") != (n == 1) {
				t.Errorf("keys deleted unsynced: %v, want the old one where the run deletes it", w.deleted)
			}
			if len(w.forgotRename) > 0 {
				t.Errorf("state file renamed into place in phases %v without a key whose deletion was not yet synced", w.forgotRename)
			}
			if !slices.Equal(w.durable, durablePhases) {
				t.Errorf("durable writes of the state file: %v, want %v", w.durable, durablePhases)
			}
			if !slices.Equal(w.written, []Phase{PhaseIdle}) {
				t.Errorf("writes without the folder sync: %v, want [idle] (the end of the run)", w.written)
			}
			if got, _ := d.runner.Load(); got == nil || got.Phase != PhaseIdle || got.Current.CertificateID != s.Current.CertificateID {
				t.Errorf("the state file at the end is not the final state")
			}
		})
	}
	t.Run("rolled back", func(t *testing.T) {
		d, w := watchedDevice(t, time.Hour)
		old := d.mustLoad(t).Current
		d.cloud.refuseNew = true
		if _, err := d.runner.Rotate(ctx, Trigger{Kind: TriggerJob, JobID: "j1"}); !errors.Is(err, ErrRolledBack) {
			t.Fatalf("Rotate: %v", err)
		}
		w.finish()
		if got, want := kinds(w.effects), []string{"generate", "issue", "switch", "switch", "delete", "report"}; !slices.Equal(got, want) {
			t.Fatalf("effects %v, want %v", got, want)
		}
		checkEffects(t, w, old)
		if want := []Phase{PhaseStarted, PhaseCSRSubmitted, PhaseVerified, PhaseRolledBack}; !slices.Equal(w.durable, want) {
			t.Errorf("durable writes of the state file: %v, want %v", w.durable, want)
		}
		if !slices.Equal(w.written, []Phase{PhaseIdle}) {
			t.Errorf("writes without the folder sync: %v, want [idle]", w.written)
		}
	})
}

// TestWrittenStateIsNeverTorn: a state written without the folder sync is
// still synced before its rename, so another writer syncing the folder (the
// daemon's record shares it) makes it durable whole, never empty; and a
// power cut before any folder sync brings back the state saved before it.
func TestWrittenStateIsNeverTorn(t *testing.T) {
	before := &State{Version: 1, Phase: PhaseCommitted, Current: &IdentityRecord{KeyURI: "file:/k/new.pem"},
		Trigger: &Trigger{Kind: TriggerOperator}}
	after := &State{Version: 1, Phase: PhaseIdle, Current: &IdentityRecord{KeyURI: "file:/k/new.pem"}, Serial: 1}
	for _, sync := range []bool{false, true} {
		cfs := crashfs.New()
		ss := StateStore{Dir: durDir, fsys: crashFS{cfs}}
		if err := ss.Init(); err != nil {
			t.Fatal(err)
		}
		cfs.SyncAll()
		if err := ss.Save(before); err != nil {
			t.Fatal(err)
		}
		if err := ss.save(after, Written); err != nil {
			t.Fatal(err)
		}
		if sync {
			if err := cfs.SyncDir(durDir); err != nil {
				t.Fatal(err)
			}
		}
		got, err := StateStore{Dir: durDir, fsys: crashFS{cfs.Restart()}}.Load()
		want := before
		if sync {
			want = after
		}
		if err != nil || got.Phase != want.Phase {
			t.Errorf("folder synced by another writer: %v; after the power cut: %+v, %v; want phase %s", sync, got, err, want.Phase)
		}
	}
}
