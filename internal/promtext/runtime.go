package promtext

import (
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// ProcessMetrics writes the process's figures under prefix+"process_" with
// the names and meanings of Prometheus's process collector: CPU seconds,
// resident and virtual memory, open and maximum file descriptors, start
// time. They are read from /proc/self at each scrape; on a system without
// /proc, or when a file cannot be read, its figures are left out.
func ProcessMetrics(prefix string) func(*Writer) {
	p := prefix + "process_"
	return func(w *Writer) {
		if st, ok := readStat(); ok {
			w.One(p+"cpu_seconds_total", "CPU time the process has used, user and system, in seconds.", KindCounter, st.cpuSeconds)
			w.One(p+"resident_memory_bytes", "Bytes of the process's memory held in RAM.", KindGauge, st.rss)
			if st.start > 0 {
				w.One(p+"start_time_seconds", "When the process started, in Unix seconds.", KindGauge, st.start)
			}
			w.One(p+"virtual_memory_bytes", "Bytes of address space the process has mapped.", KindGauge, st.vsize)
		}
		if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
			w.One(p+"open_fds", "File descriptors the process holds open.", KindGauge, float64(len(ents)))
		}
		if n, ok := maxFDs(); ok {
			w.One(p+"max_fds", "The most file descriptors the process may open (soft limit).", KindGauge, n)
		}
	}
}

// GoMetrics writes the Go runtime's figures with the names of Prometheus's
// Go collector: goroutines, threads, GC pauses, the memory statistics a
// dashboard plots, the Go version.
func GoMetrics(w *Writer) {
	w.One("go_goroutines", "Goroutines alive now.", KindGauge, float64(runtime.NumGoroutine()))
	threads, _ := runtime.ThreadCreateProfile(nil)
	w.One("go_threads", "Operating-system threads the Go runtime has made.", KindGauge, float64(threads))
	w.Header("go_info", "Always 1; the label names the Go release the program was built with.", KindGauge)
	w.Sample("go_info", 1, "version", runtime.Version())

	// go_gc_duration_seconds: a summary of the recent stop-the-world pauses.
	var gc debug.GCStats
	gc.PauseQuantiles = make([]time.Duration, 5)
	debug.ReadGCStats(&gc)
	w.b.WriteString("# HELP go_gc_duration_seconds Stop-the-world pauses of recent garbage collections, in seconds.\n# TYPE go_gc_duration_seconds summary\n")
	for i, q := range []string{"0", "0.25", "0.5", "0.75", "1"} {
		w.Sample("go_gc_duration_seconds", gc.PauseQuantiles[i].Seconds(), "quantile", q)
	}
	w.Sample("go_gc_duration_seconds_sum", gc.PauseTotal.Seconds())
	w.Sample("go_gc_duration_seconds_count", float64(gc.NumGC))

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	for _, m := range []struct {
		name, help string
		kind       Kind
		v          uint64
	}{
		{"alloc_bytes", "Heap bytes in live objects.", KindGauge, ms.Alloc},
		{"alloc_bytes_total", "Heap bytes ever allocated, freed ones included.", KindCounter, ms.TotalAlloc},
		{"frees_total", "Heap objects ever freed.", KindCounter, ms.Frees},
		{"heap_alloc_bytes", "Heap bytes in live objects (as alloc_bytes).", KindGauge, ms.HeapAlloc},
		{"heap_idle_bytes", "Heap bytes in spans holding no object.", KindGauge, ms.HeapIdle},
		{"heap_inuse_bytes", "Heap bytes in spans holding at least one object.", KindGauge, ms.HeapInuse},
		{"heap_objects", "Live heap objects.", KindGauge, ms.HeapObjects},
		{"heap_released_bytes", "Heap bytes given back to the operating system.", KindGauge, ms.HeapReleased},
		{"heap_sys_bytes", "Heap bytes taken from the operating system.", KindGauge, ms.HeapSys},
		{"mallocs_total", "Heap objects ever allocated.", KindCounter, ms.Mallocs},
		{"next_gc_bytes", "Heap size at which the next garbage collection starts.", KindGauge, ms.NextGC},
		{"stack_inuse_bytes", "Bytes of goroutine stacks in use.", KindGauge, ms.StackInuse},
		{"sys_bytes", "Bytes the Go runtime has taken from the operating system, all uses.", KindGauge, ms.Sys},
	} {
		w.One("go_memstats_"+m.name, m.help, m.kind, float64(m.v))
	}
	w.One("go_memstats_last_gc_time_seconds", "When the last garbage collection ended, in Unix seconds.", KindGauge, float64(ms.LastGC)/1e9)
}

type procStat struct{ cpuSeconds, rss, vsize, start float64 }

// userHZ is the unit of /proc/PID/stat's times: USER_HZ, 100 on every Linux
// architecture Go supports.
const userHZ = 100

// readStat reads /proc/self/stat (see proc(5)): fields utime (14), stime
// (15), starttime (22), vsize (23), rss (24) in pages.
func readStat() (procStat, bool) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return procStat{}, false
	}
	// The command name (field 2) may hold spaces; fields resume after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3
	if len(f) < 22 {
		return procStat{}, false
	}
	num := func(field int) float64 {
		v, _ := strconv.ParseUint(f[field-3], 10, 64)
		return float64(v)
	}
	st := procStat{
		cpuSeconds: (num(14) + num(15)) / userHZ,
		vsize:      num(23),
		rss:        num(24) * float64(os.Getpagesize()),
	}
	if boot, ok := bootTime(); ok {
		st.start = boot + num(22)/userHZ
	}
	return st, true
}

// bootTime is /proc/stat's btime: the boot time in Unix seconds.
func bootTime() (float64, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return float64(n), err == nil
		}
	}
	return 0, false
}

// maxFDs is the soft limit on open files, from /proc/self/limits.
func maxFDs() (float64, bool) {
	b, err := os.ReadFile("/proc/self/limits")
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return 0, false
			}
			if f[0] == "unlimited" {
				return float64(^uint64(0)), true
			}
			n, err := strconv.ParseUint(f[0], 10, 64)
			return float64(n), err == nil
		}
	}
	return 0, false
}
