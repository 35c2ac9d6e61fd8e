package emulator

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestStateSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	cfg := Config{StateDir: dir, Now: clock.Now, Accounts: []Account{{Name: "A", Prefix: "aaa"}},
		Templates: []Template{{Name: "t", Body: SimpleTemplate("", "Serial")}}}
	e := startEmu(t, cfg)
	ca := newTestCA(t, "ca")
	if _, err := e.RegisterCA(ctx, "A", ca.pem, CAOptions{}); err != nil {
		t.Fatal(err)
	}
	d := issue(t, ca, "dev", certOpts{})
	register(t, e, "A", d, CertificateOptions{Thing: "dev-1"})
	if _, err := e.CreateJob(ctx, "A", Job{ID: "j1", Document: json.RawMessage(`{"a":1}`), Things: []string{"dev-1"}}); err != nil {
		t.Fatal(err)
	}
	c := mustDial(t, e, d, "dev-1", dialOpts{account: "A"})
	c.publish(t, "$aws/things/dev-1/jobs/j1/update", `{"status": "IN_PROGRESS", "statusDetails": {"step": "1"}}`)
	c.await(t, "$aws/things/dev-1/jobs/j1/update/accepted", nil)
	c.Disconnect(0)
	rootPEM := e.RootCAPEM()
	waitEvent(t, e, HistoryQuery{CertificateID: d.id, Outcome: Disconnected}, func(ConnectionEvent) bool { return true })
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{RootCAFile, registryDBFile, historyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("state file %s: %v", f, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, registryDBFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v (%v), want 0600", registryDBFile, fi.Mode(), err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, RootCAFile)); !bytes.Equal(b, rootPEM) {
		t.Error("root-ca.pem in the state folder is not the emulator's root")
	}

	e2 := startEmu(t, Config{StateDir: dir, Now: clock.Now})
	if !bytes.Equal(e2.RootCAPEM(), rootPEM) {
		t.Fatal("the root CA changed across a restart: clients would stop trusting the emulator")
	}
	ex, err := e2.JobExecution(ctx, "A", "dev-1", "j1")
	if err != nil || ex.Status != JobInProgress || ex.StatusDetails["step"] != "1" {
		t.Fatalf("job execution after restart: %+v %v", ex, err)
	}
	if ts, _ := e2.Templates(ctx, "A"); len(ts) != 1 {
		t.Fatalf("templates after restart: %v", ts)
	}
	if evs, _ := e2.History(ctx, HistoryQuery{CertificateID: d.id}); len(evs) < 2 {
		t.Fatalf("history after restart: %v", evs)
	}
	clock.Advance(2 * time.Second)
	mustDial(t, e2, d, "dev-1", dialOpts{account: "A"})
}

func TestOpenAdminOfflineAndOnline(t *testing.T) {
	dir := t.TempDir()
	adm, online, err := OpenAdmin(ctx, Config{StateDir: dir})
	if err != nil || online {
		t.Fatalf("OpenAdmin without an emulator: online=%v %v", online, err)
	}
	if _, err := adm.AddAccount(ctx, Account{Name: "A", Prefix: "aaa"}); err != nil {
		t.Fatal(err)
	}
	// The folder is locked: an emulator cannot start on it meanwhile.
	if _, err := Start(ctx, Config{StateDir: dir}); !errors.Is(err, ErrLocked) {
		t.Fatalf("starting on a locked folder: %v, want ErrLocked", err)
	}
	if err := adm.Close(); err != nil {
		t.Fatal(err)
	}

	e := startEmu(t, Config{StateDir: dir})
	if e.Endpoint("A") != "aaa-ats.iot.us-east-1.amazonaws.com" {
		t.Fatalf("the account made offline is missing: %q", e.Endpoint("A"))
	}
	adm, online, err = OpenAdmin(ctx, Config{StateDir: dir})
	if err != nil || !online {
		t.Fatalf("OpenAdmin with an emulator running: online=%v %v", online, err)
	}
	defer adm.Close()
	d := issue(t, nil, "dev", certOpts{})
	cert, err := adm.RegisterCertificate(ctx, "A", d.pem, CertificateOptions{WithoutCA: true, Thing: "dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	if cert.ID != d.id || cert.Mode != ModeSNIOnly || cert.Things[0] != "dev-1" {
		t.Fatalf("registered over the socket: %+v", cert)
	}
	if err := adm.AttachAllowAllPolicy(ctx, "A", cert.ID); err != nil {
		t.Fatal(err)
	}
	// The running emulator sees it at once.
	mustDial(t, e, d, "dev-1", dialOpts{account: "A"})
	// Errors keep their kind across the socket.
	if _, err := adm.Certificate(ctx, "A", "0000"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown certificate over the socket: %v, want ErrNotFound", err)
	}
	if _, err := adm.RegisterCertificate(ctx, "A", d.pem, CertificateOptions{WithoutCA: true}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate over the socket: %v, want ErrExists", err)
	}
	if err := adm.SetCertificateStatus(ctx, "A", d.id, StatusRevoked); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.Certificate(ctx, "A", d.id); got.Status != StatusRevoked {
		t.Fatalf("status after the socket call: %s", got.Status)
	}
	evs, err := adm.History(ctx, HistoryQuery{CertificateID: d.id, Limit: 1})
	if err != nil || len(evs) != 1 {
		t.Fatalf("history over the socket: %v %v", evs, err)
	}
	// A second emulator cannot take the folder.
	if _, err := Start(ctx, Config{StateDir: dir}); !errors.Is(err, ErrLocked) {
		t.Fatalf("a second emulator on the folder: %v, want ErrLocked", err)
	}
}

// Close ends connections that never sent CONNECT, instead of waiting for them.
func TestCloseEndsSilentConnections(t *testing.T) {
	e, err := Start(ctx, Config{Accounts: []Account{{Name: "A", Prefix: "aaa"}}})
	if err != nil {
		t.Fatal(err)
	}
	d := issue(t, nil, "dev", certOpts{})
	if _, err := e.RegisterCertificate(ctx, "A", d.pem, CertificateOptions{WithoutCA: true}); err != nil {
		t.Fatal(err)
	}
	cfg := e.ClientTLS("A")
	cfg.Certificates = []tls.Certificate{d.tls()}
	conn, err := tls.Dial("tcp", e.Addr(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	closed := make(chan error, 1)
	go func() { closed <- e.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Close waited for a connection that never sent CONNECT")
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection is still open after Close")
	}
}
