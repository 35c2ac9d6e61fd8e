package statusview

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/agent"

	"github.com/thingcert/thingcert/config"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

func statusConfig(t *testing.T) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(`endpoint: abc-ats.iot.eu-west-1.amazonaws.com
thing_name: dev-1
store: file:/var/lib/thingcert/keys/
rotation:
  lifetime_ratio: 2/3
  jitter: "off"
`), "/etc/thingcert/thingcert.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestStatusOf(t *testing.T) {
	cfg := statusConfig(t)
	nb := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cur := &rotation.IdentityRecord{KeyURI: "pkcs11:token=t;object=device-1?module-path=/m.so&pin-value=1234", CertFile: "/s/certs/a.pem",
		CertificateID: strings.Repeat("a", 64), Subject: "CN=dev-1", NotBefore: nb, NotAfter: nb.Add(90 * 24 * time.Hour)}
	prot := &keystore.Protection{Backend: "pkcs11", Hardware: true, Attributes: []keystore.Attribute{{Name: "sensitive", Value: "true"}}}
	rec := &agent.DaemonRecord{PID: 42, KeyURI: keystore.RedactURI(cur.KeyURI), Protection: prot, Connection: agent.ConnectionRecord{State: "connected"}}
	idle := &rotation.State{Phase: rotation.PhaseIdle, Current: cur,
		LastResult: &rotation.Result{Outcome: rotation.Succeeded, Trigger: rotation.Trigger{Kind: rotation.TriggerJob, JobID: "j1"}}}
	for _, tc := range []struct {
		name     string
		st       *rotation.State
		rec      *agent.DaemonRecord
		running  bool
		now      time.Time
		check    func(t *testing.T, s *Status)
		problems []string
	}{
		{name: "never provisioned", st: nil, now: nb,
			check: func(t *testing.T, s *Status) {
				if s.Provisioned || s.Identity != nil || s.Agent.Running {
					t.Errorf("%+v", s)
				}
			},
			problems: []string{"no identity yet"}},
		{name: "claim only", st: &rotation.State{Phase: rotation.PhaseIdle, Current: &rotation.IdentityRecord{KeyURI: "file:/c.pem", Claim: true, NotBefore: nb, NotAfter: nb.AddDate(1, 0, 0)}}, now: nb,
			check: func(t *testing.T, s *Status) {
				if s.Provisioned || !s.Identity.Claim || s.Renewal != nil {
					t.Errorf("%+v", s)
				}
			},
			problems: []string{"only its claim"}},
		{name: "healthy", st: idle, rec: rec, running: true, now: nb.Add(30 * 24 * time.Hour),
			check: func(t *testing.T, s *Status) {
				id := s.Identity
				if !s.Provisioned || strings.Contains(id.KeyURI, "1234") || id.Backend != "pkcs11" || id.Protection != prot ||
					id.AgeSeconds != 30*24*3600 || id.ExpiresInSeconds != 60*24*3600 {
					t.Errorf("identity %+v", id)
				}
				// 2/3 of 90 days, no jitter.
				if r := s.Renewal; !r.At.Equal(nb.Add(60*24*time.Hour)) || r.Reason != "lifetime" || r.Due || r.AfterFailure {
					t.Errorf("renewal %+v", r)
				}
				if !s.Agent.Running || s.Agent.Connection.State != "connected" || s.LastRotation.Trigger.JobID != "j1" {
					t.Errorf("agent %+v, last %+v", s.Agent, s.LastRotation)
				}
			}},
		{name: "due", st: idle, now: nb.Add(61 * 24 * time.Hour),
			check: func(t *testing.T, s *Status) {
				if !s.Renewal.Due || s.Identity.Protection != nil {
					t.Errorf("renewal %+v, protection %+v (no daemon record: not recorded)", s.Renewal, s.Identity.Protection)
				}
			}},
		{name: "emergency", st: idle, now: nb.Add(85 * 24 * time.Hour),
			problems: []string{"emergency window"}},
		{name: "expired", st: idle, now: nb.Add(91 * 24 * time.Hour),
			problems: []string{"expired"}},
		{name: "retrying", now: nb.Add(61 * 24 * time.Hour),
			st: &rotation.State{Phase: rotation.PhaseCSRSubmitted, Current: cur, Pending: &rotation.IdentityRecord{KeyURI: "file:/k/new.pem"},
				Trigger: &rotation.Trigger{Kind: rotation.TriggerTime, Reason: "lifetime"}, Attempt: 2, LastError: "CreateCertificateFromCsr (429 ThrottlingException)",
				NextRetry: nb.Add(61*24*time.Hour + time.Minute)},
			check: func(t *testing.T, s *Status) {
				r := s.Rotation
				if !r.InProgress || r.Phase != rotation.PhaseCSRSubmitted || r.Attempt != 2 || r.PendingKeyURI != "file:/k/new.pem" || s.Renewal.Due {
					t.Errorf("rotation %+v, renewal %+v", r, s.Renewal)
				}
			},
			problems: []string{"failed 2 time(s)"}},
		{name: "rolled back", now: nb.Add(61 * 24 * time.Hour),
			st: &rotation.State{Phase: rotation.PhaseIdle, Current: cur, NextRetry: nb.Add(62 * 24 * time.Hour),
				LastResult: &rotation.Result{Outcome: rotation.RolledBack, Phase: rotation.PhaseVerified, Error: "certificate for another key",
					Trigger: rotation.Trigger{Kind: rotation.TriggerTime}}},
			check: func(t *testing.T, s *Status) {
				if !s.Renewal.AfterFailure || !s.Renewal.At.Equal(nb.Add(62*24*time.Hour)) || s.Renewal.Due {
					t.Errorf("renewal %+v", s.Renewal)
				}
			},
			problems: []string{"rolled back in phase verified"}},
		{name: "reload refused", st: idle, rec: &agent.DaemonRecord{PID: 42, ReloadError: "unknown key"}, running: true, now: nb,
			problems: []string{"reload was refused"}},
		{name: "stopped daemon's reload error is old news", st: idle, rec: &agent.DaemonRecord{PID: 42, ReloadError: "unknown key"}, now: nb},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := StatusOf(cfg, tc.st, tc.rec, tc.running, tc.now)
			if tc.check != nil {
				tc.check(t, s)
			}
			if len(s.Problems) != len(tc.problems) {
				t.Errorf("problems %q, want %d matching %q", s.Problems, len(tc.problems), tc.problems)
			}
			for i, p := range tc.problems {
				if i < len(s.Problems) && !strings.Contains(s.Problems[i], p) {
					t.Errorf("problem %q, want it to say %q", s.Problems[i], p)
				}
			}
			var b bytes.Buffer
			if err := s.WriteText(&b); err != nil {
				t.Fatal(err)
			}
			text := b.String()
			if strings.Contains(text, "1234") {
				t.Errorf("the status prints a PIN:\n%s", text)
			}
			if (len(s.Problems) == 0) != strings.Contains(text, "health          ok") {
				t.Errorf("health line does not match the problems:\n%s", text)
			}
		})
	}
}

