package emulator

import (
	"errors"
	"testing"
)

func TestSetStatusRefusesWhatUpdateCertificateRefuses(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{StateDir: t.TempDir()})
	d := issue(t, ca, "dev", certOpts{})
	register(t, e, "A", d, CertificateOptions{})
	// Through the admin socket too: the sentinel must survive it.
	adm, online, err := OpenAdmin(ctx, Config{StateDir: e.StateDir()})
	if err != nil || !online {
		t.Fatalf("admin socket: online %v, %v", online, err)
	}
	defer adm.Close()
	for _, via := range []struct {
		name string
		a    Admin
	}{{"in process", e}, {"admin socket", adm}} {
		for _, s := range []CertificateStatus{StatusPendingActivation, StatusPendingTransfer, StatusRegisterInactive} {
			if err := via.a.SetCertificateStatus(ctx, "A", d.id, s); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: set-status %s: %v; want ErrInvalid", via.name, s, err)
			}
		}
	}
	if got, _ := e.Certificate(ctx, "A", d.id); got.Status != StatusActive {
		t.Fatalf("status after refused changes: %s", got.Status)
	}
	for _, s := range []CertificateStatus{StatusInactive, StatusActive, StatusRevoked} {
		if err := adm.SetCertificateStatus(ctx, "A", d.id, s); err != nil {
			t.Fatalf("set-status %s: %v", s, err)
		}
	}
	// Revocation is final on AWS.
	for _, s := range []CertificateStatus{StatusActive, StatusInactive} {
		if err := adm.SetCertificateStatus(ctx, "A", d.id, s); !errors.Is(err, ErrCertificateState) {
			t.Errorf("revoked → %s: %v; want ErrCertificateState", s, err)
		}
	}
}

func TestDeleteCertificateAsAWS(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{StateDir: t.TempDir()})
	d := issue(t, ca, "dev", certOpts{})
	register(t, e, "A", d, CertificateOptions{Thing: "dev-1"})
	adm, _, err := OpenAdmin(ctx, Config{StateDir: e.StateDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if err := adm.DeleteCertificate(ctx, "A", d.id); !errors.Is(err, ErrCertificateState) {
		t.Fatalf("deleting an ACTIVE certificate: %v; want ErrCertificateState", err)
	}
	if err := adm.SetCertificateStatus(ctx, "A", d.id, StatusInactive); err != nil {
		t.Fatal(err)
	}
	if err := adm.DeleteCertificate(ctx, "A", d.id); !errors.Is(err, ErrConflict) {
		t.Fatalf("deleting a certificate attached to dev-1: %v; want ErrConflict", err)
	}
	if _, err := e.Certificate(ctx, "A", d.id); err != nil {
		t.Fatalf("the refused delete removed the certificate: %v", err)
	}
	if err := adm.DetachCertificate(ctx, "A", "dev-1", d.id); err != nil {
		t.Fatal(err)
	}
	// The policies the test attached to it keep it in use too.
	if err := adm.DeleteCertificate(ctx, "A", d.id); !errors.Is(err, ErrConflict) {
		t.Fatalf("deleting a certificate with policies attached: %v; want ErrConflict", err)
	}
	ps, err := e.AttachedPolicies(ctx, "A", d.id)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if err := e.DetachPolicy(ctx, "A", p.Name, d.id); err != nil {
			t.Fatal(err)
		}
	}
	if err := adm.DeleteCertificate(ctx, "A", d.id); err != nil {
		t.Fatalf("deleting a detached INACTIVE certificate: %v", err)
	}
	if _, err := e.Certificate(ctx, "A", d.id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}
