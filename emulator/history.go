package emulator

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/thingcert/thingcert/internal/atomicfile"
)

// historyFile is the connection history journal in the state folder: one JSON
// event per line, appended. A torn last line (a crash mid-write) is skipped when
// read; the journal is trimmed to the history limit when the emulator opens it.
const historyFile = "history.jsonl"

// history keeps the newest connection events in memory and, with a state
// folder, appends each to the journal.
type history struct {
	mu     sync.Mutex
	limit  int
	events []ConnectionEvent // ring, oldest at start
	start  int
	file   *os.File
}

func openHistory(dir string, limit int) (*history, error) {
	h := &history{limit: limit}
	if dir == "" {
		return h, nil
	}
	path := filepath.Join(dir, historyFile)
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("emulator: reading %s: %w", path, err)
	}
	lines := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		var e ConnectionEvent
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		lines++
		h.addLocked(e)
	}
	if lines > 2*limit {
		// Rewrite with what is kept, so the journal does not grow forever.
		var buf bytes.Buffer
		for _, e := range h.snapshot() {
			line, _ := json.Marshal(e)
			buf.Write(line)
			buf.WriteByte('\n')
		}
		if err := atomicfile.WriteFile(path, buf.Bytes(), 0o600); err != nil {
			return nil, fmt.Errorf("emulator: %w", err)
		}
	}
	h.file, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("emulator: opening %s: %w", path, err)
	}
	return h, nil
}

func (h *history) addLocked(e ConnectionEvent) {
	if len(h.events) < h.limit {
		h.events = append(h.events, e)
		return
	}
	h.events[h.start] = e
	h.start = (h.start + 1) % h.limit
}

func (h *history) add(e ConnectionEvent) {
	line, _ := json.Marshal(e)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.addLocked(e)
	if h.file != nil {
		// No fsync per event: the history is a diagnostic, and thousands of
		// connections a second must not wait on the disk.
		_, _ = h.file.Write(append(line, '\n'))
	}
}

// snapshot is the held events, oldest first. Callers hold h.mu or own h.
func (h *history) snapshot() []ConnectionEvent {
	out := make([]ConnectionEvent, 0, len(h.events))
	out = append(out, h.events[h.start:]...)
	return append(out, h.events[:h.start]...)
}

func (h *history) query(q HistoryQuery) []ConnectionEvent {
	h.mu.Lock()
	all := h.snapshot()
	h.mu.Unlock()
	out := all[:0]
	for _, e := range all {
		if q.match(e) {
			out = append(out, e)
		}
	}
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[len(out)-q.Limit:]
	}
	return out
}

func (h *history) close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.file == nil {
		return nil
	}
	err := h.file.Close()
	h.file = nil
	return err
}
