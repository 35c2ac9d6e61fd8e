package keystore_test

import (
	"crypto/x509"
	"encoding/asn1"
	"strings"
	"testing"

	"github.com/thingcert/thingcert/keystore"
)

func TestParseSubject(t *testing.T) {
	n, err := keystore.ParseSubject(`CN=gw-17, O=Acme\, Inc.,C=DE`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range n.ExtraNames {
		got = append(got, a.Value.(string))
	}
	if strings.Join(got, "|") != "gw-17|Acme, Inc.|DE" {
		t.Errorf("values %q", got)
	}
	if !n.ExtraNames[0].Type.Equal(asn1.ObjectIdentifier{2, 5, 4, 3}) {
		t.Errorf("first attribute is not CN")
	}
	for _, bad := range []string{"", "CN", "CN=", "XX=1", "CN=a,,O=b"} {
		if _, err := keystore.ParseSubject(bad); err == nil {
			t.Errorf("ParseSubject(%q) accepted", bad)
		}
	}
}

func TestCSRSubjectRoundTrip(t *testing.T) {
	k := newMemKey(t, keystore.ECDSAP256)
	der, err := keystore.CreateCSR(k, "CN=thing-1,O=Acme", keystore.CSROptions{})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if csr.Subject.CommonName != "thing-1" || csr.Subject.Organization[0] != "Acme" || csr.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		t.Errorf("CSR subject %v alg %v", csr.Subject, csr.SignatureAlgorithm)
	}
	if _, err := keystore.CreateCSR(k, "CN=x", keystore.CSROptions{SignatureAlgorithm: keystore.SHA256WithRSA}); err == nil {
		t.Errorf("RSA signature with an EC key accepted")
	}
}
