package emulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/thingcert/thingcert/keystore"
)

// Admin is the emulator's administration API, for tests and for people playing
// the cloud's part. *Registry and *Emulator implement it in process; OpenAdmin
// returns one for a state folder whether its emulator is running (the calls go
// through its admin socket) or not (they work on the files directly).
type Admin interface {
	AddAccount(ctx context.Context, a Account) (Account, error)
	Accounts(ctx context.Context) ([]Account, error)
	RegisterCA(ctx context.Context, account string, caPEM []byte, opts CAOptions) (CA, error)
	SetCAStatus(ctx context.Context, account, caID string, status CertificateStatus) error
	CAs(ctx context.Context, account string) ([]CA, error)
	RegisterCertificate(ctx context.Context, account string, certPEM []byte, opts CertificateOptions) (Certificate, error)
	IssueCertificate(ctx context.Context, account string, csrPEM []byte, opts IssueOptions) (Certificate, error)
	SetCertificateStatus(ctx context.Context, account, certID string, status CertificateStatus) error
	Certificate(ctx context.Context, account, certID string) (Certificate, error)
	Certificates(ctx context.Context, account string) ([]Certificate, error)
	DeleteCertificate(ctx context.Context, account, certID string) error
	CreateThing(ctx context.Context, account, name string, attributes map[string]string) (Thing, error)
	AttachCertificate(ctx context.Context, account, thing, certID string) error
	DetachCertificate(ctx context.Context, account, thing, certID string) error
	Thing(ctx context.Context, account, name string) (Thing, error)
	Things(ctx context.Context, account string) ([]Thing, error)
	CreateTemplate(ctx context.Context, account string, t Template) error
	Templates(ctx context.Context, account string) ([]Template, error)
	CreateJob(ctx context.Context, account string, job Job) (Job, error)
	CancelJob(ctx context.Context, account, jobID string, force bool) error
	Jobs(ctx context.Context, account string) ([]Job, error)
	JobExecution(ctx context.Context, account, thing, jobID string) (JobExecution, error)
	JobExecutions(ctx context.Context, account, thing string) ([]JobExecution, error)
	History(ctx context.Context, q HistoryQuery) ([]ConnectionEvent, error)
	CreatePolicy(ctx context.Context, account, name, document string) (Policy, error)
	Policy(ctx context.Context, account, name string) (Policy, error)
	Policies(ctx context.Context, account string) ([]Policy, error)
	DeletePolicy(ctx context.Context, account, name string) error
	AttachPolicy(ctx context.Context, account, policyName, target string) error
	DetachPolicy(ctx context.Context, account, policyName, target string) error
	AttachedPolicies(ctx context.Context, account, target string) ([]Policy, error)
	AttachAllowAllPolicy(ctx context.Context, account, certID string) error
	// Close releases the state folder (offline) or the socket client (online).
	Close() error
}

var (
	_ Admin = (*Registry)(nil)
	_ Admin = (*Emulator)(nil)
	_ Admin = (*adminClient)(nil)
)

// OpenAdmin administers the emulator state in cfg.StateDir: through the admin
// socket of the emulator running on it, or, when none runs, on the files
// directly (locking the folder until Close). Online is reported true in the
// first case.
func OpenAdmin(ctx context.Context, cfg Config) (a Admin, online bool, err error) {
	if cfg.StateDir == "" {
		return nil, false, fmt.Errorf("emulator: %w: the admin API needs a state folder", ErrInvalid)
	}
	sock := filepath.Join(cfg.StateDir, AdminSocketFile)
	if _, err := os.Stat(sock); err == nil {
		c := newAdminClient(sock)
		if err := c.call(ctx, "Ping", adminArgs{}, nil); err == nil {
			return c, true, nil
		}
		// A socket left by an emulator that died: fall through to the files,
		// whose lock tells whether anything still holds them.
	}
	r, err := Open(ctx, cfg)
	if err != nil {
		return nil, false, err
	}
	return r, false, nil
}

