// Package pemcert reads certificates from PEM, the form in which they reach a
// device: CA files, certificate chains, AWS IoT's certificatePem.
package pemcert

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// ErrNone: the data holds no CERTIFICATE block (a wrong file, or a key given
// where a certificate was meant).
var ErrNone = errors.New("no PEM CERTIFICATE block found")

// Parse returns the certificates of data's CERTIFICATE blocks, in order, and
// passes over other blocks. A certificate that does not parse is an error
// naming its position, counted from 1.
func Parse(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, ErrNone
	}
	return certs, nil
}

// HasPrivateKey reports whether data holds a PEM private key of any kind.
func HasPrivateKey(data []byte) bool {
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return false
		}
		if strings.HasSuffix(b.Type, "PRIVATE KEY") {
			return true
		}
	}
}

// ID is a certificate's ID as AWS IoT gives it: the hex SHA-256 of its DER.
func ID(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}
