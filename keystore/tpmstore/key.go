package tpmstore

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strconv"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/thingcert/thingcert/keystore"
)

// Key is a signing key held in a TPM. It stays loaded from Open (or Generate)
// until its store is closed, so Sign is one TPM command.
type Key struct {
	store  *Store
	uri    string
	ref    keyRef
	alg    keystore.Algorithm
	pub    crypto.PublicKey
	public tpm2.TPMTPublic
	pubRaw []byte // marshalled public area, to notice a key file replaced on disk
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	auth   []byte
	parent *parentKey // nil for a persistent key
	// fixed is the signing scheme the key's template imposes; none for keys
	// thingcert makes, which pick the scheme per signature.
	fixed fixedScheme

	// Guarded by the Device's turn.
	gone error // set once the key is flushed or deleted
}

var (
	_ keystore.Key                = (*Key)(nil)
	_ keystore.ProtectionReporter = (*Key)(nil)
)

// Public returns the *ecdsa.PublicKey or *rsa.PublicKey.
func (k *Key) Public() crypto.PublicKey { return k.pub }

// URI returns the key URI that reopens this key.
func (k *Key) URI() string { return k.uri }

// Algorithm returns the key's algorithm.
func (k *Key) Algorithm() keystore.Algorithm { return k.alg }

// Handle is the TPM handle the key is at: a transient handle valid while the
// store is open, or the key's persistent handle. For TPM commands thingcert
// does not wrap (run them through Device.Run).
func (k *Key) Handle() tpm2.TPMHandle { return k.handle }

// Sign signs a SHA-256, SHA-384 or SHA-512 digest inside the TPM: ECDSA for an
// ECC key (returned as ASN.1 DER), PKCS#1 v1.5 for an RSA key, or RSA-PSS when
// opts is *rsa.PSSOptions; a PSS signature is verified before it is returned.
// Sign is safe for concurrent use; signatures from one TPM take turns.
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil {
		return nil, fmt.Errorf("tpmstore: %s: Sign needs a crypto.SignerOpts naming the digest", k.uri)
	}
	h := opts.HashFunc()
	halg, err := hashAlg(h)
	if err != nil {
		return nil, fmt.Errorf("tpmstore: %s: %w", k.uri, err)
	}
	if len(digest) != h.Size() {
		return nil, fmt.Errorf("tpmstore: %s: digest is %d bytes, %v wants %d", k.uri, len(digest), h, h.Size())
	}
	pss, isPSS := opts.(*rsa.PSSOptions)
	scheme, err := k.scheme(halg, isPSS)
	if err != nil {
		return nil, err
	}
	var rsp *tpm2.SignResponse
	err = k.store.dev.Run(k.store.ctx, func(t transport.TPM) error {
		if k.gone != nil {
			return k.gone
		}
		var err error
		rsp, err = tpm2.Sign{
			KeyHandle:  tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(k.auth)},
			Digest:     tpm2.TPM2BDigest{Buffer: digest},
			InScheme:   scheme,
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}.Execute(t)
		return err
	})
	if err != nil {
		return nil, k.commandError("signing", err)
	}
	return k.signature(rsp.Signature, h, digest, pss)
}

// scheme picks the TPM signing scheme for one signature.
func (k *Key) scheme(halg tpm2.TPMAlgID, pss bool) (tpm2.TPMTSigScheme, error) {
	alg := tpm2.TPMAlgECDSA
	if k.public.Type == tpm2.TPMAlgRSA {
		alg = tpm2.TPMAlgRSASSA
		if pss {
			alg = tpm2.TPMAlgRSAPSS
		}
	} else if pss {
		return tpm2.TPMTSigScheme{}, fmt.Errorf("tpmstore: %s: an ECDSA key cannot make RSA-PSS signatures", k.uri)
	}
	s := tpm2.TPMTSigScheme{Scheme: alg, Details: tpm2.NewTPMUSigScheme(alg, &tpm2.TPMSSchemeHash{HashAlg: halg})}
	if k.fixed.Alg != 0 && (k.fixed.Alg != alg || k.fixed.Hash != halg) {
		return s, fmt.Errorf("tpmstore: %s: the key's template fixes its signing scheme to %v with %v, so it cannot sign %v with %v: %w; make keys with a NULL scheme (tpm2_create -G rsa2048 or ecc256 without a scheme)", k.uri, k.fixed.Alg, k.fixed.Hash, alg, halg, keystore.ErrUnsupported)
	}
	return s, nil
}

