// Package emulatorbench measures how many concurrent TLS devices the emulator
// holds and how many CONNECTs per second it accepts, side by side with
// mosquitto (the reference broker) on the same machine, certificates and
// client. Both brokers run as their own processes on loopback:
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/emulator/
//	THINGCERT_BENCH_DEVICES=10000 go test -run '^$' -bench Hold -benchtime 1x ./bench/emulator/
//
// With THINGCERT_BENCH_PROFILE=<folder>, BenchmarkHold runs the emulator in a
// child copy of this test binary instead of `thingcert emulator serve` (the
// same emulator.Start, plus net/http/pprof on loopback) and saves its heap
// profile and goroutine stacks, taken while every device is held, in the folder:
//
//	go tool pprof -sample_index=inuse_space -top <folder>/emulator-heap.pb.gz
package emulatorbench

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/internal/testpeers"
)

const account = "bench"

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

var (
	devices     = envInt("THINGCERT_BENCH_DEVICES", 1000)
	concurrency = envInt("THINGCERT_BENCH_CONCURRENCY", 32)
	profileDir  = os.Getenv("THINGCERT_BENCH_PROFILE")
)

// sourceAddrs is how many loopback addresses (127.0.0.2, 127.0.0.3, ...) the
// devices dial from, in turn: each has its own ephemeral ports, so 10,000
// held devices plus the TIME_WAIT left by earlier runs never run out of them.
const sourceAddrs = 8

// raiseFileLimit lets this process hold every device's socket.
func raiseFileLimit(b *testing.B) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		b.Fatal(err)
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		b.Fatal(err)
	}
	if need := uint64(devices + 200); rl.Cur < need {
		b.Fatalf("RLIMIT_NOFILE is %d, %d devices need %d: lower THINGCERT_BENCH_DEVICES or raise the hard limit", rl.Cur, devices, need)
	}
}

// broker is a running broker process the devices connect to.
type broker struct {
	name   string
	addr   string
	client *tls.Config // without the device certificate
	cmd    *exec.Cmd
	pprof  string // host:port of the emulator child's net/http/pprof, if any
}

// pki is what both brokers share: a device CA and device certificates.
type pki struct {
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPEM  []byte
	certs  []tls.Certificate
	pems   [][]byte
}

func newCert(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl.SerialNumber, _ = rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), err
}

// certPool is how many distinct device certificates the devices cycle
// through: the per-connection work (chain check, registry lookup) does not
// depend on how many there are.
const certPool = 16

func newPKI(b *testing.B) *pki {
	caTmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "bench devices CA"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caCert, caKey, caPEM, err := newCert(caTmpl, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	p := &pki{caCert: caCert, caKey: caKey, caPEM: caPEM}
	for i := 0; i < certPool; i++ {
		tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: fmt.Sprintf("device-%d", i)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
		cert, key, certPEM, err := newCert(tmpl, caCert, caKey)
		if err != nil {
			b.Fatal(err)
		}
		p.certs = append(p.certs, tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert})
		p.pems = append(p.pems, certPEM)
	}
	return p
}

var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "thingcert-bench-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "thingcert") // and thingcert-emulator beside it, which runs `thingcert emulator`
	out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", dir+string(filepath.Separator),
		"github.com/thingcert/thingcert/cmd/thingcert", "github.com/thingcert/thingcert/cmd/thingcert-emulator").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building thingcert: %v: %s", err, out)
	}
	return bin, nil
})