// adminArgs carries the arguments of every admin call over the socket.
type adminArgs struct {
	Account      string              `json:"account,omitempty"`
	ID           string              `json:"id,omitempty"`
	Thing        string              `json:"thing,omitempty"`
	PEM          []byte              `json:"pem,omitempty"`
	Status       CertificateStatus   `json:"status,omitempty"`
	Force        bool                `json:"force,omitempty"`
	Attributes   map[string]string   `json:"attributes,omitempty"`
	AccountSpec  *Account            `json:"accountSpec,omitempty"`
	CAOptions    *CAOptions          `json:"caOptions,omitempty"`
	CertOptions  *CertificateOptions `json:"certOptions,omitempty"`
	IssueOptions *IssueOptions       `json:"issueOptions,omitempty"`
	Template     *Template           `json:"template,omitempty"`
	Job          *Job                `json:"job,omitempty"`
	Query        *HistoryQuery       `json:"query,omitempty"`
	Name         string              `json:"name,omitempty"`
	Document     string              `json:"document,omitempty"`
	Target       string              `json:"target,omitempty"`
}

func deref[T any](p *T) T {
	if p == nil {
		var z T
		return z
	}
	return *p
}

// dispatch runs one admin call on a registry.
func dispatch(ctx context.Context, r *Registry, method string, a adminArgs) (any, error) {
	switch method {
	case "Ping":
		return nil, nil
	case "AddAccount":
		return r.AddAccount(ctx, deref(a.AccountSpec))
	case "Accounts":
		return r.Accounts(ctx)
	case "RegisterCA":
		return r.RegisterCA(ctx, a.Account, a.PEM, deref(a.CAOptions))
	case "SetCAStatus":
		return nil, r.SetCAStatus(ctx, a.Account, a.ID, a.Status)
	case "CAs":
		return r.CAs(ctx, a.Account)
	case "RegisterCertificate":
		return r.RegisterCertificate(ctx, a.Account, a.PEM, deref(a.CertOptions))
	case "IssueCertificate":
		return r.IssueCertificate(ctx, a.Account, a.PEM, deref(a.IssueOptions))
	case "SetCertificateStatus":
		return nil, r.SetCertificateStatus(ctx, a.Account, a.ID, a.Status)
	case "Certificate":
		return r.Certificate(ctx, a.Account, a.ID)
	case "Certificates":
		return r.Certificates(ctx, a.Account)
	case "DeleteCertificate":
		return nil, r.DeleteCertificate(ctx, a.Account, a.ID)
	case "CreateThing":
		return r.CreateThing(ctx, a.Account, a.Thing, a.Attributes)
	case "AttachCertificate":
		return nil, r.AttachCertificate(ctx, a.Account, a.Thing, a.ID)
	case "DetachCertificate":
		return nil, r.DetachCertificate(ctx, a.Account, a.Thing, a.ID)
	case "Thing":
		return r.Thing(ctx, a.Account, a.Thing)
	case "Things":
		return r.Things(ctx, a.Account)
	case "CreateTemplate":
		return nil, r.CreateTemplate(ctx, a.Account, deref(a.Template))
	case "Templates":
		return r.Templates(ctx, a.Account)
	case "CreateJob":
		return r.CreateJob(ctx, a.Account, deref(a.Job))
	case "CancelJob":
		return nil, r.CancelJob(ctx, a.Account, a.ID, a.Force)
	case "Jobs":
		return r.Jobs(ctx, a.Account)
	case "JobExecution":
		return r.JobExecution(ctx, a.Account, a.Thing, a.ID)
	case "JobExecutions":
		return r.JobExecutions(ctx, a.Account, a.Thing)
	case "History":
		return r.History(ctx, deref(a.Query))
	case "CreatePolicy":
		return r.CreatePolicy(ctx, a.Account, a.Name, a.Document)
	case "Policy":
		return r.Policy(ctx, a.Account, a.Name)
	case "Policies":
		return r.Policies(ctx, a.Account)
	case "DeletePolicy":
		return nil, r.DeletePolicy(ctx, a.Account, a.Name)
	case "AttachPolicy":
		return nil, r.AttachPolicy(ctx, a.Account, a.Name, a.Target)
	case "DetachPolicy":
		return nil, r.DetachPolicy(ctx, a.Account, a.Name, a.Target)
	case "AttachedPolicies":
		return r.AttachedPolicies(ctx, a.Account, a.Target)
	case "AttachAllowAllPolicy":
		return nil, r.AttachAllowAllPolicy(ctx, a.Account, a.ID)
	}
	return nil, fmt.Errorf("emulator: admin call %q: %w: no such call", method, ErrInvalid)
}

