package emulator

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// AWS IoT's message size limit is on the payload: a 128 KiB payload passes
// whole (its packet is larger than that), one byte more closes the connection.
func TestMessageSizeLimitIsOnThePayload(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{})
	d := issue(t, ca, "dev-1", certOpts{})
	register(t, e, "A", d, CertificateOptions{})
	c := mustDial(t, e, d, "dev-1", dialOpts{account: "A"})
	c.subscribe(t, "big/#")

	payload := bytes.Repeat([]byte("0123456789abcdef"), 128*1024/16)
	c.publish(t, "big/largest-allowed", payload)
	deadline := time.After(20 * time.Second)
	for got := false; !got; {
		select {
		case <-c.got:
		case <-deadline:
			t.Fatal("the 128 KiB message did not come back")
		}
		c.mu.Lock()
		for _, m := range c.msgs {
			if m.Topic() == "big/largest-allowed" {
				got = true
				if !bytes.Equal(m.Payload(), payload) {
					t.Errorf("the 128 KiB payload came back as %d different bytes", len(m.Payload()))
				}
			}
		}
		c.msgs = nil
		c.mu.Unlock()
	}

	c.Publish("big/too-large", 1, false, append(payload, '!')).WaitTimeout(10 * time.Second)
	select {
	case <-c.lost:
	case <-time.After(20 * time.Second):
		t.Fatalf("a %d-byte payload did not close the connection", len(payload)+1)
	}
	ev := waitEvent(t, e, HistoryQuery{CertificateID: d.id, Outcome: Disconnected}, func(ConnectionEvent) bool { return true })
	if !strings.Contains(ev.Reason, "payload of 131073 bytes") {
		t.Errorf("the disconnect does not say why: %+v", ev)
	}
	if got := c.topics(); len(got) != 0 {
		t.Errorf("messages delivered after the too-large one: %v", got)
	}
}
