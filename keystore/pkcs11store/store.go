//go:build cgo

package pkcs11store

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
	"github.com/thingcert/thingcert/keystore"
)

// Store is a PKCS#11 token as a keystore.Store. It is safe for concurrent use.
type Store struct {
	uri *tokenURI // the store URI: no object, no id
	pin string
	log *slog.Logger
	// raw is a second handle on the module (the same loaded library, so the
	// same sessions and login) for what crypto11 does not offer: checking the
	// URI's every token attribute, mechanism information, searching all key
	// objects, reading the login state.
	raw *pkcs11.Ctx

	cur    atomic.Pointer[conn]
	mu     sync.Mutex // serializes connecting, reconnecting and Close
	closed atomic.Bool
	// rawMu is held shared while raw is in use, and exclusively while the
	// module may be finalized (closing a conn can be crypto11's last
	// reference) or raw destroyed: PKCS#11 forbids C_Finalize while other
	// calls are in flight.
	rawMu sync.RWMutex
	// genMu makes Generate's "is the label free?" and "make the key" one step
	// within this process.
	genMu sync.Mutex
}

var _ keystore.Store = (*Store)(nil)

// Available says whether this build can open PKCS#11 tokens: true here, in a
// cgo build; false in a CGO_ENABLED=0 one (nocgo.go).
const Available = true

var errClosed = errors.New("pkcs11store: the store is closed")

// Open opens the token a pkcs11: store or key URI names (for a key URI, the
// token the key is on) and logs in. The PIN is read once, here.
func Open(ctx context.Context, uri string, opts keystore.Options) (keystore.Store, error) {
	return open(ctx, uri, opts)
}

func open(ctx context.Context, uri string, opts keystore.Options) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t, err := parseTokenURI(uri)
	if err != nil {
		return nil, err
	}
	t = t.storeURI()
	s := &Store{uri: t, log: opts.Log()}
	switch {
	case t.PINFile != "":
		if s.pin, err = readPINFile(t.PINFile); err != nil {
			return nil, fmt.Errorf("%w (for %s)", err, t.Redacted())
		}
	case t.HasPINValue:
		s.pin = t.PINValue
		s.log.Warn("pkcs11store: the token PIN is written in the key URI (pin-value); whoever reads the URI (config files, shell history, process lists) reads the PIN: use pin-source=file:/path with mode 0600 instead",
			"uri", t.Redacted())
	}
	s.raw = pkcs11.New(t.ModulePath)
	if s.raw == nil {
		return nil, fmt.Errorf("pkcs11store: %s: cannot load the PKCS#11 module %s: check that the file exists and is a PKCS#11 module for this machine",
			t.Redacted(), t.ModulePath)
	}
	c, err := s.connect()
	if err != nil {
		s.raw.Destroy()
		return nil, err
	}
	s.cur.Store(c)
	return s, nil
}

// URI is the store URI (PIN included when it was given inline; show Redacted).
func (s *Store) URI() string { return s.uri.String() }

// current is the live conn, connecting if the last attempt failed.
func (s *Store) current() (*conn, error) {
	if c := s.cur.Load(); c != nil {
		return c, nil
	}
	return s.reconnect(nil, nil)
}

// reconnect replaces old with a new conn. When another goroutine already did,
// it returns that one: concurrent failures make one reconnection, not many.
// The old context is closed first, so that when it held the module's last
// reference crypto11 finalizes the module and the new context initializes it
// afresh, which is what a reloaded module or a replugged token needs.
func (s *Store) reconnect(old *conn, cause error) (*conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil, errClosed
	}
	if c := s.cur.Load(); c != nil && c != old {
		return c, nil
	}
	s.rawMu.Lock()
	defer s.rawMu.Unlock()
	if old != nil {
		s.cur.Store(nil)
		old.close()
	}
	c, err := s.connect()
	if err != nil {
		return nil, err
	}
	s.cur.Store(c)
	if cause != nil {
		s.log.Warn("pkcs11store: the token session was lost and has been re-established",
			"uri", s.uri.Redacted(), "cause", cause.Error())
	}
	return c, nil
}

// maxAttempts bounds do: a stale handle, then a lost login found while looking
// for the key again, then the retry on the new session.
const maxAttempts = 3

