package fleet_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"testing"
	"time"

	"github.com/thingcert/thingcert/fleet"
)

func TestCheckReported(t *testing.T) {
	owner, other := newUnregisteredCA(t, "owner"), newUnregisteredCA(t, "other")
	key := func() any {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		return k.Public()
	}
	subj := pkix.Name{CommonName: "gw-1", Organization: []string{"Owner"}}
	curKey := key()
	current, _ := owner.sign(curKey, subj)
	good, _ := owner.sign(key(), subj)
	rogue, _ := other.sign(key(), subj)
	renamed, _ := owner.sign(key(), pkix.Name{CommonName: "gw-2", Organization: []string{"Owner"}})
	sameKey, _ := owner.sign(curKey, subj)
	// The same attributes in openssl's order (CN first) rather than Go's.
	reordered, _ := owner.sign(key(), pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
		{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "gw-1"}, {Type: asn1.ObjectIdentifier{2, 5, 4, 10}, Value: "Owner"}}})
	if string(reordered.RawSubject) == string(good.RawSubject) {
		t.Fatal("the reordered subject is not reordered")
	}
	now := time.Now()
	for _, c := range []*x509.Certificate{good, reordered} {
		if err := fleet.CheckReported(c, current, owner.pool(), now); err != nil {
			t.Errorf("a good report (%s): %v", c.Subject, err)
		}
	}
	for name, tc := range map[string]struct {
		err  error
		fail func() error
	}{
		"other CA":        {fleet.ErrNotOwnerCA, func() error { return fleet.CheckReported(rogue, current, owner.pool(), now) }},
		"expired":         {fleet.ErrNotOwnerCA, func() error { return fleet.CheckReported(good, current, owner.pool(), now.Add(30*24*time.Hour)) }},
		"another subject": {fleet.ErrNotThisDevice, func() error { return fleet.CheckReported(renamed, current, owner.pool(), now) }},
		"the same key":    {fleet.ErrNotThisDevice, func() error { return fleet.CheckReported(sameKey, current, owner.pool(), now) }},
		"no current":      {fleet.ErrNotThisDevice, func() error { return fleet.CheckReported(good, nil, owner.pool(), now) }},
		"no CA given":     {fleet.ErrInvalid, func() error { return fleet.CheckReported(good, current, nil, now) }},
	} {
		if err := tc.fail(); !errors.Is(err, tc.err) {
			t.Errorf("%s: %v, want %v", name, err, tc.err)
		}
	}
}

func TestPlanAccount(t *testing.T) {
	old := &fleet.CertState{ID: "old", Status: "ACTIVE", Things: []string{"gw"}, Policies: []string{"p1", "p2"}}
	for _, tc := range []struct {
		name     string
		old, new *fleet.CertState
		step     fleet.RegisterStep
		policies int
	}{
		{"not in this account", &fleet.CertState{ID: "old"}, &fleet.CertState{ID: "new"}, fleet.RegisterRefuse, 0},
		{"old not attached", &fleet.CertState{ID: "old", Status: "ACTIVE"}, &fleet.CertState{ID: "new"}, fleet.RegisterRefuse, 0},
		{"new missing", old, &fleet.CertState{ID: "new"}, fleet.RegisterRegister, 2},
		{"new unattached", old, &fleet.CertState{ID: "new", Status: "ACTIVE"}, fleet.RegisterAttach, 2},
		{"one policy missing", old, &fleet.CertState{ID: "new", Status: "ACTIVE", Things: []string{"gw"}, Policies: []string{"p1"}}, fleet.RegisterAttach, 1},
		{"done", old, &fleet.CertState{ID: "new", Status: "ACTIVE", Things: []string{"gw"}, Policies: []string{"p2", "p1"}}, fleet.RegisterNothing, 0},
		{"deactivated by someone", old, &fleet.CertState{ID: "new", Status: "INACTIVE", Things: []string{"gw"}}, fleet.RegisterRefuse, 0},
		{"another thing's", old, &fleet.CertState{ID: "new", Status: "ACTIVE", Things: []string{"gw", "x"}}, fleet.RegisterRefuse, 0},
	} {
		step, _, pol := fleet.PlanAccount("gw", tc.old, tc.new)
		if step != tc.step || len(pol) != tc.policies {
			t.Errorf("%s: %s with %v, want %s with %d policies", tc.name, step, pol, tc.step, tc.policies)
		}
	}
}
