package keystore

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"
	"strings"
)

// Algorithm names a key type AWS IoT accepts for a device certificate.
type Algorithm string

// The algorithms a device key may use. AWS IoT's CreateCertificateFromCsr takes
// RSA of at least 2048 bits or ECC on NIST P-256, P-384 or P-521; thingcert
// offers the RSA sizes hardware commonly supports.
const (
	ECDSAP256 Algorithm = "ecdsa-p256"
	ECDSAP384 Algorithm = "ecdsa-p384"
	ECDSAP521 Algorithm = "ecdsa-p521"
	RSA2048   Algorithm = "rsa-2048"
	RSA3072   Algorithm = "rsa-3072"
	RSA4096   Algorithm = "rsa-4096"
)

// DefaultAlgorithm is used when none is asked for: small keys, fast signatures
// on every TPM and token, and accepted by AWS IoT on TLS 1.2 and 1.3.
const DefaultAlgorithm = ECDSAP256

// Algorithms lists every allowed algorithm, default first.
func Algorithms() []Algorithm {
	return []Algorithm{ECDSAP256, ECDSAP384, ECDSAP521, RSA2048, RSA3072, RSA4096}
}

// ParseAlgorithm checks a name against the policy. An empty name is the default.
// A refused name gets an error wrapping ErrPolicy that says which rule it breaks.
func ParseAlgorithm(name string) (Algorithm, error) {
	if name == "" {
		return DefaultAlgorithm, nil
	}
	n := strings.ToLower(strings.TrimSpace(name))
	for _, a := range Algorithms() {
		if n == string(a) {
			return a, nil
		}
	}
	return "", fmt.Errorf("keystore: algorithm %q: %w: %s", name, ErrPolicy, ruleFor(n))
}

// ruleFor explains why a requested algorithm name is refused.
func ruleFor(n string) string {
	var bits int
	switch {
	case strings.Contains(n, "pss"):
		return "RSA-PSS keys (id-RSASSA-PSS) work with AWS IoT only on TLS 1.3 and Go's TLS cannot use them; make an rsa-2048 key and sign with SHA256WITHRSAANDMGF1 instead"
	case strings.HasPrefix(n, "rsa"):
		if _, err := fmt.Sscanf(strings.TrimLeft(strings.TrimPrefix(n, "rsa"), "-"), "%d", &bits); err == nil && bits < 2048 {
			return fmt.Sprintf("AWS IoT requires RSA keys of at least 2048 bits (asked for %d); use rsa-2048, rsa-3072 or rsa-4096", bits)
		}
		return "thingcert makes RSA keys of 2048, 3072 or 4096 bits; use rsa-2048, rsa-3072 or rsa-4096"
	case strings.HasPrefix(n, "ecdsa-") || strings.HasPrefix(n, "ec-") || strings.HasPrefix(n, "p-") || strings.HasPrefix(n, "secp") || strings.HasPrefix(n, "prime"):
		return "AWS IoT accepts ECC keys only on NIST P-256, P-384 or P-521; use ecdsa-p256, ecdsa-p384 or ecdsa-p521"
	case strings.Contains(n, "ed25519") || strings.Contains(n, "ed448") || strings.Contains(n, "eddsa"):
		return "AWS IoT does not accept EdDSA keys for device certificates; use ecdsa-p256"
	}
	return "allowed: " + joinAlgorithms()
}

func joinAlgorithms() string {
	names := make([]string, 0, 6)
	for _, a := range Algorithms() {
		names = append(names, string(a))
	}
	return strings.Join(names, ", ")
}

// IsRSA reports whether the algorithm is an RSA one.
func (a Algorithm) IsRSA() bool { return strings.HasPrefix(string(a), "rsa-") }

// RSABits is the modulus size of an RSA algorithm, 0 for others.
func (a Algorithm) RSABits() int {
	switch a {
	case RSA2048:
		return 2048
	case RSA3072:
		return 3072
	case RSA4096:
		return 4096
	}
	return 0
}

// Curve is the elliptic curve of an ECDSA algorithm, nil for others.
func (a Algorithm) Curve() elliptic.Curve {
	switch a {
	case ECDSAP256:
		return elliptic.P256()
	case ECDSAP384:
		return elliptic.P384()
	case ECDSAP521:
		return elliptic.P521()
	}
	return nil
}

// Hash is the digest that pairs with the key by default: SHA-256 for RSA and
// P-256, SHA-384 for P-384, SHA-512 for P-521.
func (a Algorithm) Hash() crypto.Hash {
	switch a {
	case ECDSAP384:
		return crypto.SHA384
	case ECDSAP521:
		return crypto.SHA512
	}
	return crypto.SHA256
}

// AlgorithmOf classifies a public key under the policy. A key AWS IoT would refuse
// gets an error wrapping ErrPolicy that says why.
func AlgorithmOf(pub crypto.PublicKey) (Algorithm, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		bits := k.N.BitLen()
		switch {
		case bits < 2048:
			return "", fmt.Errorf("keystore: RSA-%d key: %w: AWS IoT requires RSA keys of at least 2048 bits", bits, ErrPolicy)
		case bits == 2048:
			return RSA2048, nil
		case bits == 3072:
			return RSA3072, nil
		case bits == 4096:
			return RSA4096, nil
		}
		return "", fmt.Errorf("keystore: RSA-%d key: %w: thingcert handles RSA keys of 2048, 3072 or 4096 bits", bits, ErrPolicy)
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return ECDSAP256, nil
		case elliptic.P384():
			return ECDSAP384, nil
		case elliptic.P521():
			return ECDSAP521, nil
		}
		return "", fmt.Errorf("keystore: ECDSA key on curve %s: %w: AWS IoT accepts ECC keys only on NIST P-256, P-384 or P-521", k.Curve.Params().Name, ErrPolicy)
	case ed25519.PublicKey:
		return "", fmt.Errorf("keystore: Ed25519 key: %w: AWS IoT does not accept EdDSA keys for device certificates", ErrPolicy)
	case nil:
		return "", fmt.Errorf("keystore: no public key: %w", ErrPolicy)
	}
	return "", fmt.Errorf("keystore: %T key: %w: AWS IoT accepts RSA (2048 bits or more) and ECC (P-256, P-384, P-521) keys", pub, ErrPolicy)
}

// Check refuses an algorithm outside the policy (including the empty one: a
// store is always told what to make). Backends call it first in Generate.
func (a Algorithm) Check() error {
	for _, ok := range Algorithms() {
		if a == ok {
			return nil
		}
	}
	return fmt.Errorf("keystore: algorithm %q: %w: %s", string(a), ErrPolicy, ruleFor(strings.ToLower(string(a))))
}