// do runs op on the live conn and recovers from what a long-lived session
// meets in the field. A lost session or login (CKR_SESSION_HANDLE_INVALID,
// CKR_USER_NOT_LOGGED_IN, CKR_DEVICE_REMOVED, ...) makes one new conn; a stale
// object handle calls stale(c), so keys find their objects again; op then runs
// once more. Any other error, or a second loss, is returned.
func (s *Store) do(op func(c *conn) error, stale func(c *conn)) error {
	var err error
	reconnected := false
	for attempt := 0; attempt < maxAttempts; attempt++ {
		var c *conn
		if c, err = s.current(); err != nil {
			return err
		}
		if err = op(c); err == nil {
			return nil
		}
		if s.closed.Load() {
			return errClosed
		}
		if s.cur.Load() != c {
			continue // another goroutine replaced the conn under op
		}
		switch classify(err) {
		case failSession:
			if reconnected {
				return err
			}
			reconnected = true
			if _, rerr := s.reconnect(c, err); rerr != nil {
				return fmt.Errorf("%w; re-establishing the session failed: %v", err, rerr)
			}
		case failHandle:
			if stale == nil {
				return err
			}
			stale(c)
		default:
			return err
		}
	}
	return err
}

// Close logs out and releases the token. Keys of the store stop working.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	s.rawMu.Lock()
	defer s.rawMu.Unlock()
	if c := s.cur.Swap(nil); c != nil {
		c.close()
	}
	s.raw.Destroy()
	return nil
}

// KeyURI names a key name in this token: object=name, and id=name's bytes, so
// that label and CKA_ID both find it and tools that go by CKA_ID (pkcs11-tool
// --id, certificates stored beside the key) see the same pair.
func (s *Store) KeyURI(name string) (string, error) {
	if err := keystore.ValidKeyName(name); err != nil {
		return "", err
	}
	// Without the store's pin-value: the URI is kept in the state folder and
	// shown in logs and status, and the key opens through this store, which
	// holds the PIN (a pin-source path stays: it is no secret).
	u := s.uri.withKey(name, []byte(name))
	u.PINValue, u.HasPINValue = "", false
	return u.String(), nil
}

// keyURI parses a key URI and checks it is in this store's token.
func (s *Store) keyURI(uri string) (*tokenURI, error) {
	t, err := parseTokenURI(uri)
	if err != nil {
		return nil, err
	}
	if !t.isKey() {
		return nil, fmt.Errorf("pkcs11store: %s: %w: it names a token, not a key: add object=<label> (and/or id=<id>)", t.Redacted(), keystore.ErrInvalidURI)
	}
	if !t.sameToken(s.uri) {
		return nil, fmt.Errorf("pkcs11store: %s: %w: the key is not in this store's token (%s)", t.Redacted(), keystore.ErrInvalidURI, s.uri.Redacted())
	}
	return t, nil
}

func (s *Store) describe(label, id []byte) string {
	switch {
	case len(label) > 0 && len(id) > 0:
		return fmt.Sprintf("labelled %q with id %X", label, id)
	case len(label) > 0:
		return fmt.Sprintf("labelled %q", label)
	}
	return fmt.Sprintf("with id %X", id)
}

// Generate makes a key pair in the token: the private half CKA_TOKEN,
// CKA_PRIVATE and CKA_SENSITIVE, not CKA_EXTRACTABLE, able only to sign. A key
// URI without id gets id = the label's bytes.
func (s *Store) Generate(ctx context.Context, keyURI string, alg keystore.Algorithm) (keystore.Key, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := alg.Check(); err != nil {
		return nil, err
	}
	t, err := s.keyURI(keyURI)
	if err != nil {
		return nil, err
	}
	if t.Object == "" {
		return nil, fmt.Errorf("pkcs11store: %s: %w: a new key needs a label: add object=<name>", t.Redacted(), keystore.ErrInvalidURI)
	}
	label, id := []byte(t.Object), t.ID
	if len(id) == 0 {
		id = []byte(t.Object)
	}
	s.genMu.Lock()
	defer s.genMu.Unlock()
	var (
		signer crypto11.Signer
		bound  *conn
	)
	err = s.do(func(c *conn) error {
		have, err := s.mechanismInfo(c, alg)
		if err != nil {
			return err
		}
		warnings, err := checkMechanisms(alg, have)
		if err != nil {
			return fmt.Errorf("token %q cannot make %s keys: %w: %v", c.token.Label, alg, keystore.ErrUnsupported, err)
		}
		if err := s.checkFree(c, label, id); err != nil {
			return err
		}
		if signer, err = generate(c, alg, label, id); err != nil {
			return err
		}
		bound = c
		for _, w := range warnings {
			s.log.Warn("pkcs11store: "+w, "uri", t.Redacted())
		}
		return nil
	}, nil)
	if err != nil {
		switch {
		case errors.Is(err, keystore.ErrExists), errors.Is(err, keystore.ErrUnsupported):
			return nil, fmt.Errorf("pkcs11store: %s: %w", t.Redacted(), err)
		}
		switch pkcs11Code(err) {
		case pkcs11.CKR_CURVE_NOT_SUPPORTED, pkcs11.CKR_DOMAIN_PARAMS_INVALID, pkcs11.CKR_KEY_SIZE_RANGE,
			pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID:
			return nil, fmt.Errorf("pkcs11store: %s: the token refused to make a %s key: %w: %v", t.Redacted(), alg, keystore.ErrUnsupported, err)
		}
		return nil, fmt.Errorf("pkcs11store: %s: generating a %s key: %w", t.Redacted(), alg, err)
	}
	got, err := keystore.AlgorithmOf(signer.Public())
	if err != nil || got != alg {
		return nil, fmt.Errorf("pkcs11store: %s: the token made a %s key when asked for %s (%v); delete it", t.Redacted(), got, alg, err)
	}
	return s.newKey(t.withKey(string(label), id), alg, signer, bound), nil
}