// Error kinds carried over the socket, so errors.Is works on the client side.
var errorKinds = []struct {
	kind string
	err  error
}{
	{"not_found", ErrNotFound}, {"exists", ErrExists}, {"invalid", ErrInvalid},
	{"locked", ErrLocked}, {"policy", keystore.ErrPolicy}, {"conflict", ErrConflict},
	{"certificate_state", ErrCertificateState}, {"throttled", ErrThrottled},
	{"invalid_state", ErrInvalidState}, {"version_conflict", ErrVersionConflict},
}

type adminError struct {
	Message string `json:"error"`
	Kind    string `json:"kind,omitempty"`
}

type remoteError struct {
	msg string
	err error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.err }

// adminServer serves the admin API on a unix socket in the state folder. The
// socket is 0600: whoever may change the state files may call it, nobody else.
type adminServer struct {
	srv  *http.Server
	path string
	done chan struct{}
}

func serveAdmin(r *Registry, path string) (*adminServer, error) {
	ln, err := listenPrivate(path, nil)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /admin/{method}", func(w http.ResponseWriter, req *http.Request) {
		var args adminArgs
		if err := json.NewDecoder(io.LimitReader(req.Body, 16<<20)).Decode(&args); err != nil {
			writeAdminError(w, fmt.Errorf("emulator: admin request: %w: %v", ErrInvalid, err))
			return
		}
		out, err := dispatch(req.Context(), r, req.PathValue("method"), args)
		if err != nil {
			writeAdminError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	a := &adminServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, path: path, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		_ = a.srv.Serve(ln)
	}()
	return a, nil
}

// listenPrivate listens on a unix socket at path that only this user can
// ever connect to. bind(2) makes the socket with the process umask, so a
// chmod after Listen leaves a moment when others may connect; instead the
// socket is made, and made 0600, inside a fresh 0700 folder nobody else can
// enter, then renamed into place. afterBind, for tests, sees the socket at
// its private path before it is moved.
func listenPrivate(path string, afterBind func(bound string)) (net.Listener, error) {
	// The state folder is locked by this emulator, so a socket file here is
	// stale, left by one that died.
	_ = os.Remove(path)
	private, err := os.MkdirTemp(filepath.Dir(path), ".admin-*")
	if err != nil {
		return nil, fmt.Errorf("emulator: admin socket %s: %w", path, err)
	}
	defer os.RemoveAll(private)
	if err := os.Chmod(private, 0o700); err != nil {
		return nil, fmt.Errorf("emulator: admin socket %s: %w", path, err)
	}
	bound := filepath.Join(private, "s")
	ln, err := net.Listen("unix", bound)
	if err != nil {
		return nil, fmt.Errorf("emulator: admin socket %s: %w", path, err)
	}
	// The listener must not unlink its first name on Close: the socket
	// lives at path by then, which adminServer.close removes.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if afterBind != nil {
		afterBind(bound)
	}
	if err := os.Chmod(bound, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("emulator: admin socket %s: %w", path, err)
	}
	if err := os.Rename(bound, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("emulator: admin socket %s: %w", path, err)
	}
	return ln, nil
}