func TestStatusTextHealthy(t *testing.T) {
	cfg := statusConfig(t)
	nb := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	st := &rotation.State{Phase: rotation.PhaseIdle, Current: &rotation.IdentityRecord{KeyURI: "tpm:blob=/var/lib/thingcert/keys/d.tpmkey",
		CertificateID: strings.Repeat("b", 64), Subject: "CN=dev-1", NotBefore: nb, NotAfter: nb.Add(90 * 24 * time.Hour)}}
	var b bytes.Buffer
	StatusOf(cfg, st, nil, false, nb.Add(24*time.Hour)).WriteText(&b)
	for _, want := range []string{
		"thing           dev-1\n",
		"endpoint        abc-ats.iot.eu-west-1.amazonaws.com:8883\n",
		"  key           tpm:blob=/var/lib/thingcert/keys/d.tpmkey\n",
		"  protection    TPM 2.0 (not recorded yet)\n",
		"  certificate   " + strings.Repeat("b", 64) + "\n",
		"  age           1d\n",
		"next renewal    2030-03-02T00:00:00Z (in 59d): lifetime\n",
		"rotation        none in progress\n",
		"last rotation   never\n",
		"agent           not running\n",
		"health          ok\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status text lacks %q:\n%s", want, b.String())
		}
	}
}
