//go:build cgo

package pkcs11store

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// conn is one crypto11 context: a logged-in session pool on one token. A store
// replaces its conn when the token says the session or login is gone; keys
// notice the new conn and find their object handles again.
type conn struct {
	c11   *crypto11.Context
	slot  uint
	token pkcs11.TokenInfo
	// login is false for tokens that need no login (no CKF_LOGIN_REQUIRED).
	login bool
}

func (c *conn) close() { _ = c.c11.Close() }

// errLoggedOut is what a store concludes when a search finds nothing and the
// process's PKCS#11 login turns out to be gone: the objects are hidden, not
// absent.
var errLoggedOut = errors.New("the token session is no longer logged in")

// connect opens a crypto11 context on the one token the store URI selects and
// logs in.
//
// crypto11 insists on being the one to C_Initialize a module, and only selects
// a token by a single attribute, taking the first match. So a first context
// without login brings the module up; the raw handle, which shares the
// module's state, then checks every attribute of the URI and that exactly one
// token matches; the real context is opened on that slot. Nothing logs in to a
// token the URI may not mean, which matters since wrong PINs lock tokens.
func (s *Store) connect() (*conn, error) {
	t := s.uri
	probeCfg := func() *crypto11.Config {
		cfg := &crypto11.Config{Path: t.ModulePath, LoginNotSupported: true, MaxSessions: 2}
		switch {
		case t.SlotID != nil:
			n := int(*t.SlotID)
			cfg.SlotNumber = &n
		case t.Serial != "":
			cfg.TokenSerial = t.Serial
		default:
			cfg.TokenLabel = t.Token
		}
		return cfg
	}
	probe, err := crypto11.Configure(probeCfg())
	if err != nil && pkcs11Code(err) == pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED {
		// Someone finalized the module under crypto11's feet while another
		// context of this process still holds it: initialize it again for all.
		if ierr := s.raw.Initialize(); ierr == nil {
			probe, err = crypto11.Configure(probeCfg())
		}
	}
	if err != nil {
		return nil, fmt.Errorf("pkcs11store: %s: opening the token: %w (list the module's tokens with `pkcs11-tool --module %s --list-token-slots`)",
			t.Redacted(), err, t.ModulePath)
	}
	defer probe.Close()
	if err := s.raw.Initialize(); err != nil && pkcs11Code(err) != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
		return nil, fmt.Errorf("pkcs11store: %s: initializing module %s: %w", t.Redacted(), t.ModulePath, err)
	}

	slot, info, err := s.resolveToken()
	if err != nil {
		return nil, err
	}
	login := info.Flags&pkcs11.CKF_LOGIN_REQUIRED != 0
	if login && s.pin == "" {
		return nil, fmt.Errorf("pkcs11store: %s: token %q needs a PIN: add pin-source=file:/path/to/pin (a file only its owner can read)",
			t.Redacted(), info.Label)
	}
	n := int(slot)
	c11, err := crypto11.Configure(&crypto11.Config{Path: t.ModulePath, SlotNumber: &n, Pin: s.pin, LoginNotSupported: !login})
	if err != nil {
		switch pkcs11Code(err) {
		case pkcs11.CKR_PIN_INCORRECT:
			return nil, fmt.Errorf("pkcs11store: %s: token %q refused the PIN from %s: wrong PIN (tokens lock after a few wrong tries; check it before trying again)",
				t.Redacted(), info.Label, s.pinOrigin())
		case pkcs11.CKR_PIN_LOCKED:
			return nil, fmt.Errorf("pkcs11store: %s: token %q: the user PIN is locked; the token's security officer must unlock it", t.Redacted(), info.Label)
		}
		return nil, fmt.Errorf("pkcs11store: %s: opening token %q: %w", t.Redacted(), info.Label, err)
	}
	return &conn{c11: c11, slot: slot, token: info, login: login}, nil
}

func (s *Store) pinOrigin() string {
	if s.uri.PINFile != "" {
		return "pin-source " + s.uri.PINFile
	}
	return "pin-value"
}

