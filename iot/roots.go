package iot

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"os"

	"golang.org/x/crypto/x509roots/fallback/bundle"

	"github.com/thingcert/thingcert/internal/pemcert"
)

// AmazonRootSubjects are the subjects of the CAs that anchor AWS IoT Core's ATS
// endpoints: Amazon Root CA 1 (RSA 2048) and 3 (ECC P-256) are in use, 2 and 4
// are reserved, and all four are cross-signed by Starfield Services Root CA G2,
// which older chains end in.
func AmazonRootSubjects() []string {
	return []string{
		"CN=Amazon Root CA 1,O=Amazon,C=US",
		"CN=Amazon Root CA 2,O=Amazon,C=US",
		"CN=Amazon Root CA 3,O=Amazon,C=US",
		"CN=Amazon Root CA 4,O=Amazon,C=US",
		`CN=Starfield Services Root Certificate Authority - G2,O=Starfield Technologies\, Inc.,L=Scottsdale,ST=Arizona,C=US`,
	}
}

// AmazonRoots returns a pool holding only the AWS IoT roots, taken from the
// Mozilla/NSS bundle compiled into the program
// (golang.org/x/crypto/x509roots/fallback/bundle). The operating system's trust
// store is not consulted: a device should trust exactly what its endpoint needs.
//
// The bundle holds about 150 roots; only those whose DER contains one of the
// wanted names are parsed, so building the pool costs a few tens of
// microseconds. Nothing is parsed until this is called, and a program given a
// CA file never calls it.
func AmazonRoots() (*x509.CertPool, error) {
	certs, err := AmazonRootCertificates()
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// AmazonRootCertificates returns the five AWS IoT roots from the bundle, in the
// order of AmazonRootSubjects.
func AmazonRootCertificates() ([]*x509.Certificate, error) {
	want := AmazonRootSubjects()
	found := make([]*x509.Certificate, len(want))
	for root := range bundle.Roots() {
		// A cheap byte search first: the subject's CN is stored verbatim in the DER.
		if !bytes.Contains(root.Certificate, []byte("Amazon Root CA")) &&
			!bytes.Contains(root.Certificate, []byte("Starfield Services Root")) {
			continue
		}
		c, err := x509.ParseCertificate(root.Certificate)
		if err != nil {
			return nil, fmt.Errorf("iot: built-in root bundle: %w", err)
		}
		if root.Constraint != nil {
			// None of AWS's roots is constrained today; a constrained one would need
			// AddCertWithConstraint, which a plain slice cannot carry.
			continue
		}
		for i, s := range want {
			if c.Subject.String() == s {
				found[i] = c
			}
		}
	}
	for i, c := range found {
		if c == nil {
			return nil, fmt.Errorf("iot: built-in root bundle lacks %q: update golang.org/x/crypto/x509roots/fallback or pass a CA file", want[i])
		}
	}
	return found, nil
}

// LoadCAFile reads a PEM file of trusted root certificates, for a test broker
// or a private endpoint. It refuses a file without a single certificate, so a
// wrong path or a key file given by mistake is caught here rather than as an
// "unknown authority" later.
func LoadCAFile(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("iot: CA file: %w", err)
	}
	certs, err := pemcert.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("iot: CA file %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}