func writeAdminError(w http.ResponseWriter, err error) {
	e := adminError{Message: err.Error()}
	status := http.StatusInternalServerError
	for _, k := range errorKinds {
		if errors.Is(err, k.err) {
			e.Kind, status = k.kind, http.StatusBadRequest
			break
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(e)
}

func (a *adminServer) close() {
	_ = a.srv.Close()
	<-a.done
	_ = os.Remove(a.path)
}

// adminClient calls a running emulator's admin socket.
type adminClient struct {
	http *http.Client
	path string
}

func newAdminClient(path string) *adminClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
	return &adminClient{http: &http.Client{Transport: tr}, path: path}
}

func (c *adminClient) call(ctx context.Context, method string, args adminArgs, out any) error {
	body, err := json.Marshal(args)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://emulator/admin/"+method, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("emulator: admin socket %s: %w", c.path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("emulator: admin socket %s: %w", c.path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e adminError
		if json.Unmarshal(data, &e) != nil || e.Message == "" {
			return fmt.Errorf("emulator: admin socket %s: %s: %s", c.path, resp.Status, strings.TrimSpace(string(data)))
		}
		re := &remoteError{msg: e.Message}
		for _, k := range errorKinds {
			if k.kind == e.Kind {
				re.err = k.err
			}
		}
		return re
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("emulator: admin socket %s: bad reply: %w", c.path, err)
	}
	return nil
}

func callFor[T any](ctx context.Context, c *adminClient, method string, args adminArgs) (T, error) {
	var out T
	err := c.call(ctx, method, args, &out)
	return out, err
}

func (c *adminClient) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

