package rotation

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Tidy sweeps what a crash left of the store's own writes and nothing else:
// the state folder is shared with the daemon's record, whose temporary file
// may exist at any instant.
func TestTidyRemovesOnlyItsOwnLeftovers(t *testing.T) {
	dir := t.TempDir()
	s := StateStore{Dir: dir}
	certs := filepath.Join(dir, CertsDir)
	if err := os.MkdirAll(certs, 0o700); err != nil {
		t.Fatal(err)
	}
	kept := filepath.Join(certs, strings.Repeat("a", 64)+".pem")
	stray := filepath.Join(certs, strings.Repeat("b", 64)+".pem")
	files := map[string]bool{ // path -> should survive
		kept:                                     true,
		stray:                                    false,
		filepath.Join(certs, ".x.pem.tmp-1"):     false,
		filepath.Join(dir, ".state.json.tmp-2"):  false,
		filepath.Join(dir, ".daemon.json.tmp-3"): true,
		filepath.Join(dir, "daemon.json"):        true,
		filepath.Join(certs, "notes.txt"):        true,
	}
	for p := range files {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Tidy(&State{Current: &IdentityRecord{KeyURI: "file:/k.pem", CertFile: kept}}); err != nil {
		t.Fatal(err)
	}
	for p, survive := range files {
		_, err := os.Stat(p)
		if survive && err != nil {
			t.Errorf("Tidy removed %s", p)
		}
		if !survive && err == nil {
			t.Errorf("Tidy left %s", p)
		}
	}
}

// decodeState refuses a rotation in progress that lacks what the machine
// needs (found by FuzzDecodeStateAndNext: Next panicked on both).
func TestDecodeStateRefusesIncompleteRotation(t *testing.T) {
	for _, tc := range []struct{ name, data, want string }{
		{"committed without trigger", `{"version":1,"phase":"committed","current":{"key_uri":"file:/k/a.pem"}}`, "trigger"},
		{"rolled back without trigger", `{"version":1,"phase":"rolled-back","current":{"key_uri":"file:/k/a.pem"}}`, "trigger"},
		{"verified without current", `{"version":1,"phase":"verified","pending":{"key_uri":"file:/k/b.pem"},"trigger":{"kind":"operator"}}`, "current"},
		{"issued without pending", `{"version":1,"phase":"issued","current":{"key_uri":"file:/k/a.pem"},"trigger":{"kind":"operator"}}`, "pending"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeState([]byte(tc.data), "/var/lib/thingcert/state.json")
			if !errors.Is(err, ErrDamagedState) || !strings.Contains(err.Error(), "/var/lib/thingcert/state.json") || !strings.Contains(err.Error(), "("+tc.want+")") {
				t.Fatalf("decodeState: %v", err)
			}
		})
	}
	if _, err := decodeState([]byte(`{"version":1,"phase":"committed","current":{"key_uri":"file:/k/a.pem"},"trigger":{"kind":"time"}}`), "x"); err != nil {
		t.Fatalf("a committed rotation with its trigger: %v", err)
	}
}