// signature turns the TPM's answer into what crypto.Signer callers expect.
func (k *Key) signature(sig tpm2.TPMTSignature, h crypto.Hash, digest []byte, pss *rsa.PSSOptions) ([]byte, error) {
	switch sig.SigAlg {
	case tpm2.TPMAlgECDSA:
		e, err := sig.Signature.ECDSA()
		if err != nil {
			return nil, fmt.Errorf("tpmstore: %s: reading the ECDSA signature: %w", k.uri, err)
		}
		der, err := ecdsaDER(e.SignatureR.Buffer, e.SignatureS.Buffer)
		if err != nil {
			return nil, fmt.Errorf("tpmstore: %s: %w", k.uri, err)
		}
		return der, nil
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		get := sig.Signature.RSASSA
		if sig.SigAlg == tpm2.TPMAlgRSAPSS {
			get = sig.Signature.RSAPSS
		}
		r, err := get()
		if err != nil {
			return nil, fmt.Errorf("tpmstore: %s: reading the RSA signature: %w", k.uri, err)
		}
		pub := k.pub.(*rsa.PublicKey)
		out := make([]byte, pub.Size())
		if len(r.Sig.Buffer) > len(out) {
			return nil, fmt.Errorf("tpmstore: %s: the TPM returned a %d-byte signature for a %d-byte modulus", k.uri, len(r.Sig.Buffer), len(out))
		}
		copy(out[len(out)-len(r.Sig.Buffer):], r.Sig.Buffer)
		if pss != nil {
			if err := checkPSS(pub, h, digest, out, pss.SaltLength); err != nil {
				return nil, fmt.Errorf("tpmstore: %s: %w", k.uri, err)
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("tpmstore: %s: the TPM answered with a %v signature", k.uri, sig.SigAlg)
}

// commandError adds what to do to the TPM's answers a person can act on.
func (k *Key) commandError(what string, err error) error {
	switch {
	case errors.Is(err, tpm2.TPMRCAuthFail) || errors.Is(err, tpm2.TPMRCBadAuth):
		src := "no auth-source= was given"
		if k.ref.authSource != "" {
			src = "check the file auth-source=" + k.ref.authSource
		}
		return fmt.Errorf("tpmstore: %s %s: wrong authorization value (%s): %w", what, k.uri, src, err)
	case errors.Is(err, tpm2.TPMRCLockout):
		return fmt.Errorf("tpmstore: %s %s: the TPM is in dictionary-attack lockout after wrong authorization values; wait, or reset it with tpm2_dictionarylockout -c: %w", what, k.uri, err)
	}
	return fmt.Errorf("tpmstore: %s %s: %w", what, k.uri, err)
}

// Protection reports the key's TPM object attributes and how it is kept.
func (k *Key) Protection(ctx context.Context) (keystore.Protection, error) {
	a := k.public.ObjectAttributes
	p := keystore.Protection{Backend: "tpm", Hardware: a.FixedTPM}
	add := func(name, value string) {
		p.Attributes = append(p.Attributes, keystore.Attribute{Name: name, Value: value})
	}
	flag := func(name string, v bool) { add(name, strconv.FormatBool(v)) }
	flag("fixedTPM", a.FixedTPM)
	flag("fixedParent", a.FixedParent)
	flag("sensitiveDataOrigin", a.SensitiveDataOrigin)
	flag("userWithAuth", a.UserWithAuth)
	flag("adminWithPolicy", a.AdminWithPolicy)
	flag("noDA", a.NoDA)
	flag("sign", a.SignEncrypt)
	flag("decrypt", a.Decrypt)
	flag("restricted", a.Restricted)
	if k.ref.loc.blob != "" {
		add("storage", "blob")
		add("file", k.ref.loc.blob)
	} else {
		add("storage", "handle")
		add("handle", fmt.Sprintf("0x%08x", k.ref.loc.handle))
	}
	if k.parent != nil {
		if k.parent.fileParent == tpm2.TPMRHOwner {
			add("parent", "0x40000001 (owner hierarchy storage root key, TCG ECC P-256 template)")
		} else {
			add("parent", fmt.Sprintf("0x%08x (persistent storage key)", uint32(k.parent.fileParent)))
		}
	}
	auth := "empty"
	if len(k.auth) > 0 {
		auth = "set (auth-source=" + k.ref.authSource + ")"
	}
	add("authValue", auth)
	add("device", k.store.dev.name)
	return p, nil
}

// publicKey converts a TPM public area to a Go public key, checking that an
// ECC point is on its curve.
func publicKey(p *tpm2.TPMTPublic) (crypto.PublicKey, error) {
	switch p.Type {
	case tpm2.TPMAlgRSA:
		parms, err := p.Parameters.RSADetail()
		if err != nil {
			return nil, err
		}
		n, err := p.Unique.RSA()
		if err != nil {
			return nil, err
		}
		e := int(parms.Exponent)
		if e == 0 {
			e = 65537
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n.Buffer), E: e}, nil
	case tpm2.TPMAlgECC:
		parms, err := p.Parameters.ECCDetail()
		if err != nil {
			return nil, err
		}
		pt, err := p.Unique.ECC()
		if err != nil {
			return nil, err
		}
		var c elliptic.Curve
		switch parms.CurveID {
		case tpm2.TPMECCNistP256:
			c = elliptic.P256()
		case tpm2.TPMECCNistP384:
			c = elliptic.P384()
		case tpm2.TPMECCNistP521:
			c = elliptic.P521()
		default:
			return nil, fmt.Errorf("ECC curve %v is not one AWS IoT accepts (P-256, P-384, P-521)", parms.CurveID)
		}
		size := (c.Params().BitSize + 7) / 8
		if len(pt.X.Buffer) > size || len(pt.Y.Buffer) > size {
			return nil, errors.New("ECC point too large for its curve")
		}
		raw := make([]byte, 1+2*size)
		raw[0] = 4
		copy(raw[1+size-len(pt.X.Buffer):1+size], pt.X.Buffer)
		copy(raw[1+2*size-len(pt.Y.Buffer):], pt.Y.Buffer)
		return ecdsa.ParseUncompressedPublicKey(c, raw)
	}
	return nil, fmt.Errorf("key type %v is neither RSA nor ECC", p.Type)
}

// fixedScheme is a signing scheme a key's template imposes. The zero value
// (Alg 0) means NULL: the scheme is picked per signature.
type fixedScheme struct {
	Alg, Hash tpm2.TPMAlgID
}

// keyScheme reads the scheme fixed by a key's template.
func keyScheme(p *tpm2.TPMTPublic) fixedScheme {
	var alg tpm2.TPMAlgID
	var details interface {
		RSASSA() (*tpm2.TPMSSigSchemeRSASSA, error)
		RSAPSS() (*tpm2.TPMSSigSchemeRSAPSS, error)
		ECDSA() (*tpm2.TPMSSigSchemeECDSA, error)
	}
	switch p.Type {
	case tpm2.TPMAlgRSA:
		parms, err := p.Parameters.RSADetail()
		if err != nil {
			return fixedScheme{}
		}
		alg, details = parms.Scheme.Scheme, &parms.Scheme.Details
	case tpm2.TPMAlgECC:
		parms, err := p.Parameters.ECCDetail()
		if err != nil {
			return fixedScheme{}
		}
		alg, details = parms.Scheme.Scheme, &parms.Scheme.Details
	default:
		return fixedScheme{}
	}
	switch alg {
	case tpm2.TPMAlgRSASSA:
		if h, err := details.RSASSA(); err == nil {
			return fixedScheme{alg, h.HashAlg}
		}
	case tpm2.TPMAlgRSAPSS:
		if h, err := details.RSAPSS(); err == nil {
			return fixedScheme{alg, h.HashAlg}
		}
	case tpm2.TPMAlgECDSA:
		if h, err := details.ECDSA(); err == nil {
			return fixedScheme{alg, h.HashAlg}
		}
	case 0, tpm2.TPMAlgNull:
		return fixedScheme{}
	}
	// A scheme thingcert cannot use (such as ECDAA or SM2) fixes the key to it.
	return fixedScheme{Alg: alg}
}
