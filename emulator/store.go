package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/thingcert/thingcert/emulator/iotpolicy"
	"github.com/thingcert/thingcert/internal/atomicfile"
)

// The registry is kept on disk in registry.db, a bbolt database, one record a
// key, so that a change writes only the records it touched: the cost of a
// change does not grow with the fleet, as rewriting one registry.json did.
// The in-memory state stays the read model; a change marks what it touched in
// a changeSet and mutate writes those records in one bbolt transaction (fsynced,
// copy-on-write: a crash leaves the state before or after the change).
//
// Layout (bucket names / keys):
//
//	meta                 version, seq
//	accounts/<account>   account (name, prefix, region, createdAt, event switches)
//	  cas/<id> certs/<id> things/<name> templates/<name> tokens/<token>
//	  policies/<name> groups/<name> jobs/<id>    one JSON record each
//	  execs/<job>/<thing>                         a thing's execution of a job and its earlier ones
//	  members/<group>/<thing>                     a group's things
//
// The records are registry.json's JSON, so a record reads as it did there.
const (
	registryDBFile      = "registry.db"
	registryMigratedExt = ".migrated"
)

var (
	bucketMeta     = []byte("meta")
	bucketAccounts = []byte("accounts")
	keyVersion     = []byte("version")
	keySeq         = []byte("seq")
	keyAccount     = []byte("account")
)

// recKind is one kind of record of an account.
type recKind uint8

const (
	kindAccount recKind = iota // the account's own record (its fields and event switches)
	kindCA
	kindCert
	kindThing
	kindTemplate
	kindToken
	kindPolicy
	kindGroup
	kindJob
	kindExec   // id: job, sub: thing
	kindMember // id: group, sub: thing
)

var kindBuckets = [...][]byte{
	kindCA: []byte("cas"), kindCert: []byte("certs"), kindThing: []byte("things"),
	kindTemplate: []byte("templates"), kindToken: []byte("tokens"), kindPolicy: []byte("policies"),
	kindGroup: []byte("groups"), kindJob: []byte("jobs"), kindExec: []byte("execs"), kindMember: []byte("members"),
}

type recKey struct {
	account string
	kind    recKind
	id, sub string
}

// changeSet collects what one change touched: each mark says "this record may
// have changed"; at commit the record is written as it is in memory, or
// deleted when it is no longer there. Marking too much costs a write; marking
// too little loses a change at the next start (the store check of the tests
// catches it).
type changeSet struct {
	seq      bool
	accounts map[string]bool // whole accounts, rewritten: rare operations only
	keys     map[recKey]struct{}
}

func (c *changeSet) mark(k recKey) {
	if c.keys == nil {
		c.keys = map[recKey]struct{}{}
	}
	c.keys[k] = struct{}{}
}

func (c *changeSet) empty() bool { return !c.seq && len(c.accounts) == 0 && len(c.keys) == 0 }

// touchWholeAccount rewrites every record of an account (or deletes them all
// when the account is gone): for adding or removing an account and migration.
func (c *changeSet) touchWholeAccount(account string) {
	if c.accounts == nil {
		c.accounts = map[string]bool{}
	}
	c.accounts[account] = true
}

func (c *changeSet) touchSeq()                        { c.seq = true }
func (c *changeSet) touchAccount(account string)      { c.mark(recKey{account, kindAccount, "", ""}) }
func (c *changeSet) touchCA(account, id string)       { c.mark(recKey{account, kindCA, id, ""}) }
func (c *changeSet) touchCert(account, id string)     { c.mark(recKey{account, kindCert, id, ""}) }
func (c *changeSet) touchThing(account, name string)  { c.mark(recKey{account, kindThing, name, ""}) }
func (c *changeSet) touchTemplate(account, n string)  { c.mark(recKey{account, kindTemplate, n, ""}) }
func (c *changeSet) touchToken(account, token string) { c.mark(recKey{account, kindToken, token, ""}) }
func (c *changeSet) touchPolicy(account, name string) { c.mark(recKey{account, kindPolicy, name, ""}) }

