package tpmstore

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/thingcert/thingcert/keystore"
)

// srkTemplate is the TCG ECC P-256 storage root key template with empty unique
// fields (TCG Provisioning Guidance 7.5.1; template H-2 of the EK Credential
// Profile). The TSS2 key file format requires exactly this template when a key
// file names TPM_RH_OWNER as its parent, so tpm2-openssl and ssh-tpm-agent
// remake the same primary key and can load thingcert's key files.
func srkTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			Restricted:          true,
			Decrypt:             true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{
				Algorithm: tpm2.TPMAlgAES,
				KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
				Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
			},
			CurveID: tpm2.TPMECCNistP256,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// signingAttributes are a thingcert key's: made inside this TPM and never to
// leave it or its parent, used with an authorization value (possibly empty),
// for signing only.
func signingAttributes() tpm2.TPMAObject {
	return tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		SignEncrypt:         true,
	}
}

// keyTemplate is the public template of a new signing key. The scheme is NULL
// so the caller picks one per signature: an RSA key signs both PKCS#1 v1.5 and
// PSS, as TLS 1.2 and 1.3 need.
func keyTemplate(alg keystore.Algorithm) (tpm2.TPMTPublic, error) {
	t := tpm2.TPMTPublic{NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: signingAttributes()}
	if alg.IsRSA() {
		t.Type = tpm2.TPMAlgRSA
		t.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, rsaParms(alg.RSABits()))
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{})
		return t, nil
	}
	curve, ok := tpmCurve(alg)
	if !ok {
		return t, fmt.Errorf("tpmstore: no TPM template for %s", alg)
	}
	t.Type = tpm2.TPMAlgECC
	t.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, eccParms(curve))
	t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{})
	return t, nil
}

func rsaParms(bits int) *tpm2.TPMSRSAParms {
	return &tpm2.TPMSRSAParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
		KeyBits:   tpm2.TPMKeyBits(bits),
	}
}

func eccParms(curve tpm2.TPMECCCurve) *tpm2.TPMSECCParms {
	return &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
		CurveID:   curve,
		KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}
}

func tpmCurve(alg keystore.Algorithm) (tpm2.TPMECCCurve, bool) {
	switch alg {
	case keystore.ECDSAP256:
		return tpm2.TPMECCNistP256, true
	case keystore.ECDSAP384:
		return tpm2.TPMECCNistP384, true
	case keystore.ECDSAP521:
		return tpm2.TPMECCNistP521, true
	}
	return 0, false
}

// isStorageKey: a parent must be a restricted decryption key.
func isStorageKey(p *tpm2.TPMTPublic) bool {
	a := p.ObjectAttributes
	return a.Restricted && a.Decrypt && !a.SignEncrypt
}

// signingKeyProblem says why an object cannot sign for thingcert, or "".
func signingKeyProblem(p *tpm2.TPMTPublic) string {
	a := p.ObjectAttributes
	switch {
	case !a.SignEncrypt:
		return "it is not a signing key (sign attribute clear)"
	case a.Restricted:
		return "it is a restricted signing key, which signs only digests the TPM made itself (an attestation key)"
	case !a.UserWithAuth:
		return "it is usable only through a policy session (userWithAuth clear), which thingcert does not run"
	case p.Type != tpm2.TPMAlgRSA && p.Type != tpm2.TPMAlgECC:
		return fmt.Sprintf("its type %v is neither RSA nor ECC", p.Type)
	}
	return ""
}

// isHandleMissing reports a response meaning "nothing at that handle".
func isHandleMissing(err error) bool {
	return errors.Is(err, tpm2.TPMRCHandle) || errors.Is(err, tpm2.TPMRCReferenceH0)
}

// parentFor returns the storage key a key file names as its parent, making or
// reading it once per Device. Call with the turn held.
func (d *Device) parentFor(t transport.TPM, h tpm2.TPMHandle) (*parentKey, error) {
	if p, ok := d.parents[h]; ok {
		return p, nil
	}
	var p *parentKey
	switch {
	case h == tpm2.TPMRHOwner:
		tmpl := srkTemplate()
		rsp, err := tpm2.CreatePrimary{
			PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			InPublic:      tpm2.New2B(tmpl),
		}.Execute(t)
		if err != nil {
			if errors.Is(err, tpm2.TPMRCBadAuth) || errors.Is(err, tpm2.TPMRCAuthFail) {
				return nil, fmt.Errorf("creating the storage root key: %w: the owner hierarchy has a password; thingcert needs it empty, or a storage key persisted at 0x81000001 (tpm2_createprimary + tpm2_evictcontrol)", err)
			}
			return nil, fmt.Errorf("creating the storage root key (TCG ECC P-256 template): %w", err)
		}
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			return nil, fmt.Errorf("storage root key: %w", err)
		}
		p = &parentKey{handle: rsp.ObjectHandle, name: rsp.Name, fileParent: tpm2.TPMRHOwner, transient: true, public: *pub}
	case uint32(h)>>24 == uint32(tpm2.TPMHTPersistent):
		rsp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(t)
		if err != nil {
			if isHandleMissing(err) {
				return nil, fmt.Errorf("the key's parent 0x%08x is not in the TPM: %w (was it evicted, or the TPM cleared?)", uint32(h), keystore.ErrNotFound)
			}
			return nil, fmt.Errorf("reading the key's parent 0x%08x: %w", uint32(h), err)
		}
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			return nil, fmt.Errorf("parent 0x%08x: %w", uint32(h), err)
		}
		if !isStorageKey(pub) {
			return nil, fmt.Errorf("the object at 0x%08x is not a storage key and cannot be a parent", uint32(h))
		}
		p = &parentKey{handle: h, name: rsp.Name, fileParent: h, public: *pub}
	default:
		return nil, fmt.Errorf("key parent 0x%08x: %w: thingcert loads keys under the owner hierarchy's storage root key (0x40000001) or a persistent storage key (0x81xxxxxx)", uint32(h), keystore.ErrUnsupported)
	}
	d.parents[h] = p
	return p, nil
}

