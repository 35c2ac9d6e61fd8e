//go:build !cgo

package testpeers

// softHSMIdle has nothing to check without cgo: no PKCS#11 module can be
// loaded in this process.
func softHSMIdle(module string) error { return nil }
