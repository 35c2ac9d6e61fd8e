package emulator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/smithy-go"

	"github.com/thingcert/thingcert/keystore"
)

// startAPIEmu runs an emulator with the control-plane API and the given
// accounts. Its clock starts at the real time (the SDK signs with it) and moves
// only when told, so skew can be tested.
func startAPIEmu(t *testing.T, cfg Config, accounts ...string) *testEmu {
	t.Helper()
	clock := &testClock{t: time.Now()}
	cfg.Now = clock.Now
	cfg.APIListen = "127.0.0.1:0"
	for _, a := range accounts {
		cfg.Accounts = append(cfg.Accounts, Account{Name: a})
	}
	e := startEmu(t, cfg)
	e.clock = clock
	return e
}

// newAPIClient is an aws-sdk-go-v2 IoT client for an account of e, trusting
// only the emulator's root, without retries (a refusal shows at once).
func newAPIClient(t testing.TB, e *Emulator, account string, edit ...func(*iot.Options)) *iot.Client {
	t.Helper()
	key, err := e.AccessKey(account)
	if err != nil {
		t.Fatal(err)
	}
	return iot.New(iot.Options{
		Region:       key.Region,
		BaseEndpoint: aws.String(e.APIURL()),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: key.AccessKeyID, SecretAccessKey: key.SecretAccessKey, Source: "emulator"}, nil
		}),
		HTTPClient:       &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.RootCAs(), MinVersion: tls.VersionTLS12}}},
		RetryMaxAttempts: 1,
	}, edit...)
}

// wantAPIError checks that err is AWS's exception code (and, through the
// SDK's response error, the HTTP status).
func wantAPIError(t *testing.T, err error, code string, status int) {
	t.Helper()
	if err == nil {
		t.Fatalf("got success, want %s (%d)", code, status)
	}
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != code {
		t.Fatalf("got %v, want %s", err, code)
	}
	var re interface{ HTTPStatusCode() int }
	if !errors.As(err, &re) || re.HTTPStatusCode() != status {
		t.Fatalf("got %v, want HTTP %d", err, status)
	}
	if ae.ErrorMessage() == "" {
		t.Fatalf("%s without a message", code)
	}
}

// TestAPIErrorCodes: the registry's sentinels, wrapped as the registry wraps
// them, become AWS's exception names and statuses.
func TestAPIErrorCodes(t *testing.T) {
	for _, c := range []struct {
		err    error
		code   string
		status int
	}{
		{fmt.Errorf("emulator: thing x: %w", ErrNotFound), "ResourceNotFoundException", 404},
		{fmt.Errorf("emulator: thing x: %w", ErrExists), "ResourceAlreadyExistsException", 409},
		{fmt.Errorf("emulator: %w: bad", ErrInvalid), "InvalidRequestException", 400},
		{fmt.Errorf("emulator: %w", ErrConflict), "DeleteConflictException", 409},
		{fmt.Errorf("emulator: %w", ErrCertificateState), "CertificateStateException", 406},
		{fmt.Errorf("emulator: %w", ErrThrottled), "ThrottlingException", 400},
		{fmt.Errorf("emulator: %w", fmt.Errorf("key: %w", keystore.ErrPolicy)), "CertificateValidationException", 400},
		{apiErrorf("VersionConflictException", 409, "v"), "VersionConflictException", 409},
		{&authError{"InvalidSignatureException", "x"}, "InvalidSignatureException", 403},
		{errors.New("disk full"), "InternalFailureException", 500},
	} {
		if code, status := apiErrorCode(c.err); code != c.code || status != c.status {
			t.Errorf("%v: %s %d, want %s %d", c.err, code, status, c.code, c.status)
		}
	}
}
