// Package footprint measures what thingcert costs a small device: the
// resident memory of an idle connected agent (this file) and the size of the
// stripped binary (size.sh), each beside a bare paho client (barepaho) built
// the same way.
package footprint

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
)

// BenchmarkIdleRSS runs `thingcert run` and barepaho, both built stripped
// without cgo, connected to the same emulator, and samples their resident
// memory (VmRSS) once a second until it has not changed for the settle time
// (THINGCERT_BENCH_SETTLE, default 20s; the run takes at most five times
// that). It reports the last samples in MB and their ratio.
//
//	go test -run '^$' -bench IdleRSS ./bench/footprint/
//	THINGCERT_BENCH_SETTLE=5m go test -run '^$' -bench IdleRSS -timeout 1h ./bench/footprint/
func BenchmarkIdleRSS(b *testing.B) {
	settle := 20 * time.Second
	if v := os.Getenv("THINGCERT_BENCH_SETTLE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("THINGCERT_BENCH_SETTLE=%q: %v", v, err)
		}
		settle = d
	}
	ctx := context.Background()
	dir := b.TempDir()
	agentBin := buildStripped(b, dir, "thingcert", "./cmd/thingcert")
	pahoBin := buildStripped(b, dir, "barepaho", "./bench/footprint/barepaho")

	emu, err := emulator.Start(ctx, emulator.Config{Accounts: []emulator.Account{{Name: "bench"}}})
	if err != nil {
		b.Fatal(err)
	}
	defer emu.Close()
	root := writeFile(b, dir, "root-ca.pem", emu.RootCAPEM())
	agentKey, agentCert := identity(b, emu, dir, "agent")
	pahoKey, pahoCert := identity(b, emu, dir, "paho")

	cfg := writeFile(b, dir, "thingcert.yaml", []byte(fmt.Sprintf(`endpoint: %s
address: %s
ca: %s
thing_name: bench-agent
store: file:%s/keys-agent/
key: %s
cert: %s
state_dir: %s/state
log:
  level: warn
`, emu.Endpoint("bench"), emu.Addr(), root, dir, agentKey, agentCert, dir)))
	agent := start(b, agentBin, "run", "--config", cfg, "--socket", "none")
	paho := start(b, pahoBin, "-broker", "tls://"+emu.Addr(), "-sni", emu.Endpoint("bench"), "-ca", root,
		"-cert", pahoCert, "-key", strings.TrimPrefix(pahoKey, "file:"), "-client-id", "bench-paho", "-topic", "dt/bench-paho/hello")
	waitAccepted(b, emu, "bench-agent")
	waitAccepted(b, emu, "bench-paho")

	type proc struct {
		name     string
		pid      int
		last     int64
		stableAt time.Time
		peak     int64
	}
	procs := []*proc{{name: "thingcert", pid: agent.Process.Pid}, {name: "barepaho", pid: paho.Process.Pid}}
	deadline := time.Now().Add(5 * settle)
	for {
		now := time.Now()
		stable := true
		for _, p := range procs {
			kb := vmRSS(b, p.pid)
			if kb != p.last {
				p.last, p.stableAt = kb, now
			}
			p.peak = max(p.peak, kb)
			stable = stable && now.Sub(p.stableAt) >= settle
		}
		if stable || now.After(deadline) {
			if !stable {
				b.Logf("RSS still moving after %s; reporting the last samples", 5*settle)
			}
			break
		}
		time.Sleep(time.Second)
	}
	mb := func(kb int64) float64 { return float64(kb) / 1024 }
	for _, p := range procs {
		b.Logf("%-9s VmRSS %.1f MB (peak %.1f MB; %s)", p.name, mb(p.last), mb(p.peak), rssParts(p.pid))
		b.Logf("%-9s binary mapped: %s", p.name, binaryResident(p.pid))
	}
	b.ReportMetric(mb(procs[0].last), "thingcert-MB")
	b.ReportMetric(mb(procs[1].last), "barepaho-MB")
	b.ReportMetric(float64(procs[0].last)/float64(procs[1].last), "ratio")
}