// touchGroup marks a group's own record; a deleted group's members go with it.
func (c *changeSet) touchGroup(account, name string) { c.mark(recKey{account, kindGroup, name, ""}) }

// touchMember marks one thing's membership of a group.
func (c *changeSet) touchMember(account, group, thing string) {
	c.mark(recKey{account, kindMember, group, thing})
}

// touchJob marks a job's own record (not its executions); a deleted job's
// executions go with it.
func (c *changeSet) touchJob(account, id string) { c.mark(recKey{account, kindJob, id, ""}) }

// touchExec marks a thing's executions of a job (its latest and earlier ones).
func (c *changeSet) touchExec(account, job, thing string) {
	c.mark(recKey{account, kindExec, job, thing})
}

// store is the open registry.db of a state folder.
type store struct {
	db   *bolt.DB
	path string
}

// openStore opens (creating) path. The state folder's lock is held already;
// the timeout only guards against a stray second opener.
func openStore(path string) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: 5 * time.Second,
		// The freelist is rebuilt on open instead of written at each commit:
		// one page less to write per change, at the price of a scan on open.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("emulator: opening the registry %s: %w", path, err)
	}
	return &store{db: db, path: path}, nil
}

func (s *store) close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("emulator: closing the registry %s: %w", s.path, err)
	}
	return nil
}

// initialized reports whether the database holds a registry (its meta bucket
// with a version): a database created by an open that crashed before its first
// commit does not.
func (s *store) initialized() (bool, error) {
	ok := false
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMeta); b != nil && b.Get(keyVersion) != nil {
			ok = true
		}
		return nil
	})
	return ok, err
}

// writeAll writes a whole state in one transaction: a new registry, or one
// migrated from registry.json.
func (s *store) writeAll(st *state) error {
	c := &changeSet{seq: true}
	for name := range st.Accounts {
		c.touchWholeAccount(name)
	}
	return s.commit(st, c)
}