// resolveToken finds the one slot whose token matches every token attribute
// of the URI.
func (s *Store) resolveToken() (uint, pkcs11.TokenInfo, error) {
	t := s.uri
	slots, err := s.raw.GetSlotList(true)
	if err != nil {
		return 0, pkcs11.TokenInfo{}, fmt.Errorf("pkcs11store: %s: listing slots: %w", t.Redacted(), err)
	}
	type match struct {
		slot uint
		info pkcs11.TokenInfo
	}
	var found []match
	for _, slot := range slots {
		info, err := s.raw.GetTokenInfo(slot)
		if err != nil {
			continue // a token that went away between the two calls
		}
		if tokenMatches(t, slot, info) {
			found = append(found, match{slot, info})
		}
	}
	switch len(found) {
	case 0:
		return 0, pkcs11.TokenInfo{}, fmt.Errorf("pkcs11store: %s: no token in module %s matches (list them with `pkcs11-tool --module %s --list-token-slots`)",
			t.Redacted(), t.ModulePath, t.ModulePath)
	case 1:
		return found[0].slot, found[0].info, nil
	}
	var which []string
	for _, m := range found {
		which = append(which, fmt.Sprintf("slot-id=%d serial=%s", m.slot, strings.TrimSpace(m.info.SerialNumber)))
	}
	return 0, pkcs11.TokenInfo{}, fmt.Errorf("pkcs11store: %s: %d tokens match (%s): add serial= or slot-id= to the URI to choose one",
		t.Redacted(), len(found), strings.Join(which, "; "))
}

// tokenMatches reports whether a token satisfies every token attribute of the
// URI. Token strings are blank-padded in PKCS#11; they compare trimmed.
func tokenMatches(t *tokenURI, slot uint, info pkcs11.TokenInfo) bool {
	eq := func(want, have string) bool { return want == "" || want == strings.TrimRight(have, " \x00") }
	return eq(t.Token, info.Label) && eq(t.Serial, info.SerialNumber) && eq(t.Manufacturer, info.ManufacturerID) &&
		eq(t.Model, info.Model) && (t.SlotID == nil || *t.SlotID == slot)
}

// pkcs11Code is the CKR_ code inside err, or 0.
func pkcs11Code(err error) pkcs11.Error {
	var pe pkcs11.Error
	if errors.As(err, &pe) {
		return pe
	}
	return 0
}

type failure int

const (
	failOther failure = iota
	// failSession: the session, the login or the module's state is gone; a new
	// crypto11 context (and login) may bring it back.
	failSession
	// failHandle: an object handle is no longer valid; finding the key again
	// may bring it back (or show that it was deleted, or hidden by a logout).
	failHandle
)

// classify says how an operation that failed with err may recover.
func classify(err error) failure {
	if errors.Is(err, errLoggedOut) {
		return failSession
	}
	switch pkcs11Code(err) {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_USER_NOT_LOGGED_IN,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_TOKEN_NOT_RECOGNIZED, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_SLOT_ID_INVALID:
		return failSession
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		return failHandle
	}
	return failOther
}

// withRaw runs fn in a short-lived session of the store's raw handle, for what
// crypto11 does not offer (searching all key objects, destroying an orphan
// half). The login state of a PKCS#11 application is shared by all its
// sessions, so the session is logged in exactly when the conn is; when it is
// not, private objects are invisible and fn would see a token without keys, so
// withRaw reports errLoggedOut instead.
func (s *Store) withRaw(c *conn, fn func(sh pkcs11.SessionHandle) error) error {
	s.rawMu.RLock()
	defer s.rawMu.RUnlock()
	if s.closed.Load() {
		return errClosed
	}
	sh, err := s.raw.OpenSession(c.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return err
	}
	defer s.raw.CloseSession(sh)
	if c.login {
		info, err := s.raw.GetSessionInfo(sh)
		if err != nil {
			return err
		}
		if info.State != pkcs11.CKS_RW_USER_FUNCTIONS && info.State != pkcs11.CKS_RO_USER_FUNCTIONS {
			return errLoggedOut
		}
	}
	return fn(sh)
}

// findObjects returns the handles of every object matching template.
func (s *Store) findObjects(sh pkcs11.SessionHandle, template []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := s.raw.FindObjectsInit(sh, template); err != nil {
		return nil, err
	}
	var all []pkcs11.ObjectHandle
	for {
		hs, _, err := s.raw.FindObjects(sh, 64)
		if err != nil {
			_ = s.raw.FindObjectsFinal(sh)
			return nil, err
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
	}
	return all, s.raw.FindObjectsFinal(sh)
}

// keyTemplate selects key objects of class by label and/or id.
func keyTemplate(class uint, label, id []byte) []*pkcs11.Attribute {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}
	if len(label) > 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	}
	if len(id) > 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	}
	return tmpl
}
