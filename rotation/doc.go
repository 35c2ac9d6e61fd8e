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
// connection through a Connector) and records each new state before the next
// action, so a restart resumes from wherever it stopped.
//
// How a state is recorded is the pure Needs(next action), by one rule: a
// state is made durable (fsync, rename, folder fsync) before an action whose
// effect outside the process a restart from the previous durable state would
// get wrong — making the key, sending the CSR, using the new certificate,
// reporting success, cleaning up a rollback. A state before a local step
// stays in memory; where a run ends or waits it is written without the
// folder's fsync. A power cut that loses either brings back the durable
// state before it, whose action is then repeated, harmlessly (Needs says why
// for each). docs/rotation.md has the rule's table and the recovery table for
// every state.
//
// The package talks to the network only through two small interfaces the
// agent implements: Issuer (CSR in, certificate chain out) and Connector (move
// the connection to an identity and have the cloud confirm it).
package rotation
