package rotation

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// sameAsMarshal checks that the state file's text is the JSON encoding/json
// makes of st, but for white space.
func sameAsMarshal(enc []byte, st *State) error {
	want, err := json.Marshal(st)
	if err != nil {
		return err
	}
	var got bytes.Buffer
	if err := json.Compact(&got, enc); err != nil {
		return fmt.Errorf("the state file is not JSON: %v\n%s", err, enc)
	}
	if !bytes.Equal(got.Bytes(), want) {
		return fmt.Errorf("the state file differs from encoding/json's:\n%s\n%s", got.Bytes(), want)
	}
	return nil
}

// The hand-written journal encoding is encoding/json's, for every character
// a note can hold (error messages: quotes, HTML characters, control
// characters, non-ASCII, invalid UTF-8) and any clock (zones, nanoseconds).
func TestEncodeStateIsJSON(t *testing.T) {
	paris := time.FixedZone("CET", 3600)
	notes := []string{"", "plain", `say "no"`, `back\slash`, "<a&b>", "tab\there\nline", "\x00\x1f\x7f", "é ünïcødé ✓", "bad \xff utf-8", "\u2028\u2029", strings.Repeat("x", 300)}
	st := &State{Version: 1, Phase: PhaseIdle, Current: &IdentityRecord{KeyURI: "file:/k/a.pem", CertFile: "/s/certs/a.pem"}}
	if err := sameAsMarshal(mustEncode(st), st); err != nil {
		t.Fatal(err)
	}
	for i, n := range notes {
		at := time.Date(2026, 11, 30, 13, 0, i, i*1001, time.UTC)
		if i%2 == 1 {
			at = at.In(paris)
		}
		st.Journal = append(st.Journal, Entry{At: at, From: PhaseVerified, To: PhaseCommitted, Event: EventSwitched, Note: n})
	}
	enc := mustEncode(st)
	if err := sameAsMarshal(enc, st); err != nil {
		t.Fatal(err)
	}
	back, err := decodeState(enc, "state.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Journal) != len(notes) || back.Journal[3].Note != notes[3] || !back.Journal[1].At.Equal(st.Journal[1].At) {
		t.Fatalf("decoded back: %+v", back.Journal)
	}
	if got := bytes.Count(enc, []byte("\n    {\"at\":")); got != len(notes) {
		t.Errorf("%d journal lines, want one per entry (%d):\n%s", got, len(notes), enc)
	}
}

func mustEncode(st *State) []byte {
	b, err := encodeState(st)
	if err != nil {
		panic(err)
	}
	return b
}