// commit writes the records c marked as they are in st, in one transaction.
func (s *store) commit(st *state, c *changeSet) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if meta.Get(keyVersion) == nil {
			if err := meta.Put(keyVersion, []byte(strconv.Itoa(st.Version))); err != nil {
				return err
			}
		}
		if c.seq {
			if err := meta.Put(keySeq, []byte(strconv.FormatInt(st.Seq, 10))); err != nil {
				return err
			}
		}
		accts, err := tx.CreateBucketIfNotExists(bucketAccounts)
		if err != nil {
			return err
		}
		for name := range c.accounts {
			if accts.Bucket([]byte(name)) != nil {
				if err := accts.DeleteBucket([]byte(name)); err != nil {
					return err
				}
			}
			if a, ok := st.Accounts[name]; ok {
				if err := putWholeAccount(accts, name, a); err != nil {
					return fmt.Errorf("account %s: %w", name, err)
				}
			}
		}
		for k := range c.keys {
			if c.accounts[k.account] {
				continue
			}
			a, ok := st.Accounts[k.account]
			if !ok {
				// The account went without being marked whole: its records go too.
				if accts.Bucket([]byte(k.account)) != nil {
					if err := accts.DeleteBucket([]byte(k.account)); err != nil {
						return err
					}
				}
				continue
			}
			ab, err := accts.CreateBucketIfNotExists([]byte(k.account))
			if err != nil {
				return err
			}
			if err := putRecord(ab, a, k); err != nil {
				return fmt.Errorf("account %s: %w", k.account, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("emulator: saving the registry %s: %w", s.path, err)
	}
	return nil
}

// accountMeta is an account's own record.
type accountMeta struct {
	Account
	CreatedAt time.Time       `json:"createdAt"`
	Events    map[string]bool `json:"eventConfigurations,omitempty"`
}

// execsRec is a thing's executions of one job: the latest and the earlier ones.
type execsRec struct {
	Current  *execRec   `json:"current,omitempty"`
	Previous []*execRec `json:"previous,omitempty"`
}

// recordValue is k's record as it is in a; false when it is gone.
func recordValue(a *accountRec, k recKey) (any, bool) {
	switch k.kind {
	case kindAccount:
		return accountMeta{Account: a.Account, CreatedAt: a.CreatedAt, Events: a.Events}, true
	case kindCA:
		v, ok := a.CAs[k.id]
		return v, ok
	case kindCert:
		v, ok := a.Certs[k.id]
		return v, ok
	case kindThing:
		v, ok := a.Things[k.id]
		return v, ok
	case kindTemplate:
		v, ok := a.Templates[k.id]
		return v, ok
	case kindToken:
		v, ok := a.Tokens[k.id]
		return v, ok
	case kindPolicy:
		v, ok := a.Policies[k.id]
		return v, ok
	case kindGroup:
		g, ok := a.Groups[k.id]
		if !ok {
			return nil, false
		}
		c := *g
		c.Things = nil // members are records of their own
		return &c, true
	case kindJob:
		j, ok := a.Jobs[k.id]
		if !ok {
			return nil, false
		}
		c := *j
		c.Executions, c.Previous = nil, nil // executions are records of their own
		return &c, true
	case kindExec:
		j, ok := a.Jobs[k.id]
		if !ok {
			return nil, false
		}
		v := execsRec{Current: j.Executions[k.sub], Previous: j.Previous[k.sub]}
		if v.Current == nil && len(v.Previous) == 0 {
			return nil, false
		}
		return v, true
	case kindMember:
		g, ok := a.Groups[k.id]
		if !ok || !g.Things[k.sub] {
			return nil, false
		}
		return nil, true
	}
	return nil, false
}

// putRecord writes (or deletes) the record k of account bucket ab.
func putRecord(ab *bolt.Bucket, a *accountRec, k recKey) error {
	v, ok := recordValue(a, k)
	if k.kind == kindAccount {
		data, err := json.Marshal(v)
		if err != nil {
			return err
		}
		return ab.Put(keyAccount, data)
	}
	name := kindBuckets[k.kind]
	switch k.kind {
	case kindExec, kindMember:
		if !ok {
			kb := ab.Bucket(name)
			if kb == nil {
				return nil
			}
			if sb := kb.Bucket([]byte(k.id)); sb != nil {
				return sb.Delete([]byte(k.sub))
			}
			return nil
		}
		kb, err := ab.CreateBucketIfNotExists(name)
		if err != nil {
			return err
		}
		sb, err := kb.CreateBucketIfNotExists([]byte(k.id))
		if err != nil {
			return err
		}
		data := []byte{}
		if k.kind == kindExec {
			if data, err = json.Marshal(v); err != nil {
				return err
			}
		}
		return sb.Put([]byte(k.sub), data)
	}
	if !ok {
		kb := ab.Bucket(name)
		if kb == nil {
			return nil
		}
		if err := kb.Delete([]byte(k.id)); err != nil {
			return err
		}
		// A job's executions and a group's members go with it.
		var sub []byte
		switch k.kind {
		case kindJob:
			sub = kindBuckets[kindExec]
		case kindGroup:
			sub = kindBuckets[kindMember]
		}
		if sub != nil {
			if sb := ab.Bucket(sub); sb != nil && sb.Bucket([]byte(k.id)) != nil {
				return sb.DeleteBucket([]byte(k.id))
			}
		}
		return nil
	}
	kb, err := ab.CreateBucketIfNotExists(name)
	if err != nil {
		return err
	}
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return kb.Put([]byte(k.id), data)
}

// putWholeAccount writes every record of account name into a fresh bucket.
func putWholeAccount(accts *bolt.Bucket, name string, a *accountRec) error {
	ab, err := accts.CreateBucket([]byte(name))
	if err != nil {
		return err
	}
	put := func(k recKey) error { return putRecord(ab, a, k) }
	if err := put(recKey{name, kindAccount, "", ""}); err != nil {
		return err
	}
	for id := range a.CAs {
		if err := put(recKey{name, kindCA, id, ""}); err != nil {
			return err
		}
	}
	for id := range a.Certs {
		if err := put(recKey{name, kindCert, id, ""}); err != nil {
			return err
		}
	}
	for id := range a.Things {
		if err := put(recKey{name, kindThing, id, ""}); err != nil {
			return err
		}
	}
	for id := range a.Templates {
		if err := put(recKey{name, kindTemplate, id, ""}); err != nil {
			return err
		}
	}
	for id := range a.Tokens {
		if err := put(recKey{name, kindToken, id, ""}); err != nil {
			return err
		}
	}
	for id := range a.Policies {
		if err := put(recKey{name, kindPolicy, id, ""}); err != nil {
			return err
		}
	}
	for id, g := range a.Groups {
		if err := put(recKey{name, kindGroup, id, ""}); err != nil {
			return err
		}
		for t := range g.Things {
			if err := put(recKey{name, kindMember, id, t}); err != nil {
				return err
			}
		}
	}
	for id, j := range a.Jobs {
		if err := put(recKey{name, kindJob, id, ""}); err != nil {
			return err
		}
		for t := range j.Executions {
			if err := put(recKey{name, kindExec, id, t}); err != nil {
				return err
			}
		}
		for t := range j.Previous {
			if err := put(recKey{name, kindExec, id, t}); err != nil {
				return err
			}
		}
	}
	return nil
}

// load reads the whole registry into memory.
func (s *store) load() (*state, error) {
	st := &state{Version: stateVersion, Accounts: map[string]*accountRec{}}
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			return nil
		}
		v, err := strconv.Atoi(string(meta.Get(keyVersion)))
		if err != nil {
			return fmt.Errorf("its version %q is not a number", meta.Get(keyVersion))
		}
		if v != stateVersion {
			return fmt.Errorf("%w: it has version %d, this emulator reads %d", errStateVersion, v, stateVersion)
		}
		st.Version = v
		if seq := meta.Get(keySeq); seq != nil {
			if st.Seq, err = strconv.ParseInt(string(seq), 10, 64); err != nil {
				return fmt.Errorf("its seq %q is not a number", seq)
			}
		}
		accts := tx.Bucket(bucketAccounts)
		if accts == nil {
			return nil
		}
		return accts.ForEachBucket(func(name []byte) error {
			a, err := loadAccount(accts.Bucket(name))
			if err != nil {
				return fmt.Errorf("account %s: %w", name, err)
			}
			st.Accounts[string(name)] = a
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("emulator: reading the registry %s: %w", s.path, err)
	}
	return st, nil
}

var errStateVersion = errors.New("unsupported state version")

// eachRecord decodes every record of one kind bucket of ab.
func eachRecord[T any](ab *bolt.Bucket, kind recKind, m map[string]*T) error {
	b := ab.Bucket(kindBuckets[kind])
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error {
		rec := new(T)
		if err := json.Unmarshal(v, rec); err != nil {
			return fmt.Errorf("%s %s: %w", kindBuckets[kind], k, err)
		}
		m[string(k)] = rec
		return nil
	})
}

