// Package promtext keeps counters and gauges and writes them in Prometheus's
// text exposition format (version 0.0.4), with the process and Go runtime
// figures Prometheus's own collectors name the same way.
//
// Why not a metrics library: thingcert is one binary whose every subcommand
// (`thingcert version` included) runs the package initialisation of all it
// links. Prometheus's client initialises protobuf descriptors and its
// default collectors (about 1.5 ms and 0.2 MB before main on the project's
// machine); VictoriaMetrics/metrics reads six cgroup and pressure files and
// creates an epoll instance at init. This package does nothing before it is
// used, and the daemon's needs are small: a few families of gauges and
// counters with labels, on a loopback /metrics.
package promtext

import (
	"bytes"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Kind is a family's TYPE.
type Kind string

const (
	KindGauge   Kind = "gauge"
	KindCounter Kind = "counter"
)

// Registry holds metric families; the zero value is not usable, NewRegistry
// makes one. Safe for concurrent use.
type Registry struct {
	mu         sync.Mutex
	families   map[string]*family
	collectors []func(*Writer)
}

// NewRegistry makes an empty registry.
func NewRegistry() *Registry { return &Registry{families: map[string]*family{}} }

type family struct {
	name, help string
	kind       Kind
	labels     []string // as given; written sorted by name
	order      []int    // indexes of labels sorted by name
	fn         func() float64

	mu     sync.Mutex
	series map[string]*series // by label values joined with \xff
}

type series struct {
	values []string
	bits   atomic.Uint64
}

func (r *Registry) add(name, help string, kind Kind, labels []string, fn func() float64) *family {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.families[name]; dup {
		panic("promtext: metric " + name + " registered twice")
	}
	f := &family{name: name, help: help, kind: kind, labels: labels, fn: fn, series: map[string]*series{}}
	f.order = make([]int, len(labels))
	for i := range f.order {
		f.order[i] = i
	}
	slices.SortFunc(f.order, func(a, b int) int { return strings.Compare(labels[a], labels[b]) })
	r.families[name] = f
	return f
}

// Value is one series: a gauge or a counter without labels, or one label
// combination of a Vec.
type Value struct{ s *series }

// Set sets a gauge.
func (v Value) Set(x float64) { v.s.bits.Store(math.Float64bits(x)) }

// Add adds x (a counter's x must not be negative).
func (v Value) Add(x float64) {
	for {
		old := v.s.bits.Load()
		if v.s.bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+x)) {
			return
		}
	}
}

// Inc adds one.
func (v Value) Inc() { v.Add(1) }

// Get is the current value.
func (v Value) Get() float64 { return math.Float64frombits(v.s.bits.Load()) }

// Gauge registers a gauge without labels.
func (r *Registry) Gauge(name, help string) Value {
	return r.add(name, help, KindGauge, nil, nil).with(nil)
}

// Counter registers a counter without labels.
func (r *Registry) Counter(name, help string) Value {
	return r.add(name, help, KindCounter, nil, nil).with(nil)
}

// GaugeFunc registers a gauge whose value fn gives at each scrape.
func (r *Registry) GaugeFunc(name, help string, fn func() float64) {
	r.add(name, help, KindGauge, nil, fn)
}

// Vec is a family with labels; a series exists once one of its label
// combinations is used.
type Vec struct{ f *family }

// GaugeVec registers a gauge family with these label names.
func (r *Registry) GaugeVec(name, help string, labels ...string) Vec {
	return Vec{r.add(name, help, KindGauge, labels, nil)}
}

// CounterVec registers a counter family with these label names.
func (r *Registry) CounterVec(name, help string, labels ...string) Vec {
	return Vec{r.add(name, help, KindCounter, labels, nil)}
}

// With is the series of these label values, in the order of the family's
// label names.
func (v Vec) With(values ...string) Value {
	if len(values) != len(v.f.labels) {
		panic("promtext: " + v.f.name + " takes " + strconv.Itoa(len(v.f.labels)) + " label values")
	}
	return v.f.with(values)
}

// Reset removes every series of the family.
func (v Vec) Reset() {
	v.f.mu.Lock()
	clear(v.f.series)
	v.f.mu.Unlock()
}

