package keystore

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
)

// oidRSASSAPSS is id-RSASSA-PSS used as a public key algorithm, which crypto/x509
// cannot parse and so reports as an unknown key.
var oidRSASSAPSS = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 10}

const pssKeyRule = "the public key is RSA-PSS (id-RSASSA-PSS), which AWS IoT accepts only on TLS 1.3 and Go's TLS cannot use at all; use an ordinary RSA key (rsaEncryption) and, if PSS signatures are wanted, SHA256WITHRSAANDMGF1"

// CheckCSR applies the policy of CreateCertificateFromCsr to a CSR made anywhere:
// its key must be RSA ≥ 2048 bits or ECC P-256/384/521, its signature algorithm
// one AWS IoT lists (not DSA), and its signature valid.
func CheckCSR(csr *x509.CertificateRequest) error {
	if isPSSKey(csr.RawSubjectPublicKeyInfo) {
		return fmt.Errorf("keystore: CSR: %w: %s", ErrPolicy, pssKeyRule)
	}
	alg, err := AlgorithmOf(csr.PublicKey)
	if err != nil {
		return fmt.Errorf("keystore: CSR: %w", err)
	}
	name := signatureAlgorithmName(csr.SignatureAlgorithm)
	if name == noSignatureAlgorithm || name == DSAWithSHA256 {
		return fmt.Errorf("keystore: CSR signed with %s: %w: AWS IoT accepts CSR signatures %v", csr.SignatureAlgorithm, ErrPolicy, SignatureAlgorithms(alg))
	}
	if err := CheckSignatureAlgorithmForKey(name, alg); err != nil {
		return err
	}
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("keystore: CSR signature does not verify: %w", err)
	}
	return nil
}

// CheckCertificate applies AWS IoT's rules for device certificates: key algorithm
// and size, and a signature algorithm from its list (DSA_WITH_SHA256 included,
// since that is the issuing CA's choice).
func CheckCertificate(cert *x509.Certificate) error {
	if isPSSKey(cert.RawSubjectPublicKeyInfo) {
		return fmt.Errorf("keystore: certificate %q: %w: %s", cert.Subject, ErrPolicy, pssKeyRule)
	}
	if _, err := AlgorithmOf(cert.PublicKey); err != nil {
		return fmt.Errorf("keystore: certificate %q: %w", cert.Subject, err)
	}
	if signatureAlgorithmName(cert.SignatureAlgorithm) == noSignatureAlgorithm {
		return fmt.Errorf("keystore: certificate %q is signed with %s: %w: AWS IoT accepts SHA256/384/512WITHRSA, SHA256/384/512WITHRSAANDMGF1, ECDSA-WITH-SHA256/384/512 and DSA_WITH_SHA256", cert.Subject, cert.SignatureAlgorithm, ErrPolicy)
	}
	return nil
}

func isPSSKey(rawSPKI []byte) bool {
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(rawSPKI, &spki); err != nil {
		return false
	}
	return spki.Algorithm.Algorithm.Equal(oidRSASSAPSS)
}