func loadAccount(ab *bolt.Bucket) (*accountRec, error) {
	var meta accountMeta
	if err := json.Unmarshal(ab.Get(keyAccount), &meta); err != nil {
		return nil, fmt.Errorf("its record: %w", err)
	}
	a := newAccountRec(meta.Account, meta.CreatedAt)
	a.Events = meta.Events
	if err := eachRecord(ab, kindCA, a.CAs); err != nil {
		return nil, err
	}
	if err := eachRecord(ab, kindCert, a.Certs); err != nil {
		return nil, err
	}
	if err := eachRecord(ab, kindThing, a.Things); err != nil {
		return nil, err
	}
	if err := eachRecord(ab, kindTemplate, a.Templates); err != nil {
		return nil, err
	}
	if err := eachRecord(ab, kindToken, a.Tokens); err != nil {
		return nil, err
	}
	if err := eachRecord(ab, kindPolicy, a.Policies); err != nil {
		return nil, err
	}
	if err := eachRecord(ab, kindGroup, a.Groups); err != nil {
		return nil, err
	}
	if err := eachRecord(ab, kindJob, a.Jobs); err != nil {
		return nil, err
	}
	for _, j := range a.Jobs {
		j.Executions, j.Previous = map[string]*execRec{}, map[string][]*execRec{}
	}
	if mb := ab.Bucket(kindBuckets[kindMember]); mb != nil {
		err := mb.ForEachBucket(func(group []byte) error {
			g, ok := a.Groups[string(group)]
			if !ok {
				return fmt.Errorf("members of thing group %s, which has no record", group)
			}
			return mb.Bucket(group).ForEach(func(thing, _ []byte) error {
				if g.Things == nil {
					g.Things = map[string]bool{}
				}
				g.Things[string(thing)] = true
				return nil
			})
		})
		if err != nil {
			return nil, err
		}
	}
	if eb := ab.Bucket(kindBuckets[kindExec]); eb != nil {
		err := eb.ForEachBucket(func(job []byte) error {
			j, ok := a.Jobs[string(job)]
			if !ok {
				return fmt.Errorf("executions of job %s, which has no record", job)
			}
			return eb.Bucket(job).ForEach(func(thing, v []byte) error {
				var e execsRec
				if err := json.Unmarshal(v, &e); err != nil {
					return fmt.Errorf("execution of job %s on %s: %w", job, thing, err)
				}
				if e.Current != nil {
					j.Executions[string(thing)] = e.Current
				}
				if len(e.Previous) > 0 {
					j.Previous[string(thing)] = e.Previous
				}
				return nil
			})
		})
		if err != nil {
			return nil, err
		}
	}
	return a, nil
}