func (c *adminClient) AddAccount(ctx context.Context, a Account) (Account, error) {
	return callFor[Account](ctx, c, "AddAccount", adminArgs{AccountSpec: &a})
}
func (c *adminClient) Accounts(ctx context.Context) ([]Account, error) {
	return callFor[[]Account](ctx, c, "Accounts", adminArgs{})
}
func (c *adminClient) RegisterCA(ctx context.Context, account string, caPEM []byte, opts CAOptions) (CA, error) {
	return callFor[CA](ctx, c, "RegisterCA", adminArgs{Account: account, PEM: caPEM, CAOptions: &opts})
}
func (c *adminClient) SetCAStatus(ctx context.Context, account, caID string, status CertificateStatus) error {
	return c.call(ctx, "SetCAStatus", adminArgs{Account: account, ID: caID, Status: status}, nil)
}
func (c *adminClient) CAs(ctx context.Context, account string) ([]CA, error) {
	return callFor[[]CA](ctx, c, "CAs", adminArgs{Account: account})
}
func (c *adminClient) RegisterCertificate(ctx context.Context, account string, certPEM []byte, opts CertificateOptions) (Certificate, error) {
	return callFor[Certificate](ctx, c, "RegisterCertificate", adminArgs{Account: account, PEM: certPEM, CertOptions: &opts})
}
func (c *adminClient) IssueCertificate(ctx context.Context, account string, csrPEM []byte, opts IssueOptions) (Certificate, error) {
	return callFor[Certificate](ctx, c, "IssueCertificate", adminArgs{Account: account, PEM: csrPEM, IssueOptions: &opts})
}
func (c *adminClient) SetCertificateStatus(ctx context.Context, account, certID string, status CertificateStatus) error {
	return c.call(ctx, "SetCertificateStatus", adminArgs{Account: account, ID: certID, Status: status}, nil)
}
func (c *adminClient) Certificate(ctx context.Context, account, certID string) (Certificate, error) {
	return callFor[Certificate](ctx, c, "Certificate", adminArgs{Account: account, ID: certID})
}
func (c *adminClient) Certificates(ctx context.Context, account string) ([]Certificate, error) {
	return callFor[[]Certificate](ctx, c, "Certificates", adminArgs{Account: account})
}
func (c *adminClient) DeleteCertificate(ctx context.Context, account, certID string) error {
	return c.call(ctx, "DeleteCertificate", adminArgs{Account: account, ID: certID}, nil)
}
func (c *adminClient) CreateThing(ctx context.Context, account, name string, attributes map[string]string) (Thing, error) {
	return callFor[Thing](ctx, c, "CreateThing", adminArgs{Account: account, Thing: name, Attributes: attributes})
}
func (c *adminClient) AttachCertificate(ctx context.Context, account, thing, certID string) error {
	return c.call(ctx, "AttachCertificate", adminArgs{Account: account, Thing: thing, ID: certID}, nil)
}
func (c *adminClient) DetachCertificate(ctx context.Context, account, thing, certID string) error {
	return c.call(ctx, "DetachCertificate", adminArgs{Account: account, Thing: thing, ID: certID}, nil)
}
func (c *adminClient) Thing(ctx context.Context, account, name string) (Thing, error) {
	return callFor[Thing](ctx, c, "Thing", adminArgs{Account: account, Thing: name})
}
func (c *adminClient) Things(ctx context.Context, account string) ([]Thing, error) {
	return callFor[[]Thing](ctx, c, "Things", adminArgs{Account: account})
}
func (c *adminClient) CreateTemplate(ctx context.Context, account string, t Template) error {
	return c.call(ctx, "CreateTemplate", adminArgs{Account: account, Template: &t}, nil)
}
func (c *adminClient) Templates(ctx context.Context, account string) ([]Template, error) {
	return callFor[[]Template](ctx, c, "Templates", adminArgs{Account: account})
}
func (c *adminClient) CreateJob(ctx context.Context, account string, job Job) (Job, error) {
	return callFor[Job](ctx, c, "CreateJob", adminArgs{Account: account, Job: &job})
}
func (c *adminClient) CancelJob(ctx context.Context, account, jobID string, force bool) error {
	return c.call(ctx, "CancelJob", adminArgs{Account: account, ID: jobID, Force: force}, nil)
}
func (c *adminClient) Jobs(ctx context.Context, account string) ([]Job, error) {
	return callFor[[]Job](ctx, c, "Jobs", adminArgs{Account: account})
}
func (c *adminClient) JobExecution(ctx context.Context, account, thing, jobID string) (JobExecution, error) {
	return callFor[JobExecution](ctx, c, "JobExecution", adminArgs{Account: account, Thing: thing, ID: jobID})
}
func (c *adminClient) JobExecutions(ctx context.Context, account, thing string) ([]JobExecution, error) {
	return callFor[[]JobExecution](ctx, c, "JobExecutions", adminArgs{Account: account, Thing: thing})
}
func (c *adminClient) History(ctx context.Context, q HistoryQuery) ([]ConnectionEvent, error) {
	return callFor[[]ConnectionEvent](ctx, c, "History", adminArgs{Query: &q})
}
func (c *adminClient) CreatePolicy(ctx context.Context, account, name, document string) (Policy, error) {
	return callFor[Policy](ctx, c, "CreatePolicy", adminArgs{Account: account, Name: name, Document: document})
}
func (c *adminClient) Policy(ctx context.Context, account, name string) (Policy, error) {
	return callFor[Policy](ctx, c, "Policy", adminArgs{Account: account, Name: name})
}
func (c *adminClient) Policies(ctx context.Context, account string) ([]Policy, error) {
	return callFor[[]Policy](ctx, c, "Policies", adminArgs{Account: account})
}
func (c *adminClient) DeletePolicy(ctx context.Context, account, name string) error {
	return c.call(ctx, "DeletePolicy", adminArgs{Account: account, Name: name}, nil)
}
func (c *adminClient) AttachPolicy(ctx context.Context, account, policyName, target string) error {
	return c.call(ctx, "AttachPolicy", adminArgs{Account: account, Name: policyName, Target: target}, nil)
}
func (c *adminClient) DetachPolicy(ctx context.Context, account, policyName, target string) error {
	return c.call(ctx, "DetachPolicy", adminArgs{Account: account, Name: policyName, Target: target}, nil)
}
func (c *adminClient) AttachedPolicies(ctx context.Context, account, target string) ([]Policy, error) {
	return callFor[[]Policy](ctx, c, "AttachedPolicies", adminArgs{Account: account, Target: target})
}
func (c *adminClient) AttachAllowAllPolicy(ctx context.Context, account, certID string) error {
	return c.call(ctx, "AttachAllowAllPolicy", adminArgs{Account: account, ID: certID}, nil)
}
