package promtext

import (
	"bytes"
	"fmt"
	"math"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestWriteFormat(t *testing.T) {
	r := NewRegistry()
	g := r.Gauge("t_gauge", "A gauge.\nSecond line with \\.")
	g.Set(1.8000072e9)
	c := r.Counter("t_total", "A counter.")
	c.Inc()
	c.Add(2.5)
	v := r.CounterVec("t_results_total", "By trigger and outcome.", "trigger", "outcome")
	v.With("time", "succeeded").Inc()
	v.With("job", "rolled-back").Inc()
	v.With("time", "succeeded").Inc()
	empty := r.GaugeVec("t_empty", "No series yet.", "x")
	r.GaugeFunc("t_func", "From a function.", func() float64 { return math.Inf(-1) })
	q := r.GaugeVec("t_quoted", "Label escaping.", "v")
	q.With("a\"b\\c\nd").Set(1)

	var b bytes.Buffer
	r.Write(&b)
	want := `# HELP t_func From a function.
# TYPE t_func gauge
t_func -Inf
# HELP t_gauge A gauge.\nSecond line with \\.
# TYPE t_gauge gauge
t_gauge 1.8000072e+09
# HELP t_quoted Label escaping.
# TYPE t_quoted gauge
t_quoted{v="a\"b\\c\nd"} 1
# HELP t_results_total By trigger and outcome.
# TYPE t_results_total counter
t_results_total{outcome="rolled-back",trigger="job"} 1
t_results_total{outcome="succeeded",trigger="time"} 2
# HELP t_total A counter.
# TYPE t_total counter
t_total 3.5
`
	if b.String() != want {
		t.Errorf("exposition:\n%s\nwant:\n%s", b.String(), want)
	}
	v.Reset()
	empty.With("y").Set(2)
	b.Reset()
	r.Write(&b)
	if strings.Contains(b.String(), "t_results_total") || !strings.Contains(b.String(), "\nt_empty{x=\"y\"} 2\n") {
		t.Errorf("after Reset and a first series:\n%s", b.String())
	}
}

// TestParsesAsPrometheusText: what the handler serves, runtime and process
// figures included, is read back by Prometheus's own text parser with the
// types and values written.
func TestParsesAsPrometheusText(t *testing.T) {
	r := NewRegistry()
	r.CounterVec("t_results_total", "By outcome.", "outcome").With("ok").Add(4)
	r.Collect(GoMetrics)
	r.Collect(ProcessMetrics("t_"))
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q", ct)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("Prometheus's parser refuses the exposition: %v", err)
	}
	if f := fams["t_results_total"]; f == nil || f.GetMetric()[0].GetCounter().GetValue() != 4 {
		t.Errorf("t_results_total: %v", f)
	}
	for _, name := range []string{"go_goroutines", "go_threads", "go_info", "go_gc_duration_seconds", "go_memstats_heap_alloc_bytes",
		"t_process_resident_memory_bytes", "t_process_cpu_seconds_total", "t_process_open_fds", "t_process_max_fds",
		"t_process_start_time_seconds", "t_process_virtual_memory_bytes"} {
		if fams[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	if f := fams["go_goroutines"]; f != nil && f.GetMetric()[0].GetGauge().GetValue() < 1 {
		t.Errorf("go_goroutines %v", f.GetMetric()[0].GetGauge().GetValue())
	}
	// The resident memory is the kernel's figure: within a factor of two of
	// /proc/self/statm's (read separately, a moment later).
	if f := fams["t_process_resident_memory_bytes"]; f != nil {
		statm, err := os.ReadFile("/proc/self/statm")
		if err != nil {
			t.Fatal(err)
		}
		var size, res float64
		if _, err := fmt.Sscan(string(statm), &size, &res); err != nil {
			t.Fatal(err)
		}
		got, kernel := f.GetMetric()[0].GetGauge().GetValue(), res*float64(os.Getpagesize())
		if got < kernel/2 || got > kernel*2 {
			t.Errorf("resident memory %v, /proc/self/statm says %v", got, kernel)
		}
	}
}

func TestRegisterTwicePanics(t *testing.T) {
	r := NewRegistry()
	r.Gauge("x", "")
	defer func() {
		if recover() == nil {
			t.Error("a second family named x was accepted")
		}
	}()
	r.Counter("x", "")
}