// checkFree refuses a label or id that any key object of the token already
// uses: two pairs under one name would make every later lookup ambiguous.
func (s *Store) checkFree(c *conn, label, id []byte) error {
	return s.withRaw(c, func(sh pkcs11.SessionHandle) error {
		for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
			for _, q := range []struct {
				label, id []byte
				what      string
			}{{label, nil, fmt.Sprintf("label %q", label)}, {nil, id, fmt.Sprintf("id %X", id)}} {
				hs, err := s.findObjects(sh, keyTemplate(class, q.label, q.id))
				if err != nil {
					return err
				}
				if len(hs) > 0 {
					return fmt.Errorf("%w: token %q already has a key with %s; choose another name, or delete that key first",
						keystore.ErrExists, c.token.Label, q.what)
				}
			}
		}
		return nil
	})
}

func generate(c *conn, alg keystore.Algorithm, label, id []byte) (crypto11.Signer, error) {
	pub, priv := crypto11.NewAttributeSet(), crypto11.NewAttributeSet()
	for _, a := range []struct {
		set   crypto11.AttributeSet
		typ   crypto11.AttributeType
		value any
	}{
		{pub, crypto11.CkaId, id},
		{pub, crypto11.CkaLabel, label},
		{pub, crypto11.CkaToken, true},
		{pub, crypto11.CkaPrivate, false},
		{pub, crypto11.CkaVerify, true},
		{pub, crypto11.CkaEncrypt, false},
		{pub, crypto11.CkaWrap, false},
		{priv, crypto11.CkaId, id},
		{priv, crypto11.CkaLabel, label},
		{priv, crypto11.CkaToken, true},
		{priv, crypto11.CkaPrivate, true},
		{priv, crypto11.CkaSensitive, true},
		{priv, crypto11.CkaExtractable, false},
		{priv, crypto11.CkaSign, true},
		{priv, crypto11.CkaDecrypt, false},
		{priv, crypto11.CkaUnwrap, false},
		{priv, crypto11.CkaDerive, false},
	} {
		if err := a.set.Set(a.typ, a.value); err != nil {
			return nil, err
		}
	}
	if alg.IsRSA() {
		return c.c11.GenerateRSAKeyPairWithAttributes(pub, priv, alg.RSABits())
	}
	return c.c11.GenerateECDSAKeyPairWithAttributes(pub, priv, alg.Curve())
}

// Open finds a key pair by the label and/or id of its URI. Exactly one pair
// may match.
func (s *Store) Open(ctx context.Context, keyURI string) (keystore.Key, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t, err := s.keyURI(keyURI)
	if err != nil {
		return nil, err
	}
	var (
		signer crypto11.Signer
		bound  *conn
		label  []byte
		id     []byte
	)
	err = s.do(func(c *conn) error {
		var err error
		if signer, err = s.findPair(c, []byte(t.Object), t.ID); err != nil {
			return err
		}
		attrs, err := c.c11.GetAttributes(signer, []crypto11.AttributeType{crypto11.CkaLabel, crypto11.CkaId})
		if err != nil {
			return err
		}
		label, id = attrValue(attrs, crypto11.CkaLabel), attrValue(attrs, crypto11.CkaId)
		bound = c
		return nil
	}, nil)
	if err != nil {
		return nil, s.keyError(t, err)
	}
	alg, err := keystore.AlgorithmOf(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("pkcs11store: %s: %w", t.Redacted(), err)
	}
	return s.newKey(t.withKey(string(label), id), alg, signer, bound), nil
}

func (s *Store) keyError(t *tokenURI, err error) error {
	return fmt.Errorf("pkcs11store: %s: %w", t.Redacted(), err)
}

func attrValue(set crypto11.AttributeSet, typ crypto11.AttributeType) []byte {
	if a, ok := set[typ]; ok && a != nil {
		return bytes.Clone(a.Value)
	}
	return nil
}

