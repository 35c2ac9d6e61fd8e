// Command fleet is the fleet herd benchmark: N simulated devices (the real
// device.Manager, file keys, one process) against one emulator (a child
// process, thingcert-emulator (`thingcert emulator serve`), so its memory and CPU are its own)
// with AWS's default quotas or a multiple of them; the fleet package's
// rotate and retire over all of them. It reports the wall time against the
// limit the quotas set (RegisterThing binds: N / rate seconds), the peak
// CreateCertificateFromCsr and RegisterThing rates the devices saw
// accepted, the throttled requests and whether every device recovered,
// devices left without a working identity (must be 0), and the emulator's
// peak RSS and CPU time.
//
//	go run ./bench/fleet -n 2000                   # AWS's quotas
//	go run ./bench/fleet -n 10000 -quota-scale 10  # quotas ×10
//
// It is not run by `make test`.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsiot "github.com/aws/aws-sdk-go-v2/service/iot"

	"github.com/thingcert/thingcert/device"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/fleet"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/iot/fleetprov"
	_ "github.com/thingcert/thingcert/keystore/filestore"
	"github.com/thingcert/thingcert/rotation"
)

const (
	account           = "bench"
	template          = "herd"
	awsCreateCertRate = 15
	awsRegisterRate   = 10
	awsConnectRate    = 500
)

func main() {
	n := flag.Int("n", 200, "simulated devices")
	scale := flag.Float64("quota-scale", 1, "multiply AWS's CreateCertificateFromCsr, RegisterThing and CONNECT quotas by this")
	rate := flag.Int("rate", 0, "rollout rate per minute (0: RegisterThing's quota, at most AWS's 1000)")
	workers := flag.Int("workers", 16, "retire workers")
	bin := flag.String("emulator", "", "thingcert-emulator binary for -child (default: built from ./cmd/thingcert-emulator)")
	stagger := flag.Bool("stagger", true, "start devices at the RegisterThing quota rather than all at once")
	child := flag.Bool("child", false, "run the emulator as a child process with a state folder (its own RSS and CPU, its own file descriptors) instead of in memory in this process")
	flag.Parse()
	if err := run(*n, *scale, *rate, *workers, *bin, *stagger, *child); err != nil {
		fmt.Fprintln(os.Stderr, "bench/fleet:", err)
		os.Exit(1)
	}
}

// counter counts, per second, the answers the devices saw accepted and
// rejected on the fleet-provisioning topics.
type counter struct {
	mu     sync.Mutex
	counts map[string]map[int64]int // "op accepted|rejected" → unix second → count
}

func (c *counter) add(op string, ok bool, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := op + " rejected"
	if ok {
		k = op + " accepted"
	}
	m := c.counts[k]
	if m == nil {
		m = map[int64]int{}
		c.counts[k] = m
	}
	m[at.Unix()]++
}

// peak is the most answers of a kind ("RegisterThing accepted") in one
// second, and their total, from since on.
func (c *counter) peak(kind string, since time.Time) (peak, total int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for sec, v := range c.counts[kind] {
		if sec >= since.Unix() {
			peak = max(peak, v)
			total += v
		}
	}
	return peak, total
}

// watched wraps a device's connection and counts the answers on the
// provisioning topics it subscribes to.
type watched struct {
	iot.MQTT
	c *counter
}

func (w watched) Subscribe(ctx context.Context, filter string, qos iot.QoS, h iot.MessageHandler) error {
	op := ""
	switch {
	case strings.HasPrefix(filter, "$aws/certificates/create-from-csr/"):
		op = "CreateCertificateFromCsr"
	case strings.HasPrefix(filter, "$aws/provisioning-templates/"):
		op = "RegisterThing"
	}
	if op == "" {
		return w.MQTT.Subscribe(ctx, filter, qos, h)
	}
	ok := strings.HasSuffix(filter, "/accepted")
	return w.MQTT.Subscribe(ctx, filter, qos, func(m iot.Message) {
		w.c.add(op, ok, time.Now())
		h(m)
	})
}

type emuProc struct {
	cmd                   *exec.Cmd
	mqtt, endpoint, state string
}

