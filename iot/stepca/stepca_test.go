package stepca_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/iot/stepca"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/filestore"
	"github.com/thingcert/thingcert/rotation"
)

// setup is a factory CA, a step-ca whose X5C provisioner trusts it, a file
// store and a claim identity in it.
type setup struct {
	ca     *testpeers.StepCA
	store  keystore.Store
	claim  rotation.Identity
	issuer *stepca.Issuer
}

func newSetup(t *testing.T, alg keystore.Algorithm) *setup {
	t.Helper()
	factory := testpeers.NewFactoryCA(t)
	ca := testpeers.StartStepCA(t, testpeers.StepCAOptions{X5CRootsPEM: factory.PEM})
	ctx := context.Background()
	store, err := filestore.Open(ctx, "file:"+t.TempDir()+"/", keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	uri, _ := store.KeyURI("claim")
	k, err := store.Generate(ctx, uri, alg)
	if err != nil {
		t.Fatal(err)
	}
	claimPEM := factory.Claim(t, k.Public(), "claim-thing-1")
	b, _ := pem.Decode(claimPEM)
	c, _ := x509.ParseCertificate(b.Bytes)
	roots, err := stepca.LoadRoot(ca.RootFile, stepca.Fingerprint(ca.Root))
	if err != nil {
		t.Fatal(err)
	}
	return &setup{ca: ca, store: store,
		claim:  rotation.Identity{Record: rotation.IdentityRecord{KeyURI: uri, Claim: true}, Key: k, Chain: []*x509.Certificate{c}},
		issuer: &stepca.Issuer{URL: ca.URL, Roots: roots, Provisioner: ca.Provisioner}}
}

func (s *setup) csr(t *testing.T, name string, alg keystore.Algorithm) (keystore.Key, []byte) {
	t.Helper()
	uri, _ := s.store.KeyURI(name)
	k, err := s.store.Generate(context.Background(), uri, alg)
	if err != nil {
		t.Fatal(err)
	}
	der, err := keystore.CreateCSR(k, "CN=thing-1", keystore.CSROptions{})
	if err != nil {
		t.Fatal(err)
	}
	return k, der
}

func (s *setup) checkIssued(t *testing.T, iss *rotation.Issued, k keystore.Key) {
	t.Helper()
	leaf := iss.Chain[0]
	if leaf.Subject.CommonName != "thing-1" {
		t.Errorf("issued CN %q, want thing-1", leaf.Subject.CommonName)
	}
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.Root)
	if err := rotation.Verify(iss.Chain, rotation.VerifyOptions{PublicKey: k.Public(), Roots: pool, Now: time.Now()}); err != nil {
		t.Errorf("issued certificate fails the rotation's checks: %v", err)
	}
	if len(iss.Chain) < 2 || !iss.Chain[1].Equal(s.ca.Intermediate) {
		t.Errorf("chain of %d: want the leaf and step-ca's intermediate", len(iss.Chain))
	}
}

// TestSignByX5CThenRekey: the first certificate by a token the claim signed,
// the next by a rekey over mutual TLS with the first, against a real step-ca,
// with ECDSA keys and with RSA keys (ES256 and RS256 tokens; mutual TLS
// signed with ECDSA and with RSA-PSS).
func TestSignByX5CThenRekey(t *testing.T) {
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		t.Run(string(alg), func(t *testing.T) {
			s := newSetup(t, alg)
			ctx := context.Background()
			k1, csr1 := s.csr(t, "device-1", alg) // RSA: the rekey's mutual TLS signs with RSA-PSS
			iss, err := s.issuer.IssueWith(ctx, s.claim, csr1)
			if err != nil {
				t.Fatalf("sign: %v\nstep-ca log:\n%s", err, s.ca.Log())
			}
			s.checkIssued(t, iss, k1)
			k2, csr2 := s.csr(t, "device-2", alg)
			cur := rotation.Identity{Record: rotation.IdentityRecord{KeyURI: k1.URI()}, Key: k1, Chain: iss.Chain}
			iss2, err := s.issuer.IssueWith(ctx, cur, csr2)
			if err != nil {
				t.Fatalf("rekey: %v\nstep-ca log:\n%s", err, s.ca.Log())
			}
			s.checkIssued(t, iss2, k2)
			if iss2.Chain[0].SerialNumber.Cmp(iss.Chain[0].SerialNumber) == 0 {
				t.Error("rekey returned the same certificate")
			}
		})
	}
}

