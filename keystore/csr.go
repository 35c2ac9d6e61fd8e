package keystore

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"strings"
)

// CSROptions are the choices for CreateCSR. The zero value asks for the default
// signature algorithm for the key.
type CSROptions struct {
	// SignatureAlgorithm, if set, must suit the key (see SignatureAlgorithms).
	SignatureAlgorithm SignatureAlgorithm
	// DNSNames are optional subjectAltName entries; AWS IoT ignores them.
	DNSNames []string
}

// CreateCSR makes a PKCS#10 request signed by key, for subject given as
// "CN=...,O=...". The key signs inside its store. The result is verified against
// the key's public key and the policy before it is returned, so a store that
// signs wrongly is caught here rather than by AWS IoT.
func CreateCSR(key Key, subject string, opts CSROptions) (der []byte, err error) {
	name, err := ParseSubject(subject)
	if err != nil {
		return nil, err
	}
	alg := key.Algorithm()
	sa := opts.SignatureAlgorithm
	if sa == "" {
		sa = DefaultSignatureAlgorithm(alg)
	}
	if err := CheckSignatureAlgorithmForKey(sa, alg); err != nil {
		return nil, err
	}
	tmpl := &x509.CertificateRequest{Subject: name, SignatureAlgorithm: sa.X509(), DNSNames: opts.DNSNames}
	der, err = x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("keystore: signing CSR with %s: %w", RedactURI(key.URI()), err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("keystore: CSR made with %s does not parse: %w", RedactURI(key.URI()), err)
	}
	if err := CheckCSR(csr); err != nil {
		return nil, fmt.Errorf("keystore: CSR made with %s: %w", RedactURI(key.URI()), err)
	}
	return der, nil
}

// EncodeCSR wraps a DER CSR in PEM, as CreateCertificateFromCsr wants it.
func EncodeCSR(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

var subjectOIDs = map[string]asn1.ObjectIdentifier{
	"CN":           {2, 5, 4, 3},
	"SERIALNUMBER": {2, 5, 4, 5},
	"C":            {2, 5, 4, 6},
	"L":            {2, 5, 4, 7},
	"ST":           {2, 5, 4, 8},
	"STREET":       {2, 5, 4, 9},
	"O":            {2, 5, 4, 10},
	"OU":           {2, 5, 4, 11},
	"DC":           {0, 9, 2342, 19200300, 100, 1, 25},
	"UID":          {0, 9, 2342, 19200300, 100, 1, 1},
}

// ParseSubject reads a distinguished name written "CN=dev-1,O=Acme,C=DE", in
// RFC 4514 order-free form; a comma inside a value is escaped as "\,".
func ParseSubject(s string) (pkix.Name, error) {
	var name pkix.Name
	s = strings.TrimSpace(s)
	if s == "" {
		return name, fmt.Errorf("keystore: empty subject: write it as CN=thing-name[,O=org]")
	}
	for _, rdn := range splitUnescaped(s, ',') {
		k, v, ok := strings.Cut(rdn, "=")
		k = strings.ToUpper(strings.TrimSpace(k))
		v = unescapeDN(strings.TrimSpace(v))
		if !ok || k == "" || v == "" {
			return name, fmt.Errorf("keystore: subject %q: %q is not NAME=value", s, rdn)
		}
		oid, known := subjectOIDs[k]
		if !known {
			return name, fmt.Errorf("keystore: subject %q: unknown attribute %q; use CN, O, OU, C, ST, L, STREET, SERIALNUMBER, DC or UID", s, k)
		}
		name.ExtraNames = append(name.ExtraNames, pkix.AttributeTypeAndValue{Type: oid, Value: v})
	}
	return name, nil
}

func splitUnescaped(s string, sep byte) []string {
	var parts []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case sep:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

func unescapeDN(v string) string {
	if !strings.Contains(v, `\`) {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && i+1 < len(v) {
			i++
		}
		b.WriteByte(v[i])
	}
	return b.String()
}
