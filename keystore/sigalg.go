package keystore

import (
	"crypto/x509"
	"fmt"
	"strings"
)

// SignatureAlgorithm is one of the signature algorithm names AWS IoT lists for
// certificates (the names are AWS's, so they match its documentation and errors).
type SignatureAlgorithm string

// The names AWS IoT accepts. DSAWithSHA256 is accepted on certificates a CA
// issued, never for a CSR a device signs: no device key is DSA.
const (
	SHA256WithRSA        SignatureAlgorithm = "SHA256WITHRSA"
	SHA384WithRSA        SignatureAlgorithm = "SHA384WITHRSA"
	SHA512WithRSA        SignatureAlgorithm = "SHA512WITHRSA"
	SHA256WithRSAPSS     SignatureAlgorithm = "SHA256WITHRSAANDMGF1"
	SHA384WithRSAPSS     SignatureAlgorithm = "SHA384WITHRSAANDMGF1"
	SHA512WithRSAPSS     SignatureAlgorithm = "SHA512WITHRSAANDMGF1"
	ECDSAWithSHA256      SignatureAlgorithm = "ECDSA-WITH-SHA256"
	ECDSAWithSHA384      SignatureAlgorithm = "ECDSA-WITH-SHA384"
	ECDSAWithSHA512      SignatureAlgorithm = "ECDSA-WITH-SHA512"
	DSAWithSHA256        SignatureAlgorithm = "DSA_WITH_SHA256"
	noSignatureAlgorithm SignatureAlgorithm = ""
)

var sigAlgs = []struct {
	name SignatureAlgorithm
	x509 x509.SignatureAlgorithm
}{
	{SHA256WithRSA, x509.SHA256WithRSA},
	{SHA384WithRSA, x509.SHA384WithRSA},
	{SHA512WithRSA, x509.SHA512WithRSA},
	{SHA256WithRSAPSS, x509.SHA256WithRSAPSS},
	{SHA384WithRSAPSS, x509.SHA384WithRSAPSS},
	{SHA512WithRSAPSS, x509.SHA512WithRSAPSS},
	{ECDSAWithSHA256, x509.ECDSAWithSHA256},
	{ECDSAWithSHA384, x509.ECDSAWithSHA384},
	{ECDSAWithSHA512, x509.ECDSAWithSHA512},
	{DSAWithSHA256, x509.DSAWithSHA256},
}

// SignatureAlgorithms lists the names usable for a CSR signed by a key of alg.
func SignatureAlgorithms(alg Algorithm) []SignatureAlgorithm {
	if alg.IsRSA() {
		return []SignatureAlgorithm{SHA256WithRSA, SHA384WithRSA, SHA512WithRSA, SHA256WithRSAPSS, SHA384WithRSAPSS, SHA512WithRSAPSS}
	}
	return []SignatureAlgorithm{ECDSAWithSHA256, ECDSAWithSHA384, ECDSAWithSHA512}
}

// DefaultSignatureAlgorithm matches the digest to the key: ECDSA-WITH-SHA256/384/512
// for P-256/384/521 and SHA256WITHRSA for RSA, which every TLS stack and CA takes.
func DefaultSignatureAlgorithm(alg Algorithm) SignatureAlgorithm {
	switch alg {
	case ECDSAP256:
		return ECDSAWithSHA256
	case ECDSAP384:
		return ECDSAWithSHA384
	case ECDSAP521:
		return ECDSAWithSHA512
	}
	return SHA256WithRSA
}

// ParseSignatureAlgorithm takes one of AWS's names (case-insensitive).
func ParseSignatureAlgorithm(name string) (SignatureAlgorithm, error) {
	n := SignatureAlgorithm(strings.ToUpper(strings.TrimSpace(name)))
	for _, s := range sigAlgs {
		if s.name == n {
			return n, nil
		}
	}
	names := make([]string, 0, len(sigAlgs))
	for _, s := range sigAlgs {
		names = append(names, string(s.name))
	}
	return "", fmt.Errorf("keystore: signature algorithm %q: %w: AWS IoT accepts %s", name, ErrPolicy, strings.Join(names, ", "))
}

// X509 is the crypto/x509 constant for the name.
func (s SignatureAlgorithm) X509() x509.SignatureAlgorithm {
	for _, a := range sigAlgs {
		if a.name == s {
			return a.x509
		}
	}
	return x509.UnknownSignatureAlgorithm
}

// signatureAlgorithmName is the AWS name of a crypto/x509 algorithm, or "".
func signatureAlgorithmName(x x509.SignatureAlgorithm) SignatureAlgorithm {
	for _, a := range sigAlgs {
		if a.x509 == x {
			return a.name
		}
	}
	return noSignatureAlgorithm
}

// CheckSignatureAlgorithmForKey refuses a pairing that cannot work, such as an
// RSA signature name for an ECDSA key, or DSA for any device key.
func CheckSignatureAlgorithmForKey(s SignatureAlgorithm, alg Algorithm) error {
	for _, ok := range SignatureAlgorithms(alg) {
		if ok == s {
			return nil
		}
	}
	return fmt.Errorf("keystore: signature algorithm %s cannot be made by a %s key: %w: use one of %v", s, alg, ErrPolicy, SignatureAlgorithms(alg))
}