func (f *family) with(values []string) Value {
	key := strings.Join(values, "\xff")
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.series[key]
	if !ok {
		s = &series{values: slices.Clone(values)}
		f.series[key] = s
	}
	return Value{s}
}

// Collect adds fn to what every scrape writes, after the registered
// families: figures read at scrape time (the process's, the runtime's).
func (r *Registry) Collect(fn func(*Writer)) {
	r.mu.Lock()
	r.collectors = append(r.collectors, fn)
	r.mu.Unlock()
}

// Write writes every family, sorted by name, then the collectors' figures.
func (r *Registry) Write(b *bytes.Buffer) {
	r.mu.Lock()
	fams := make([]*family, 0, len(r.families))
	for _, f := range r.families {
		fams = append(fams, f)
	}
	collectors := slices.Clone(r.collectors)
	r.mu.Unlock()
	slices.SortFunc(fams, func(a, b *family) int { return strings.Compare(a.name, b.name) })
	w := &Writer{b: b}
	for _, f := range fams {
		f.write(w)
	}
	for _, c := range collectors {
		c(w)
	}
}

func (f *family) write(w *Writer) {
	if f.fn != nil {
		w.Header(f.name, f.help, f.kind)
		w.Sample(f.name, f.fn())
		return
	}
	f.mu.Lock()
	ss := make([]*series, 0, len(f.series))
	for _, s := range f.series {
		ss = append(ss, s)
	}
	f.mu.Unlock()
	if len(ss) == 0 && len(f.labels) > 0 {
		return // Prometheus writes nothing for a family without series
	}
	slices.SortFunc(ss, func(a, b *series) int { return slices.Compare(a.values, b.values) })
	w.Header(f.name, f.help, f.kind)
	pairs := make([]string, 2*len(f.labels))
	for _, s := range ss {
		for i, j := range f.order {
			pairs[2*i], pairs[2*i+1] = f.labels[j], s.values[j]
		}
		w.Sample(f.name, math.Float64frombits(s.bits.Load()), pairs...)
	}
}

// Handler serves the registry at each request, as text/plain version 0.0.4.
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		var b bytes.Buffer
		r.Write(&b)
		rw.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		rw.Header().Set("Content-Length", strconv.Itoa(b.Len()))
		_, _ = rw.Write(b.Bytes())
	})
}

// Writer writes exposition lines; collectors get one.
type Writer struct{ b *bytes.Buffer }

// Header writes a family's HELP and TYPE lines.
func (w *Writer) Header(name, help string, kind Kind) {
	w.b.WriteString("# HELP ")
	w.b.WriteString(name)
	w.b.WriteByte(' ')
	w.escape(help, false)
	w.b.WriteString("\n# TYPE ")
	w.b.WriteString(name)
	w.b.WriteByte(' ')
	w.b.WriteString(string(kind))
	w.b.WriteByte('\n')
}

// Sample writes one sample line; labels are name, value pairs, written in
// the order given.
func (w *Writer) Sample(name string, v float64, labels ...string) {
	w.b.WriteString(name)
	if len(labels) > 0 {
		w.b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				w.b.WriteByte(',')
			}
			w.b.WriteString(labels[i])
			w.b.WriteString(`="`)
			w.escape(labels[i+1], true)
			w.b.WriteByte('"')
		}
		w.b.WriteByte('}')
	}
	w.b.WriteByte(' ')
	w.b.WriteString(FormatFloat(v))
	w.b.WriteByte('\n')
}

// One writes a family of a single sample.
func (w *Writer) One(name, help string, kind Kind, v float64) {
	w.Header(name, help, kind)
	w.Sample(name, v)
}

// escape writes s with backslash and newline escaped, and double quotes
// too when quotes is set (label values).
func (w *Writer) escape(s string, quotes bool) {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			w.b.WriteString(`\\`)
		case c == '\n':
			w.b.WriteString(`\n`)
		case c == '"' && quotes:
			w.b.WriteString(`\"`)
		default:
			w.b.WriteByte(c)
		}
	}
}

// FormatFloat writes a sample value as Prometheus does: the shortest
// representation, and +Inf, -Inf, NaN.
func FormatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
