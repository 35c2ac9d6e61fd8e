package emulator

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestInjectFault(t *testing.T) {
	e, claim := claimSetup(t, Config{})
	acc, rej := topicCreateFromCSR+"/accepted", topicCreateFromCSR+"/rejected"

	// Rewrite: the answer is replaced, here by a throttling /rejected.
	remove, err := e.InjectFault(Fault{Topic: topicCreateFromCSR, Times: 1, Rewrite: func(topic string, _ []byte) (string, []byte) {
		return strings.Replace(topic, "/accepted", "/rejected", 1), []byte(`{"statusCode":429,"errorCode":"ThrottlingException","errorMessage":"Rate exceeded"}`)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	c := mustDial(t, e, claim, "provisioner-1", dialOpts{account: "fleet"})
	c.subscribe(t, acc, rej)
	_, csr := newCSR(t)
	c.publish(t, topicCreateFromCSR, map[string]string{"certificateSigningRequest": csr})
	var r rejected
	c.await(t, rej, &r)
	if r.StatusCode != 429 || r.ErrorCode != "ThrottlingException" {
		t.Fatalf("rewritten reply: %+v", r)
	}
	// Times: 1 — the next answer is the real one.
	c.publish(t, topicCreateFromCSR, map[string]string{"certificateSigningRequest": csr})
	var a csrAccepted
	c.await(t, acc, &a)
	if a.CertificateID == "" {
		t.Fatalf("accepted: %+v", a)
	}

	// Drop: no answer, but the connection stays (a ping in its place).
	dropRemove, err := e.InjectFault(Fault{Topic: "$aws/certificates/#", Drop: true})
	if err != nil {
		t.Fatal(err)
	}
	c.publish(t, topicCreateFromCSR, map[string]string{"certificateSigningRequest": csr})
	dropRemove()
	// The next request is answered on the same connection, and its answer is
	// the only one: replies come in order, so the dropped one never came.
	c.publish(t, topicCreateFromCSR, map[string]string{"certificateSigningRequest": csr})
	c.await(t, acc, &a)
	if got := c.topics(); len(got) != 0 || !c.IsConnectionOpen() {
		t.Fatalf("after a dropped answer: extra messages %v, connected %v", got, c.IsConnectionOpen())
	}

	// Disconnect: the request is carried out, the device is cut off.
	if _, err := e.InjectFault(Fault{Topic: topicCreateFromCSR, Times: 1, Disconnect: true}); err != nil {
		t.Fatal(err)
	}
	before, _ := e.Certificates(ctx, "fleet")
	// No PUBACK comes: the connection closes while the request is handled.
	c.Publish(topicCreateFromCSR, 1, false, `{"certificateSigningRequest":`+strconvQuote(csr)+`}`)
	select {
	case <-c.lost:
	case <-time.After(20 * time.Second):
		t.Fatal("the connection was not dropped")
	}
	after, _ := e.Certificates(ctx, "fleet")
	if len(after) != len(before)+1 {
		t.Errorf("certificates %d → %d: the request must be carried out before the drop", len(before), len(after))
	}
	ev := waitEvent(t, e, HistoryQuery{ClientID: "provisioner-1", Outcome: Disconnected}, func(ev ConnectionEvent) bool { return strings.Contains(ev.Reason, "fault injected") })
	if ev.Rule != RuleClosed {
		t.Errorf("history: %v", ev)
	}

	if _, err := e.InjectFault(Fault{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("fault without topic: %v", err)
	}
	if _, err := e.InjectFault(Fault{Topic: "x", Drop: true, Disconnect: true}); !errors.Is(err, ErrInvalid) {
		t.Errorf("two kinds at once: %v", err)
	}
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
