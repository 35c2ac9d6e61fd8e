package rotation

import (
	"log/slog"
	"os"
)

// dbgLog is the runners' logger in tests: set THINGCERT_TEST_LOG=1 to watch
// every transition.
var dbgLog = func() *slog.Logger {
	if os.Getenv("THINGCERT_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}()
