package emulator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/iot"
)

func TestAPIRefusesBadSignatures(t *testing.T) {
	e := startAPIEmu(t, Config{}, "prod", "dev")
	ctx := context.Background()
	in := &iot.DescribeEndpointInput{EndpointType: aws.String("iot:Data-ATS")}
	prod, err := e.AccessKey("prod")
	if err != nil {
		t.Fatal(err)
	}

	wrongSecret := newAPIClient(t, e.Emulator, "prod", func(o *iot.Options) {
		o.Credentials = aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: prod.AccessKeyID, SecretAccessKey: prod.SecretAccessKey + "x"}, nil
		})
	})
	_, err = wrongSecret.DescribeEndpoint(ctx, in)
	wantAPIError(t, err, "InvalidSignatureException", http.StatusForbidden)

	unknown := newAPIClient(t, e.Emulator, "prod", func(o *iot.Options) {
		o.Credentials = aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "AKIAUNKNOWNUNKNOWN00", SecretAccessKey: prod.SecretAccessKey}, nil
		})
	})
	_, err = unknown.DescribeEndpoint(ctx, in)
	wantAPIError(t, err, "UnrecognizedClientException", http.StatusForbidden)

	// Another account's secret with this account's key is a wrong secret.
	dev, _ := e.AccessKey("dev")
	mixed := newAPIClient(t, e.Emulator, "prod", func(o *iot.Options) {
		o.Credentials = aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: prod.AccessKeyID, SecretAccessKey: dev.SecretAccessKey}, nil
		})
	})
	_, err = mixed.DescribeEndpoint(ctx, in)
	wantAPIError(t, err, "InvalidSignatureException", http.StatusForbidden)

	// Signed for another region than the account's.
	_, err = newAPIClient(t, e.Emulator, "prod", func(o *iot.Options) { o.Region = "eu-west-1" }).DescribeEndpoint(ctx, in)
	wantAPIError(t, err, "InvalidSignatureException", http.StatusForbidden)

	// The server's (injected) clock 6 minutes ahead: the signature is stale.
	c := newAPIClient(t, e.Emulator, "prod")
	if _, err := c.DescribeEndpoint(ctx, in); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(6 * time.Minute)
	_, err = c.DescribeEndpoint(ctx, in)
	wantAPIError(t, err, "InvalidSignatureException", http.StatusForbidden)
	e.clock.Advance(-12 * time.Minute)
	_, err = c.DescribeEndpoint(ctx, in)
	wantAPIError(t, err, "InvalidSignatureException", http.StatusForbidden)
	e.clock.Advance(6 * time.Minute)

	// Unsigned.
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: e.ClientTLS("prod")}}).Get(e.APIURL() + "/endpoint?endpointType=iot%3AData-ATS")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("x-amzn-ErrorType") != "MissingAuthenticationTokenException" {
		t.Errorf("unsigned: %d %s", resp.StatusCode, resp.Header.Get("x-amzn-ErrorType"))
	}
}

