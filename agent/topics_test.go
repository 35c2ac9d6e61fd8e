package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/iot"
)

// Programs may not publish to, nor subscribe with any filter that can match,
// the agent's own topics or the owner CA issuer's; wildcards that cannot
// reach them ('#' does not match '$' topics) pass.
func TestCheckProgramTopic(t *testing.T) {
	issuer := []string{"owner/{thing}/csr", "owner/{thing}/cert"}
	for _, c := range []struct {
		topic  string
		filter bool
		refuse bool
	}{
		{"$aws/#", true, true},
		{"$aws/things/dev-1/#", true, true},
		{"$aws/things/+/jobs/notify-next", true, true},
		{"$aws/things/dev-1/jobs/+/get/accepted", true, true},
		{"$aws/+/dev-1/jobs/notify", true, true},
		{"$aws/certificates/create-from-csr/json/accepted", true, true},
		{"$aws/provisioning-templates/#", true, true},
		{"$aws/things/dev-1/jobs", true, true},
		{"owner/#", true, true},
		{"owner/dev-1/csr", false, true},
		{"owner/dev-1/cert/accepted", true, true},
		{"owner/+/+/accepted", true, true},
		{"+/dev-1/#", true, true},
		{"#", true, true}, // matches the issuer's topics, which have no '$'
		{"+/+/csr", true, true},
		// Not the agent's.
		{"$aws/things/dev-1/shadow/#", true, false},
		{"$aws/things/dev-2/jobs/notify", true, false},
		{"$aws/things/dev-1/jobsx/a", true, false},
		{"+/things/dev-1/jobs/#", true, false}, // '+' first does not match '$aws'
		{"owner/dev-2/csr", true, false},
		{"owner/dev-1", true, false},
		{"dt/dev-1/#", true, false},
		{"dt/dev-1/temp", false, false},
	} {
		err := checkProgramTopic("dev-1", issuer, c.topic, c.filter)
		if got := errors.Is(err, ErrReservedTopic); got != c.refuse {
			t.Errorf("%q (filter %v): %v, want refused %v", c.topic, c.filter, err, c.refuse)
		}
	}
	// Without an issuer's topics, '#' reaches none of the agent's ($aws).
	if err := checkProgramTopic("dev-1", nil, "#", true); err != nil {
		t.Errorf("'#' without issuer topics: %v", err)
	}
}

// The programs' distinct filters are bounded below AWS IoT's 50 per
// connection; another program on a filter already held does not count.
func TestRouterBoundsProgramFilters(t *testing.T) {
	r := newRouter(slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	h := func(iot.Message) {}
	for i := range maxProgramFilters {
		if _, err := r.add(ctx, fmt.Sprintf("dt/dev-1/%d", i), 0, h); err != nil {
			t.Fatalf("filter %d: %v", i, err)
		}
	}
	if _, err := r.add(ctx, "dt/dev-1/0", 1, h); err != nil {
		t.Errorf("a second program on a held filter: %v", err)
	}
	_, err := r.add(ctx, "dt/dev-1/more", 0, h)
	if !errors.Is(err, ErrTooManySubscriptions) {
		t.Fatalf("filter %d: %v", maxProgramFilters+1, err)
	}
	t.Log(err)
}

// mqttMatch is MQTT 3.1.1's topic matching (4.7), written plainly as the
// reference for the fuzz target below.
func mqttMatch(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	f, t := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i := range f {
		if f[i] == "#" {
			return true
		}
		if i >= len(t) || f[i] != "+" && f[i] != t[i] {
			return false
		}
	}
	return len(f) == len(t)
}

// FuzzCheckProgramFilter: no filter checkProgramTopic accepts matches a
// reserved topic or a topic below one.
func FuzzCheckProgramFilter(f *testing.F) {
	for _, s := range [][2]string{{"$aws/#", "notify"}, {"#", "x"}, {"+/+/csr", ""}, {"$aws/things/+/jobs/+", "j1/get"}, {"dt/#", "a/b"}, {"owner/dev-1/+/accepted", "accepted"}} {
		f.Add(s[0], s[1])
	}
	issuer := []string{"owner/{thing}/csr"}
	f.Fuzz(func(t *testing.T, filter, suffix string) {
		if iot.ValidateTopic(filter, true) != nil || strings.ContainsAny(suffix, "+#") {
			return
		}
		if checkProgramTopic("dev-1", issuer, filter, true) != nil {
			return
		}
		for _, r := range reservedTopics("dev-1", issuer) {
			for _, topic := range []string{r, r + "/" + suffix} {
				if mqttMatch(filter, topic) {
					t.Fatalf("filter %q was accepted and matches the reserved %q", filter, topic)
				}
			}
		}
	})
}