func buildStripped(b *testing.B, dir, name, pkg string) string {
	b.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build %s: %v\n%s", pkg, err, o)
	}
	return out
}

func writeFile(b *testing.B, dir, name string, data []byte) string {
	b.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		b.Fatal(err)
	}
	return p
}

// identity makes a file key and a certificate the emulator issues for it,
// attached to thing bench-<who>.
func identity(b *testing.B, emu *emulator.Emulator, dir, who string) (keyURI, certFile string) {
	b.Helper()
	ctx := context.Background()
	s, err := keystore.Open(ctx, "file:"+filepath.Join(dir, "keys-"+who)+"/", keystore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	keyURI, _ = s.KeyURI("device")
	k, err := s.Generate(ctx, keyURI, keystore.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	csr, err := keystore.CreateCSR(k, "CN=bench-"+who, keystore.CSROptions{})
	if err != nil {
		b.Fatal(err)
	}
	c, err := emu.IssueCertificate(ctx, "bench", keystore.EncodeCSR(csr), emulator.IssueOptions{Thing: "bench-" + who})
	if err != nil {
		b.Fatal(err)
	}
	// The least-privilege device policy covers the dt/<thing>/ topics used here.
	if _, err := emu.CreatePolicy(ctx, "bench", "device", emulator.DevicePolicy("*")); err != nil && !errors.Is(err, emulator.ErrExists) {
		b.Fatal(err)
	}
	if err := emu.AttachPolicy(ctx, "bench", "device", c.ID); err != nil {
		b.Fatal(err)
	}
	return keyURI, writeFile(b, dir, who+".pem", []byte(c.PEM))
}

func start(b *testing.B, bin string, args ...string) *exec.Cmd {
	b.Helper()
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if b.Failed() {
			b.Logf("%s stderr:\n%s", filepath.Base(bin), stderr.String())
		}
	})
	return cmd
}

func waitAccepted(b *testing.B, emu *emulator.Emulator, clientID string) {
	b.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if evs, _ := emu.History(context.Background(), emulator.HistoryQuery{ClientID: clientID, Outcome: emulator.Accepted}); len(evs) > 0 {
			return
		}
	}
	b.Fatalf("%s did not connect to the emulator within 30 s", clientID)
}

// rssParts is how the resident set divides: heap and stacks (RssAnon), the
// mapped binary (RssFile).
func rssParts(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "RssAnon:") || strings.HasPrefix(l, "RssFile:") {
			parts = append(parts, strings.Join(strings.Fields(l), " "))
		}
	}
	return strings.Join(parts, ", ")
}

// vmRSS is a process's resident set in kB, from /proc/PID/status.
func vmRSS(b *testing.B, pid int) int64 {
	b.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		b.Fatalf("reading the memory of pid %d (did it exit?): %v", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb
		}
	}
	b.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// binaryResident is, for each mapping of the program's file (text; rodata and
// pclntab; data), how much of it is resident against its size, from
// /proc/PID/smaps: near 100 % means the kernel's fault-around has mapped all
// of it, and only running less code (not linking less) lowers RssFile.
func binaryResident(pid int) string {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return err.Error()
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps")
	if err != nil {
		return err.Error()
	}
	var parts []string
	var perm string
	var size int64
	mine := false
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			mine, perm = len(f) >= 6 && f[len(f)-1] == exe, f[1]
		case mine && len(f) == 3 && f[0] == "Size:":
			size, _ = strconv.ParseInt(f[1], 10, 64)
		case mine && len(f) == 3 && f[0] == "Rss:":
			rss, _ := strconv.ParseInt(f[1], 10, 64)
			parts = append(parts, fmt.Sprintf("%s %d of %d kB", perm, rss, size))
		}
	}
	return strings.Join(parts, ", ")
}
