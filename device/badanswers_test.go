package device_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/iot/fleetprov"
	"github.com/thingcert/thingcert/iot/jobs"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/rotation"
)

// otherCA is a CA the device does not trust for its certificates.
type otherCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newOtherCA(t *testing.T) *otherCA {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not the issuer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &otherCA{key: k, cert: c}
}

func (ca *otherCA) issue(t *testing.T, pub crypto.PublicKey, nb, na time.Time, sig x509.SignatureAlgorithm) []byte {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: thing}, NotBefore: nb, NotAfter: na, SignatureAlgorithm: sig}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Error(err)
	}
	return der
}

// replaceCert rewrites CreateCertificateFromCsr's accepted answer so that it
// carries the certificate make returns for the requested public key (with
// a matching certificateId, so that only the intended check can fail).
func replaceCert(t *testing.T, make func(pub crypto.PublicKey) []byte) func(string, []byte) (string, []byte) {
	return func(topic string, payload []byte) (string, []byte) {
		if !strings.HasSuffix(topic, "/accepted") {
			return topic, payload
		}
		var m map[string]string
		if err := json.Unmarshal(payload, &m); err != nil {
			t.Error(err)
			return topic, payload
		}
		b, _ := pem.Decode([]byte(m["certificatePem"]))
		orig, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Error(err)
			return topic, payload
		}
		der := make(orig.PublicKey)
		sum := sha256.Sum256(der)
		m["certificatePem"] = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		m["certificateId"] = hex.EncodeToString(sum[:])
		out, _ := json.Marshal(m)
		return topic, out
	}
}

func rejectWith(body string) func(string, []byte) (string, []byte) {
	return func(topic string, _ []byte) (string, []byte) {
		return strings.Replace(topic, "/accepted", "/rejected", 1), []byte(body)
	}
}

