package emulator

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// Fuzz targets for what devices send the emulator: the TLS ClientHello it
// reads itself, the fleet-provisioning requests, the Jobs requests, and the
// templates its operators write. Seed corpora are in testdata/fuzz/<target>.

// FuzzReadClientHello feeds any bytes to the ClientHello reader and, as a
// differential check, to crypto/tls: whenever crypto/tls accepts a
// ClientHello (it calls GetConfigForClient), the emulator's reader must have
// read it too, with the same SNI and ALPN list, so its SNI and ALPN rules can
// never be skipped by a ClientHello only crypto/tls understands.
func FuzzReadClientHello(f *testing.F) {
	for _, cfg := range []*tls.Config{
		{ServerName: "abc-ats.iot.us-east-1.amazonaws.com", NextProtos: []string{alpnMQTT}},
		{ServerName: "127.0.0.1"},
		{ServerName: "x.example", MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}},
	} {
		f.Add(clientHelloBytes(f, cfg))
	}
	f.Add([]byte{22, 3, 1, 0, 0})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		raw, hello, err := readClientHello(bytes.NewReader(data))
		if !bytes.HasPrefix(data, raw) && !(err != nil && len(raw) >= len(data)) {
			t.Fatalf("read %q, which is not what was sent", raw)
		}
		if err == nil && hello == nil && len(raw) > len(data) {
			t.Fatalf("read more than was sent")
		}
		got := goClientHello(data)
		if got == nil {
			return
		}
		if err != nil || hello == nil {
			t.Fatalf("crypto/tls read a ClientHello (SNI %q, ALPN %q) the emulator's reader did not (err %v)", got.ServerName, got.SupportedProtos, err)
		}
		if hello.ServerName != got.ServerName || !slices.Equal(hello.ALPN, got.SupportedProtos) {
			t.Fatalf("reader: SNI %q ALPN %q; crypto/tls: SNI %q ALPN %q", hello.ServerName, hello.ALPN, got.ServerName, got.SupportedProtos)
		}
	})
}

// goClientHello is what crypto/tls's server reads from data, or nil.
func goClientHello(data []byte) *tls.ClientHelloInfo {
	var got *tls.ClientHelloInfo
	stop := errors.New("seen")
	conn := &fakeConn{r: bytes.NewReader(data)}
	srv := tls.Server(conn, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		c := *h
		got = &c
		return nil, stop
	}})
	_ = srv.Handshake()
	return got
}

// fakeConn reads from r and swallows writes.
type fakeConn struct {
	r io.Reader
	net.Conn
}

func (c *fakeConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *fakeConn) Write(b []byte) (int, error)      { return len(b), nil }
func (c *fakeConn) Close() error                     { return nil }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fakeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

