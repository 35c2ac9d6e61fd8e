package rotation

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/thingcert/thingcert/keystore"
)

// VerifyOptions are the checks' parameters.
type VerifyOptions struct {
	// PublicKey is the new key's: the certificate must be for it.
	PublicKey crypto.PublicKey
	// Roots are the CAs allowed to sign device certificates. Nil skips the chain
	// check, for issuers whose CA the device cannot know: AWS IoT's
	// CreateCertificateFromCsr signs with an Amazon CA that is not published.
	Roots *x509.CertPool
	// CertificateID, if set, is the issuer's ID for the certificate, which must
	// be the SHA-256 of its DER as AWS IoT defines it.
	CertificateID string
	// Now is the clock.
	Now time.Time
}

// Verify checks an issuer's answer before the device uses it: the leaf is for
// the new key, passes AWS IoT's algorithm policy, is valid now, chains to the
// configured roots and carries the ID the issuer gave. Each failure wraps
// ErrBadCertificate (fatal: the rotation rolls back) and says which check
// failed and why.
func Verify(chain []*x509.Certificate, o VerifyOptions) error {
	if len(chain) == 0 || chain[0] == nil {
		return fmt.Errorf("rotation: %w: the issuer returned no certificate", ErrBadCertificate)
	}
	leaf := chain[0]
	name := fmt.Sprintf("certificate %q (serial %s)", leaf.Subject.String(), leaf.SerialNumber)
	if err := keystore.CheckCertificate(leaf); err != nil {
		return fmt.Errorf("rotation: %w: %s: %w", ErrBadCertificate, name, err)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := o.PublicKey.(equaler)
	if !ok || !pub.Equal(leaf.PublicKey) {
		return fmt.Errorf("rotation: %w: %s is for another key than the one the CSR was made with; the issuer answered someone else's request or substituted a key", ErrBadCertificate, name)
	}
	if o.Now.Before(leaf.NotBefore) {
		return fmt.Errorf("rotation: %w: %s is not valid before %s (now %s); if the device clock is behind, fix it (NTP) and the certificate will be requested again",
			ErrBadCertificate, name, leaf.NotBefore.UTC().Format(time.RFC3339), o.Now.UTC().Format(time.RFC3339))
	}
	if !o.Now.Before(leaf.NotAfter) {
		return fmt.Errorf("rotation: %w: %s expired at %s (now %s)", ErrBadCertificate, name, leaf.NotAfter.UTC().Format(time.RFC3339), o.Now.UTC().Format(time.RFC3339))
	}
	if o.Roots != nil {
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{
			Roots: o.Roots, Intermediates: inter, CurrentTime: o.Now,
			// A certificate without extended key usage passes (crypto/x509 treats
			// it as unrestricted); one with it must allow client authentication.
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		if err != nil {
			return fmt.Errorf("rotation: %w: %s issued by %q does not chain to the configured trust (rotation trust): %w", ErrBadCertificate, name, leaf.Issuer.String(), err)
		}
	}
	if o.CertificateID != "" && o.CertificateID != certificateID(leaf) {
		return fmt.Errorf("rotation: %w: the issuer named the certificate %s but its SHA-256 is %s", ErrBadCertificate, o.CertificateID, certificateID(leaf))
	}
	return nil
}