// TestErrorsAreClassified: what a retry cannot fix is fatal, what may pass
// is transient; every message names the CA's URL.
func TestErrorsAreClassified(t *testing.T) {
	s := newSetup(t, keystore.ECDSAP256)
	ctx := context.Background()
	_, csr := s.csr(t, "device-1", keystore.ECDSAP256)
	check := func(name string, err error, want rotation.Class, says ...string) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: no error", name)
		}
		if c, _ := rotation.Classify(err); c != want {
			t.Errorf("%s: classified %s, want %s: %v", name, c, want, err)
		}
		for _, w := range append(says, s.ca.URL) {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error does not say %q: %v", name, w, err)
			}
		}
	}

	bad := *s.issuer
	bad.Provisioner = "no-such-provisioner"
	_, err := bad.IssueWith(ctx, s.claim, csr)
	check("unknown provisioner", err, rotation.Fatal, "refused the one-time token", "provisioner")

	// A claim signed by a CA the provisioner does not trust.
	other := testpeers.NewFactoryCA(t)
	b, _ := pem.Decode(other.Claim(t, s.claim.Key.Public(), "claim-thing-1"))
	c, _ := x509.ParseCertificate(b.Bytes)
	stranger := s.claim
	stranger.Chain = []*x509.Certificate{c}
	_, err = s.issuer.IssueWith(ctx, stranger, csr)
	check("claim of another factory", err, rotation.Fatal, "401")

	// Rekey with a certificate step-ca did not issue.
	notOurs := s.claim
	notOurs.Record.Claim = false
	_, err = s.issuer.IssueWith(ctx, notOurs, csr)
	check("rekey with a foreign certificate", err, rotation.Fatal)

	// The CA's TLS certificate checked against another root.
	wrongRoot := *s.issuer
	wrongRoot.Roots = x509.NewCertPool()
	wrongRoot.Roots.AddCert(other.Cert)
	_, err = wrongRoot.IssueWith(ctx, s.claim, csr)
	check("wrong root", err, rotation.Fatal, "does not chain to the step-ca root")

	// The CA down: transient.
	s.ca.Stop()
	_, err = s.issuer.IssueWith(ctx, s.claim, csr)
	check("CA down", err, rotation.Transient, "cannot reach the CA")

	var e *rotation.Error
	if !errors.As(err, &e) {
		t.Errorf("not a rotation.Error: %T", err)
	}
}

func TestLoadRootChecksTheFingerprint(t *testing.T) {
	f := testpeers.NewFactoryCA(t)
	p := filepath.Join(t.TempDir(), "root.crt")
	if err := os.WriteFile(p, f.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := stepca.LoadRoot(p, stepca.Fingerprint(f.Cert)); err != nil {
		t.Errorf("right fingerprint: %v", err)
	}
	fp := stepca.Fingerprint(f.Cert)
	colons := ""
	for i := 0; i < len(fp); i += 2 {
		colons += strings.ToUpper(fp[i:i+2]) + ":"
	}
	if _, err := stepca.LoadRoot(p, strings.TrimSuffix(colons, ":")); err != nil {
		t.Errorf("fingerprint with colons, upper case: %v", err)
	}
	_, err := stepca.LoadRoot(p, strings.Repeat("ab", 32))
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), fp) {
		t.Errorf("wrong fingerprint: %v", err)
	}
	if _, err := stepca.LoadRoot(filepath.Join(t.TempDir(), "none.crt"), ""); err == nil {
		t.Error("a missing file loaded")
	}
}
