package rotation

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// identityIssuer records the identity the runner hands it, then issues as
// the cloud does.
type identityIssuer struct {
	*fakeCloud
	got []Identity
}

func (i *identityIssuer) IssueWith(ctx context.Context, current Identity, der []byte) (*Issued, error) {
	if current.Key == nil || len(current.Chain) == 0 {
		return nil, NewFatal("issuing", errors.New("no identity"))
	}
	i.got = append(i.got, current)
	return i.fakeCloud.Issue(ctx, der)
}

func (i *identityIssuer) Issue(context.Context, []byte) (*Issued, error) {
	return nil, NewFatal("issuing", errors.New("Issue called on an issuer that needs the identity"))
}

// TestIdentityIssuerGetsTheCurrentIdentity: an IdentityIssuer is handed the
// identity current when the CSR is submitted (opened: key and chain), each
// rotation the one the previous rotation made; Issue is never called.
func TestIdentityIssuerGetsTheCurrentIdentity(t *testing.T) {
	d := osDevice(t)
	ii := &identityIssuer{fakeCloud: d.cloud}
	d.runner.Issuer = ii
	ctx := context.Background()
	first := d.assertWorking(t).Current
	s, err := d.runner.Rotate(ctx, Trigger{Kind: TriggerOperator})
	if err != nil {
		t.Fatal(err)
	}
	second := s.Current
	if _, err := d.runner.Rotate(ctx, Trigger{Kind: TriggerOperator}); err != nil {
		t.Fatal(err)
	}
	if len(ii.got) != 2 {
		t.Fatalf("IssueWith called %d times, want 2", len(ii.got))
	}
	for i, want := range []*IdentityRecord{first, second} {
		got := ii.got[i]
		if got.Record.CertificateID != want.CertificateID || certificateID(got.Chain[0]) != want.CertificateID || got.Key.URI() != want.KeyURI {
			t.Errorf("rotation %d: issuer got certificate %s key %s, want %s %s", i+1, short(got.Record.CertificateID), got.Key.URI(), short(want.CertificateID), want.KeyURI)
		}
	}
}

// noFallback is a cloud where the current identity cannot connect at all
// (an issuer-only claim): going back to it says ErrNoFallback.
type noFallback struct {
	*fakeCloud
	current string
}

func (n noFallback) Switch(ctx context.Context, id Identity) error {
	if id.Record.CertificateID == n.current {
		return NewTransient("going back", ErrNoFallback, 0)
	}
	return n.fakeCloud.Switch(ctx, id)
}

// TestNoFallbackRetriesTheNewIdentity: when the new identity is refused and
// the current one cannot connect to tell why, the switch is retried later
// with the same new identity, not rolled back; once the cloud takes it, the
// rotation completes.
func TestNoFallbackRetriesTheNewIdentity(t *testing.T) {
	d := osDevice(t)
	old := d.assertWorking(t).Current
	d.runner.Connector = noFallback{fakeCloud: d.cloud, current: old.CertificateID}
	d.cloud.refuseNew = true
	stop := errors.New("stop")
	d.runner.AfterSave = func(_ context.Context, s *State) error {
		if s.Phase == PhaseVerified && s.Attempt == 1 {
			return stop
		}
		return nil
	}
	_, err := d.runner.Rotate(context.Background(), Trigger{Kind: TriggerOperator})
	if !errors.Is(err, stop) {
		t.Fatalf("Rotate: %v, want it stopped after the first failed switch", err)
	}
	s := d.mustLoad(t)
	if s.Phase != PhaseVerified || s.Pending == nil || !strings.Contains(s.LastError, "nothing to fall back on") {
		t.Fatalf("after the failed switch: phase %s, pending %+v, last error %q", s.Phase, s.Pending, s.LastError)
	}
	pending := s.Pending.CertificateID
	// The cloud now takes the new certificate (a JITR program activated it).
	d.cloud.mu.Lock()
	d.cloud.status[pending] = "ACTIVE"
	d.cloud.mu.Unlock()
	d.runner.AfterSave = nil
	s, err = d.runner.Resume(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Current.CertificateID != pending {
		t.Fatalf("current %s, want the same new certificate %s", short(s.Current.CertificateID), short(pending))
	}
}
