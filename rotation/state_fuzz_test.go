package rotation

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// FuzzDecodeStateAndNext: any state file, then a run of events. decodeState
// never panics; on a state it accepts, Machine.Next never panics, never
// changes its input, returns the input unchanged with an error, and makes
// only states that encode and decode back (so a state saved before a crash
// is one the next start can read).
func FuzzDecodeStateAndNext(f *testing.F) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cur := &IdentityRecord{KeyURI: "file:/k/device-1.pem", CertFile: "certs/a.pem", CertificateID: "aa", NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}
	for _, st := range []*State{
		{Version: 1, Phase: PhaseIdle, Current: cur},
		{Version: 1, Phase: PhaseIdle},
		{Version: 1, Phase: PhaseCSRSubmitted, Current: cur, Pending: &IdentityRecord{KeyURI: "file:/k/device-2.pem"}, Trigger: &Trigger{Kind: TriggerJob, JobID: "j1", At: now}, CSR: "-----BEGIN CERTIFICATE REQUEST-----\n", Serial: 2},
		{Version: 1, Phase: PhaseCommitted, Current: cur, Previous: []Retiring{{IdentityRecord: *cur, RetireAt: now}}},
	} {
		b, _ := json.Marshal(st)
		f.Add(b, []byte{0, 1, 2, 3, 4, 5, 6})
		f.Add(b, []byte{0, 10, 8, 10, 7})
	}
	f.Add([]byte(`{"version": 99}`), []byte{0})
	f.Add([]byte(`{"phase": "issued"}`), []byte{1})
	m := Machine{GracePeriod: time.Hour, Backoff: Backoff{Min: time.Second, Max: time.Minute}}
	kinds := []EventKind{EventStart, EventKeyReady, EventCSRMade, EventIssued, EventVerified, EventSwitched, EventReported, EventCleanedUp, EventRetired, EventRecover, EventFailed}
	f.Fuzz(func(t *testing.T, data, events []byte) {
		s, err := decodeState(data, "/var/lib/thingcert/state.json")
		if err != nil {
			return
		}
		if !wellFormed(s) {
			t.Fatalf("decodeState accepted a state Next cannot take: %s", data)
		}
		at := now
		for i, b := range events {
			if i >= 32 {
				break
			}
			ev := Event{Kind: kinds[int(b)%len(kinds)], Trigger: Trigger{Kind: TriggerOperator, At: at},
				KeyURI: "file:/k/device-9.pem", CSR: "-----BEGIN CERTIFICATE REQUEST-----\n",
				Cert:          &IdentityRecord{KeyURI: "file:/k/device-9.pem", CertFile: "certs/b.pem", CertificateID: "bb", NotBefore: at, NotAfter: at.Add(time.Hour)},
				CertificateID: "aa", Err: errors.New("connection refused"), Note: "n"}
			if b >= 128 && s.Current != nil {
				ev.Cert.KeyURI, ev.CertificateID = s.Current.KeyURI, s.Current.CertificateID
			}
			before, err := json.Marshal(s)
			if err != nil {
				t.Fatalf("a decoded state does not encode: %v", err)
			}
			n, err := m.Next(s, ev, at)
			after, _ := json.Marshal(s)
			if !bytes.Equal(before, after) {
				t.Fatalf("Next(%s) changed its input:\n%s\n%s", ev.Kind, before, after)
			}
			if err != nil {
				// The state stays as it was (Next may return it with its
				// version and phase defaults filled in).
				want := s.Clone()
				if want.Version == 0 {
					want.Version = StateVersion
				}
				if want.Phase == "" {
					want.Phase = PhaseIdle
				}
				w, _ := json.Marshal(want)
				if got, _ := json.Marshal(n); !bytes.Equal(got, w) && !bytes.Equal(got, before) {
					t.Fatalf("Next(%s) failed (%v) but changed the state:\n%s\n%s", ev.Kind, err, before, got)
				}
				continue
			}
			enc, err := encodeState(n)
			if err != nil {
				t.Fatalf("state after %s does not encode: %v", ev.Kind, err)
			}
			if err := sameAsMarshal(enc, n); err != nil {
				t.Fatal(err)
			}
			if _, err := decodeState(enc, "/var/lib/thingcert/state.json"); err != nil {
				t.Fatalf("Next(%s) made a state decodeState refuses: %v\nfrom %s\nto %s", ev.Kind, err, before, enc)
			}
			if !wellFormed(n) {
				t.Fatalf("Next(%s) made a state Next itself cannot take:\nfrom %s\nto %s", ev.Kind, before, enc)
			}
			s = n
			at = at.Add(time.Duration(b) * time.Minute)
		}
	})
}

// wellFormed is what Next needs of a state: a rotation in progress has the
// identity it replaces and the reason it runs.
func wellFormed(s *State) bool {
	return !s.InProgress() || (s.Current != nil && s.Trigger != nil)
}