// TestBadAnswers: each bad answer from the cloud leaves the device on its
// identity, connected and publishing, with the new key gone and the reason in
// the state folder and in the job's FAILED status details.
func TestBadAnswers(t *testing.T) {
	emu := startEmulator(t, emulator.Config{})
	other := newOtherCA(t)
	now := time.Now()
	issuing := x509.NewCertPool()
	if !issuing.AppendCertsFromPEM(emu.IssuingCAPEM()) {
		t.Fatal("emulator issuing CA")
	}
	anotherKeysCert := func(pub crypto.PublicKey) []byte {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "someone else"}}, k)
		c, err := emu.IssueCertificate(context.Background(), account, keystore.EncodeCSR(csr), emulator.IssueOptions{})
		if err != nil {
			t.Error(err)
		}
		b, _ := pem.Decode([]byte(c.PEM))
		return b.Bytes
	}
	createTopic := fleetprov.TopicCreateCertificateFromCSR
	tests := []struct {
		name  string
		fault emulator.Fault
		want  string
	}{
		{"certificate for another key", emulator.Fault{Topic: createTopic, Rewrite: replaceCert(t, func(crypto.PublicKey) []byte { return anotherKeysCert(nil) })}, "for another key"},
		{"expired", emulator.Fault{Topic: createTopic, Rewrite: replaceCert(t, func(pub crypto.PublicKey) []byte {
			return other.issue(t, pub, now.Add(-2*time.Hour), now.Add(-time.Hour), x509.ECDSAWithSHA256)
		})}, "expired at"},
		{"not yet valid", emulator.Fault{Topic: createTopic, Rewrite: replaceCert(t, func(pub crypto.PublicKey) []byte {
			return other.issue(t, pub, now.Add(time.Hour), now.Add(48*time.Hour), x509.ECDSAWithSHA256)
		})}, "not valid before"},
		{"wrong chain", emulator.Fault{Topic: createTopic, Rewrite: replaceCert(t, func(pub crypto.PublicKey) []byte {
			return other.issue(t, pub, now.Add(-time.Hour), now.Add(24*time.Hour), x509.ECDSAWithSHA256)
		})}, "does not chain to the configured trust"},
		{"disallowed algorithm", emulator.Fault{Topic: createTopic, Rewrite: replaceCert(t, func(pub crypto.PublicKey) []byte {
			return other.issue(t, pub, now.Add(-time.Hour), now.Add(24*time.Hour), x509.ECDSAWithSHA1)
		})}, "refused by AWS IoT certificate policy"},
		{"garbage JSON", emulator.Fault{Topic: createTopic, Rewrite: func(topic string, _ []byte) (string, []byte) { return topic, []byte("{\"certificatePem\": <html>") }}, "not JSON"},
		{"rejected", emulator.Fault{Topic: createTopic, Rewrite: rejectWith(`{"statusCode":400,"errorCode":"InvalidRequestException","errorMessage":"The certificate signing request is not valid"}`)}, "(400 InvalidRequestException)"},
		{"RegisterThing rejected", emulator.Fault{Topic: fleetprov.RegisterThingTopic(template), Rewrite: rejectWith(`{"statusCode":400,"errorCode":"InvalidCertificateOwnershipToken","errorMessage":"Certificate ownership token is invalid or has expired."}`)}, "InvalidCertificateOwnershipToken"},
		{"garbage on /rejected", emulator.Fault{Topic: createTopic, Rewrite: rejectWith(`Internal Server Error`)}, "not the error JSON"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRigThing(t, emu, fileStores, i)
			r.runner.Roots = issuing
			s := r.provision()
			old := s.Current
			keysBefore := r.keys()
			jobID := createRotationJob(t, r)
			remove, err := emu.InjectFault(tt.fault)
			if err != nil {
				t.Fatal(err)
			}
			defer remove()
			s, err = r.runner.Rotate(context.Background(), rotation.Trigger{Kind: rotation.TriggerJob, JobID: jobID})
			if !errors.Is(err, rotation.ErrRolledBack) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Rotate: %v; want a rollback saying %q", err, tt.want)
			}
			if s.Current.CertificateID != old.CertificateID || s.Phase != rotation.PhaseIdle || !strings.Contains(s.LastResult.Error, tt.want) {
				t.Errorf("after the rollback: phase %s, certificate %s, result %+v", s.Phase, s.Current.CertificateID[:12], s.LastResult)
			}
			if got := r.keys(); !slices.Equal(got, keysBefore) {
				t.Errorf("keys %v, want %v: the new key must be deleted", got, keysBefore)
			}
			remove()
			r.publishes()
			ex := jobExecution(t, r, jobID)
			if ex.Status != emulator.JobFailed || !strings.Contains(ex.StatusDetails["reason"], tt.want) || ex.StatusDetails["certificateId"] != old.CertificateID {
				t.Errorf("job execution %s %+v", ex.Status, ex.StatusDetails)
			}
		})
	}
}

