package rotation

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/thingcert/thingcert/keystore"
)

// Issuer turns a CSR into a certificate: AWS IoT fleet provisioning
// (CreateCertificateFromCsr then RegisterThing), or an owner's own CA behind
// request/response topics. Implementations classify their failures with
// NewTransient and NewFatal so the runner knows whether to retry or roll back.
type Issuer interface {
	Issue(ctx context.Context, csrDER []byte) (*Issued, error)
}

// IdentityIssuer is an Issuer that proves who the device is with one of its
// own identities rather than over the cloud connection: a CA server such as
// step-ca, which takes the claim certificate's signature (an X5C token) for
// the first certificate and a mutual-TLS request with the current
// certificate for a renewal. The runner calls IssueWith, with the identity
// current when the rotation submits (the claim while provisioning), instead
// of Issue when the issuer has this method.
type IdentityIssuer interface {
	Issuer
	IssueWith(ctx context.Context, current Identity, csrDER []byte) (*Issued, error)
}

// Issued is what an Issuer returns.
type Issued struct {
	// Chain is the new certificate, leaf first, then any intermediates.
	Chain []*x509.Certificate
	// CertificateID is the issuer's name for the leaf (AWS IoT: the SHA-256 of
	// its DER in hex). Empty lets the runner compute it.
	CertificateID string
	// ThingName is the thing the certificate was registered to, when the issuer
	// says (RegisterThing does); empty otherwise.
	ThingName string
}

// The classes of failure. Every error the runner meets is one of them, as
// Classify says; an Issuer or Connector makes its errors explicit with
// NewTransient and NewFatal.
var (
	// ErrTransient: worth retrying as it is, after a wait (network loss, a
	// timeout, throttling, a server error).
	ErrTransient = errors.New("transient failure")
	// ErrFatal: retrying the same request cannot help (a rejected request, a
	// bad certificate): the rotation rolls back to the current identity.
	ErrFatal = errors.New("fatal failure")
	// ErrBadCertificate: the issuer's certificate failed a check (see Verify).
	// It is fatal.
	ErrBadCertificate = errors.New("bad certificate from issuer")
)

// Error is a classified failure of one operation, such as a /rejected answer.
type Error struct {
	// Op is what failed ("CreateCertificateFromCsr", "connect with the new identity").
	Op string
	// Transient says whether a retry can help.
	Transient bool
	// RetryAfter is the server's throttling hint, if any.
	RetryAfter time.Duration
	// StatusCode and Code are the server's own status and error code, if any
	// (AWS IoT's statusCode and errorCode).
	StatusCode int
	Code       string
	Err        error
}

func (e *Error) Error() string {
	s := e.Op
	if e.Code != "" || e.StatusCode != 0 {
		s += " ("
		if e.StatusCode != 0 {
			s += fmt.Sprint(e.StatusCode)
			if e.Code != "" {
				s += " "
			}
		}
		s += e.Code + ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrTransient) and errors.Is(err, ErrFatal) follow
// the classification.
func (e *Error) Is(target error) bool {
	return target == ErrTransient && e.Transient || target == ErrFatal && !e.Transient
}

// NewTransient marks err as worth retrying, after at least retryAfter if the
// server said so.
func NewTransient(op string, err error, retryAfter time.Duration) error {
	return &Error{Op: op, Transient: true, RetryAfter: retryAfter, Err: err}
}

// NewFatal marks err as one a retry cannot fix.
func NewFatal(op string, err error) error {
	return &Error{Op: op, Err: err}
}

// Class is how the runner treats a failure.
type Class int

// The classes.
const (
	// Transient: stay in the same state and retry after a backoff.
	Transient Class = iota
	// Fatal: roll back to the current identity.
	Fatal
	// Stopped: the caller cancelled; nothing failed, the state is kept as it is
	// and resumes next time.
	Stopped
)

func (c Class) String() string {
	switch c {
	case Transient:
		return "transient"
	case Fatal:
		return "fatal"
	}
	return "stopped"
}

// Classify says how to treat err. Explicit classifications (Error,
// ErrTransient, ErrFatal) win; then the standard library's: a cancelled
// context stops; a policy refusal or a bad certificate is fatal. Anything
// else (a timeout, a lost connection, an error nobody classified) is
// transient: the current
// identity is untouched while a step is retried, so an unknown error costs a
// retry, never the device's identity.
func Classify(err error) (Class, time.Duration) {
	var e *Error
	switch {
	case err == nil:
		return Transient, 0
	case errors.As(err, &e):
		if e.Transient {
			return Transient, e.RetryAfter
		}
		return Fatal, 0
	case errors.Is(err, ErrFatal), errors.Is(err, ErrBadCertificate),
		errors.Is(err, keystore.ErrPolicy), errors.Is(err, keystore.ErrUnsupported), errors.Is(err, keystore.ErrInvalidURI):
		return Fatal, 0
	case errors.Is(err, context.Canceled):
		return Stopped, 0
	}
	return Transient, 0
}
