package tpmstore

import (
	"crypto"
	"crypto/rsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// hashAlg maps a digest to the TPM's name for it. SHA-1 and the rest are
// refused: AWS IoT's policy and modern TLS use SHA-2 only.
func hashAlg(h crypto.Hash) (tpm2.TPMAlgID, error) {
	switch h {
	case crypto.SHA256:
		return tpm2.TPMAlgSHA256, nil
	case crypto.SHA384:
		return tpm2.TPMAlgSHA384, nil
	case crypto.SHA512:
		return tpm2.TPMAlgSHA512, nil
	}
	return 0, fmt.Errorf("digest %v: thingcert's TPM keys sign SHA-256, SHA-384 or SHA-512 digests", h)
}

// ecdsaDER encodes a TPM ECDSA signature (r, s) as crypto.Signer callers
// expect it: ASN.1 SEQUENCE { r INTEGER, s INTEGER }.
func ecdsaDER(r, s []byte) ([]byte, error) {
	if len(r) == 0 || len(s) == 0 {
		return nil, errors.New("TPM returned an empty ECDSA signature")
	}
	return asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(r), new(big.Int).SetBytes(s)})
}

// checkPSS verifies a PSS signature the TPM made against what the caller asked
// for. A TPM picks its own salt length (the TPM 2.0 spec allows the largest
// possible, libtpms and most chips use the hash length), so a mismatch is
// caught here with a message, not later as a failed TLS handshake.
// saltLength is the caller's rsa.PSSOptions.SaltLength.
func checkPSS(pub *rsa.PublicKey, h crypto.Hash, digest, sig []byte, saltLength int) error {
	want := saltLength
	if want == rsa.PSSSaltLengthEqualsHash {
		want = h.Size()
	}
	opts := &rsa.PSSOptions{Hash: h, SaltLength: want}
	if saltLength == rsa.PSSSaltLengthAuto {
		opts.SaltLength = rsa.PSSSaltLengthAuto
	}
	err := rsa.VerifyPSS(pub, h, digest, sig, opts)
	if err == nil {
		return nil
	}
	got, serr := pssSaltLength(pub, h, sig)
	if serr == nil && got != want && rsa.VerifyPSS(pub, h, digest, sig, &rsa.PSSOptions{Hash: h, SaltLength: got}) == nil {
		return fmt.Errorf("the TPM made an RSA-PSS signature with a %d-byte salt, but %d bytes were asked for (crypto/tls and X.509 want the hash length, %d): this TPM cannot serve this request; use PKCS#1 v1.5 (SHA256WITHRSA) or an ECDSA key", got, want, h.Size())
	}
	return fmt.Errorf("the TPM's RSA-PSS signature does not verify with the key's public key: %w", err)
}

// pssSaltLength recovers the salt length of an RSA-PSS signature (RFC 8017
// 9.1.2 steps 1-10), to say what a TPM did when its signature does not match
// the caller's options.
func pssSaltLength(pub *rsa.PublicKey, h crypto.Hash, sig []byte) (int, error) {
	k := pub.Size()
	if len(sig) != k {
		return 0, errors.New("signature length differs from the modulus length")
	}
	s := new(big.Int).SetBytes(sig)
	if s.Cmp(pub.N) >= 0 {
		return 0, errors.New("signature out of range")
	}
	m := new(big.Int).Exp(s, big.NewInt(int64(pub.E)), pub.N)
	emBits := pub.N.BitLen() - 1
	emLen := (emBits + 7) / 8
	em := m.FillBytes(make([]byte, k))[k-emLen:]
	hLen := h.Size()
	if emLen < hLen+2 || em[emLen-1] != 0xbc {
		return 0, errors.New("not a PSS encoding")
	}
	db := append([]byte(nil), em[:emLen-hLen-1]...)
	mask := mgf1(h, em[emLen-hLen-1:emLen-1], len(db))
	for i := range db {
		db[i] ^= mask[i]
	}
	db[0] &= 0xff >> (8*emLen - emBits)
	for i, b := range db {
		if b == 0 {
			continue
		}
		if b == 1 {
			return len(db) - i - 1, nil
		}
		break
	}
	return 0, errors.New("not a PSS encoding")
}

func mgf1(h crypto.Hash, seed []byte, n int) []byte {
	out := make([]byte, 0, n+h.Size())
	var counter [4]byte
	for len(out) < n {
		d := h.New()
		d.Write(seed)
		d.Write(counter[:])
		out = d.Sum(out)
		for i := 3; i >= 0; i-- {
			counter[i]++
			if counter[i] != 0 {
				break
			}
		}
	}
	return out[:n]
}
