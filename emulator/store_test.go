package emulator

import (
	"testing"
)

// storeChecked runs cfg's registry on disk (a temporary state folder when it
// has none) and compares registry.db with the state in memory after every
// change, failing t on a difference: a change that forgot to mark a record it
// changed would lose it at the next start. startEmu and openJobsRegistry use
// it, so every test through them checks the marks of what it does.
func storeChecked(t testing.TB, cfg Config) Config {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	cfg.storeCheck = func(err error) {
		if err != nil {
			t.Errorf("registry.db after a change: %v", err)
		}
	}
	return cfg
}
