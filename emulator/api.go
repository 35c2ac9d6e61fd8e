package emulator

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/thingcert/thingcert/internal/atomicfile"
	"github.com/thingcert/thingcert/keystore"
)

// The control-plane API: AWS IoT's REST-JSON API over HTTPS, SigV4-verified,
// so the aws CLI and the AWS SDKs drive the emulator as they drive AWS. The
// operations are in api_routes.go.

// maxAPIBody bounds a request body: the largest AWS IoT inputs (templates,
// policies, job documents) are tens of KiB.
const maxAPIBody = 1 << 20

// APIError is an error the API answers with AWS's exception name and HTTP
// status. Operations return it for refusals no registry sentinel names.
type APIError struct {
	Code    string // AWS's exception name: "VersionConflictException"
	Status  int    // its HTTP status
	Message string
}

func (e *APIError) Error() string { return e.Code + ": " + e.Message }

// apiErrorf makes an APIError.
func apiErrorf(code string, status int, format string, args ...any) *APIError {
	return &APIError{Code: code, Status: status, Message: fmt.Sprintf(format, args...)}
}

// invalidRequest is the InvalidRequestException most input checks answer.
func invalidRequest(format string, args ...any) *APIError {
	return apiErrorf("InvalidRequestException", http.StatusBadRequest, format, args...)
}

// apiErrorCode maps an operation's error to AWS's exception name and status:
// an *APIError as it says, the registry's sentinels as AWS names them (the
// statuses are those of AWS's IoT API model, which gives ThrottlingException
// 400, not 429), anything else an internal failure.
func apiErrorCode(err error) (code string, status int) {
	var ae *APIError
	var auth *authError
	switch {
	case errors.As(err, &ae):
		return ae.Code, ae.Status
	case errors.As(err, &auth):
		return auth.code, http.StatusForbidden
	case errors.Is(err, ErrNotFound):
		return "ResourceNotFoundException", http.StatusNotFound
	case errors.Is(err, ErrExists):
		return "ResourceAlreadyExistsException", http.StatusConflict
	case errors.Is(err, ErrConflict):
		return "DeleteConflictException", http.StatusConflict
	case errors.Is(err, ErrCertificateState):
		return "CertificateStateException", http.StatusNotAcceptable
	case errors.Is(err, ErrThrottled):
		return "ThrottlingException", http.StatusBadRequest
	case errors.Is(err, keystore.ErrPolicy):
		return "CertificateValidationException", http.StatusBadRequest
	case errors.Is(err, ErrInvalid):
		return "InvalidRequestException", http.StatusBadRequest
	}
	return "InternalFailureException", http.StatusInternalServerError
}

// apiServer serves the API on one HTTPS listener.
type apiServer struct {
	emu    *Emulator
	keys   *keyring
	srv    *http.Server
	ln     net.Listener
	url    string
	urlTxt string // the file holding url, "" in memory
	done   chan struct{}
}

func (e *Emulator) startAPI(addr string) error {
	keys, err := openKeyring(e.dir)
	if err != nil {
		return err
	}
	accounts, err := e.Accounts(context.Background())
	if err != nil {
		return err
	}
	if err := keys.ensure(accounts); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("emulator: control-plane API listener %s: %w", addr, err)
	}
	s := &apiServer{emu: e, keys: keys, ln: ln, done: make(chan struct{})}
	s.url = "https://" + ln.Addr().String()
	mux := http.NewServeMux()
	for _, rt := range apiRoutes {
		mux.Handle(rt.Method+" "+rt.Path, s.handler(rt))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, "", apiErrorf("UnknownOperationException", http.StatusNotFound, "the emulator implements no AWS IoT operation at %s %s (see docs/emulator.md)", r.Method, r.URL.Path))
	})
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// TLS handshake failures (a client not trusting root-ca.pem) go to the
		// emulator's log, not to the process's stderr.
		ErrorLog: slog.NewLogLogger(e.log.With("component", "api").Handler(), slog.LevelInfo),
		TLSConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			// The MQTT server certificate: issued by the root in RootCAFile
			// and valid for localhost, 127.0.0.1 and ::1.
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return e.serverCert.Load(), nil },
		},
	}
	if e.dir != "" {
		s.urlTxt = filepath.Join(e.dir, APIEndpointFile)
		if err := atomicfile.WriteFile(s.urlTxt, []byte(s.url+"\n"), 0o644); err != nil {
			ln.Close()
			return fmt.Errorf("emulator: recording the API address: %w", err)
		}
	}
	go func() {
		defer close(s.done)
		_ = s.srv.ServeTLS(ln, "", "")
	}()
	e.api = s
	return nil
}

