//go:build cgo

package pkcs11store

import (
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
)

const ckrAttributeSensitive = pkcs11.CKR_ATTRIBUTE_SENSITIVE

// rawPeer is a second, independent miekg/pkcs11 handle on the module the
// store uses: the same library, so the same sessions and login, but none of
// the store's code. Tests use it to look at the token, and to break the
// store's session under it.
type rawPeer struct {
	p    *pkcs11.Ctx
	slot uint
}

// newRawPeer opens the handle. The store must already have initialized the
// module; the peer never finalizes it (unless a test asks).
func newRawPeer(t *testing.T, module, tokenLabel string) *rawPeer {
	t.Helper()
	p := pkcs11.New(module)
	if p == nil {
		t.Fatalf("cannot load %s", module)
	}
	t.Cleanup(p.Destroy)
	if err := p.Initialize(); pkcs11Code(err) != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
		t.Fatalf("C_Initialize on a second handle: %v; want CKR_CRYPTOKI_ALREADY_INITIALIZED (the store should hold the module)", err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if info, err := p.GetTokenInfo(s); err == nil && strings.TrimSpace(info.Label) == tokenLabel {
			return &rawPeer{p: p, slot: s}
		}
	}
	t.Fatalf("no token %q", tokenLabel)
	return nil
}

func (r *rawPeer) session(t *testing.T) pkcs11.SessionHandle {
	t.Helper()
	sh, err := r.p.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	return sh
}

// privateKey finds the private half of key k (the process is logged in by the
// store, and login is per process).
func (r *rawPeer) privateKey(t *testing.T, sh pkcs11.SessionHandle, k *Key) pkcs11.ObjectHandle {
	t.Helper()
	if err := r.p.FindObjectsInit(sh, keyTemplate(pkcs11.CKO_PRIVATE_KEY, k.label, k.id)); err != nil {
		t.Fatal(err)
	}
	hs, _, err := r.p.FindObjects(sh, 10)
	_ = r.p.FindObjectsFinal(sh)
	if err != nil || len(hs) != 1 {
		t.Fatalf("finding the private key of %s: %v, %d found", k.uri.Redacted(), err, len(hs))
	}
	return hs[0]
}

// readPrivateValue asks the token for the private key's secret: CKA_VALUE for
// EC, CKA_PRIVATE_EXPONENT for RSA.
func readPrivateValue(t *testing.T, s *Store, k *Key) error {
	t.Helper()
	r := newRawPeer(t, s.uri.ModulePath, s.uri.Token)
	sh := r.session(t)
	defer r.p.CloseSession(sh)
	h := r.privateKey(t, sh, k)
	attr := uint(pkcs11.CKA_VALUE)
	if k.alg.IsRSA() {
		attr = pkcs11.CKA_PRIVATE_EXPONENT
	}
	got, err := r.p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(attr, nil)})
	if err == nil {
		t.Errorf("the token returned the private value (%d bytes)", len(got[0].Value))
	}
	return err
}