// findPair finds the one key pair with label and/or id. When none is found it
// makes sure the login is still there (a logged-out session sees no private
// objects, and "not found" would then be a lie), and tells a missing pair from
// a private key whose public half is missing.
func (s *Store) findPair(c *conn, label, id []byte) (crypto11.Signer, error) {
	pairs, err := c.c11.FindKeyPairs(id, label)
	if err != nil {
		return nil, err
	}
	switch len(pairs) {
	case 1:
		return pairs[0], nil
	case 0:
		var privs int
		err := s.withRaw(c, func(sh pkcs11.SessionHandle) error {
			hs, err := s.findObjects(sh, keyTemplate(pkcs11.CKO_PRIVATE_KEY, label, id))
			privs = len(hs)
			return err
		})
		if err != nil {
			return nil, err
		}
		if privs > 0 {
			return nil, fmt.Errorf("token %q has a private key %s but not its public half, which thingcert needs; delete it or import the public key with the same label and id",
				c.token.Label, s.describe(label, id))
		}
		return nil, fmt.Errorf("%w: token %q has no key pair %s", keystore.ErrNotFound, c.token.Label, s.describe(label, id))
	}
	return nil, fmt.Errorf("%d key pairs on token %q are %s; add id= (or object=) to the URI to choose one",
		len(pairs), c.token.Label, s.describe(label, id))
}

// Delete destroys both halves of the key pair. It works on the raw objects
// rather than through crypto11, so a private key whose public half is gone can
// be deleted too.
func (s *Store) Delete(ctx context.Context, keyURI string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t, err := s.keyURI(keyURI)
	if err != nil {
		return err
	}
	label := []byte(t.Object)
	err = s.do(func(c *conn) error {
		return s.withRaw(c, func(sh pkcs11.SessionHandle) error {
			privs, err := s.findObjects(sh, keyTemplate(pkcs11.CKO_PRIVATE_KEY, label, t.ID))
			if err != nil {
				return err
			}
			switch {
			case len(privs) == 0:
				return fmt.Errorf("%w: token %q has no key %s", keystore.ErrNotFound, c.token.Label, s.describe(label, t.ID))
			case len(privs) > 1:
				return fmt.Errorf("%d keys on token %q are %s; add id= (or object=) to the URI to choose one", len(privs), c.token.Label, s.describe(label, t.ID))
			}
			attrs, err := s.raw.GetAttributeValue(sh, privs[0], []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil), pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
			})
			if err != nil {
				return err
			}
			var pubs []pkcs11.ObjectHandle
			if plabel, pid := attrs[0].Value, attrs[1].Value; len(plabel) > 0 || len(pid) > 0 {
				if pubs, err = s.findObjects(sh, keyTemplate(pkcs11.CKO_PUBLIC_KEY, plabel, pid)); err != nil {
					return err
				}
			}
			if err := s.raw.DestroyObject(sh, privs[0]); err != nil {
				return fmt.Errorf("destroying the private key: %w", err)
			}
			for _, h := range pubs {
				if err := s.raw.DestroyObject(sh, h); err != nil {
					return fmt.Errorf("destroying the public key (the private key is already gone): %w", err)
				}
			}
			return nil
		})
	}, nil)
	if err != nil {
		return s.keyError(t, err)
	}
	return nil
}

// List returns the URIs of the token's private keys, by label and id.
func (s *Store) List(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var uris []string
	err := s.do(func(c *conn) error {
		uris = uris[:0]
		return s.withRaw(c, func(sh pkcs11.SessionHandle) error {
			privs, err := s.findObjects(sh, keyTemplate(pkcs11.CKO_PRIVATE_KEY, nil, nil))
			if err != nil {
				return err
			}
			for _, h := range privs {
				attrs, err := s.raw.GetAttributeValue(sh, h, []*pkcs11.Attribute{
					pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil), pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
				})
				if err != nil {
					return err
				}
				label, id := attrs[0].Value, attrs[1].Value
				if len(label) == 0 && len(id) == 0 {
					continue // nothing a URI could name it by
				}
				uris = append(uris, s.uri.withKey(string(label), id).String())
			}
			return nil
		})
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("pkcs11store: %s: listing keys: %w", s.uri.Redacted(), err)
	}
	slices.Sort(uris)
	return uris, nil
}

func (s *Store) newKey(t *tokenURI, alg keystore.Algorithm, signer crypto11.Signer, c *conn) *Key {
	k := &Key{s: s, uri: t, label: []byte(t.Object), id: bytes.Clone(t.ID), alg: alg, pub: signer.Public()}
	k.b.Store(&binding{c: c, signer: signer})
	return k
}

// publicEqual compares public keys of the kinds crypto11 returns.
func publicEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}