func startEmulator(bin, dir string, scale float64) (*emuProc, error) {
	state := filepath.Join(dir, "emu")
	cmd := exec.Command(bin, "emulator", "serve", "--state", state, "--account", account,
		"--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
		"--create-cert-rate", fmt.Sprint(awsCreateCertRate*scale), "--register-thing-rate", fmt.Sprint(awsRegisterRate*scale),
		"--account-connect-rate", fmt.Sprint(awsConnectRate*scale))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = nil
	// The emulator ends with this process, however it ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &emuProc{cmd: cmd, state: state}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		switch k {
		case "mqtt":
			p.mqtt = v
		case "endpoint":
			_, p.endpoint, _ = strings.Cut(v, " ")
		}
		if p.mqtt != "" && p.endpoint != "" {
			go func() {
				for sc.Scan() {
				}
			}()
			return p, nil
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	return nil, errors.New("the emulator printed no mqtt and endpoint lines")
}

// usage is the process's peak RSS (VmHWM) and CPU time so far.
func (p *emuProc) usage() (rssMiB float64, cpu time.Duration) {
	pid := strconv.Itoa(p.cmd.Process.Pid)
	if b, err := os.ReadFile("/proc/" + pid + "/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "VmHWM:") {
				kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
				rssMiB = kb / 1024
			}
		}
	}
	if b, err := os.ReadFile("/proc/" + pid + "/stat"); err == nil {
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		cpu = time.Duration(ut+st) * time.Second / 100 // USER_HZ
	}
	return rssMiB, cpu
}

// selfUsage is this process's peak RSS and CPU time.
func selfUsage() (float64, time.Duration) {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return float64(ru.Maxrss) / 1024, cpu // Maxrss is in KiB on Linux
}

func (p *emuProc) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	_ = p.cmd.Wait()
}

// buildThingcert builds thingcert-emulator: the -child emulator is that
// program itself (not `thingcert emulator`, which runs it), so that its PID's
// memory and CPU are the emulator's.
func buildThingcert(dir string) (string, error) {
	bin := filepath.Join(dir, "thingcert-emulator")
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if out, err := exec.Command(goTool, "build", "-o", bin, "./cmd/thingcert-emulator").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/thingcert-emulator (run from the module root): %v\n%s", err, out)
	}
	return bin, nil
}