func (s *apiServer) close() {
	_ = s.srv.Close()
	<-s.done
	if s.urlTxt != "" {
		_ = os.Remove(s.urlTxt)
	}
}

// APIURL is the https:// URL of the control-plane API ("" when
// Config.APIListen was not set): the AWS SDK's base endpoint, or the aws CLI's
// --endpoint-url.
func (e *Emulator) APIURL() string {
	if e.api == nil {
		return ""
	}
	return e.api.url
}

// AccessKey is the control-plane access key of an account, made when the API
// started or when the account was added.
func (e *Emulator) AccessKey(account string) (AccessKey, error) {
	if e.api == nil {
		return AccessKey{}, fmt.Errorf("emulator: %w: the control-plane API is not enabled (Config.APIListen)", ErrInvalid)
	}
	k, ok := e.api.keys.byAccount(account)
	if !ok {
		return AccessKey{}, fmt.Errorf("emulator: access key of account %q: %w", account, ErrNotFound)
	}
	return k, nil
}

// apiCall is one verified request, as an operation sees it.
type apiCall struct {
	// Account is the account the request's access key belongs to.
	Account string
	// Key is that access key (region, registration code).
	Key  AccessKey
	Emu  *Emulator
	Req  *http.Request
	Body []byte
}

// Path is a path parameter ({thingName}), decoded.
func (c *apiCall) Path(name string) string { return c.Req.PathValue(name) }

// Query is a query-string parameter, "" when absent.
func (c *apiCall) Query(name string) string { return c.Req.URL.Query().Get(name) }

// Header is a request header ("x-amzn-principal").
func (c *apiCall) Header(name string) string { return c.Req.Header.Get(name) }

// QueryBool reads a boolean query parameter; absent is def.
func (c *apiCall) QueryBool(name string, def bool) (bool, error) {
	v := c.Query(name)
	if v == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, invalidRequest("%s=%q is not true or false", name, v)
	}
	return b, nil
}

// QueryInt reads an integer query parameter in [min, max]; absent is def.
func (c *apiCall) QueryInt(name string, min, max, def int) (int, error) {
	v := c.Query(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < min || n > max {
		return 0, invalidRequest("%s=%q: must be an integer from %d to %d", name, v, min, max)
	}
	return n, nil
}

// Decode reads the JSON body into v; an empty body leaves v as it is.
func (c *apiCall) Decode(v any) error {
	if len(c.Body) == 0 {
		return nil
	}
	if err := json.Unmarshal(c.Body, v); err != nil {
		return invalidRequest("the request body is not the JSON this operation takes: %v", err)
	}
	return nil
}

// ARN is the ARN of a resource of the caller's account: "thing/name", "cert/id".
func (c *apiCall) ARN(resource string) string {
	return "arn:aws:iot:" + c.Key.Region + ":" + accountID(c.Account) + ":" + resource
}

// accountID is the 12-digit AWS account ID of an emulator account: its name
// when that is 12 digits, else a number derived from the name, stable across
// restarts.
func accountID(name string) string {
	if len(name) == 12 && strings.Trim(name, "0123456789") == "" {
		return name
	}
	sum := sha256.Sum256([]byte("thingcert-account:" + name))
	return fmt.Sprintf("%012d", binary.BigEndian.Uint64(sum[:8])%1_000_000_000_000)
}

// epoch is a timestamp as AWS's REST-JSON protocol writes it: seconds since
// 1970 as a JSON number, with milliseconds.
type epoch time.Time

func (t epoch) MarshalJSON() ([]byte, error) {
	ms := time.Time(t).UnixMilli()
	return []byte(strconv.FormatFloat(float64(ms)/1000, 'f', 3, 64)), nil
}

// handler verifies the signature, runs the operation and writes its answer.
func (s *apiServer) handler(rt apiRoute) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxAPIBody+1))
		if err != nil {
			s.writeError(w, r, rt.Op, invalidRequest("reading the request body: %v", err))
			return
		}
		if len(body) > maxAPIBody {
			s.writeError(w, r, rt.Op, apiErrorf("RequestEntityTooLargeException", http.StatusRequestEntityTooLarge, "the request body is over %d bytes", maxAPIBody))
			return
		}
		key, err := s.authenticate(r, body)
		if err != nil {
			s.writeError(w, r, rt.Op, err)
			return
		}
		if l := s.emu.apiLimit; l != nil {
			ok := l.allow(key.Account+"\x00"+rt.Op, s.emu.cfg.now())
			s.emu.count("api:"+rt.Op, !ok)
			if !ok {
				s.writeError(w, r, rt.Op, fmt.Errorf("emulator: %s is limited to %g requests per second per account: %w", rt.Op, l.rate, ErrThrottled))
				return
			}
		}
		call := &apiCall{Account: key.Account, Key: key, Emu: s.emu, Req: r, Body: body}
		out, err := rt.Handle(r.Context(), call)
		if err != nil {
			s.writeError(w, r, rt.Op, err)
			return
		}
		s.emu.log.Debug("emulator: API call", "op", rt.Op, "account", key.Account)
		if out == nil {
			w.WriteHeader(http.StatusOK)
			return
		}
		data, err := json.Marshal(out)
		if err != nil {
			s.writeError(w, r, rt.Op, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(data)
	})
}

