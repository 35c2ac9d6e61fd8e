package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/thingcert/thingcert/internal/atomicfile"
	"github.com/thingcert/thingcert/keystore"
)

// daemonFile is the file in the state folder where a running daemon records
// what only it knows: that it runs, its connection, and how its key is
// protected. `thingcert status` reads it beside the rotation state, so status
// never needs the key store or the network.
const daemonFile = "daemon.json"

// DaemonRecord is the content of daemonFile.
type DaemonRecord struct {
	PID int `json:"pid"`
	// BootID and StartTicks tell this process from a later one that got the
	// same PID (after a reboot or a wrap): /proc/sys/kernel/random/boot_id and
	// field 22 of /proc/PID/stat.
	BootID     string    `json:"boot_id,omitempty"`
	StartTicks uint64    `json:"start_ticks,omitempty"`
	Started    time.Time `json:"started"`
	// Stopped is set when the daemon ended cleanly.
	Stopped time.Time `json:"stopped,omitzero"`
	Config  string    `json:"config,omitempty"`
	Version string    `json:"version,omitempty"`
	// Socket is the local socket's path ("" when it serves none), so that
	// tools (thingcert doctor) find it wherever it was put.
	Socket string `json:"socket,omitempty"`
	// Connection is the MQTT connection as last seen.
	Connection ConnectionRecord `json:"connection"`
	// KeyURI (redacted) and Protection describe the key the daemon connects
	// with, as its store reported it when the daemon opened it.
	KeyURI     string               `json:"key_uri,omitempty"`
	Protection *keystore.Protection `json:"protection,omitempty"`
	// Reloaded is when the configuration was last reloaded; ReloadError why
	// the last reload was refused, if it was.
	Reloaded    time.Time `json:"reloaded,omitzero"`
	ReloadError string    `json:"reload_error,omitempty"`
	// Recovered is the agent's last return to the claim after the cloud
	// refused the device's identity (claim.recover).
	Recovered *RecoveryRecord `json:"recovered,omitempty"`
	// Refusals counts the refusals of the device's identity since it last
	// connected (kept across restarts: the next daemon reads it back).
	Refusals *RefusalRecord `json:"refusals,omitempty"`
	Updated  time.Time      `json:"updated"`
}

// ConnectionRecord is the connection's state in DaemonRecord.
type ConnectionRecord struct {
	State    string    `json:"state"`
	Since    time.Time `json:"since,omitzero"`
	Endpoint string    `json:"endpoint,omitempty"`
	ClientID string    `json:"client_id,omitempty"`
	// Error and Kind are the last failure (Kind as FailureKind names it).
	Error string `json:"error,omitempty"`
	Kind  string `json:"kind,omitempty"`
	// Refused is set when that failure was the cloud refusing the identity
	// (IdentityRefused): revoked, deactivated, deleted, or not allowed.
	Refused  bool      `json:"refused,omitempty"`
	Failures int       `json:"failures,omitempty"`
	Retry    time.Time `json:"retry,omitzero"`
}

// writeDaemonRecord saves rec atomically in dir.
func writeDaemonRecord(dir string, rec *DaemonRecord) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, daemonFile)
	if err := atomicfile.WriteFile(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("agent: saving %s: %w", path, err)
	}
	return nil
}

// ReadDaemonRecord reads dir's daemonFile; (nil, nil) if there is none.
func ReadDaemonRecord(dir string) (*DaemonRecord, error) {
	path := filepath.Join(dir, daemonFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	var rec DaemonRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("agent: %s is damaged (%v); it is rewritten when the agent starts", path, err)
	}
	return &rec, nil
}

// Running reports whether the process the record names still runs. A record
// left by a daemon that was killed, or one from before a reboot, is not
// running even if its PID was reused.
func (rec *DaemonRecord) Running() bool {
	if rec == nil || rec.PID <= 0 || !rec.Stopped.IsZero() {
		return false
	}
	if boot, err := bootID(); err == nil && rec.BootID != "" && boot != rec.BootID {
		return false
	}
	if rec.StartTicks != 0 {
		if ticks, err := processStartTicks(rec.PID); err == nil {
			return ticks == rec.StartTicks
		}
	}
	err := syscall.Kill(rec.PID, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func bootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b)), err
}

// processStartTicks is when pid started, in clock ticks since boot
// (proc(5), /proc/PID/stat field 22).
func processStartTicks(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: count from
	// the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("agent: unexpected /proc/PID/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, errors.New("agent: short /proc/PID/stat")
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22 is the 20th after the name
}

func backendOf(uri string) string {
	u, err := keystore.ParseURI(uri)
	if err != nil {
		return "unknown"
	}
	return u.Scheme
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12] + "…"
	}
	if id == "" {
		return "-"
	}
	return id
}
