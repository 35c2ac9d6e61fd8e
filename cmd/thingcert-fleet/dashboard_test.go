package main

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/fleet"
)

// TestGrafanaDashboardNamesRealMetrics: every metric the shipped Grafana
// dashboard queries is one the fleet daemon exports (after a cycle) or one
// the device agent registers.
func TestGrafanaDashboardNamesRealMetrics(t *testing.T) {
	b, err := os.ReadFile("../../packaging/grafana-thingcert.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	m := newDaemonMetrics()
	m.observe(&fleet.CycleReport{At: time.Now(), Findings: map[string]int{fleet.CheckDeviceCertAge: 1},
		Jobs: []fleet.JobStatus{{Counts: map[string]int{"SUCCEEDED": 1}}}})
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	fleetNames := map[string]bool{}
	for _, f := range fams {
		fleetNames[f.GetName()] = true
	}
	agentSrc, err := os.ReadFile("../../agent/metrics.go")
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`thingcert_[a-z_]+`)
	n := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, metric := range name.FindAllString(tg.Expr, -1) {
				n++
				if strings.HasPrefix(metric, "thingcert_fleet_") {
					if !fleetNames[metric] {
						t.Errorf("panel %q: %s is not a fleet daemon metric", p.Title, metric)
					}
				} else if !strings.Contains(string(agentSrc), `Name: "`+strings.TrimPrefix(metric, "thingcert_")+`"`) {
					t.Errorf("panel %q: %s is not an agent metric", p.Title, metric)
				}
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d metrics in the dashboard", n)
	}
}