// startEmulator registers the device CA and certificates offline, then runs
// `thingcert emulator serve` on the state folder.
func startEmulator(b *testing.B, p *pki) *broker {
	bin, err := buildOnce()
	if err != nil {
		b.Fatal(err)
	}
	state := b.TempDir()
	ctx := context.Background()
	reg, err := emulator.Open(ctx, emulator.Config{StateDir: state, Accounts: []emulator.Account{{Name: account, Prefix: "bench0001"}}})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := reg.RegisterCA(ctx, account, p.caPEM, emulator.CAOptions{}); err != nil {
		b.Fatal(err)
	}
	for _, c := range p.pems {
		cert, err := reg.RegisterCertificate(ctx, account, c, emulator.CertificateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		// Every CONNECT is evaluated against the certificate's policies.
		if err := reg.AttachAllowAllPolicy(ctx, account, cert.ID); err != nil {
			b.Fatal(err)
		}
	}
	endpoint := emulator.Account{Name: account, Prefix: "bench0001", Region: "us-east-1"}.Endpoint()
	rootPool := reg.RootCAs()
	if err := reg.Close(); err != nil {
		b.Fatal(err)
	}
	port := testpeers.FreePort(b)
	listen := "127.0.0.1:" + strconv.Itoa(port)
	// thingcert-emulator itself, not `thingcert emulator` (which runs it): its
	// PID is the broker whose memory and CPU are measured. Every device is in
	// one account: AWS's 500 CONNECTs/s account quota would refuse the ramp,
	// so it is off.
	emuBin := filepath.Join(filepath.Dir(bin), "thingcert-emulator")
	cmd := exec.Command(emuBin, "emulator", "serve", "--state", state, "--listen", listen, "--account-connect-rate", "-1")
	if profileDir != "" {
		cmd = exec.Command(os.Args[0], "-test.run", "^$")
		cmd.Env = append(os.Environ(), childEnv+"=1", "THINGCERT_BENCH_STATE="+state, "THINGCERT_BENCH_LISTEN="+listen)
	}
	logFile, err := os.Create(filepath.Join(state, "serve.log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = logFile
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	br := &broker{name: "emulator", addr: fmt.Sprintf("127.0.0.1:%d", port), cmd: cmd,
		client: &tls.Config{RootCAs: rootPool, ServerName: endpoint, MinVersion: tls.VersionTLS12}}
	b.Cleanup(func() { stop(br); logFile.Close() })
	// serve prints its addresses once it listens.
	lines := make(chan string, 16)
	if !waitLine(stdout, "root-ca ", 30*time.Second, lines) {
		log, _ := os.ReadFile(logFile.Name())
		b.Fatalf("the emulator did not start:\n%s", log)
	}
	for len(lines) > 0 {
		if a, ok := strings.CutPrefix(<-lines, "pprof "); ok {
			br.pprof = a
		}
	}
	return br
}

// startMosquitto runs mosquitto with the same device CA and a server
// certificate of its own.
func startMosquitto(b *testing.B, p *pki) *broker {
	path := testpeers.Need(b, "mosquitto")[0]
	dir := b.TempDir()
	rootTmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "bench server root"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	root, rootKey, _, err := newCert(rootTmpl, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	srvTmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	_, srvKey, srvPEM, err := newCert(srvTmpl, root, rootKey)
	if err != nil {
		b.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(srvKey)
	files := map[string][]byte{
		"ca.pem": p.caPEM, "server.pem": srvPEM,
		"server.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	port := testpeers.FreePort(b)
	// user root: run as root, mosquitto would otherwise switch to its own user,
	// which cannot read the test's files.
	conf := fmt.Sprintf(`per_listener_settings false
persistence false
set_tcp_nodelay true
log_dest stderr
log_type error
user root
max_connections -1
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
`, port, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"))
	if err := os.WriteFile(filepath.Join(dir, "mosquitto.conf"), []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(path, "-c", filepath.Join(dir, "mosquitto.conf"))
	logFile, _ := os.Create(filepath.Join(dir, "mosquitto.log"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	rootPool := x509.NewCertPool()
	rootPool.AddCert(root)
	br := &broker{name: "mosquitto", addr: fmt.Sprintf("127.0.0.1:%d", port), cmd: cmd,
		client: &tls.Config{RootCAs: rootPool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}}
	b.Cleanup(func() { stop(br); logFile.Close() })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", br.addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logFile.Name())
			b.Fatalf("mosquitto did not start:\n%s", log)
		}
	}
	return br
}

func stop(br *broker) {
	_ = br.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = br.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = br.cmd.Process.Kill()
		<-done
	}
}

// waitLine reads r until a line starts with prefix; the lines before it go to
// lines while it has room.
func waitLine(r io.Reader, prefix string, timeout time.Duration, lines chan<- string) bool {
	found := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(r)
		ok := false
		for sc.Scan() {
			if !ok {
				select {
				case lines <- sc.Text():
				default:
				}
			}
			if !ok && strings.HasPrefix(sc.Text(), prefix) {
				ok = true
				found <- true
			}
		}
		if !ok {
			found <- false
		}
	}()
	select {
	case ok := <-found:
		return ok
	case <-time.After(timeout):
		return false
	}
}

// device is one MQTT 3.1.1 client connection, written by hand so the client
// costs as little as possible next to the broker it measures.
type device struct {
	conn *tls.Conn
}

func connectPacket(clientID string) []byte {
	vh := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60} // MQTT 3.1.1, clean session, keep-alive 60 s
	payload := append([]byte{byte(len(clientID) >> 8), byte(len(clientID))}, clientID...)
	return append([]byte{0x10, byte(len(vh) + len(payload))}, append(vh, payload...)...)
}

var errRefused = errors.New("CONNACK refused")

// connect opens a TLS connection, sends CONNECT and waits for CONNACK.
func connect(br *broker, cert tls.Certificate, clientID string, n int64) (*device, error) {
	cfg := br.client.Clone()
	cfg.Certificates = []tls.Certificate{cert}
	src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+n%sourceAddrs))}
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: src}
	raw, err := d.Dial("tcp", br.addr)
	if err != nil {
		return nil, err
	}
	_ = raw.SetDeadline(time.Now().Add(20 * time.Second))
	conn := tls.Client(raw, cfg)
	if _, err := conn.Write(connectPacket(clientID)); err != nil {
		conn.Close()
		return nil, err
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(conn, ack); err != nil {
		conn.Close()
		return nil, err
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		conn.Close()
		return nil, fmt.Errorf("%w: % x", errRefused, ack)
	}
	_ = raw.SetDeadline(time.Time{})
	return &device{conn: conn}, nil
}

func (d *device) ping() error {
	_ = d.conn.SetDeadline(time.Now().Add(20 * time.Second))
	defer d.conn.SetDeadline(time.Time{})
	if _, err := d.conn.Write([]byte{0xC0, 0}); err != nil {
		return err
	}
	resp := make([]byte, 2)
	if _, err := io.ReadFull(d.conn, resp); err != nil {
		return err
	}
	if resp[0] != 0xD0 {
		return fmt.Errorf("PINGRESP expected, got % x", resp)
	}
	return nil
}

func (d *device) close() {
	_, _ = d.conn.Write([]byte{0xE0, 0})
	_ = d.conn.Close()
}

// procStats reads a process's resident memory (MiB) and CPU time used.
func procStats(pid int) (rssMiB float64, cpu time.Duration) {
	rssMiB = procMiB(pid, "VmRSS:")
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(data)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) > 12 {
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			cpu = time.Duration(ut+st) * time.Second / 100 // USER_HZ
		}
	}
	return rssMiB, cpu
}

