package emulator

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Signature Version 4, server side, written from AWS's specification
// ("Create a signed AWS API request", docs.aws.amazon.com/IAM/latest/UserGuide/
// reference_sigv-create-signed-request.html): the server rebuilds the canonical
// request from what it received, derives the signing key from the secret it
// holds, and compares signatures. Only the header form (Authorization:
// AWS4-HMAC-SHA256 ...) is accepted: the AWS SDKs and CLI sign control-plane
// calls that way.

const (
	sigV4Algorithm = "AWS4-HMAC-SHA256"
	sigV4Service   = "iot"
	// sigV4ServiceOld is the signing name older AWS IoT API models give (the
	// botocore of Debian 12's aws CLI 2.9 signs with it); both are accepted so
	// every generation of the CLI and SDKs works.
	sigV4ServiceOld = "execute-api"
	amzDateFormat   = "20060102T150405Z"
	// maxClockSkew is how far X-Amz-Date may be from the server's clock: AWS
	// refuses requests signed more than five minutes before or after.
	maxClockSkew = 5 * time.Minute
)

// sigV4Auth is the parsed Authorization header.
type sigV4Auth struct {
	AccessKey     string
	Date          string // yyyymmdd of the credential scope
	Region        string
	Service       string
	SignedHeaders []string
	Signature     string
}

func (a sigV4Auth) scope() string {
	return a.Date + "/" + a.Region + "/" + a.Service + "/aws4_request"
}

// authError is a refused signature, answered with AWS's exception name.
type authError struct {
	code string // IncompleteSignatureException, InvalidSignatureException, ...
	msg  string
}

func (e *authError) Error() string { return e.code + ": " + e.msg }

// parseSigV4Auth reads "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/iot/aws4_request,
// SignedHeaders=host;x-amz-date, Signature=hex".
func parseSigV4Auth(h string) (sigV4Auth, error) {
	var a sigV4Auth
	if h == "" {
		return a, &authError{"MissingAuthenticationTokenException", "Missing Authentication Token: sign the request with AWS Signature Version 4"}
	}
	alg, rest, ok := strings.Cut(h, " ")
	if !ok || alg != sigV4Algorithm {
		return a, &authError{"IncompleteSignatureException", fmt.Sprintf("Authorization header must use %s", sigV4Algorithm)}
	}
	var cred, signed string
	for _, part := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "Credential":
			cred = v
		case "SignedHeaders":
			signed = v
		case "Signature":
			a.Signature = v
		}
	}
	if cred == "" || signed == "" || a.Signature == "" {
		return a, &authError{"IncompleteSignatureException", "Authorization header requires Credential, SignedHeaders and Signature"}
	}
	p := strings.Split(cred, "/")
	if len(p) != 5 || p[4] != "aws4_request" {
		return a, &authError{"IncompleteSignatureException", fmt.Sprintf("Credential %q is not ACCESS_KEY/yyyymmdd/region/service/aws4_request", cred)}
	}
	a.AccessKey, a.Date, a.Region, a.Service = p[0], p[1], p[2], p[3]
	a.SignedHeaders = strings.Split(signed, ";")
	return a, nil
}

// sigV4Request is what a signature covers, taken from a received request.
type sigV4Request struct {
	Method   string
	RawPath  string // the path as sent, still percent-encoded
	RawQuery string
	Header   http.Header
	Host     string
	Length   int64
	Body     []byte
}

func requestForSigV4(r *http.Request, body []byte) sigV4Request {
	path := r.URL.EscapedPath()
	if r.RequestURI != "" && !strings.HasPrefix(r.RequestURI, "*") {
		// The bytes on the wire: EscapedPath may re-encode differently from
		// the client, and the signature was made over the client's encoding.
		path, _, _ = strings.Cut(r.RequestURI, "?")
	}
	return sigV4Request{Method: r.Method, RawPath: path, RawQuery: r.URL.RawQuery, Header: r.Header, Host: r.Host, Length: r.ContentLength, Body: body}
}

// sigV4Escape is AWS's URI encoding: every byte but A-Z a-z 0-9 - _ . ~ is
// %XX in upper-case hex; '/' too unless keepSlash.
func sigV4Escape(s string, keepSlash bool) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' || (keepSlash && c == '/') {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

// canonicalQuery sorts the decoded parameters by name, then value, and encodes
// them again with sigV4Escape.
func canonicalQuery(raw string) (string, error) {
	type kv struct{ k, v string }
	var pairs []kv
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		dk, err := url.QueryUnescape(k)
		if err != nil {
			return "", err
		}
		dv, err := url.QueryUnescape(v)
		if err != nil {
			return "", err
		}
		pairs = append(pairs, kv{sigV4Escape(dk, false), sigV4Escape(dv, false)})
	}
	sort.Slice(pairs, func(i, j int) bool {
		if pairs[i].k != pairs[j].k {
			return pairs[i].k < pairs[j].k
		}
		return pairs[i].v < pairs[j].v
	})
	parts := make([]string, len(pairs))
	for i, p := range pairs {
		parts[i] = p.k + "=" + p.v
	}
	return strings.Join(parts, "&"), nil
}

