package emulatorbench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	_ "net/http/pprof" // the child's profiles, on a loopback port only
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/thingcert/thingcert/emulator"
)

// childEnv makes this test binary the emulator of a profiled BenchmarkHold.
const childEnv = "THINGCERT_BENCH_EMULATOR_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runChild is `thingcert emulator serve --account-connect-rate -1` on the
// state folder the benchmark prepared, with net/http/pprof on loopback.
func runChild() error {
	// Every allocation of 4 KiB on average is sampled, so the per-connection
	// objects of 10,000 devices are all counted, not estimated from a few.
	runtime.MemProfileRate = 4096
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	emu, err := emulator.Start(ctx, emulator.Config{
		StateDir: os.Getenv("THINGCERT_BENCH_STATE"), Listen: os.Getenv("THINGCERT_BENCH_LISTEN"), AccountConnectRate: -1,
	})
	if err != nil {
		return err
	}
	defer emu.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second} // DefaultServeMux: net/http/pprof's handlers
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	fmt.Printf("pprof %s\nroot-ca %s\n", ln.Addr(), emu.RootCAFile())
	<-ctx.Done()
	return emu.Close()
}

// saveProfiles saves the emulator child's heap profile (after a GC: live
// objects only) and its goroutine stacks in profileDir.
func saveProfiles(b *testing.B, addr string) {
	b.Helper()
	if err := os.MkdirAll(profileDir, 0o755); err != nil {
		b.Fatal(err)
	}
	for name, path := range map[string]string{
		"emulator-heap.pb.gz":     "/debug/pprof/heap?gc=1",
		"emulator-goroutines.txt": "/debug/pprof/goroutine?debug=1",
		"emulator-allocs.pb.gz":   "/debug/pprof/allocs",
		"emulator-memstats.txt":   "/debug/pprof/heap?debug=1",
		"emulator-stacks.txt":     "/debug/pprof/goroutine?debug=2",
	} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			b.Fatalf("profile %s: %v", path, err)
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("profile %s: %s %v", path, resp.Status, err)
		}
		if err := os.WriteFile(filepath.Join(profileDir, name), data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("emulator profiles in %s", profileDir)
}
