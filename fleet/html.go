package fleet

import (
	"fmt"
	"html/template"
	"io"
	"time"
)

// The audit page: one HTML file with inline CSS and inline SVG, no scripts
// and no fonts or images from elsewhere, so it opens anywhere (a mail
// attachment, an air-gapped laptop) and shows the same thing.

// Bar is one column of a histogram.
type Bar struct {
	Label      string
	Count      int
	X, Y, W, H int
}

// Histogram is a bar chart as the page draws it.
type Histogram struct {
	Title string
	Bars  []Bar
	Max   int
}

// histogram counts values into buckets with upper bounds (the last bucket
// takes the rest) and lays the bars out in a 600×200 box.
func histogram(title string, values []float64, bounds []float64, labels []string) Histogram {
	h := Histogram{Title: title}
	counts := make([]int, len(labels))
	for _, v := range values {
		i := len(labels) - 1
		for j, b := range bounds {
			if v < b {
				i = j
				break
			}
		}
		counts[i]++
	}
	for _, c := range counts {
		h.Max = max(h.Max, c)
	}
	w := 600 / len(labels)
	for i, c := range counts {
		bh := 0
		if h.Max > 0 {
			bh = c * 155 / h.Max
		}
		h.Bars = append(h.Bars, Bar{Label: labels[i], Count: c, X: i*w + 4, W: w - 8, H: bh, Y: 180 - bh})
	}
	return h
}

// Histograms are the page's charts: days to expiry and age in days of the
// fleet's ACTIVE certificates.
func (r *Report) Histograms() []Histogram {
	var expiry, age []float64
	for _, th := range r.Things {
		for _, c := range th.Certificates {
			if c.Status != "ACTIVE" {
				continue
			}
			expiry = append(expiry, c.NotAfter.Sub(r.At).Hours()/24)
			age = append(age, float64(c.AgeDays))
		}
	}
	return []Histogram{
		histogram("Days until expiry (ACTIVE certificates)", expiry,
			[]float64{0, 30, 90, 180, 365, 730, 3650}, []string{"expired", "<30", "30–90", "90–180", "180–365", "1–2 y", "2–10 y", ">10 y"}),
		histogram("Age in days (ACTIVE certificates)", age,
			[]float64{30, 90, 180, 365, 730}, []string{"<30", "30–90", "90–180", "180–365", "1–2 y", ">2 y"}),
	}
}

var pageTmpl = template.Must(template.New("audit").Funcs(template.FuncMap{
	"date":  func(t time.Time) string { return t.UTC().Format("2006-01-02") },
	"stamp": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"mid":   func(b Bar) int { return b.X + b.W/2 },
	"above": func(b Bar) int { return b.Y - 4 },
	"count": func(r *Report) (n int) {
		for _, th := range r.Things {
			n += len(th.Certificates)
		}
		return n
	},
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>thingcert fleet audit {{stamp .At}}</title>
<style>
body{font-family:sans-serif;margin:2em;color:#222;background:#fff}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}
.charts{display:flex;flex-wrap:wrap;gap:2em}
svg{border:1px solid #ccc;background:#fafafa}
rect.bar{fill:#2a6fb0}
table{border-collapse:collapse;margin-top:.5em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;font-size:.9em}
th{background:#eee}.check{font-family:monospace}.ok{color:#1a7f37}
</style></head><body>
<h1>Fleet certificate audit</h1>
<p>{{.Scope}} at {{stamp .At}}: {{len .Things}} things, {{count .}} certificates, {{len .Findings}} findings.</p>
<div class="charts">{{range .Histograms}}
<figure><figcaption>{{.Title}}</figcaption>
<svg xmlns="http://www.w3.org/2000/svg" width="600" height="220" viewBox="0 0 600 220" role="img">{{range .Bars}}
<rect class="bar" x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}"><title>{{.Label}}: {{.Count}}</title></rect>
<text x="{{mid .}}" y="{{above .}}" font-size="12" text-anchor="middle">{{.Count}}</text>
<text x="{{mid .}}" y="198" font-size="11" text-anchor="middle">{{.Label}}</text>{{end}}
</svg></figure>{{end}}
</div>
<h2>Findings</h2>
{{if .Findings}}<table><tr><th>check</th><th>thing</th><th>certificate</th><th>detail</th></tr>
{{range .Findings}}<tr><td class="check">{{.Check}}</td><td>{{.Thing}}{{.JobID}}</td><td class="check">{{printf "%.16s" .CertificateID}}</td><td>{{.Detail}}</td></tr>
{{end}}</table>{{else}}<p class="ok">No findings.</p>{{end}}
<h2>Certificates</h2>
<table><tr><th>thing</th><th>certificate</th><th>status</th><th>CA</th><th>not after</th><th>age (days)</th><th>key</th><th>signature</th></tr>
{{range $th := .Things}}{{range .Certificates}}<tr><td>{{$th.Name}}</td><td class="check">{{printf "%.12s" .ID}}…</td><td>{{.Status}}</td><td>{{.CA}}</td><td>{{date .NotAfter}}</td><td>{{.AgeDays}}</td><td>{{.KeyAlgorithm}} {{.KeyBits}}</td><td>{{.SigAlgorithm}}</td></tr>
{{end}}{{end}}</table>
</body></html>
`))

// WriteHTML writes the audit as one self-contained HTML page.
func (r *Report) WriteHTML(w io.Writer) error {
	if err := pageTmpl.Execute(w, r); err != nil {
		return fmt.Errorf("fleet: rendering the audit page: %w", err)
	}
	return nil
}