// TestTransientAnswers: throttling, no answer and a connection dropped in the
// middle of the exchange are retried; while they last the device keeps its
// identity, and the rotation then completes.
func TestTransientAnswers(t *testing.T) {
	emu := startEmulator(t, emulator.Config{})
	createTopic := fleetprov.TopicCreateCertificateFromCSR
	tests := []struct {
		name  string
		fault emulator.Fault
		note  string
	}{
		{"throttled", emulator.Fault{Topic: createTopic, Times: 2, Rewrite: rejectWith(`{"statusCode":429,"errorCode":"ThrottlingException","errorMessage":"Rate exceeded"}`)}, "ThrottlingException"},
		{"no answer", emulator.Fault{Topic: createTopic, Times: 1, Drop: true}, "no answer in time"},
		{"connection dropped mid-exchange", emulator.Fault{Topic: createTopic, Times: 1, Disconnect: true}, "CreateCertificateFromCsr"},
		{"RegisterThing throttled", emulator.Fault{Topic: fleetprov.RegisterThingTopic(template), Times: 1, Rewrite: rejectWith(`{"statusCode":429,"errorCode":"ThrottlingException","errorMessage":"Rate exceeded"}`)}, "ThrottlingException"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRigThing(t, emu, fileStores, 100+i)
			r.runner.Issuer.(*fleetprov.Issuer).Timeout = 3 * time.Second
			old := r.provision().Current
			if _, err := emu.InjectFault(tt.fault); err != nil {
				t.Fatal(err)
			}
			s, err := r.runner.Rotate(context.Background(), rotation.Trigger{Kind: rotation.TriggerOperator})
			if err != nil {
				t.Fatal(err)
			}
			if s.Current.CertificateID == old.CertificateID {
				t.Fatal("not rotated")
			}
			var retried []string
			for _, e := range s.Journal {
				if e.Event == rotation.EventFailed {
					retried = append(retried, e.Note)
				}
			}
			if len(retried) == 0 || !strings.Contains(strings.Join(retried, "\n"), tt.note) || !strings.Contains(retried[0], "(transient)") {
				t.Errorf("journal of failed attempts %q; want transient ones saying %q", retried, tt.note)
			}
			r.publishes()
		})
	}
	// Throttled for longer than the caller waits: the rotation stops where it
	// is, the device keeps its identity and the state says why.
	t.Run("throttled until the timeout", func(t *testing.T) {
		r := newRigThing(t, emu, fileStores, 200)
		old := r.provision().Current
		remove, err := emu.InjectFault(emulator.Fault{Topic: createTopic, Rewrite: rejectWith(`{"statusCode":429,"errorCode":"ThrottlingException","errorMessage":"Rate exceeded"}`)})
		if err != nil {
			t.Fatal(err)
		}
		defer remove()
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		_, err = r.runner.Rotate(ctx, rotation.Trigger{Kind: rotation.TriggerOperator})
		if err == nil || !strings.Contains(err.Error(), "stopped in phase csr-submitted") {
			t.Fatalf("Rotate: %v", err)
		}
		s, _ := r.runner.Load()
		if s.Current.CertificateID != old.CertificateID || !strings.Contains(s.LastError, "ThrottlingException") || s.Attempt == 0 {
			t.Errorf("state: current %s, attempt %d, last error %q", s.Current.CertificateID[:12], s.Attempt, s.LastError)
		}
		r.publishes()
		remove()
		if s, err = r.runner.Resume(context.Background()); err != nil || s.Current.CertificateID == old.CertificateID {
			t.Fatalf("resume after the throttling ended: %v", err)
		}
	})
}

// newRigThing is a rig for its own thing (dev-<n>), so tests can share an
// emulator.
func newRigThing(t *testing.T, emu *emulator.Emulator, stores storeFactory, n int) *rig {
	t.Helper()
	r := newRig(t, emu, stores)
	serial := fmt.Sprintf("%04d", n)
	name := "dev-" + serial
	r.session.Config.ThingName = name
	r.session.ClaimClientID = "claim-" + name
	r.runner.DeviceID = name
	r.runner.Subject = "CN=" + name
	fp := r.runner.Issuer.(*fleetprov.Issuer)
	fp.ThingName = name
	fp.Parameters = map[string]string{"SerialNumber": serial}
	r.thing = name
	r.runner.Reporter = jobs.Reporter{Client: r.session.Jobs()}
	return r
}

func (r *rig) keys() []string {
	r.t.Helper()
	l, err := r.store.List(context.Background())
	if err != nil {
		r.t.Fatal(err)
	}
	return l
}

func createRotationJob(t *testing.T, r *rig) string {
	t.Helper()
	id := "rotate-" + r.thing
	if _, err := r.emu.CreateJob(context.Background(), account, emulator.Job{ID: id, Document: json.RawMessage(`{"operation":"rotate-certificate"}`), Things: []string{r.thing}}); err != nil {
		t.Fatal(err)
	}
	e, err := r.session.Jobs().StartNext(context.Background(), nil)
	if err != nil || e == nil || e.JobID != id || !e.IsRotation() {
		t.Fatalf("start-next: %+v, %v", e, err)
	}
	return id
}

func jobExecution(t *testing.T, r *rig, jobID string) emulator.JobExecution {
	t.Helper()
	ex, err := r.emu.JobExecution(context.Background(), account, r.thing, jobID)
	if err != nil {
		t.Fatal(err)
	}
	return ex
}
