package emulator

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// storeChecked runs cfg's registry on disk (a temporary state folder when it
// has none) and compares registry.db with the state in memory after every
// change, failing t on a difference: a change that forgot to mark a record it
// changed would lose it at the next start. startEmu and openJobsRegistry use
// it, so every test through them checks the marks of what it does.
func storeChecked(t testing.TB, cfg Config) Config {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	cfg.storeCheck = func(err error) {
		if err != nil {
			t.Errorf("registry.db after a change: %v", err)
		}
	}
	return cfg
}

// registryJSON is the whole state as registry.json held it: what a reopened
// registry must read back.
func registryJSON(t testing.TB, r *Registry) string {
	t.Helper()
	r.mu.RLock()
	defer r.mu.RUnlock()
	b, err := json.MarshalIndent(r.st, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A change that does not mark what it changed is caught by the store check
// (so the check of the other tests can fail).
func TestStoreCheckCatchesAnUnmarkedChange(t *testing.T) {
	r, err := Open(ctx, Config{StateDir: t.TempDir(), Accounts: []Account{{Name: "A", Prefix: "aaa"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.CreateThing(ctx, "A", "marked", nil); err != nil {
		t.Fatal(err)
	}
	err = r.mutate(func(tx *changeSet, now time.Time) ([]func(), error) {
		r.st.Accounts["A"].Things["unmarked"] = &thingRec{CreatedAt: now}
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	err = r.checkStoreLocked()
	r.mu.Unlock()
	if err == nil || !strings.Contains(err.Error(), "unmarked") {
		t.Fatalf("store check after an unmarked change: %v; want the difference naming the thing", err)
	}
}

// Every kind of change, one after the other, with the store checked after
// each (storeChecked), then the folder reopened: the state read back is the
// state that was in memory.
func TestStoreEveryOperationSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	e := startEmu(t, Config{StateDir: dir, Accounts: []Account{{Name: "A", Prefix: "aaa"}},
		Templates: []Template{{Name: "fleet", Body: SimpleTemplate("dev-", "Serial")}}})
	r := e.Registry
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err := r.AddAccount(ctx, Account{Name: "B", Prefix: "bbb", Region: "eu-west-1"})
	must("AddAccount", err)
	must("UpdateEventConfigurations", r.UpdateEventConfigurations(ctx, "A", map[string]bool{EventJob: true, EventJobExecution: true}))

	// CAs and certificates.
	ca := newTestCA(t, "store CA")
	reg, err := r.RegisterCA(ctx, "A", ca.pem, CAOptions{})
	must("RegisterCA", err)
	must("SetCAStatus", r.SetCAStatus(ctx, "A", reg.ID, StatusInactive))
	active, yes := StatusActive, true
	must("UpdateCA", r.UpdateCA(ctx, "A", reg.ID, CAUpdate{Status: &active, AutoRegistration: &yes,
		Registration: &CARegistrationConfig{TemplateBody: string(SimpleTemplate("jit-", "AWS::IoT::Certificate::CommonName"))}}))
	d1 := issue(t, ca, "d1", certOpts{})
	c1, err := r.RegisterCertificate(ctx, "A", d1.pem, CertificateOptions{Thing: "t1"})
	must("RegisterCertificate", err)
	c2, err := r.IssueCertificate(ctx, "A", []byte(csrPEMFor(t, "d2")), IssueOptions{Thing: "t2"})
	must("IssueCertificate", err)
	c3, err := r.IssueCertificate(ctx, "B", []byte(csrPEMFor(t, "d3")), IssueOptions{Status: StatusInactive})
	must("IssueCertificate B", err)
	_, err = r.CreateThing(ctx, "A", "t3", map[string]string{"model": "m1"})
	must("CreateThing", err)
	must("AttachCertificate", r.AttachCertificate(ctx, "A", "t3", c2.ID))
	must("DetachCertificate", r.DetachCertificate(ctx, "A", "t3", c2.ID))
	must("SetCertificateStatus", r.SetCertificateStatus(ctx, "A", c1.ID, StatusInactive))
	must("SetCertificateStatus", r.SetCertificateStatus(ctx, "A", c1.ID, StatusActive))
	must("DeleteCertificate", r.DeleteCertificate(ctx, "B", c3.ID))
	_, err = r.CreateThing(ctx, "A", "gone", nil)
	must("CreateThing", err)

	// Policies.
	_, err = r.CreatePolicy(ctx, "A", "p1", AllowAllPolicy)
	must("CreatePolicy", err)
	must("AttachPolicy", r.AttachPolicy(ctx, "A", "p1", c1.ID))
	must("AttachAllowAllPolicy", r.AttachAllowAllPolicy(ctx, "A", c2.ID))
	_, err = r.CreatePolicy(ctx, "A", "p2", AllowAllPolicy)
	must("CreatePolicy", err)
	must("AttachPolicy", r.AttachPolicy(ctx, "A", "p2", c2.ID))
	must("DetachPolicy", r.DetachPolicy(ctx, "A", "p2", c2.ID))
	must("DeletePolicy", r.DeletePolicy(ctx, "A", "p2"))

	// Templates, fleet provisioning (with an ownership token), JITR/JITP.
	must("CreateTemplate", r.CreateTemplate(ctx, "A", Template{Name: "other", Body: SimpleTemplate("o-", "Serial"), Description: "d"}))
	reply, _ := r.handleProvisioning("A", topicCreateFromCSR, []byte(`{"certificateSigningRequest": `+jsonString(csrPEMFor(t, "fp"))+`}`))
	var acc createFromCSRAccepted
	if err := json.Unmarshal(reply.Payload, &acc); err != nil || acc.CertificateOwnershipToken == "" {
		t.Fatalf("CreateCertificateFromCsr: %s", reply.Payload)
	}
	reply, _ = r.handleProvisioning("A", topicTemplates+"fleet/provision/json", []byte(`{"certificateOwnershipToken": "`+acc.CertificateOwnershipToken+`", "parameters": {"Serial": "7"}}`))
	if !strings.HasSuffix(reply.Topic, "/accepted") {
		t.Fatalf("RegisterThing: %s %s", reply.Topic, reply.Payload)
	}
	reply, _ = r.handleProvisioning("A", topicCreateFromCSR, []byte(`{"certificateSigningRequest": `+jsonString(csrPEMFor(t, "expires"))+`}`))
	if !strings.HasSuffix(reply.Topic, "/accepted") {
		t.Fatalf("CreateCertificateFromCsr: %s", reply.Payload)
	}
	jit := issue(t, ca, "jit1", certOpts{})
	if note := e.autoRegister("A", reg.ID, []*x509.Certificate{jit.cert}); !strings.Contains(note, "JITP") {
		t.Fatalf("autoRegister: %s", note)
	}

	// Groups and jobs.
	_, err = r.CreateThingGroup(ctx, "A", ThingGroup{Name: "g1", Description: "fleet", Attributes: map[string]string{"k": "v"}})
	must("CreateThingGroup", err)
	must("AddThingToThingGroup", r.AddThingToThingGroup(ctx, "A", "g1", "t1"))
	must("AddThingToThingGroup", r.AddThingToThingGroup(ctx, "A", "g1", "gone"))
	_, err = r.CreateJob(ctx, "A", Job{ID: "snap", Document: json.RawMessage(rotateDoc), Things: []string{"t1", "t2", "t3"},
		RetryConfig: retryCfg("FAILED", 1), TimeoutConfig: &JobTimeoutConfig{InProgressTimeoutInMinutes: 5}})
	must("CreateJob", err)
	_, err = r.CreateJob(ctx, "A", Job{ID: "cont", Document: json.RawMessage(rotateDoc), ThingGroups: []string{"g1"}, TargetSelection: TargetContinuous,
		RolloutConfig: &JobRolloutConfig{MaximumPerMinute: 1}})
	must("CreateJob continuous", err)
	must("AddThingToThingGroup", r.AddThingToThingGroup(ctx, "A", "g1", "t2")) // a new execution of cont
	must("RemoveThingFromThingGroup", r.RemoveThingFromThingGroup(ctx, "A", "g1", "t1"))
	for _, step := range []struct{ thing, rest, payload string }{
		{"t1", "start-next", `{"statusDetails": {"step": "1"}}`},
		{"t1", "snap/update", `{"status": "FAILED"}`}, // retried: execution 2
		{"t2", "snap/update", `{"status": "IN_PROGRESS", "stepTimeoutInMinutes": 1}`},
		{"t1", "get", ``},
	} {
		reply, ok := r.handleJobs("A", step.thing, step.rest, []byte(step.payload))
		if !ok || !strings.HasSuffix(reply.Topic, "/accepted") {
			t.Fatalf("%s %s: %s %s", step.thing, step.rest, reply.Topic, reply.Payload)
		}
	}
	must("CancelJobExecution", r.CancelJobExecution(ctx, "A", "snap", "t3", CancelExecutionOptions{StatusDetails: map[string]string{"why": "test"}}))
	e.clock.Advance(2 * time.Minute) // t2's step timer runs out; the rollout's minute passes
	must("AdvanceJobs", r.AdvanceJobs(ctx))
	must("DeleteJobExecution", r.DeleteJobExecution(ctx, "A", "snap", "t3", 1, false))
	must("DeleteThing", r.DeleteThing(ctx, "A", "gone"))
	_, err = r.CancelJobWith(ctx, "A", "snap", CancelJobOptions{Force: true, ReasonCode: "STOP", Comment: "done"})
	must("CancelJobWith", err)
	_, err = r.CreateJob(ctx, "A", Job{ID: "short", Document: json.RawMessage(rotateDoc), Things: []string{"t3"}})
	must("CreateJob", err)
	must("CancelJob", r.CancelJob(ctx, "A", "short", false))
	must("DeleteJob", r.DeleteJob(ctx, "A", "short", false))
	e.clock.Advance(2 * time.Hour)    // the unused ownership token expires
	_, err = r.Certificates(ctx, "A") // sweeps
	must("Certificates", err)

	want := registryJSON(t, r)
	if strings.Contains(want, acc.CertificateOwnershipToken) || !strings.Contains(want, `"thingGroups"`) || !strings.Contains(want, `"previousExecutions"`) {
		t.Fatalf("the sequence did not reach the states it means to test:\n%s", want)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(ctx, Config{StateDir: dir, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if got := registryJSON(t, r2); got != want {
		t.Fatalf("reopened state differs: %s", lineDiff(want, got))
	}
}

// registryFixture is a registry.json written by the emulator before
// registry.db (every kind of record: accounts, a CA with JITP, certificates,
// things, templates, an ownership token, policies, a group, jobs with
// retried and continuous executions), at registryFixtureTime.
const registryFixture = "testdata/registry-v1.json"

var registryFixtureTime = time.Date(2030, 6, 1, 12, 2, 0, 0, time.UTC)

func writeFixture(t *testing.T, dir string) []byte {
	t.Helper()
	data, err := os.ReadFile(registryFixture)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, registryFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return data
}

func openAt(t *testing.T, dir string, logs *logBuffer) *Registry {
	t.Helper()
	cfg := Config{StateDir: dir, Now: func() time.Time { return registryFixtureTime }}
	if logs != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	}
	r, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// indented is the state as the earlier emulator wrote registry.json.
func indented(t *testing.T, r *Registry) []byte {
	t.Helper()
	r.mu.RLock()
	defer r.mu.RUnlock()
	b, err := json.MarshalIndent(r.st, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A state folder of an earlier version is migrated on open: the state read
// is byte for byte what registry.json held, registry.json is renamed aside
// (and the log says so), and the next open reads registry.db alone.
func TestMigrateRegistryJSON(t *testing.T) {
	dir := t.TempDir()
	old := writeFixture(t, dir)
	logs := &logBuffer{}
	r := openAt(t, dir, logs)
	if got := indented(t, r); !bytes.Equal(got, old) {
		t.Fatalf("migrated state differs from registry.json: %s", lineDiff(string(old), string(got)))
	}
	if !strings.Contains(logs.String(), "registry migrated from registry.json into registry.db") || !strings.Contains(logs.String(), registryFile+registryMigratedExt) {
		t.Errorf("no log line about the migration:\n%s", logs.String())
	}
	if _, err := os.Stat(filepath.Join(dir, registryFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("registry.json still in place after the migration: %v", err)
	}
	if aside, err := os.ReadFile(filepath.Join(dir, registryFile+registryMigratedExt)); err != nil || !bytes.Equal(aside, old) {
		t.Errorf("registry.json.migrated: %v (same content: %v)", err, bytes.Equal(aside, old))
	}
	if fi, err := os.Stat(filepath.Join(dir, registryDBFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("registry.db: %v %v, want mode 0600", fi.Mode(), err)
	}
	// The migrated registry works: a device's job update is saved.
	if reply, _ := r.handleJobs("A", "t2", "cont/update", []byte(`{"status": "SUCCEEDED"}`)); !strings.HasSuffix(reply.Topic, "/accepted") {
		t.Fatalf("job update after the migration: %s %s", reply.Topic, reply.Payload)
	}
	want := indented(t, r)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	logs = &logBuffer{}
	r = openAt(t, dir, logs)
	defer r.Close()
	if got := indented(t, r); !bytes.Equal(got, want) {
		t.Fatalf("reopened state differs: %s", lineDiff(string(want), string(got)))
	}
	if strings.Contains(logs.String(), "migrated") {
		t.Errorf("migrated again:\n%s", logs.String())
	}
}

// A migration cut short is finished at the next open: before its commit (an
// empty registry.db beside registry.json) registry.json is read again; after
// it (registry.json not yet renamed) registry.db is the registry and
// registry.json is only renamed aside.
func TestMigrationInterrupted(t *testing.T) {
	dir := t.TempDir()
	old := writeFixture(t, dir)
	db, err := bolt.Open(filepath.Join(dir, registryDBFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	r := openAt(t, dir, nil)
	if got := indented(t, r); !bytes.Equal(got, old) {
		t.Fatalf("state after an interrupted migration: %s", lineDiff(string(old), string(got)))
	}
	if _, err := r.CreateThing(ctx, "A", "after-migration", nil); err != nil {
		t.Fatal(err)
	}
	r.Close()

	writeFixture(t, dir) // as if the rename had not happened
	logs := &logBuffer{}
	r = openAt(t, dir, logs)
	defer r.Close()
	if _, err := r.Thing(ctx, "A", "after-migration"); err != nil {
		t.Fatalf("registry.db lost a change to a stale registry.json: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, registryFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("registry.json left in place: %v", err)
	}
	if !strings.Contains(logs.String(), "no longer read") {
		t.Errorf("no log line about registry.json:\n%s", logs.String())
	}
}

// A registry of another state version is refused, as registry.json or as
// registry.db, naming the file and both versions.
func TestStateVersionRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, registryFile), []byte(`{"version": 2, "accounts": {}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, Config{StateDir: dir}); err == nil || !strings.Contains(err.Error(), "registry.json has version 2, this emulator reads 1") {
		t.Errorf("registry.json of version 2: %v", err)
	}

	dir = t.TempDir()
	r, err := Open(ctx, Config{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	db, err := bolt.Open(filepath.Join(dir, registryDBFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyVersion, []byte("2")) })
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, Config{StateDir: dir}); err == nil || !strings.Contains(err.Error(), "registry.db") || !strings.Contains(err.Error(), "version 2, this emulator reads 1") {
		t.Errorf("registry.db of version 2: %v", err)
	}
}

// A process killed (SIGKILL) in the middle of a stream of changes leaves a
// registry that opens, holds every change whose call had returned, and no
// half change: each change here makes a thing and attaches a new certificate
// to it in one transaction, so a thing without its certificate would be one.
func TestStoreSurvivesKill(t *testing.T) {
	if dir := os.Getenv("THINGCERT_STORE_KILL_CHILD"); dir != "" {
		r, err := Open(ctx, Config{StateDir: dir, Accounts: []Account{{Name: "A", Prefix: "aaa"}}})
		if err != nil {
			os.Exit(2)
		}
		csr := []byte(csrPEMFor(t, "kill"))
		for i := 0; ; i++ {
			if _, err := r.IssueCertificate(ctx, "A", csr, IssueOptions{Thing: fmt.Sprintf("t-%04d", i)}); err != nil {
				os.Exit(3)
			}
			fmt.Printf("%d\n", i)
		}
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestStoreSurvivesKill$")
	cmd.Env = append(os.Environ(), "THINGCERT_STORE_KILL_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	done := -1
	for done < 200 && lines.Scan() {
		n, err := strconv.Atoi(lines.Text())
		if err != nil {
			t.Fatalf("child said %q", lines.Text())
		}
		done = n
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if done < 200 {
		t.Fatalf("the child stopped after %d changes", done+1)
	}
	r, err := Open(ctx, Config{StateDir: dir})
	if err != nil {
		t.Fatalf("opening after the kill: %v", err)
	}
	defer r.Close()
	things, err := r.Things(ctx, "A")
	if err != nil {
		t.Fatal(err)
	}
	if len(things) < done+1 {
		t.Fatalf("%d things after the kill; %d changes had returned", len(things), done+1)
	}
	for _, th := range things {
		if len(th.Certificates) != 1 {
			t.Errorf("thing %s has certificates %v after the kill: a change was torn", th.Name, th.Certificates)
		}
	}
	t.Logf("killed after %d returned changes; %d things read back", done+1, len(things))
}
