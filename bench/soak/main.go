// Command soak runs the agent (`thingcert run`, a built binary) against the
// emulator (`thingcert emulator serve`, another process) with certificates
// that live one minute, so that it rotates every ~40 s, while a program
// publishes through the agent's socket; every 10 s it samples the agent's
// resident memory, goroutines (the metrics' go_goroutines), open files
// (/proc/PID/fd), the state folder's size and the key store's key count, and
// at the end prints the first and last samples. Not part of CI: it takes as
// long as -duration (30 minutes for the figures in bench/README.md).
//
//	go build -o /tmp/ ./cmd/thingcert ./cmd/thingcert-emulator   # thingcert runs thingcert-emulator for `emulator serve`
//	go run ./bench/soak -thingcert /tmp/thingcert -duration 30m -csv /tmp/soak.csv
package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/thingcert/thingcert/agentclient"
	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/keystore"
	_ "github.com/thingcert/thingcert/keystore/all"
)

const (
	account  = "soak"
	template = "soak"
	thing    = "soak-0001"
)

func main() {
	bin := flag.String("thingcert", "", "thingcert binary (required)")
	duration := flag.Duration("duration", 30*time.Minute, "how long the agent runs")
	every := flag.Duration("every", 10*time.Second, "sampling interval")
	csvPath := flag.String("csv", "", "write every sample here")
	keep := flag.Bool("keep", false, "keep the work folder")
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "soak: -thingcert is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *duration, *every, *csvPath, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

type sample struct {
	at                          time.Duration
	rssKiB, goroutines, fds     int
	stateBytes, keys, rotations int
	published, publishFailed    int64
}

func run(ctx context.Context, bin string, duration, every time.Duration, csvPath string, keep bool) error {
	work, err := os.MkdirTemp("", "thingcert-soak-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(work)
	}
	emuDir := filepath.Join(work, "emu")
	endpoint, claimKey, err := prepare(ctx, work, emuDir)
	if err != nil {
		return err
	}
	mqttPort, metricsPort := freePort(), freePort()

	emu := exec.Command(bin, "emulator", "serve", "--state", emuDir, "--listen", "127.0.0.1:"+strconv.Itoa(mqttPort), "--cert-lifetime", "1m")
	emuLog, _ := os.Create(filepath.Join(work, "emulator.log"))
	emu.Stdout, emu.Stderr = emuLog, emuLog
	if err := emu.Start(); err != nil {
		return err
	}
	emuDone := waiter(emu)
	defer stopProcess(emu, emuDone)
	if err := waitListening("127.0.0.1:"+strconv.Itoa(mqttPort), 30*time.Second); err != nil {
		return fmt.Errorf("the emulator did not start (log in %s): %w", emuLog.Name(), err)
	}

	cfgPath := filepath.Join(work, "thingcert.yaml")
	socket := filepath.Join(work, "agent.sock")
	q := strconv.Quote
	conf := `endpoint: ` + q(endpoint) + `
address: 127.0.0.1:` + strconv.Itoa(mqttPort) + `
ca: ` + q(filepath.Join(emuDir, "root-ca.pem")) + `
thing_name: ` + thing + `
store: ` + q("file:"+filepath.Join(work, "keys")+"/") + `
claim:
  key: ` + q(claimKey) + `
  cert: ` + q(filepath.Join(work, "claim.crt")) + `
provisioning:
  template: ` + template + `
  parameters:
    SerialNumber: "0001"
  timeout: 10s
rotation:
  lifetime_ratio: "off"
  before_expiry: 20s
  jitter: 1s
  emergency_window: 2s
  grace_period: 1m
  retry_min: 1s
  retry_max: 4s
  trust: ` + q(filepath.Join(work, "issuing-ca.pem")) + `
state_dir: ` + q(filepath.Join(work, "state")) + `
metrics:
  listen: 127.0.0.1:` + strconv.Itoa(metricsPort) + `
log:
  level: info
`
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(work, "keys"), 0o700); err != nil {
		return err
	}
	agentLog, _ := os.Create(filepath.Join(work, "agent.log"))
	ag := exec.Command(bin, "run", "--config", cfgPath, "--socket", socket)
	ag.Stdout, ag.Stderr = agentLog, agentLog
	if err := ag.Start(); err != nil {
		return err
	}
	agDone := waiter(ag)
	defer stopProcess(ag, agDone)
	fmt.Printf("work folder %s; agent PID %d, emulator PID %d; %s, a sample every %s\n", work, ag.Process.Pid, emu.Process.Pid, duration, every)

	var published, failed atomic.Int64
	pubCtx, stopPub := context.WithCancel(ctx)
	defer stopPub()
	go publish(pubCtx, socket, &published, &failed)

	metricsURL := "http://127.0.0.1:" + strconv.Itoa(metricsPort) + "/metrics"
	var samples []sample
	var w *csv.Writer
	if csvPath != "" {
		f, err := os.Create(csvPath)
		if err != nil {
			return err
		}
		defer f.Close()
		w = csv.NewWriter(f)
		w.Write([]string{"seconds", "rss_kib", "goroutines", "open_fds", "state_bytes", "keys", "rotations", "published", "publish_failed"})
	}
	start := time.Now()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for time.Since(start) < duration {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		select {
		case <-agDone:
			return fmt.Errorf("the agent ended (log in %s)", agentLog.Name())
		case <-emuDone:
			return fmt.Errorf("the emulator ended (log in %s)", emuLog.Name())
		default:
		}
		s := sample{at: time.Since(start).Round(time.Second), published: published.Load(), publishFailed: failed.Load()}
		s.rssKiB = rssKiB(ag.Process.Pid)
		s.fds = countDir(fmt.Sprintf("/proc/%d/fd", ag.Process.Pid))
		s.stateBytes = folderBytes(filepath.Join(work, "state"))
		s.keys = countDir(filepath.Join(work, "keys"))
		s.goroutines, s.rotations = scrape(metricsURL)
		samples = append(samples, s)
		if w != nil {
			w.Write([]string{strconv.Itoa(int(s.at.Seconds())), strconv.Itoa(s.rssKiB), strconv.Itoa(s.goroutines), strconv.Itoa(s.fds),
				strconv.Itoa(s.stateBytes), strconv.Itoa(s.keys), strconv.Itoa(s.rotations), strconv.FormatInt(s.published, 10), strconv.FormatInt(s.publishFailed, 10)})
			w.Flush()
		}
		fmt.Printf("%6s rss %6d KiB  goroutines %4d  fds %3d  state %7d B  keys %2d  rotations %4d  published %6d (failed %d)\n",
			s.at, s.rssKiB, s.goroutines, s.fds, s.stateBytes, s.keys, s.rotations, s.published, s.publishFailed)
	}
	if len(samples) < 2 {
		return errors.New("too few samples")
	}
	// The first sample after provisioning, against the last.
	first := samples[0]
	for _, s := range samples {
		if s.rotations > 0 {
			first = s
			break
		}
	}
	last := samples[len(samples)-1]
	fmt.Printf("\n| | first (%s) | last (%s) |\n| --- | --- | --- |\n", first.at, last.at)
	fmt.Printf("| resident memory | %d KiB | %d KiB |\n", first.rssKiB, last.rssKiB)
	fmt.Printf("| goroutines | %d | %d |\n", first.goroutines, last.goroutines)
	fmt.Printf("| open files | %d | %d |\n", first.fds, last.fds)
	fmt.Printf("| state folder | %d B | %d B |\n", first.stateBytes, last.stateBytes)
	fmt.Printf("| keys in the store | %d | %d |\n", first.keys, last.keys)
	fmt.Printf("| rotations (provisioning included) | %d | %d |\n", first.rotations, last.rotations)
	fmt.Printf("| publishes through the socket (failed) | %d (%d) | %d (%d) |\n", first.published, first.publishFailed, last.published, last.publishFailed)
	return nil
}