// fillState completes a decoded state: the maps a record or a hand-edited
// registry.json left out are made empty, certificates and policies parsed.
// where names the file for errors.
func fillState(st *state, where string) error {
	if st.Accounts == nil {
		st.Accounts = map[string]*accountRec{}
	}
	var err error
	for name, a := range st.Accounts {
		fresh := newAccountRec(a.Account, a.CreatedAt)
		if a.CAs == nil {
			a.CAs = fresh.CAs
		}
		if a.Certs == nil {
			a.Certs = fresh.Certs
		}
		if a.Things == nil {
			a.Things = fresh.Things
		}
		if a.Templates == nil {
			a.Templates = fresh.Templates
		}
		if a.Jobs == nil {
			a.Jobs = fresh.Jobs
		}
		if a.Tokens == nil {
			a.Tokens = fresh.Tokens
		}
		if a.Groups == nil {
			a.Groups = fresh.Groups
		}
		for _, g := range a.Groups {
			if g.Things == nil {
				g.Things = map[string]bool{}
			}
		}
		if a.Policies == nil {
			a.Policies = fresh.Policies
		}
		for pname, p := range a.Policies {
			if p.doc, err = iotpolicy.Parse(p.Document); err != nil {
				return fmt.Errorf("emulator: %s: account %s policy %s: %w", where, name, pname, err)
			}
		}
		for id, c := range a.CAs {
			if c.cert, err = parseOneCert([]byte(c.PEM)); err != nil {
				return fmt.Errorf("emulator: %s: account %s CA %s: %w", where, name, id, err)
			}
		}
		for id, c := range a.Certs {
			if c.cert, err = parseOneCert([]byte(c.PEM)); err != nil {
				return fmt.Errorf("emulator: %s: account %s certificate %s: %w", where, name, id, err)
			}
		}
		for _, j := range a.Jobs {
			if j.Executions == nil {
				j.Executions = map[string]*execRec{}
			}
			if j.Previous == nil {
				j.Previous = map[string][]*execRec{}
			}
		}
	}
	return nil
}

