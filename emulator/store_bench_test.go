package emulator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/internal/atomicfile"
)

// This benchmark uses only what the emulator had before registry.db (Open,
// the admin calls, handleJobs, registry.json), so the same file measures the
// earlier whole-file save when dropped into that code.

// benchStateFolder makes a state folder whose registry holds n things, each
// with an ACTIVE certificate attached, and a SNAPSHOT job on all of them:
// built in memory, written as a registry.json, then opened (and, by this
// emulator, migrated into registry.db).
func benchStateFolder(b *testing.B, n int) *Registry {
	b.Helper()
	clock := newClock()
	mem, err := Open(ctx, Config{Now: clock.Now, Accounts: []Account{{Name: "A", Prefix: "aaa"}}})
	if err != nil {
		b.Fatal(err)
	}
	csr := benchCSR(b)
	things := make([]string, n)
	for i := range n {
		things[i] = fmt.Sprintf("dev-%05d", i)
		if _, err := mem.IssueCertificate(ctx, "A", csr, IssueOptions{Thing: things[i]}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := mem.CreateJob(ctx, "A", Job{ID: "rot", Document: json.RawMessage(`{"operation":"rotate-certificate"}`), Things: things}); err != nil {
		b.Fatal(err)
	}
	data, err := json.Marshal(mem.st)
	if err != nil {
		b.Fatal(err)
	}
	mem.Close()
	dir := filepath.Join(b.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "registry.json"), data, 0o600); err != nil {
		b.Fatal(err)
	}
	r, err := Open(ctx, Config{StateDir: dir, Now: clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	return r
}

// benchCSR is a CSR the emulator signs as often as asked: each certificate
// gets its own serial number, so its own ID.
func benchCSR(b *testing.B) []byte {
	b.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "bench"}}, key)
	if err != nil {
		b.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkRegistryChange measures one registry change at 10 and at 10,000
// things side by side, alternating, and reports the medians and their ratio:
// "thing" is CreateThing + AttachThingPrincipal (AttachCertificate) of a new
// thing and a new certificate (issued before, untimed), "jobexec" a device's job execution update (IN_PROGRESS with new
// status details) on the Jobs MQTT API. Run with -benchtime=Nx: each
// iteration is one change of each kind at each size.
func BenchmarkRegistryChange(b *testing.B) {
	sizes := []int{10, 10000}
	regs := make([]*Registry, len(sizes))
	for i, n := range sizes {
		regs[i] = benchStateFolder(b, n)
	}
	csr := benchCSR(b)
	thing := make([][]time.Duration, len(sizes))
	jobexec := make([][]time.Duration, len(sizes))
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for k := range sizes {
			i := k
			if it%2 == 1 { // alternate which size goes first
				i = len(sizes) - 1 - k
			}
			r := regs[i]
			name := fmt.Sprintf("new-%06d", it)
			b.StopTimer()
			cert, err := r.IssueCertificate(ctx, "A", csr, IssueOptions{})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			start := time.Now()
			if _, err := r.CreateThing(ctx, "A", name, nil); err != nil {
				b.Fatal(err)
			}
			if err := r.AttachCertificate(ctx, "A", name, cert.ID); err != nil {
				b.Fatal(err)
			}
			thing[i] = append(thing[i], time.Since(start))

			dev := fmt.Sprintf("dev-%05d", it%sizes[i])
			payload := fmt.Sprintf(`{"status": "IN_PROGRESS", "statusDetails": {"step": "%d"}}`, it)
			start = time.Now()
			reply, _ := r.handleJobs("A", dev, "rot/update", []byte(payload))
			jobexec[i] = append(jobexec[i], time.Since(start))
			if !strings.HasSuffix(reply.Topic, "/accepted") {
				b.Fatalf("job update: %s %s", reply.Topic, reply.Payload)
			}
		}
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	for _, m := range []struct {
		name    string
		samples [][]time.Duration
	}{{"thing", thing}, {"jobexec", jobexec}} {
		small, large := median(m.samples[0]), median(m.samples[1])
		b.ReportMetric(ms(small), m.name+"-ms@10")
		b.ReportMetric(ms(large), m.name+"-ms@10000")
		b.ReportMetric(float64(large)/float64(small), m.name+"-ratio")
	}
}

// BenchmarkRegistryWholeFileSave is the reference beside
// BenchmarkRegistryChange: what the earlier emulator added to every change,
// the whole registry encoded and written atomically as registry.json (its
// saveLocked, kept here only to be measured), at 10 and at 10,000 things,
// alternating. Nothing calls it any more.
func BenchmarkRegistryWholeFileSave(b *testing.B) {
	sizes := []int{10, 10000}
	regs := make([]*Registry, len(sizes))
	for i, n := range sizes {
		regs[i] = benchStateFolder(b, n)
	}
	save := func(r *Registry) {
		r.mu.Lock()
		defer r.mu.Unlock()
		data, err := json.MarshalIndent(r.st, "", "  ")
		if err != nil {
			b.Fatal(err)
		}
		if err := atomicfile.WriteFile(filepath.Join(r.dir, "registry.json.bench"), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	samples := make([][]time.Duration, len(sizes))
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for k := range sizes {
			i := k
			if it%2 == 1 {
				i = len(sizes) - 1 - k
			}
			start := time.Now()
			save(regs[i])
			samples[i] = append(samples[i], time.Since(start))
		}
	}
	b.StopTimer()
	small, large := median(samples[0]), median(samples[1])
	b.ReportMetric(float64(small)/float64(time.Millisecond), "save-ms@10")
	b.ReportMetric(float64(large)/float64(time.Millisecond), "save-ms@10000")
	b.ReportMetric(float64(large)/float64(small), "save-ratio")
}