// procMiB reads one memory figure (VmRSS:, VmHWM:) of /proc/<pid>/status in MiB.
func procMiB(pid int, field string) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

var brokers = []struct {
	name  string
	start func(*testing.B, *pki) *broker
}{{"emulator", startEmulator}, {"mosquitto", startMosquitto}}

var clientSeq atomic.Int64

// BenchmarkConnect measures full connects (TCP, TLS 1.3 handshake with a
// client certificate, MQTT CONNECT/CONNACK, DISCONNECT) per second, with
// concurrency clients at once, each with a fresh client ID.
func BenchmarkConnect(b *testing.B) {
	raiseFileLimit(b)
	p := newPKI(b)
	for _, bk := range brokers {
		b.Run(bk.name, func(b *testing.B) {
			br := bk.start(b, p)
			_, cpu0 := procStats(br.cmd.Process.Pid)
			b.SetParallelism((concurrency + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			var failed atomic.Int64
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n := clientSeq.Add(1)
					d, err := connect(br, p.certs[n%certPool], "c-"+strconv.FormatInt(n, 10), n)
					if err != nil {
						failed.Add(1)
						continue
					}
					d.close()
				}
			})
			elapsed := time.Since(start)
			b.StopTimer()
			_, cpu1 := procStats(br.cmd.Process.Pid)
			if f := failed.Load(); f > 0 {
				b.Fatalf("%d of %d connects failed", f, b.N)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "connects/s")
			b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(b.N), "broker-cpu-µs/connect")
		})
	}
}