// readRegistryJSON reads the registry.json of earlier versions, or nil when
// there is none.
func readRegistryJSON(path string) (*state, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("emulator: reading %s: %w", path, err)
	}
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("emulator: %s is not a registry: %w", path, err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("emulator: %s has version %d, this emulator reads %d", path, st.Version, stateVersion)
	}
	if err := fillState(&st, path); err != nil {
		return nil, err
	}
	return &st, nil
}

// load opens the state folder's registry.db, migrating a registry.json of an
// earlier version into it first: read, written in one transaction, then
// renamed aside to registry.json.migrated. A crash before the commit leaves
// registry.json in charge (the migration runs again); after it, the database
// (registry.json is then only renamed).
func (r *Registry) load() error {
	dbPath := filepath.Join(r.dir, registryDBFile)
	jsonPath := filepath.Join(r.dir, registryFile)
	s, err := openStore(dbPath)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			_ = s.close()
		}
	}()
	done, err := s.initialized()
	if err != nil {
		return fmt.Errorf("emulator: reading the registry %s: %w", dbPath, err)
	}
	var st *state
	if !done {
		old, err := readRegistryJSON(jsonPath)
		if err != nil {
			return err
		}
		st = old
		if st == nil {
			st = &state{Version: stateVersion, Accounts: map[string]*accountRec{}}
		}
		if err := s.writeAll(st); err != nil {
			return err
		}
	} else if st, err = s.load(); err != nil {
		return err
	}
	if err := fillState(st, dbPath); err != nil {
		return err
	}
	if _, err := os.Stat(jsonPath); err == nil {
		aside := jsonPath + registryMigratedExt
		if err := os.Rename(jsonPath, aside); err != nil {
			return fmt.Errorf("emulator: renaming %s aside after migrating it into %s: %w", jsonPath, dbPath, err)
		}
		if err := atomicfile.SyncDir(r.dir); err != nil {
			return err
		}
		r.log.Info("emulator: registry migrated from "+registryFile+" into "+registryDBFile+"; the old file is kept as "+registryFile+registryMigratedExt+" and no longer read",
			"from", jsonPath, "to", dbPath, "kept", aside, "accounts", len(st.Accounts))
	}
	r.st, r.store = st, s
	ok = true
	return nil
}

// checkStoreLocked compares the state in memory with what registry.db holds:
// a change that forgot to mark a record it changed shows as a difference. The
// tests run it after every change (Config's storeCheck).
func (r *Registry) checkStoreLocked() error {
	if r.store == nil {
		return nil
	}
	st, err := r.store.load()
	if err != nil {
		return err
	}
	if err := fillState(st, r.store.path); err != nil {
		return err
	}
	want, err := json.MarshalIndent(r.st, "", " ")
	if err != nil {
		return err
	}
	got, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		return err
	}
	if !bytes.Equal(want, got) {
		return fmt.Errorf("emulator: registry %s differs from the state in memory:\n%s", r.store.path, lineDiff(string(want), string(got)))
	}
	return nil
}

// lineDiff shows where two texts first differ, a few lines either side.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	i := 0
	for i < len(w) && i < len(g) && w[i] == g[i] {
		i++
	}
	from := max(0, i-6)
	part := func(lines []string) string {
		out := slices.Clone(lines[min(from, len(lines)):min(i+6, len(lines))])
		for k, l := range out {
			if len(l) > 160 {
				out[k] = l[:160] + "…"
			}
		}
		return strings.Join(out, "\n")
	}
	return fmt.Sprintf("line %d; in memory:\n%s\nin the store:\n%s", i+1, part(w), part(g))
}