func run(n int, scale float64, rate, workers int, bin string, stagger, child bool) error {
	// Ctrl-C ends the run through the deferred clean-up (the emulator child, the folder).
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	dir, err := os.MkdirTemp("", "bench-fleet-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var (
		mqttAddr, endpoint string
		roots              *x509.CertPool
		cr                 emulator.Credentials
		usage              func() (float64, time.Duration)
		inproc             *emulator.Emulator
	)
	if child {
		if bin == "" {
			if bin, err = buildThingcert(dir); err != nil {
				return err
			}
		}
		emu, err := startEmulator(bin, dir, scale)
		if err != nil {
			return err
		}
		defer emu.stop()
		if cr, err = emulator.ReadCredentials(emu.state, account); err != nil {
			return err
		}
		rootPEM, err := os.ReadFile(cr.CABundle)
		if err != nil {
			return err
		}
		roots = x509.NewCertPool()
		roots.AppendCertsFromPEM(rootPEM)
		mqttAddr, endpoint, usage = emu.mqtt, emu.endpoint, emu.usage
	} else {
		inproc, err = emulator.Start(ctx, emulator.Config{APIListen: "127.0.0.1:0", Accounts: []emulator.Account{{Name: account}},
			CreateCertificateRate: awsCreateCertRate * scale, RegisterThingRate: awsRegisterRate * scale, AccountConnectRate: awsConnectRate * scale})
		if err != nil {
			return err
		}
		defer inproc.Close()
		key, err := inproc.AccessKey(account)
		if err != nil {
			return err
		}
		cr = emulator.Credentials{AccessKey: key, EndpointURL: inproc.APIURL()}
		roots, mqttAddr, endpoint, usage = inproc.RootCAs(), inproc.Addr(), inproc.Endpoint(account), selfUsage
	}
	api := awsiot.New(awsiot.Options{
		Region: cr.Region, BaseEndpoint: aws.String(cr.EndpointURL),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: cr.AccessKeyID, SecretAccessKey: cr.SecretAccessKey}, nil
		}),
		HTTPClient: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}},
		Retryer:    retry.AddWithMaxAttempts(retry.NewStandard(), 10),
	})
	if _, err := fleet.Setup(ctx, api, fleet.SetupOptions{Template: template, ThingPrefix: "herd-", RoleARN: "arn:aws:iam::123456789012:role/prov",
		ClaimKey: "file:" + filepath.Join(dir, "claim", "claim.pem"), ClaimCertFile: filepath.Join(dir, "claim.crt")}); err != nil {
		return err
	}
	registerRate := awsRegisterRate * scale
	fmt.Printf("N=%d quotas ×%g: CreateCertificateFromCsr %g/s, RegisterThing %g/s, CONNECT %g/s per account\n",
		n, scale, awsCreateCertRate*scale, registerRate, awsConnectRate*scale)

	cnt := &counter{counts: map[string]map[int64]int{}}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 4})) // quiet
	ms := make([]*device.Manager, n)
	done := make(chan error, n)
	t0 := time.Now()
	var pace time.Duration
	if stagger {
		pace = time.Duration(float64(time.Second) / registerRate)
	}
	for i := range n {
		serial := fmt.Sprintf("%06d", i)
		thing := "herd-" + serial
		m, err := device.New(ctx, device.Options{
			Endpoint: iot.Endpoint{Host: endpoint, Address: mqttAddr}, Roots: roots, ThingName: thing,
			StateDir: filepath.Join(dir, "d", serial, "state"), Store: "file:" + filepath.Join(dir, "d", serial, "keys") + "/",
			Claim: &device.Claim{Credentials: device.Credentials{KeyURI: "file:" + filepath.Join(dir, "claim", "claim.pem"), CertFile: filepath.Join(dir, "claim.crt")}, ClientID: "claim-" + thing},
			Issuer: func(c iot.MQTT) rotation.Issuer {
				return &fleetprov.Issuer{Conn: watched{c, cnt}, Template: template, Parameters: map[string]string{fleet.ThingNameParameter: serial}, ThingName: thing}
			},
			Machine: rotation.Machine{GracePeriod: time.Hour, Backoff: rotation.Backoff{Min: 500 * time.Millisecond, Max: 5 * time.Second}},
			Log:     log,
		})
		if err != nil {
			return err
		}
		ms[i] = m
		go func() { done <- m.Run(ctx) }()
		if pace > 0 {
			// Devices come online at the provisioning quota, as a factory
			// line brings them, instead of a herd of claims throttling itself.
			time.Sleep(pace)
		}
	}
	defer func() {
		cancel()
		for _, m := range ms {
			<-done
			m.Close(context.Background())
		}
	}()
	first := make([]string, n)
	// A device that has not provisioned long after the quota allowed is
	// reported and left out of the rotation, rather than waited for forever.
	provLimit := limit(n, registerRate)
	wctx, wcancel := context.WithTimeout(ctx, 2*provLimit+2*time.Minute)
	stuck := waitAll(wctx, ms, func(i int, s *rotation.State) bool {
		if !s.Current.Claim && !s.InProgress() {
			first[i] = s.Current.CertificateID
			return true
		}
		return false
	})
	wcancel()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	prov := time.Since(t0)
	report("provisioning", cnt, t0)
	fmt.Printf("provisioned %d devices by claim in %s (quota limit %s)\n", n-len(stuck), prov.Round(time.Second), provLimit)
	if len(stuck) > 0 {
		fmt.Printf("  NOT provisioned after %s, left out of the rotation: %d devices:", prov.Round(time.Second), len(stuck))
		for _, i := range stuck {
			st, _ := ms[i].Runner().Load()
			phase := ""
			if st != nil {
				phase = string(st.Phase)
			}
			fmt.Printf(" herd-%06d (%s)", i, phase)
		}
		fmt.Println()
	}
	skip := map[int]bool{}
	for _, i := range stuck {
		skip[i] = true
	}
	rotating := n - len(stuck)

	// The rotation: one job on a thing group, at the rollout rate the quota allows.
	group := "herd"
	if _, err := api.CreateThingGroup(ctx, &awsiot.CreateThingGroupInput{ThingGroupName: &group}); err != nil {
		return err
	}
	if err := parallel(ctx, n, 16, func(i int) error {
		if skip[i] {
			return nil
		}
		_, err := api.AddThingToThingGroup(ctx, &awsiot.AddThingToThingGroupInput{ThingGroupName: &group, ThingName: aws.String(fmt.Sprintf("herd-%06d", i))})
		return err
	}); err != nil {
		return err
	}
	if rate == 0 {
		rate = min(1000, int(registerRate*60))
	}
	t1 := time.Now()
	job, err := fleet.Rotate(ctx, api, fleet.RotateOptions{ThingGroup: group, MaxPerMinute: int32(rate), TimeoutMinutes: 60})
	if err != nil {
		return err
	}
	var p fleet.Progress
	for {
		if p, err = fleet.JobProgress(ctx, api, job.ID, t1, time.Now()); err != nil {
			return err
		}
		if p.Finished() && p.Total == rotating {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	rot := time.Since(t1)
	fmt.Printf("rotation job %s: %s in %s\n", job.ID, p.Line(), rot.Round(time.Second))
	report("rotation", cnt, t1)
	t2 := time.Now()
	res, err := fleet.Retire(ctx, api, job.ID, fleet.RetireOptions{Workers: workers}, time.Now, nil)
	if err != nil {
		return err
	}
	ret := time.Since(t2)
	fmt.Printf("retire: %d deactivated, %d errors, %v in %s\n", res.Acted, res.Errors, res.Counts, ret.Round(time.Second))
	total := rot + ret
	lim := time.Duration(float64(n) / registerRate * float64(time.Second))
	fmt.Printf("rotate + retire: %s; quota limit N/RegisterThing = %s; ratio %.3f\n", total.Round(time.Second), lim, total.Seconds()/lim.Seconds())
	if roll := time.Duration(float64(n) / float64(rate) * float64(time.Minute)); roll > lim {
		// AWS IoT Jobs releases at most 1000 executions a minute: above
		// RegisterThing's quota, the rollout is what binds.
		fmt.Printf("  the rollout rate (%d/min) binds instead: N/rate = %s; ratio %.3f\n", rate, roll, total.Seconds()/roll.Seconds())
	}

	// Every device still has a working identity: its new certificate, and a
	// round trip on its Jobs API over its live connection.
	var broken atomic.Int32
	_ = parallel(ctx, n, 64, func(i int) error {
		if skip[i] {
			return nil // counted above, as not provisioned
		}
		s, err := ms[i].Runner().Load()
		if err != nil || s.Current == nil || s.Current.CertificateID == first[i] {
			broken.Add(1)
			return nil
		}
		cctx, c := context.WithTimeout(ctx, time.Minute)
		defer c()
		if err := ms[i].Session().Jobs().List(cctx); err != nil {
			broken.Add(1)
		}
		return nil
	})
	rss, cpu := usage()
	fmt.Printf("rotated devices without a working identity: %d (of %d; %d never provisioned)\n", broken.Load(), rotating, len(stuck))
	what := "emulator (child process)"
	if inproc != nil {
		what = "emulator and devices (one process)"
		for _, op := range []string{"CONNECT", "CreateCertificateFromCsr", "RegisterThing"} {
			st := inproc.RateStats()[op]
			fmt.Printf("  emulator %s: %d allowed, %d throttled\n", op, st.Allowed, st.Throttled)
		}
	}
	fmt.Printf("%s: peak RSS %.0f MiB, CPU %s over %s\n", what, rss, cpu.Round(time.Second), time.Since(t0).Round(time.Second))
	return nil
}

// report prints the peak accepted rates and the throttled (rejected)
// answers the devices saw since a time.
func report(phase string, c *counter, since time.Time) {
	for _, op := range []string{"CreateCertificateFromCsr", "RegisterThing"} {
		pa, ta := c.peak(op+" accepted", since)
		_, tr := c.peak(op+" rejected", since)
		fmt.Printf("  %s %s: %d accepted (peak %d/s), %d rejected (throttled) and retried\n", phase, op, ta, pa, tr)
	}
}

func limit(n int, rate float64) time.Duration {
	return time.Duration(float64(n) / rate * float64(time.Second))
}

// waitAll waits until ok holds for every device, or ctx ends; it returns
// the devices for which it did not.
func waitAll(ctx context.Context, ms []*device.Manager, ok func(int, *rotation.State) bool) []int {
	left := map[int]bool{}
	for i := range ms {
		left[i] = true
	}
	for len(left) > 0 && ctx.Err() == nil {
		for i := range left {
			if s, err := ms[i].Runner().Load(); err == nil && s.Current != nil && ok(i, s) {
				delete(left, i)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	var out []int
	for i := range left {
		out = append(out, i)
	}
	slices.Sort(out)
	return out
}

func parallel(ctx context.Context, n, workers int, f func(int) error) error {
	var wg sync.WaitGroup
	var first error
	var mu sync.Mutex
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}
