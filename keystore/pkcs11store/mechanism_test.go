//go:build cgo

package pkcs11store

import (
	"crypto"
	"crypto/rsa"
	"errors"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/thingcert/thingcert/keystore"
)

func TestCheckMechanisms(t *testing.T) {
	const (
		gen  = pkcs11.CKF_GENERATE_KEY_PAIR
		sign = pkcs11.CKF_SIGN
		ecFP = pkcs11.CKF_EC_F_P | pkcs11.CKF_EC_NAMEDCURVE | pkcs11.CKF_EC_UNCOMPRESS
	)
	// What SoftHSM 2.6 reports.
	softhsm := map[uint]pkcs11.MechanismInfo{
		pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN: {MinKeySize: 512, MaxKeySize: 16384, Flags: gen},
		pkcs11.CKM_RSA_PKCS:              {MinKeySize: 512, MaxKeySize: 16384, Flags: sign | pkcs11.CKF_VERIFY},
		pkcs11.CKM_RSA_PKCS_PSS:          {MinKeySize: 512, MaxKeySize: 16384, Flags: sign | pkcs11.CKF_VERIFY},
		pkcs11.CKM_EC_KEY_PAIR_GEN:       {MinKeySize: 112, MaxKeySize: 521, Flags: gen | ecFP},
		pkcs11.CKM_ECDSA:                 {MinKeySize: 112, MaxKeySize: 521, Flags: sign | ecFP},
	}
	with := func(m uint, info *pkcs11.MechanismInfo) map[uint]pkcs11.MechanismInfo {
		c := map[uint]pkcs11.MechanismInfo{}
		for k, v := range softhsm {
			c[k] = v
		}
		if info == nil {
			delete(c, m)
		} else {
			c[m] = *info
		}
		return c
	}
	for _, c := range []struct {
		name    string
		alg     keystore.Algorithm
		have    map[uint]pkcs11.MechanismInfo
		refusal string // "" = accepted
		warning string
	}{
		{"softhsm p256", keystore.ECDSAP256, softhsm, "", ""},
		{"softhsm p521", keystore.ECDSAP521, softhsm, "", ""},
		{"softhsm rsa4096", keystore.RSA4096, softhsm, "", ""},
		{"no ec keygen", keystore.ECDSAP384, with(pkcs11.CKM_EC_KEY_PAIR_GEN, nil), "does not offer CKM_EC_KEY_PAIR_GEN", ""},
		{"ec keygen without the flag", keystore.ECDSAP256, with(pkcs11.CKM_EC_KEY_PAIR_GEN, &pkcs11.MechanismInfo{MaxKeySize: 521, Flags: ecFP}), "cannot generate key pairs", ""},
		{"no ecdsa", keystore.ECDSAP256, with(pkcs11.CKM_ECDSA, nil), "does not sign with CKM_ECDSA", ""},
		{"p256-only token", keystore.ECDSAP384, with(pkcs11.CKM_EC_KEY_PAIR_GEN, &pkcs11.MechanismInfo{MinKeySize: 256, MaxKeySize: 256, Flags: gen | ecFP}), "outside", ""},
		{"sizes in bytes", keystore.ECDSAP384, with(pkcs11.CKM_EC_KEY_PAIR_GEN, &pkcs11.MechanismInfo{MinKeySize: 32, MaxKeySize: 48, Flags: gen | ecFP}), "", ""},
		{"sizes in bytes, too big", keystore.ECDSAP521, with(pkcs11.CKM_EC_KEY_PAIR_GEN, &pkcs11.MechanismInfo{MinKeySize: 32, MaxKeySize: 48, Flags: gen | ecFP}), "outside", ""},
		{"binary curves only", keystore.ECDSAP256, with(pkcs11.CKM_EC_KEY_PAIR_GEN, &pkcs11.MechanismInfo{MaxKeySize: 571, Flags: gen | pkcs11.CKF_EC_F_2M | pkcs11.CKF_EC_NAMEDCURVE}), "binary-field", ""},
		{"explicit parameters only", keystore.ECDSAP256, with(pkcs11.CKM_EC_KEY_PAIR_GEN, &pkcs11.MechanismInfo{MaxKeySize: 521, Flags: gen | pkcs11.CKF_EC_F_P | pkcs11.CKF_EC_ECPARAMETERS}), "explicit curve parameters", ""},
		{"no ec flags at all", keystore.ECDSAP256, with(pkcs11.CKM_EC_KEY_PAIR_GEN, &pkcs11.MechanismInfo{Flags: gen}), "", ""},
		{"rsa up to 2048", keystore.RSA3072, with(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, &pkcs11.MechanismInfo{MinKeySize: 1024, MaxKeySize: 2048, Flags: gen}), "not 3072", ""},
		{"no rsa keygen", keystore.RSA2048, with(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil), "CKM_RSA_PKCS_KEY_PAIR_GEN", ""},
		{"no pss", keystore.RSA2048, with(pkcs11.CKM_RSA_PKCS_PSS, nil), "", "TLS 1.3"},
	} {
		warnings, err := checkMechanisms(c.alg, c.have)
		switch {
		case c.refusal == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refusal != "" && (err == nil || !strings.Contains(err.Error(), c.refusal)):
			t.Errorf("%s: %v; want a refusal saying %q", c.name, err, c.refusal)
		}
		if got := strings.Join(warnings, "; "); c.warning == "" && got != "" || !strings.Contains(got, c.warning) {
			t.Errorf("%s: warnings %q, want %q", c.name, got, c.warning)
		}
	}
}