// newKeyParent is the parent for new keys: a storage key persisted at the
// TCG's SRK handle 0x81000001 if there is one (no primary key to make), else
// the primary made from the SRK template. Call with the turn held.
func (d *Device) newKeyParent(t transport.TPM) (*parentKey, error) {
	if !d.probed {
		rsp, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(srkHandle)}.Execute(t)
		switch {
		case err == nil:
			if pub, perr := rsp.OutPublic.Contents(); perr == nil && isStorageKey(pub) {
				d.srkProbe = &parentKey{handle: srkHandle, name: rsp.Name, fileParent: srkHandle, public: *pub}
				d.parents[srkHandle] = d.srkProbe
			}
		case isHandleMissing(err):
		default:
			return nil, fmt.Errorf("looking for a storage root key at 0x81000001: %w", err)
		}
		d.probed = true
	}
	if d.srkProbe != nil {
		return d.srkProbe, nil
	}
	return d.parentFor(t, tpm2.TPMRHOwner)
}

// supports asks the TPM whether it can make keys of alg, once per Device.
// Call with the turn held.
func (d *Device) supports(t transport.TPM, alg keystore.Algorithm) error {
	if err, ok := d.support[alg]; ok {
		return err
	}
	var err error
	if alg.IsRSA() {
		_, terr := tpm2.TestParms{Parameters: tpm2.TPMTPublicParms{
			Type:       tpm2.TPMAlgRSA,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, rsaParms(alg.RSABits())),
		}}.Execute(t)
		if terr != nil {
			var rc tpm2.TPMRC
			if !errors.As(terr, &rc) {
				return fmt.Errorf("asking the TPM about %s keys: %w", alg, terr)
			}
			err = fmt.Errorf("this TPM cannot make %s keys (TPM2_TestParms answered %v): %w", alg, terr, keystore.ErrUnsupported)
		}
	} else {
		curve, _ := tpmCurve(alg)
		curves, cerr := d.curves(t)
		if cerr != nil {
			return cerr
		}
		if !slices.Contains(curves, curve) {
			err = fmt.Errorf("this TPM cannot make %s keys (TPM2_GetCapability does not list the curve): %w", alg, keystore.ErrUnsupported)
		}
	}
	d.support[alg] = err
	return err
}

func (d *Device) curves(t transport.TPM) ([]tpm2.TPMECCCurve, error) {
	var all []tpm2.TPMECCCurve
	next := uint32(0)
	for {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapECCCurves, Property: next, PropertyCount: 64}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("asking the TPM which curves it has: %w", err)
		}
		c, err := rsp.CapabilityData.Data.ECCCurves()
		if err != nil {
			return nil, fmt.Errorf("asking the TPM which curves it has: %w", err)
		}
		all = append(all, c.ECCCurves...)
		if !rsp.MoreData || len(c.ECCCurves) == 0 {
			return all, nil
		}
		next = uint32(c.ECCCurves[len(c.ECCCurves)-1]) + 1
	}
}

// persistentHandles lists the persistent objects in the TPM. Call with the
// turn held.
func (d *Device) persistentHandles(t transport.TPM) ([]tpm2.TPMHandle, error) {
	var all []tpm2.TPMHandle
	next := uint32(persistentFirst)
	for {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: next, PropertyCount: 64}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("listing persistent handles: %w", err)
		}
		hl, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return nil, fmt.Errorf("listing persistent handles: %w", err)
		}
		for _, h := range hl.Handle {
			if uint32(h) >= persistentFirst && uint32(h) <= persistentLast {
				all = append(all, h)
			}
		}
		if !rsp.MoreData || len(hl.Handle) == 0 {
			return all, nil
		}
		next = uint32(hl.Handle[len(hl.Handle)-1]) + 1
	}
}

// Algorithms lists the algorithms this TPM can make keys of, in the policy's
// order, asking the TPM (TPM2_GetCapability for curves, TPM2_TestParms for
// RSA sizes).
func (d *Device) Algorithms(ctx context.Context) ([]keystore.Algorithm, error) {
	var out []keystore.Algorithm
	err := d.Run(ctx, func(t transport.TPM) error {
		for _, alg := range keystore.Algorithms() {
			err := d.supports(t, alg)
			if errors.Is(err, keystore.ErrUnsupported) {
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, alg)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tpmstore: TPM %s: %w", d.name, err)
	}
	return out, nil
}
