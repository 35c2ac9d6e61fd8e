//go:build cgo

package pkcs11store

import (
	"context"
	"crypto"
	"crypto/rsa"
	"fmt"
	"io"
	"strings"
	"sync/atomic"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
	"github.com/thingcert/thingcert/keystore"
)

// Key is a key pair in a token. Its private half never leaves the token: Sign
// sends the digest there. It is safe for concurrent use.
type Key struct {
	s     *Store
	uri   *tokenURI
	label []byte
	id    []byte
	alg   keystore.Algorithm
	pub   crypto.PublicKey
	b     atomic.Pointer[binding]
}

// binding is the key's crypto11 signer (its object handles) in one conn.
type binding struct {
	c      *conn
	signer crypto11.Signer
}

var (
	_ keystore.Key                = (*Key)(nil)
	_ keystore.ProtectionReporter = (*Key)(nil)
)

// URI is the canonical key URI: token, label, id, module and PIN source.
func (k *Key) URI() string { return k.uri.String() }

// Algorithm is the key's algorithm.
func (k *Key) Algorithm() keystore.Algorithm { return k.alg }

// Public is the public half, read from the token when the key was found.
func (k *Key) Public() crypto.PublicKey { return k.pub }

// bound returns the key's signer in conn c, finding the key again when c is
// a new conn (or the handles went stale). The key found must have the same
// public key: after a reconnection a different key under the same label and
// id must not quietly sign in this key's name.
func (k *Key) bound(c *conn) (*binding, error) {
	if b := k.b.Load(); b != nil && b.c == c {
		return b, nil
	}
	signer, err := k.s.findPair(c, k.label, k.id)
	if err != nil {
		return nil, err
	}
	if !publicEqual(signer.Public(), k.pub) {
		return nil, fmt.Errorf("token %q now holds another key %s than the one this program opened; refusing to sign with it",
			c.token.Label, k.s.describe(k.label, k.id))
	}
	b := &binding{c: c, signer: signer}
	k.b.Store(b)
	return b, nil
}

// unbind forgets the signer of conn c, unless another goroutine has already
// bound the key anew.
func (k *Key) unbind(c *conn) {
	if b := k.b.Load(); b != nil && b.c == c {
		k.b.CompareAndSwap(b, nil)
	}
}

// Sign signs digest inside the token: ECDSA (ASN.1 DER), RSA PKCS#1 v1.5, or
// RSA-PSS with a salt as long as the hash, which is what crypto/tls and
// crypto/x509 ask for (rsa.PSSSaltLengthAuto is signed the same way: any
// verifier that accepts "auto" accepts it).
func (k *Key) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	o, err := signerOpts(k.alg, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("pkcs11store: %s: %w", k.uri.Redacted(), err)
	}
	var sig []byte
	err = k.s.do(func(c *conn) error {
		b, err := k.bound(c)
		if err != nil {
			return err
		}
		sig, err = b.signer.Sign(rand, digest, o)
		return err
	}, k.unbind)
	if err != nil {
		return nil, fmt.Errorf("pkcs11store: signing with %s: %w", k.uri.Redacted(), err)
	}
	return sig, nil
}

