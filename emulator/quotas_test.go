package emulator

import (
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iot"
)

// TestAccountConnectQuota: CONNECTs over the account's quota in a second are
// refused, whatever their client IDs; the other account and the next
// second are not limited; the counts say so.
func TestAccountConnectQuota(t *testing.T) {
	e, ca := twoAccounts(t, ModeDefault, Config{AccountConnectRate: 2, ClientConnectInterval: -1})
	d := issue(t, ca, "dev", certOpts{})
	register(t, e, "A", d, CertificateOptions{})
	register(t, e, "B", d, CertificateOptions{})
	mustDial(t, e, d, "c1", dialOpts{account: "A"}).Disconnect(0)
	mustDial(t, e, d, "c2", dialOpts{account: "A"}).Disconnect(0)
	_, err := dial(t, e, d, "c3", dialOpts{account: "A"})
	expectRefused(t, e, d, err, RuleAccountConnects, e.Endpoint("A"))
	mustDial(t, e, d, "c3", dialOpts{account: "B"}).Disconnect(0)
	e.clock.Advance(time.Second)
	mustDial(t, e, d, "c3", dialOpts{account: "A"}).Disconnect(0)
	if s := e.RateStats()["CONNECT"]; s.Throttled != 1 || s.Allowed != 4 {
		t.Fatalf("CONNECT counts %+v, want 4 allowed and 1 throttled", s)
	}
}

// TestAPIRate: with APIRate set, each operation is limited per account and
// second, answered ThrottlingException as AWS's model says; other
// operations and the next second are not.
func TestAPIRate(t *testing.T) {
	e := startAPIEmu(t, Config{APIRate: 2}, "A")
	c := newAPIClient(t, e.Emulator, "A")
	for range 2 {
		if _, err := c.ListThings(ctx, &iot.ListThingsInput{}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.ListThings(ctx, &iot.ListThingsInput{})
	wantAPIError(t, err, "ThrottlingException", http.StatusBadRequest)
	if _, err := c.ListCertificates(ctx, &iot.ListCertificatesInput{}); err != nil {
		t.Fatalf("another operation: %v", err)
	}
	e.clock.Advance(time.Second)
	if _, err := c.ListThings(ctx, &iot.ListThingsInput{}); err != nil {
		t.Fatalf("a second later: %v", err)
	}
	if s := e.RateStats()["api:ListThings"]; s.Throttled != 1 || s.Allowed != 3 {
		t.Fatalf("ListThings counts %+v", s)
	}
}
