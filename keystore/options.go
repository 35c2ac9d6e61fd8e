package keystore

import "log/slog"

// Options are what every backend's Open takes besides the URI. The zero value
// is ready to use.
type Options struct {
	// Logger receives warnings (such as a PIN given inline with pin-value).
	// Nil discards them. Nothing secret is ever logged.
	Logger *slog.Logger
}

// Log returns the logger, or one that discards.
func (o Options) Log() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}
