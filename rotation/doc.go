// Package rotation keeps a device's X.509 identity alive: it decides when the
// certificate is renewed (Policy, a pure function of the certificate's dates,
// the configuration, the clock and a per-device seed), and carries a renewal
// out as a persisted state machine that survives a crash or power cut at any
// instant without leaving the device with no working identity.
//
// The machine, as design.md draws it:
//
//	Idle → Started → KeyGenerated → CSRSubmitted → Issued → Verified → Committed → Idle
//	                       ↘            ↘             ↘         ↘          ↘
//	                                       RolledBack → Idle
//
// Machine.Next is pure: (state, event, now) → state. Runner is the thin part
// that acts (makes the key in its store, asks the Issuer, switches the
// connection through a Connector) and persists each new state atomically
// before the next action, so a restart resumes from wherever it stopped.
// docs/rotation.md has the recovery table for every state.
//
// The package talks to the network only through two small interfaces the
// agent implements: Issuer (CSR in, certificate chain out) and Connector (move
// the connection to an identity and have the cloud confirm it).
package rotation