// prepare makes the emulator's state folder with the account, the template
// and a claim, as a factory would, before the emulator runs. It returns the
// account's endpoint and the claim key's URI.
func prepare(ctx context.Context, work, emuDir string) (endpoint, claimKey string, err error) {
	reg, err := emulator.Open(ctx, emulator.Config{StateDir: emuDir})
	if err != nil {
		return "", "", err
	}
	defer reg.Close()
	a, err := reg.AddAccount(ctx, emulator.Account{Name: account})
	if err != nil {
		return "", "", err
	}
	if err := reg.CreateTemplate(ctx, account, emulator.Template{Name: template, Body: emulator.SimpleTemplate("soak-", "SerialNumber")}); err != nil {
		return "", "", err
	}
	s, err := keystore.Open(ctx, "file:"+filepath.Join(work, "claim")+"/", keystore.Options{})
	if err != nil {
		return "", "", err
	}
	defer s.Close()
	claimKey, err = s.KeyURI("claim")
	if err != nil {
		return "", "", err
	}
	k, err := s.Generate(ctx, claimKey, keystore.ECDSAP256)
	if err != nil {
		return "", "", err
	}
	pemBytes, _, err := reg.RegisterClaim(ctx, account, k, "soak claim")
	if err != nil {
		return "", "", err
	}
	if err := os.WriteFile(filepath.Join(work, "claim.crt"), pemBytes, 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(filepath.Join(work, "issuing-ca.pem"), reg.IssuingCAPEM(), 0o600); err != nil {
		return "", "", err
	}
	return a.Endpoint(), claimKey, nil
}

// publish is the device program: one QoS 1 publish every 500 ms through the
// socket, dialling again whenever the agent drops it.
func publish(ctx context.Context, socket string, ok, failed *atomic.Int64) {
	for ctx.Err() == nil {
		c, err := agentclient.Dial(ctx, socket)
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		for ctx.Err() == nil {
			pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := c.Publish(pctx, "dt/"+thing+"/soak", agentclient.AtLeastOnce, []byte(time.Now().UTC().Format(time.RFC3339Nano)))
			cancel()
			if err != nil {
				failed.Add(1)
				select {
				case <-c.Done():
				default:
					time.Sleep(500 * time.Millisecond)
					continue
				}
				break
			}
			ok.Add(1)
			time.Sleep(500 * time.Millisecond)
		}
		c.Close()
	}
}

func scrape(url string) (goroutines, rotations int) {
	resp, err := http.Get(url)
	if err != nil {
		return -1, -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		switch {
		case f[0] == "go_goroutines":
			goroutines = int(v)
		case strings.HasPrefix(line, "thingcert_rotation_results_total{") && strings.Contains(line, `outcome="succeeded"`):
			rotations += int(v)
		}
	}
	return goroutines, rotations
}

func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return -1
}

func countDir(dir string) int {
	e, err := os.ReadDir(dir)
	if err != nil {
		return -1
	}
	return len(e)
}

func folderBytes(dir string) int {
	total := 0
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if i, err := d.Info(); err == nil {
				total += int(i.Size())
			}
		}
		return nil
	})
	return total
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitListening(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waiter waits for a started process; the channel closes when it ends.
func waiter(c *exec.Cmd) <-chan struct{} {
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	return done
}

// stopProcess ends a process this program started, by its PID.
func stopProcess(c *exec.Cmd, done <-chan struct{}) {
	_ = c.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = c.Process.Kill()
		<-done
	}
}