// TestSigV4MatchesSDKSigner signs requests with aws-sdk-go-v2's signer and
// checks the emulator's verifier accepts them, and refuses them once any
// signed part changes.
func TestSigV4MatchesSDKSigner(t *testing.T) {
	const secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
	now := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	cases := []struct{ method, url, body string }{
		{"GET", "https://127.0.0.1:8443/endpoint?endpointType=iot%3AData-ATS", ""},
		{"POST", "https://127.0.0.1:8443/things/gw%3A001", `{"attributePayload":{"attributes":{"a":"b c"}}}`},
		{"GET", "https://localhost:8443/things?maxResults=5&attributeName=site&attributeValue=a%20b%2Bc&nextToken=abc-_", ""},
		{"PUT", "https://127.0.0.1/certificates/0123abcd?newStatus=INACTIVE", ""},
		{"GET", "https://127.0.0.1:1/principals/things?b=2&a=1&a=0&empty=", ""},
	}
	for _, tc := range cases {
		sign := func() *http.Request {
			req, err := http.NewRequest(tc.method, tc.url, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("x-amzn-principal", "arn:aws:iot:us-east-1:123456789012:cert/ab  cd")
			req.Header.Set("Content-Type", "application/json")
			sum := sha256.Sum256([]byte(tc.body))
			// The header a client may send with the body's hash: the
			// server must hash the body it got, not trust the header.
			req.Header.Set("X-Amz-Content-Sha256", hex.EncodeToString(sum[:]))
			creds := aws.Credentials{AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: secret}
			if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, hex.EncodeToString(sum[:]), "iot", "us-east-1", now); err != nil {
				t.Fatal(err)
			}
			// As a server receives it.
			req.RequestURI = req.URL.RequestURI()
			req.Host = req.URL.Host
			return req
		}
		verify := func(req *http.Request, body, secret string, at time.Time) error {
			auth, err := parseSigV4Auth(req.Header.Get("Authorization"))
			if err != nil {
				return err
			}
			return verifySigV4(requestForSigV4(req, []byte(body)), auth, secret, "us-east-1", at)
		}
		if err := verify(sign(), tc.body, secret, now.Add(4*time.Minute)); err != nil {
			t.Errorf("%s %s: %v", tc.method, tc.url, err)
			continue
		}
		if err := verify(sign(), tc.body, secret+"x", now); err == nil {
			t.Errorf("%s %s: a wrong secret verified", tc.method, tc.url)
		}
		if err := verify(sign(), tc.body+" ", secret, now); err == nil {
			t.Errorf("%s %s: a changed body verified", tc.method, tc.url)
		}
		req := sign()
		req.RequestURI = strings.Replace(req.RequestURI, "/", "/x", 1)
		if err := verify(req, tc.body, secret, now); err == nil {
			t.Errorf("%s %s: a changed path verified", tc.method, tc.url)
		}
		req = sign()
		req.Header.Set("x-amzn-principal", "arn:other")
		if err := verify(req, tc.body, secret, now); err == nil {
			t.Errorf("%s %s: a changed signed header verified", tc.method, tc.url)
		}
		// The older models' signing name is accepted, other services' not.
		for svc, ok := range map[string]bool{"execute-api": true, "s3": false} {
			req := sign()
			auth := strings.Replace(req.Header.Get("Authorization"), "/iot/", "/"+svc+"/", 1)
			a, _ := parseSigV4Auth(auth)
			q := requestForSigV4(req, []byte(tc.body))
			canonical, _ := q.canonicalRequest(a.SignedHeaders)
			a.Signature = sigV4Signature(secret, a, req.Header.Get("X-Amz-Date"), canonical)
			if err := verifySigV4(q, a, secret, "us-east-1", now); (err == nil) != ok {
				t.Errorf("%s %s signed for %s: %v", tc.method, tc.url, svc, err)
			}
		}
		if err := verify(sign(), tc.body, secret, now.Add(-5*time.Minute-time.Second)); err == nil {
			t.Errorf("%s %s: a signature from the future verified", tc.method, tc.url)
		}
	}
}

func TestAPIKeysKeptInStateFolder(t *testing.T) {
	dir := t.TempDir()
	e := startAPIEmu(t, Config{StateDir: dir}, "prod")
	k1, err := e.AccessKey("prod")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, CredentialsFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, %v", CredentialsFile, fi, err)
	}
	// A new account gets its key at once.
	if _, err := e.AddAccount(context.Background(), Account{Name: "dev"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.AccessKey("dev"); err != nil {
		t.Fatal(err)
	}
	creds, err := ReadCredentials(dir, "prod")
	if err != nil {
		t.Fatal(err)
	}
	if creds.AccessKeyID != k1.AccessKeyID || creds.EndpointURL != e.APIURL() || creds.CABundle != filepath.Join(dir, RootCAFile) || creds.Region != "us-east-1" {
		t.Errorf("ReadCredentials: %+v", creds)
	}
	if _, err := ReadCredentials(dir, ""); err == nil {
		t.Error("ReadCredentials picked one of two accounts")
	}
	pem, _ := os.ReadFile(creds.CABundle)
	if !bytes.Equal(pem, e.RootCAPEM()) {
		t.Error("the CA bundle is not the root")
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadCredentials(dir, "prod"); !errors.Is(err, ErrNoAPI) {
		t.Errorf("ReadCredentials with no emulator running: %v, want ErrNoAPI", err)
	}
	// Restarted, the keys stay.
	e2 := startAPIEmu(t, Config{StateDir: dir})
	k2, err := e2.AccessKey("prod")
	if err != nil || k2 != k1 {
		t.Errorf("after a restart: %+v, %v; want %+v", k2, err, k1)
	}
}