// fuzzRegistry is an in-memory registry with account A, a fleet template and
// a rich one, a thing with a queued job, and generous rate limits (the
// limits are tested elsewhere; here they would only hide code).
func fuzzRegistry(t testing.TB) *Registry {
	t.Helper()
	r, err := Open(ctx, Config{
		Accounts:              []Account{{Name: "A", Prefix: "aaaa"}},
		Templates:             []Template{{Name: "fleet", Body: SimpleTemplate("sensor-", "SerialNumber")}, {Name: "rich", Body: richTemplate}},
		CreateCertificateRate: 1e9, RegisterThingRate: 1e9,
		Now: func() time.Time { return time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateThing(ctx, "A", "dev-1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateJob(ctx, "A", Job{ID: "j1", Document: json.RawMessage(`{"operation":"rotate"}`), Things: []string{"dev-1"}}); err != nil {
		t.Fatal(err)
	}
	return r
}

var richTemplate = json.RawMessage(`{
  "Parameters": {"SerialNumber": {"Type": "String"}, "Model": {"Type": "String", "Default": "m1"},
    "Tags": {"Type": "String", "Default": "eu,west"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
  "Mappings": {"Models": {"m1": {"Prefix": "sensor", "Sites": ["lab", "plant"]}, "m2": {"Prefix": "gw", "Sites": ["edge"]}}},
  "Conditions": {"IsGateway": {"Fn::Equals": [{"Ref": "Model"}, "m2"]}},
  "Resources": {
    "thing": {"Type": "AWS::IoT::Thing", "Properties": {
      "ThingName": {"Fn::Join": ["-", [{"Fn::FindInMap": ["Models", {"Ref": "Model"}, "Prefix"]}, {"Ref": "SerialNumber"}]]},
      "AttributePayload": {"site": {"Fn::Select": [0, {"Fn::FindInMap": ["Models", {"Ref": "Model"}, "Sites"]}]},
        "zone": {"Fn::Select": ["1", {"Fn::Split": [",", {"Ref": "Tags"}]}]}}}},
    "cert": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
      "Status": {"Fn::If": ["IsGateway", "INACTIVE", "ACTIVE"]}}}
  },
  "DeviceConfiguration": {"model": {"Ref": "Model"}}
}`)

// checkProvisioningReply checks a reply's shape: the request topic plus
// /accepted or /rejected, JSON, and on /rejected AWS's error fields.
func checkProvisioningReply(t *testing.T, topic string, reply message) (accepted bool) {
	t.Helper()
	switch reply.Topic {
	case topic + "/accepted":
		accepted = true
	case topic + "/rejected":
		var e provisioningError
		if err := json.Unmarshal(reply.Payload, &e); err != nil || e.StatusCode < 400 || e.ErrorCode == "" || e.ErrorMessage == "" {
			t.Fatalf("rejected reply %s: %v", reply.Payload, err)
		}
	default:
		t.Fatalf("reply on %q to a request on %q", reply.Topic, topic)
	}
	if !json.Valid(reply.Payload) {
		t.Fatalf("reply is not JSON: %q", reply.Payload)
	}
	return accepted
}

// FuzzCreateCertificateFromCSR: whatever a device sends as
// CreateCertificateFromCsr, the reply is well formed, and an accepted one
// carries a certificate for the CSR's own key, PENDING_ACTIVATION, that
// passes AWS's algorithm policy.
func FuzzCreateCertificateFromCSR(f *testing.F) {
	f.Add([]byte(`{"certificateSigningRequest": ` + jsonString(fuzzCSR(f, "sensor-1")) + `}`))
	f.Add([]byte(`{"certificateSigningRequest": ""}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		r := fuzzRegistry(t)
		defer r.Close()
		reply, ok := r.handleProvisioning("A", topicCreateFromCSR, payload)
		if !ok {
			t.Fatal("a CreateCertificateFromCsr request got no reply")
		}
		if !checkProvisioningReply(t, topicCreateFromCSR, reply) {
			return
		}
		var acc createFromCSRAccepted
		if err := json.Unmarshal(reply.Payload, &acc); err != nil || acc.CertificateOwnershipToken == "" {
			t.Fatalf("accepted reply %s: %v", reply.Payload, err)
		}
		block, _ := pem.Decode([]byte(acc.CertificatePEM))
		if block == nil {
			t.Fatalf("accepted reply without a certificate: %s", reply.Payload)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil || CertificateID(cert.Raw) != acc.CertificateID {
			t.Fatalf("certificate %s: %v (ID %s)", acc.CertificateID, err, CertificateID(block.Bytes))
		}
		var req struct {
			CSR string `json:"certificateSigningRequest"`
		}
		_ = json.Unmarshal(payload, &req)
		csr, err := parseCSR([]byte(req.CSR))
		if err != nil {
			t.Fatalf("accepted a CSR that does not parse: %v", err)
		}
		if !publicKeysEqual(csr.PublicKey, cert.PublicKey) {
			t.Fatal("the certificate is not for the CSR's key")
		}
		got, err := r.Certificate(ctx, "A", acc.CertificateID)
		if err != nil || got.Status != StatusPendingActivation {
			t.Fatalf("registered as %+v, %v", got, err)
		}
	})
}

func publicKeysEqual(a, b any) bool {
	type equaler interface{ Equal(x crypto.PublicKey) bool }
	ea, ok := a.(equaler)
	return ok && ea.Equal(b)
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func fuzzCSR(t testing.TB, cn string) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// FuzzRegisterThing: a RegisterThing payload ($TOKEN stands for a valid
// ownership token of a fresh certificate) on the fleet or the rich template.
// The reply is well formed; an accepted one names a valid thing, to which the
// certificate is now attached, ACTIVE or INACTIVE; the token is spent.
func FuzzRegisterThing(f *testing.F) {
	f.Add(`{"certificateOwnershipToken": "$TOKEN", "parameters": {"SerialNumber": "42"}}`, false)
	f.Add(`{"certificateOwnershipToken": "$TOKEN", "parameters": {"SerialNumber": "7", "Model": "m2", "Tags": "us,east"}}`, true)
	f.Add(`{"certificateOwnershipToken": "$TOKEN", "parameters": {"SerialNumber": "7", "Model": "m3"}}`, true)
	f.Add(`{"certificateOwnershipToken": "", "parameters": {}}`, false)
	f.Add(`{"certificateOwnershipToken": "$TOKEN", "parameters": {"SerialNumber": "bad name!"}}`, false)
	csr := fuzzCSR(f, "dev")
	f.Fuzz(func(t *testing.T, payload string, rich bool) {
		r := fuzzRegistry(t)
		defer r.Close()
		reply, _ := r.handleProvisioning("A", topicCreateFromCSR, []byte(`{"certificateSigningRequest": `+jsonString(csr)+`}`))
		var acc createFromCSRAccepted
		if err := json.Unmarshal(reply.Payload, &acc); err != nil || acc.CertificateOwnershipToken == "" {
			t.Fatalf("CreateCertificateFromCsr: %s", reply.Payload)
		}
		topic := topicTemplates + "fleet/provision/json"
		if rich {
			topic = topicTemplates + "rich/provision/json"
		}
		reply, ok := r.handleProvisioning("A", topic, []byte(strings.ReplaceAll(payload, "$TOKEN", acc.CertificateOwnershipToken)))
		if !ok {
			t.Fatal("a RegisterThing request got no reply")
		}
		if !checkProvisioningReply(t, topic, reply) {
			return
		}
		var done registerThingAccepted
		if err := json.Unmarshal(reply.Payload, &done); err != nil || !isThingName(done.ThingName) {
			t.Fatalf("accepted reply %s: %v", reply.Payload, err)
		}
		cert, err := r.Certificate(ctx, "A", acc.CertificateID)
		if err != nil || !slices.Contains(cert.Things, done.ThingName) || (cert.Status != StatusActive && cert.Status != StatusInactive) {
			t.Fatalf("after RegisterThing: %+v, %v", cert, err)
		}
		again, _ := r.handleProvisioning("A", topic, []byte(strings.ReplaceAll(payload, "$TOKEN", acc.CertificateOwnershipToken)))
		if strings.HasSuffix(again.Topic, "/accepted") {
			t.Fatal("an ownership token was accepted twice")
		}
	})
}

var jobsErrorCodes = []string{jobsInvalidTopic, jobsInvalidJSON, jobsInvalidRequest, jobsInvalidStateTransition, jobsResourceNotFound, jobsVersionMismatch, jobsInternalError}

// FuzzJobsRequest: any request on $aws/things/dev-1/jobs/<rest>, twice in a
// row (the second sees what the first changed). Replies are JSON objects on
// <topic>/accepted or /rejected; a rejection has a documented code; the
// execution keeps a known status and a version that never goes down.
func FuzzJobsRequest(f *testing.F) {
	for _, seed := range [][2]string{
		{"get", `{"clientToken": "t1"}`},
		{"$next/get", `{"includeJobDocument": true}`},
		{"start-next", `{"statusDetails": {"step": "1"}, "stepTimeoutInMinutes": 5}`},
		{"j1/update", `{"status": "IN_PROGRESS", "expectedVersion": 1, "statusDetails": {"a": "b"}}`},
		{"j1/update", `{"status": "SUCCEEDED", "includeJobExecutionState": true, "executionNumber": 1}`},
		{"j1/update", `{"status": "FAILED", "statusDetails": {"reason": 7}}`},
		{"j1/get", `{"includeJobDocument": false}`},
		{"nope/get", ``},
		{"j1/update", `[1,2]`},
	} {
		f.Add(seed[0], []byte(seed[1]))
	}
	f.Fuzz(func(t *testing.T, rest string, payload []byte) {
		r := fuzzRegistry(t)
		defer r.Close()
		version := int64(0)
		for range 2 {
			reply, ok := r.handleJobs("A", "dev-1", rest, payload)
			if !ok {
				return
			}
			topic := "$aws/things/dev-1/jobs/" + rest
			var body map[string]any
			if err := json.Unmarshal(reply.Payload, &body); err != nil {
				t.Fatalf("reply %q is not a JSON object: %v", reply.Payload, err)
			}
			switch reply.Topic {
			case topic + "/accepted":
			case topic + "/rejected":
				if code, _ := body["code"].(string); !slices.Contains(jobsErrorCodes, code) {
					t.Fatalf("rejected with code %q: %s", code, reply.Payload)
				}
			default:
				t.Fatalf("reply on %q to a request on %q", reply.Topic, topic)
			}
			ex, err := r.JobExecution(ctx, "A", "dev-1", "j1")
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains([]JobExecutionStatus{JobQueued, JobInProgress, JobSucceeded, JobFailed, JobRejected, JobTimedOut, JobCanceled, JobRemoved}, ex.Status) {
				t.Fatalf("execution status %q", ex.Status)
			}
			if ex.VersionNumber < version {
				t.Fatalf("version went from %d to %d", version, ex.VersionNumber)
			}
			version = ex.VersionNumber
		}
	})
}

// FuzzTemplate: any template body and parameters. Parsing never panics; a
// template that parses evaluates to a valid thing name and ACTIVE or INACTIVE,
// or to an error; it never reads the certificate's subject (fleet).
func FuzzTemplate(f *testing.F) {
	f.Add([]byte(SimpleTemplate("sensor-", "SerialNumber")), []byte(`{"SerialNumber": "1"}`))
	f.Add([]byte(richTemplate), []byte(`{"SerialNumber": "1", "Model": "m2"}`))
	f.Add([]byte(richTemplate), []byte(`{"SerialNumber": "1", "Tags": "a"}`))
	f.Add([]byte(`{"Conditions": {"A": {"Condition": "A"}}, "Resources": {"c": {"Type": "AWS::IoT::Certificate", "Condition": "A", "Properties": {}}}}`), []byte(`{}`))
	f.Add([]byte(`{"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"Status": {"Fn::Select": [0, {"Fn::Split": ["|", "ACTIVE|x"]}]}}}}}`), []byte(`{}`))
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "secret-cn", Organization: []string{"secret-org"}}}
	f.Fuzz(func(t *testing.T, body, params []byte) {
		doc, err := parseTemplate(body)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("refused without ErrInvalid: %v", err)
			}
			return
		}
		var p map[string]string
		if json.Unmarshal(params, &p) != nil {
			p = nil
		}
		plan, err := evalTemplate(doc, p, "cert-id", cert)
		if err != nil {
			return
		}
		if plan.ThingName != "" && !isThingName(plan.ThingName) {
			t.Fatalf("thing name %q", plan.ThingName)
		}
		if plan.CertificateStatus != StatusActive && plan.CertificateStatus != StatusInactive {
			t.Fatalf("certificate status %q", plan.CertificateStatus)
		}
		all, _ := json.Marshal(plan)
		if bytes.Contains(all, []byte("secret-cn")) && !bytes.Contains(body, []byte("secret-cn")) && !bytes.Contains(params, []byte("secret-cn")) {
			t.Fatalf("a fleet template read the certificate's CommonName: %s", all)
		}
	})
}
