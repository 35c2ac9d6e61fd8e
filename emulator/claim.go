package emulator

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// RegisterClaim plays the factory: it makes the claim certificate a device is
// flashed with beside its claim key — self-signed, valid from an hour ago for a
// year by the emulator's clock — and registers it in account without a CA, as
// RegisterCertificateWithoutCA does. It returns the certificate as PEM, for the
// device's claim.cert, and its registration. The key signs the certificate, so
// it may be in any key store. The certificate gets the least-privilege
// ClaimPolicy (for every template), stored as ClaimPolicyName.
func (r *Registry) RegisterClaim(ctx context.Context, account string, key crypto.Signer, commonName string) ([]byte, Certificate, error) {
	now := r.cfg.now()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, Certificate{}, fmt.Errorf("emulator: making the claim certificate %q: %w", commonName, err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	c, err := r.RegisterCertificate(ctx, account, certPEM, CertificateOptions{WithoutCA: true})
	if err != nil {
		return nil, Certificate{}, err
	}
	// As a factory would on AWS: the claim may provision and nothing else.
	if _, err := r.CreatePolicy(ctx, account, ClaimPolicyName, ClaimPolicy("*")); err != nil && !errors.Is(err, ErrExists) {
		return nil, Certificate{}, err
	}
	if err := r.AttachPolicy(ctx, account, ClaimPolicyName, c.ID); err != nil {
		return nil, Certificate{}, err
	}
	return certPEM, c, nil
}

// ClaimPolicyName is the policy RegisterClaim attaches to claim certificates.
const ClaimPolicyName = "thingcert-claim"
