package stepca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// TokenClaims are what an X5C one-time token says, as step-ca v0.30
// checks them (authority/provisioner/x5c.go): the issuer is the
// provisioner's name, the audience the sign URL with the provisioner's ID as
// its fragment, the subject the CSR's common name, the SANs the CSR's names
// one for one.
type TokenClaims struct {
	Provisioner string
	// Audience is https://<ca>/1.0/sign#x5c/<provisioner>.
	Audience string
	Subject  string
	SANs     []string
	Now      time.Time
	// Lifetime is how long the token is valid; zero is 5 minutes.
	Lifetime time.Duration
}

type jwtHeader struct {
	Alg string   `json:"alg"`
	Typ string   `json:"typ"`
	X5C []string `json:"x5c"`
}

type jwtPayload struct {
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"`
	Audience  []string `json:"aud"`
	NotBefore int64    `json:"nbf"`
	IssuedAt  int64    `json:"iat"`
	Expiry    int64    `json:"exp"`
	ID        string   `json:"jti"`
	SANs      []string `json:"sans,omitempty"`
}

// Token is a JWS compact token over c, signed by key (ES256/ES384/ES512 for
// ECDSA by curve, RS256 for RSA, which every key store signs) with the
// certificate chain in its x5c header, leaf first. The jti is random, so
// each token is used once.
func Token(key crypto.Signer, chain []*x509.Certificate, c TokenClaims) (string, error) {
	if len(chain) == 0 {
		return "", errors.New("no certificate for the x5c header")
	}
	alg, hash, size, err := algorithm(key.Public())
	if err != nil {
		return "", err
	}
	h := jwtHeader{Alg: alg, Typ: "JWT"}
	for _, cert := range chain {
		h.X5C = append(h.X5C, base64.StdEncoding.EncodeToString(cert.Raw))
	}
	lifetime := c.Lifetime
	if lifetime <= 0 {
		lifetime = 5 * time.Minute
	}
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", err
	}
	p := jwtPayload{Issuer: c.Provisioner, Subject: c.Subject, Audience: []string{c.Audience},
		NotBefore: c.Now.Unix(), IssuedAt: c.Now.Unix(), Expiry: c.Now.Add(lifetime).Unix(), ID: hex.EncodeToString(jti[:]), SANs: c.SANs}
	hj, err := json.Marshal(h)
	if err != nil {
		return "", err
	}
	pj, err := json.Marshal(p)
	if err != nil {
		return "", err
	}
	input := base64.RawURLEncoding.EncodeToString(hj) + "." + base64.RawURLEncoding.EncodeToString(pj)
	hh := hash.New()
	hh.Write([]byte(input))
	sig, err := key.Sign(rand.Reader, hh.Sum(nil), hash)
	if err != nil {
		return "", err
	}
	if size > 0 {
		// JWS wants ECDSA's r and s side by side, each the curve's size,
		// where crypto.Signer gives ASN.1.
		if sig, err = rawECDSA(sig, size); err != nil {
			return "", err
		}
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

func algorithm(pub crypto.PublicKey) (alg string, hash crypto.Hash, ecSize int, err error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return "ES256", crypto.SHA256, 32, nil
		case elliptic.P384():
			return "ES384", crypto.SHA384, 48, nil
		case elliptic.P521():
			return "ES512", crypto.SHA512, 66, nil
		}
		return "", 0, 0, fmt.Errorf("no JWS algorithm for the ECDSA curve %s", k.Curve.Params().Name)
	case *rsa.PublicKey:
		return "RS256", crypto.SHA256, 0, nil
	}
	return "", 0, 0, fmt.Errorf("no JWS algorithm for a %T key", pub)
}

func rawECDSA(der []byte, size int) ([]byte, error) {
	var sig struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &sig); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("the key's ECDSA signature is not ASN.1: %v", err)
	}
	out := make([]byte, 2*size)
	sig.R.FillBytes(out[:size])
	sig.S.FillBytes(out[size:])
	return out, nil
}