func TestSignerOpts(t *testing.T) {
	d256, d384 := make([]byte, 32), make([]byte, 48)
	pssEq := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	for _, c := range []struct {
		name   string
		alg    keystore.Algorithm
		digest []byte
		opts   crypto.SignerOpts
		want   crypto.SignerOpts // nil: refused
	}{
		{"ecdsa sha256", keystore.ECDSAP256, d256, crypto.SHA256, crypto.SHA256},
		{"ecdsa sha384 on p256", keystore.ECDSAP256, d384, crypto.SHA384, crypto.SHA384},
		{"pkcs1v15", keystore.RSA2048, d256, crypto.SHA256, crypto.SHA256},
		{"pss equals hash", keystore.RSA2048, d256, pssEq, pssEq},
		{"pss explicit hash length", keystore.RSA2048, d256, &rsa.PSSOptions{SaltLength: 32, Hash: crypto.SHA256}, pssEq},
		{"pss auto", keystore.RSA2048, d256, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256}, pssEq},
		{"pss other salt", keystore.RSA2048, d256, &rsa.PSSOptions{SaltLength: 20, Hash: crypto.SHA256}, nil},
		{"pss on ecdsa", keystore.ECDSAP256, d256, pssEq, nil},
		{"wrong digest length", keystore.RSA2048, d384, crypto.SHA256, nil},
		{"raw (no hash)", keystore.RSA2048, d256, crypto.Hash(0), nil},
		{"md5sha1", keystore.RSA2048, make([]byte, 36), crypto.MD5SHA1, nil},
		{"sha3", keystore.ECDSAP256, d256, crypto.SHA3_256, nil},
		{"nil options", keystore.ECDSAP256, d256, nil, nil},
	} {
		got, err := signerOpts(c.alg, c.digest, c.opts)
		if c.want == nil {
			if err == nil {
				t.Errorf("%s: accepted as %v", c.name, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		gp, gotPSS := got.(*rsa.PSSOptions)
		wp, wantPSS := c.want.(*rsa.PSSOptions)
		if gotPSS != wantPSS || gotPSS && *gp != *wp || !gotPSS && got != c.want {
			t.Errorf("%s: %#v, want %#v", c.name, got, c.want)
		}
	}
	if _, err := signerOpts(keystore.RSA2048, d256, &rsa.PSSOptions{SaltLength: 20, Hash: crypto.SHA256}); !errors.Is(err, keystore.ErrUnsupported) {
		t.Errorf("an odd PSS salt: %v, want ErrUnsupported", err)
	}
}