// signerOpts checks what a caller asks Sign for and turns it into what
// crypto11 does: it builds the PKCS#1 v1.5 DigestInfo only for the SHA-1 and
// SHA-2 hashes and takes PSS salts only as an explicit length or "equals hash".
func signerOpts(alg keystore.Algorithm, digest []byte, opts crypto.SignerOpts) (crypto.SignerOpts, error) {
	if opts == nil {
		return nil, fmt.Errorf("%w: Sign needs options naming the hash", keystore.ErrUnsupported)
	}
	h := opts.HashFunc()
	switch h {
	case crypto.SHA1, crypto.SHA224, crypto.SHA256, crypto.SHA384, crypto.SHA512:
	default:
		return nil, fmt.Errorf("%w: hash %v; a PKCS#11 key signs SHA-1, SHA-224, SHA-256, SHA-384 or SHA-512 digests", keystore.ErrUnsupported, h)
	}
	if len(digest) != h.Size() {
		return nil, fmt.Errorf("digest is %d bytes but %v digests are %d", len(digest), h, h.Size())
	}
	pss, isPSS := opts.(*rsa.PSSOptions)
	if !alg.IsRSA() {
		if isPSS {
			return nil, fmt.Errorf("%w: RSA-PSS options for a %s key", keystore.ErrUnsupported, alg)
		}
		return opts, nil
	}
	if !isPSS {
		return opts, nil
	}
	switch pss.SaltLength {
	case rsa.PSSSaltLengthEqualsHash:
		return pss, nil
	case rsa.PSSSaltLengthAuto, h.Size():
		return &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h}, nil
	}
	return nil, fmt.Errorf("%w: PSS salt length %d; this key signs PSS with a salt as long as the hash (%d bytes), as TLS and X.509 use",
		keystore.ErrUnsupported, pss.SaltLength, h.Size())
}

// protectionAttrs are the private key's flags Protection reports, by the
// names thingcert prints.
var protectionAttrs = []struct {
	typ  crypto11.AttributeType
	name string
}{
	{crypto11.CkaSensitive, "sensitive"},
	{crypto11.CkaExtractable, "extractable"},
	{crypto11.CkaLocal, "local"},
	{crypto11.CkaAlwaysSensitive, "always-sensitive"},
	{crypto11.CkaNeverExtractable, "never-extractable"},
	{crypto11.CkaPrivate, "private"},
}

// Protection reads the private key's flags from the token: sensitive and
// not extractable mean the PKCS#11 API will not hand the key out; local,
// always-sensitive and never-extractable mean it was made in the token and was
// never readable. A module cannot prove it is hardware: SoftHSM2 reports the
// same flags, so the token's manufacturer and model are reported too.
func (k *Key) Protection(ctx context.Context) (keystore.Protection, error) {
	if err := ctx.Err(); err != nil {
		return keystore.Protection{}, err
	}
	values := map[string]string{}
	var token pkcs11.TokenInfo
	err := k.s.do(func(c *conn) error {
		b, err := k.bound(c)
		if err != nil {
			return err
		}
		token = c.token
		for _, a := range protectionAttrs {
			// One attribute per call: a token that lacks one fails the
			// whole call, and the others are still worth reporting.
			set, err := c.c11.GetAttributes(b.signer, []crypto11.AttributeType{a.typ})
			switch {
			case err == nil && len(attrValue(set, a.typ)) > 0:
				values[a.name] = fmt.Sprint(attrValue(set, a.typ)[0] != 0)
			case err == nil, pkcs11Code(err) == pkcs11.CKR_ATTRIBUTE_TYPE_INVALID:
				values[a.name] = "unknown"
			default:
				return err
			}
		}
		return nil
	}, k.unbind)
	if err != nil {
		return keystore.Protection{}, fmt.Errorf("pkcs11store: reading the protection of %s: %w", k.uri.Redacted(), err)
	}
	p := keystore.Protection{
		Backend:  "pkcs11",
		Hardware: values["sensitive"] == "true" && values["extractable"] == "false",
	}
	for _, a := range protectionAttrs {
		p.Attributes = append(p.Attributes, keystore.Attribute{Name: a.name, Value: values[a.name]})
	}
	trim := func(s string) string { return strings.TrimRight(s, " \x00") }
	p.Attributes = append(p.Attributes,
		keystore.Attribute{Name: "token", Value: trim(token.Label)},
		keystore.Attribute{Name: "token-model", Value: strings.TrimSpace(trim(token.ManufacturerID) + " " + trim(token.Model))},
		keystore.Attribute{Name: "token-serial", Value: trim(token.SerialNumber)},
	)
	return p, nil
}