// headerValue is a signed header's canonical value: values joined by commas,
// each trimmed, with inner runs of spaces collapsed.
func (q sigV4Request) headerValue(name string) string {
	var vals []string
	switch name {
	case "host":
		vals = []string{q.Host}
	case "content-length":
		if v := q.Header.Values("Content-Length"); len(v) > 0 {
			vals = slices.Clone(v)
		} else {
			vals = []string{strconv.FormatInt(q.Length, 10)}
		}
	default:
		vals = slices.Clone(q.Header.Values(name))
	}
	for i, v := range vals {
		vals[i] = strings.Join(strings.Fields(v), " ")
	}
	return strings.Join(vals, ",")
}

// canonicalRequest is the SigV4 canonical request of q over signedHeaders.
func (q sigV4Request) canonicalRequest(signedHeaders []string) (string, error) {
	query, err := canonicalQuery(q.RawQuery)
	if err != nil {
		return "", err
	}
	path := q.RawPath
	if path == "" {
		path = "/"
	}
	// The hash of the body received, never the X-Amz-Content-Sha256 header's
	// word for it: a body changed on the way must not keep a valid signature.
	sum := sha256.Sum256(q.Body)
	payload := hex.EncodeToString(sum[:])
	var b strings.Builder
	b.WriteString(q.Method + "\n")
	// Services other than S3 encode the already-encoded path once more.
	b.WriteString(sigV4Escape(path, true) + "\n")
	b.WriteString(query + "\n")
	for _, h := range signedHeaders {
		b.WriteString(h + ":" + q.headerValue(h) + "\n")
	}
	b.WriteString("\n" + strings.Join(signedHeaders, ";") + "\n")
	b.WriteString(payload)
	return b.String(), nil
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

// sigV4Signature is the hex signature of a canonical request with a secret.
func sigV4Signature(secret string, a sigV4Auth, amzDate, canonical string) string {
	sum := sha256.Sum256([]byte(canonical))
	toSign := sigV4Algorithm + "\n" + amzDate + "\n" + a.scope() + "\n" + hex.EncodeToString(sum[:])
	k := hmacSHA256([]byte("AWS4"+secret), a.Date)
	k = hmacSHA256(k, a.Region)
	k = hmacSHA256(k, a.Service)
	k = hmacSHA256(k, "aws4_request")
	return hex.EncodeToString(hmacSHA256(k, toSign))
}

// verifySigV4 checks a request's signature with the secret of its access key,
// the region it must be scoped to and the server's time. It is a pure decision:
// the caller finds the secret and answers the error.
func verifySigV4(q sigV4Request, a sigV4Auth, secret, region string, now time.Time) error {
	if a.Service != sigV4Service && a.Service != sigV4ServiceOld {
		return &authError{"InvalidSignatureException", fmt.Sprintf("Credential should be scoped to correct service: '%s'", sigV4Service)}
	}
	if a.Region != region {
		return &authError{"InvalidSignatureException", fmt.Sprintf("Credential should be scoped to a valid region, not '%s': this access key's account is in %s", a.Region, region)}
	}
	signed := map[string]bool{}
	for _, h := range a.SignedHeaders {
		signed[h] = true
	}
	if !signed["host"] {
		return &authError{"InvalidSignatureException", "'Host' must be a signed header"}
	}
	amzDate := q.Header.Get("X-Amz-Date")
	if amzDate == "" || !signed["x-amz-date"] {
		return &authError{"IncompleteSignatureException", "X-Amz-Date must be sent and signed"}
	}
	t, err := time.Parse(amzDateFormat, amzDate)
	if err != nil {
		return &authError{"IncompleteSignatureException", fmt.Sprintf("X-Amz-Date %q is not in the form %s", amzDate, amzDateFormat)}
	}
	if !strings.HasPrefix(amzDate, a.Date) {
		return &authError{"InvalidSignatureException", fmt.Sprintf("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '%s' != '%s'", a.Date, amzDate[:8])}
	}
	if d := now.Sub(t); d > maxClockSkew || d < -maxClockSkew {
		return &authError{"InvalidSignatureException", fmt.Sprintf("Signature expired: %s is not within 5 minutes of the server's time %s: correct the client's clock", amzDate, now.UTC().Format(amzDateFormat))}
	}
	canonical, err := q.canonicalRequest(a.SignedHeaders)
	if err != nil {
		return &authError{"InvalidSignatureException", fmt.Sprintf("the query string does not decode: %v", err)}
	}
	want := sigV4Signature(secret, a, amzDate, canonical)
	if !hmac.Equal([]byte(want), []byte(strings.ToLower(a.Signature))) {
		return &authError{"InvalidSignatureException", "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."}
	}
	return nil
}
