// Package certreport carries a device's new certificate in a job execution's
// statusDetails, for a device whose certificate the cloud side must register
// itself: one signed by a CA that is not registered with AWS IoT, which the
// owner registers in each of the device's accounts with
// RegisterCertificateWithoutCA (multi-account registration, SNI_ONLY).
//
// AWS IoT Jobs takes statusDetails as a map of strings whose keys are 1–128
// characters of [a-zA-Z0-9:_-] and whose values are 1–1,024 characters with no
// control character ([^\p{C}]+): a PEM, with its line breaks and about 1 KB
// for an RSA-2048 certificate, fits in no value. The certificate therefore
// travels as its DER in standard base64, cut into values of at most 1,024
// characters under the keys newCertificate:0, newCertificate:1, …, with
// newCertificateParts (how many) and newCertificateId (the SHA-256 of the DER,
// AWS IoT's certificate ID) to check the reassembly:
//
//	{"step": "awaiting-registration", "certificateId": "<current>",
//	 "newCertificateId": "<sha256 hex>", "newCertificateParts": "1",
//	 "newCertificate:0": "MIIB…"}
//
// With the four other keys the whole report stays within ten pairs (the most
// AWS allows in CancelJobExecution's statusDetails; the device API documents
// no count, so the stricter rule is kept), so MaxParts parts carry a DER of up
// to 4,608 bytes: an RSA-4096 certificate with long names fits.
//
// The package imports only the standard library: the device and the fleet
// tool both use it.
package certreport

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The statusDetails keys.
const (
	KeyStep          = "step"
	KeyCertificateID = "certificateId"
	KeyNewID         = "newCertificateId"
	KeyParts         = "newCertificateParts"
	// KeyPartPrefix followed by 0, 1, … names each part.
	KeyPartPrefix = "newCertificate:"
)

// StepAwaitingRegistration is the step a device reports while it waits for
// its new certificate to be registered in its accounts.
const StepAwaitingRegistration = "awaiting-registration"

// MaxValue is the longest statusDetails value AWS IoT Jobs accepts.
const MaxValue = 1024

// MaxParts is the most parts a report uses (see the package comment).
const MaxParts = 6

// ErrNoReport: the status details carry no certificate.
var ErrNoReport = errors.New("no certificate in the status details")

// ErrBadReport: the status details carry a certificate that does not
// reassemble (a part missing, bad base64, an ID that does not match).
var ErrBadReport = errors.New("malformed certificate report")

// Encode is the statusDetails that report der, the device's new certificate,
// while it keeps currentID: every key and value within AWS's limits. A DER
// longer than MaxParts parts hold is an error.
func Encode(der []byte, currentID string) (map[string]string, error) {
	b64 := base64.StdEncoding.EncodeToString(der)
	n := (len(b64) + MaxValue - 1) / MaxValue
	if n == 0 || n > MaxParts {
		return nil, fmt.Errorf("certreport: a certificate of %d bytes needs %d parts of statusDetails; at most %d fit AWS IoT Jobs' limits", len(der), n, MaxParts)
	}
	sum := sha256.Sum256(der)
	out := map[string]string{
		KeyStep:  StepAwaitingRegistration,
		KeyNewID: hex.EncodeToString(sum[:]),
		KeyParts: strconv.Itoa(n),
	}
	if currentID != "" {
		out[KeyCertificateID] = currentID
	}
	for i := range n {
		out[KeyPartPrefix+strconv.Itoa(i)] = b64[i*MaxValue : min((i+1)*MaxValue, len(b64))]
	}
	return out, nil
}

// Decode reassembles the certificate a report carries and checks it against
// newCertificateId. It returns the DER and its ID.
func Decode(details map[string]string) (der []byte, id string, err error) {
	ps, ok := details[KeyParts]
	if !ok {
		return nil, "", ErrNoReport
	}
	n, err := strconv.Atoi(ps)
	if err != nil || n < 1 || n > MaxParts {
		return nil, "", fmt.Errorf("certreport: %w: %s is %q, want 1 to %d", ErrBadReport, KeyParts, ps, MaxParts)
	}
	var b strings.Builder
	for i := range n {
		k := KeyPartPrefix + strconv.Itoa(i)
		p, ok := details[k]
		if !ok || p == "" {
			return nil, "", fmt.Errorf("certreport: %w: %s is missing", ErrBadReport, k)
		}
		b.WriteString(p)
	}
	der, err = base64.StdEncoding.DecodeString(b.String())
	if err != nil {
		return nil, "", fmt.Errorf("certreport: %w: the parts are not base64: %v", ErrBadReport, err)
	}
	sum := sha256.Sum256(der)
	id = hex.EncodeToString(sum[:])
	if want := strings.ToLower(details[KeyNewID]); want != id {
		return nil, "", fmt.Errorf("certreport: %w: %s is %q but the certificate's SHA-256 is %s", ErrBadReport, KeyNewID, want, id)
	}
	return der, id, nil
}