// authenticate finds the access key of a request and verifies its signature.
func (s *apiServer) authenticate(r *http.Request, body []byte) (AccessKey, error) {
	auth, err := parseSigV4Auth(r.Header.Get("Authorization"))
	if err != nil {
		return AccessKey{}, err
	}
	key, ok := s.keys.byKeyID(auth.AccessKey)
	if !ok {
		return AccessKey{}, &authError{"UnrecognizedClientException", "The security token included in the request is invalid."}
	}
	if err := verifySigV4(requestForSigV4(r, body), auth, key.SecretAccessKey, key.Region, s.emu.cfg.now()); err != nil {
		return AccessKey{}, err
	}
	if s.emu.Endpoint(key.Account) == "" {
		// The key outlived its account (a hand-edited registry).
		return AccessKey{}, &authError{"UnrecognizedClientException", fmt.Sprintf("the account %q of this access key no longer exists", key.Account)}
	}
	return key, nil
}

// writeError answers AWS's way: the exception name in x-amzn-ErrorType and a
// JSON body with message (and the name again, as __type, for older clients).
func (s *apiServer) writeError(w http.ResponseWriter, r *http.Request, op string, err error) {
	code, status := apiErrorCode(err)
	msg := err.Error()
	var ae *APIError
	var auth *authError
	if errors.As(err, &ae) {
		msg = ae.Message
	} else if errors.As(err, &auth) {
		msg = auth.msg
	}
	level := s.emu.log.Info
	if status >= 500 {
		level = s.emu.log.Error
	}
	level("emulator: API call refused", "op", op, "method", r.Method, "path", r.URL.Path, "code", code, "error", msg)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("x-amzn-ErrorType", code)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg, "__type": code})
}

// Pagination tokens are opaque to clients; one names the key of the last item
// returned, so pages stay consistent while items come and go.
func encodeToken(key string) string { return base64.RawURLEncoding.EncodeToString([]byte(key)) }

func decodeToken(token string) (after string, err error) {
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(raw) == 0 {
		return "", invalidRequest("the pagination token %q is not one this API returned", token)
	}
	return string(raw), nil
}

// pageOf cuts one page from items sorted by key: those after the key the token
// names ("" starts at the first), at most size of them, and the next token
// ("" on the last page).
func pageOf[T any](items []T, key func(T) string, token string, size int) (page []T, next string, err error) {
	start := 0
	if token != "" {
		after, err := decodeToken(token)
		if err != nil {
			return nil, "", err
		}
		start = sort.Search(len(items), func(i int) bool { return key(items[i]) > after })
	}
	end := min(start+size, len(items))
	page = items[start:end]
	if end < len(items) && len(page) > 0 {
		next = encodeToken(key(page[len(page)-1]))
	}
	return page, next, nil
}

// apiRoute is one line of the route table.
type apiRoute struct {
	Method string
	// Path is the operation's URI from the SDK's serializer, with {name}
	// path parameters (read with apiCall.Path).
	Path string
	// Op is AWS's operation name, for logs.
	Op     string
	Handle apiOp
}

// apiOp is one operation: it reads its input from the call (path, query,
// headers, JSON body) and returns the value whose JSON is the answer's body
// (nil for an empty 200), or an error: a registry sentinel or an *APIError.
type apiOp func(ctx context.Context, c *apiCall) (any, error)

// apiAccountsChanged gives a new account its access key.
func (e *Emulator) apiAccountsChanged() {
	if e.api == nil {
		return
	}
	accounts, err := e.Accounts(context.Background())
	if err == nil {
		err = e.api.keys.ensure(accounts)
	}
	if err != nil {
		e.log.Error("emulator: making the new account's access key", "error", err)
	}
}
