//go:build cgo

package pkcs11store

import (
	"fmt"

	"github.com/miekg/pkcs11"
	"github.com/thingcert/thingcert/keystore"
)

// mechanismsFor are the mechanisms a key of alg needs: to be made, and to sign.
func mechanismsFor(alg keystore.Algorithm) (gen, sign uint, optional []uint) {
	if alg.IsRSA() {
		return pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11.CKM_RSA_PKCS, []uint{pkcs11.CKM_RSA_PKCS_PSS}
	}
	return pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKM_ECDSA, nil
}

// checkMechanisms decides from the token's own mechanism information whether
// it can make and use a key of alg. have holds what C_GetMechanismInfo said for
// each mechanism the token lists. A refusal names the missing piece; warnings
// are for what still works, with limits.
func checkMechanisms(alg keystore.Algorithm, have map[uint]pkcs11.MechanismInfo) (warnings []string, err error) {
	gen, sign, optional := mechanismsFor(alg)
	gi, ok := have[gen]
	if !ok {
		return nil, fmt.Errorf("the token does not offer %s", mechName(gen))
	}
	if gi.Flags&pkcs11.CKF_GENERATE_KEY_PAIR == 0 {
		return nil, fmt.Errorf("the token's %s cannot generate key pairs", mechName(gen))
	}
	si, ok := have[sign]
	if !ok || si.Flags&pkcs11.CKF_SIGN == 0 {
		return nil, fmt.Errorf("the token does not sign with %s", mechName(sign))
	}
	if alg.IsRSA() {
		bits := uint(alg.RSABits())
		if !inRange(bits, gi.MinKeySize, gi.MaxKeySize) {
			return nil, fmt.Errorf("the token makes RSA keys of %d to %d bits, not %d", gi.MinKeySize, gi.MaxKeySize, bits)
		}
	} else {
		const fieldFlags = pkcs11.CKF_EC_F_P | pkcs11.CKF_EC_F_2M
		if gi.Flags&fieldFlags != 0 && gi.Flags&pkcs11.CKF_EC_F_P == 0 {
			return nil, fmt.Errorf("the token's %s supports only binary-field curves, not NIST prime curves", mechName(gen))
		}
		const paramFlags = pkcs11.CKF_EC_ECPARAMETERS | pkcs11.CKF_EC_NAMEDCURVE
		if gi.Flags&paramFlags != 0 && gi.Flags&pkcs11.CKF_EC_NAMEDCURVE == 0 {
			return nil, fmt.Errorf("the token's %s takes only explicit curve parameters, not named curves", mechName(gen))
		}
		bits := uint(alg.Curve().Params().BitSize)
		lo, hi := gi.MinKeySize, gi.MaxKeySize
		// PKCS#11 gives EC sizes in bits, but some modules report bytes (an
		// old ambiguity of the standard); no curve is smaller than 112 bits,
		// so a maximum that small must be bytes.
		if hi != 0 && hi < 112 {
			bits = (bits + 7) / 8
		}
		if !inRange(bits, lo, hi) {
			return nil, fmt.Errorf("the token makes EC keys of sizes %d to %d, and %s (%d) is outside", lo, hi, alg.Curve().Params().Name, bits)
		}
	}
	for _, m := range optional {
		if i, ok := have[m]; !ok || i.Flags&pkcs11.CKF_SIGN == 0 {
			warnings = append(warnings, fmt.Sprintf("the token does not sign with %s: the key can sign PKCS#1 v1.5 (TLS 1.2) but not RSA-PSS, which TLS 1.3 needs", mechName(m)))
		}
	}
	return warnings, nil
}

// inRange treats a zero maximum as "not said".
func inRange(v, lo, hi uint) bool {
	return v >= lo && (hi == 0 || v <= hi)
}

func mechName(m uint) string {
	switch m {
	case pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN:
		return "CKM_RSA_PKCS_KEY_PAIR_GEN"
	case pkcs11.CKM_RSA_PKCS:
		return "CKM_RSA_PKCS"
	case pkcs11.CKM_RSA_PKCS_PSS:
		return "CKM_RSA_PKCS_PSS"
	case pkcs11.CKM_EC_KEY_PAIR_GEN:
		return "CKM_EC_KEY_PAIR_GEN"
	case pkcs11.CKM_ECDSA:
		return "CKM_ECDSA"
	}
	return fmt.Sprintf("mechanism 0x%X", m)
}

// mechanismInfo asks the token about the mechanisms alg needs.
func (s *Store) mechanismInfo(c *conn, alg keystore.Algorithm) (map[uint]pkcs11.MechanismInfo, error) {
	s.rawMu.RLock()
	defer s.rawMu.RUnlock()
	if s.closed.Load() {
		return nil, errClosed
	}
	list, err := s.raw.GetMechanismList(c.slot)
	if err != nil {
		return nil, err
	}
	gen, sign, optional := mechanismsFor(alg)
	want := map[uint]bool{gen: true, sign: true}
	for _, m := range optional {
		want[m] = true
	}
	have := map[uint]pkcs11.MechanismInfo{}
	for _, m := range list {
		if !want[m.Mechanism] {
			continue
		}
		info, err := s.raw.GetMechanismInfo(c.slot, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.Mechanism, nil)})
		if err != nil {
			return nil, err
		}
		have[m.Mechanism] = info
	}
	return have, nil
}
