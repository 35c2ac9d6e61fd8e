package main

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/thingcert/thingcert/agent"
	"github.com/thingcert/thingcert/fleet"
	"github.com/thingcert/thingcert/internal/promtext"
	"github.com/thingcert/thingcert/iot"
)

// exposed is the set of metric names a registry's exposition declares
// (its # TYPE lines).
func exposed(r *promtext.Registry) map[string]bool {
	var b bytes.Buffer
	r.Write(&b)
	names := map[string]bool{}
	for line := range strings.Lines(b.String()) {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
		}
	}
	return names
}

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
	// Families with labels appear once a series exists, as in Prometheus.
	am := agent.NewMetrics(nil)
	am.SetCertificate("c", "file", time.Now(), time.Now().Add(time.Hour))
	am.RotationStarted("time")
	am.RotationStepFailed("csr-submitted")
	am.RotationEnded("time", "succeeded")
	am.ConnectionChanged(iot.StateChange{State: iot.StateWaiting, Err: iot.ErrConnectionLost}, true)
	fleetNames, agentNames := exposed(m.reg), exposed(am.Registry())
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
				} else if !agentNames[metric] {
					t.Errorf("panel %q: %s is not an agent metric", p.Title, metric)
				}
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d metrics in the dashboard", n)
	}
}
