package emulator

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/thingcert/thingcert/keystore"
)

// attempt is what the emulator knows of a connection when it decides on it.
type attempt struct {
	SNI         string
	Chain       []*x509.Certificate // the client's certificates, leaf first
	TLSVersion  uint16
	ALPN        string // negotiated protocol
	RequireALPN bool   // the port-443 listener
	Now         time.Time
}

// verdict is the decision on an attempt: the account it belongs to and the
// certificate's ID, and when refused the rule and a reason a person can act on.
type verdict struct {
	Account string
	CertID  string
	Rule    Rule
	Reason  string
	// AutoRegisterCA, with RuleAutoRegistered, is the registered CA whose
	// auto-registration takes the unknown certificate, once the client has
	// proved it holds the key (JITR, and JITP with its template).
	AutoRegisterCA string
}

func (v verdict) refused() bool { return v.Rule != "" }

func (v verdict) refuse(rule Rule, format string, args ...any) verdict {
	v.Rule, v.Reason = rule, fmt.Sprintf(format, args...)
	return v
}

// decideTLS applies AWS IoT's connection rules to a TLS client: ALPN on the
// 443-style listener, the certificate's algorithms, account routing by SNI, the
// registry (registered, ACTIVE, within validity, chained to an ACTIVE CA). It
// reads the registry and nothing else: the same state and attempt always give
// the same verdict.
func (r *Registry) decideTLS(a attempt) verdict {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.decideTLSLocked(a)
}

func (r *Registry) decideTLSLocked(a attempt) verdict {
	var v verdict
	if a.RequireALPN && a.ALPN != alpnMQTT {
		got := a.ALPN
		if got == "" {
			got = "none"
		}
		return v.refuse(RuleALPN, "MQTT on port 443 needs ALPN %q (negotiated: %s); send it, or use port 8883", alpnMQTT, got)
	}
	if len(a.Chain) == 0 {
		return v.refuse(RuleHandshake, "no client certificate: AWS IoT authenticates devices by their X.509 certificate")
	}
	leaf := a.Chain[0]
	v.CertID = CertificateID(leaf.Raw)
	if isPSSKey(leaf.RawSubjectPublicKeyInfo) {
		if a.TLSVersion < tls.VersionTLS13 {
			return v.refuse(RulePSSNeedsTLS13, "the certificate's key is RSA-PSS, which AWS IoT accepts only on TLS 1.3 (this connection is %s)", tls.VersionName(a.TLSVersion))
		}
	} else if err := keystore.CheckCertificate(leaf); err != nil {
		return v.refuse(RuleAlgorithm, "%v", err)
	}

	acct := r.accountBySNILocked(a.SNI)
	if acct == nil {
		why := "no SNI"
		if a.SNI != "" {
			why = fmt.Sprintf("SNI %q names no account's endpoint", a.SNI)
		}
		var in []*accountRec
		for _, ac := range r.st.Accounts {
			if _, ok := ac.Certs[v.CertID]; ok {
				in = append(in, ac)
			}
		}
		switch len(in) {
		case 0:
			return v.refuse(RuleNotRegistered, "%s, and the certificate is registered in no account", why)
		case 1:
			acct = in[0]
			v.Account = acct.Name
			if mode := r.modeLocked(acct, acct.Certs[v.CertID]); mode != ModeDefault {
				return v.refuse(RuleSNIRequired, "%s; the certificate is %s in account %s (registered without a CA, or under a CA in SNI_ONLY mode), so it must send SNI %s", why, mode, acct.Name, acct.Endpoint())
			}
		default:
			names := make([]string, len(in))
			for i, ac := range in {
				names[i] = ac.Name
			}
			sort.Strings(names)
			return v.refuse(RuleSNIRequired, "%s, and the certificate is registered in %d accounts (%s): send the SNI of the endpoint of the account to connect to", why, len(in), strings.Join(names, ", "))
		}
	}
	v.Account = acct.Name
	rec, ok := acct.Certs[v.CertID]
	if !ok {
		if caID := r.autoRegistrationCALocked(acct, a.Chain, a.Now); caID != "" {
			v.AutoRegisterCA = caID
			return v.refuse(RuleAutoRegistered, "the certificate is signed by CA %s, which allows auto-registration: AWS IoT registers it on this first connection, which it closes; connect again", caID)
		}
		return v.refuse(RuleNotRegistered, "the certificate is not registered in account %s (endpoint %s); register it there, or connect to the endpoint of an account that has it", acct.Name, acct.Endpoint())
	}
	if rec.Status != StatusActive {
		return v.refuse(RuleStatus, "the certificate is %s in account %s; only ACTIVE certificates may connect", rec.Status, acct.Name)
	}
	if a.Now.Before(leaf.NotBefore) {
		return v.refuse(RuleNotYetValid, "the certificate is not valid before %s (now %s)", leaf.NotBefore.UTC().Format(time.RFC3339), a.Now.UTC().Format(time.RFC3339))
	}
	if a.Now.After(leaf.NotAfter) {
		return v.refuse(RuleExpired, "the certificate expired at %s (now %s)", leaf.NotAfter.UTC().Format(time.RFC3339), a.Now.UTC().Format(time.RFC3339))
	}
	if rec.CAID != "" {
		ca, status, _, ok := r.caLocked(acct, rec.CAID)
		switch {
		case !ok:
			return v.refuse(RuleCA, "the certificate's CA %s is no longer registered in account %s", rec.CAID, acct.Name)
		case status != StatusActive:
			return v.refuse(RuleCA, "the certificate's CA %s is %s in account %s", rec.CAID, status, acct.Name)
		}
		if err := verifyChain(a.Chain, ca, a.Now); err != nil {
			return v.refuse(RuleCA, "the certificate does not verify against its CA %s (%q): %v", rec.CAID, ca.Subject, err)
		}
	}
	return v
}

// modeLocked is a registered certificate's mode: SNI_ONLY without a CA, else
// its CA's.
func (r *Registry) modeLocked(a *accountRec, c *certRec) CertificateMode {
	if c.CAID == "" {
		return ModeSNIOnly
	}
	if _, _, mode, ok := r.caLocked(a, c.CAID); ok {
		return mode
	}
	return ModeSNIOnly
}

// decideConnect applies the rules checked at MQTT CONNECT: a certificate
// attached to things may connect only with one of their names as client ID.
func (r *Registry) decideConnect(account, certID, clientID string) (Rule, string) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, ok := r.st.Accounts[account]
	if !ok {
		return RuleNotRegistered, fmt.Sprintf("account %s no longer exists", account)
	}
	c, ok := a.Certs[certID]
	if !ok {
		return RuleNotRegistered, fmt.Sprintf("the certificate is no longer registered in account %s", account)
	}
	if len(c.Things) > 0 && !slices.Contains(c.Things, clientID) {
		return RuleClientID, fmt.Sprintf("client ID %q is not the name of the thing the certificate is attached to (%s); connect with the thing name as client ID", clientID, strings.Join(c.Things, ", "))
	}
	return "", ""
}

var oidRSASSAPSS = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 10}

// isPSSKey reports whether a SubjectPublicKeyInfo is id-RSASSA-PSS.
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