// BenchmarkHold connects THINGCERT_BENCH_DEVICES devices (default 1000), all
// held open at once, then checks every one of them with a PINGREQ/PINGRESP
// round trip, and reports the connect rate of the ramp and the broker's memory.
func BenchmarkHold(b *testing.B) {
	raiseFileLimit(b)
	p := newPKI(b)
	for _, bk := range brokers {
		b.Run(fmt.Sprintf("%s/devices=%d", bk.name, devices), func(b *testing.B) {
			br := bk.start(b, p)
			rss0, _ := procStats(br.cmd.Process.Pid)
			for i := 0; i < b.N; i++ {
				r := hold(b, br, p)
				b.ReportMetric(float64(r.held), "devices-held")
				b.ReportMetric(float64(r.held)/r.ramp.Seconds(), "connects/s")
				// CPU time does not depend on what else the shared machine runs
				// as much as the ramp's rate does.
				b.ReportMetric(float64(r.rampCPU.Microseconds())/float64(r.held), "broker-cpu-µs/connect")
				b.ReportMetric(r.rssMiB, "broker-RSS-MiB")
				b.ReportMetric(procMiB(br.cmd.Process.Pid, "VmHWM:"), "broker-peak-RSS-MiB")
				b.ReportMetric((r.rssMiB-rss0)*1024/float64(r.held), "broker-KiB/device")
			}
		})
	}
}

// held is what hold measured: how many devices were held at once, how long
// the broker took to accept them and the CPU time it spent, and its resident
// memory once every device answered a ping.
type held struct {
	held    int
	ramp    time.Duration
	rampCPU time.Duration
	rssMiB  float64
}

func hold(b *testing.B, br *broker, p *pki) held {
	b.Helper()
	_, cpu0 := procStats(br.cmd.Process.Pid)
	conns := make([]*device, devices)
	errs := make(chan error, devices)
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			n := clientSeq.Add(1)
			d, err := connect(br, p.certs[i%certPool], "h-"+strconv.FormatInt(n, 10), n)
			if err != nil {
				errs <- fmt.Errorf("device %d: %w", i, err)
				return
			}
			conns[i] = d
		}(i)
	}
	wg.Wait()
	ramp := time.Since(start)
	_, cpu1 := procStats(br.cmd.Process.Pid)
	defer func() {
		for _, d := range conns {
			if d != nil {
				d.close()
			}
		}
	}()
	close(errs)
	for err := range errs {
		b.Fatalf("%s: %v", br.name, err)
	}
	// Every device is still connected: each gets its PINGRESP.
	for i, d := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := d.ping(); err != nil {
				b.Errorf("%s: device %d lost while holding %d: %v", br.name, i, devices, err)
			}
		}()
	}
	wg.Wait()
	rssMiB, _ := procStats(br.cmd.Process.Pid)
	if br.pprof != "" {
		saveProfiles(b, br.pprof)
	}
	return held{held: devices, ramp: ramp, rampCPU: cpu1 - cpu0, rssMiB: rssMiB}
}
