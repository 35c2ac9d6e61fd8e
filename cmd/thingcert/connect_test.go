package main

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/internal/testpki"
)

const testEndpoint = "abc123-ats.iot.eu-west-1.amazonaws.com"

// connectKeySources are the key URIs `thingcert connect` is tested with; a new
// backend is one row (a PKCS#11 row starts SoftHSM2 and returns its key URI, a
// TPM row starts swtpm and returns a tpm: URI on it).
func connectKeySources() []struct {
	name   string
	keyURI func(t *testing.T) string
} {
	return []struct {
		name   string
		keyURI func(t *testing.T) string
	}{
		{"file", func(t *testing.T) string { return "file:" + filepath.Join(t.TempDir(), "keys", "device.pem") }},
		{"softhsm", func(t *testing.T) string {
			return testpeers.StartSoftHSM(t, testpeers.SoftHSMOptions{}).KeyURI("device")
		}},
		{"swtpm", func(t *testing.T) string {
			return "tpm:blob=" + filepath.Join(t.TempDir(), "device.tpmkey") + "?device=" + testpeers.StartSWTPM(t).Device()
		}},
	}
}

// deviceFiles makes a file key with `thingcert key generate` and a
// certificate for it from ca, as a device would hold them.
func deviceFiles(t *testing.T, ca *testpki.CA, cn string) (keyURI, certPath string) {
	t.Helper()
	return deviceKey(t, ca, cn, "file:"+filepath.Join(t.TempDir(), "keys", "device.pem"))
}

// deviceKey makes the key at keyURI with `thingcert key generate` and a
// certificate for it from ca.
func deviceKey(t *testing.T, ca *testpki.CA, cn, keyURI string) (string, string) {
	t.Helper()
	out, errOut, code := run(t, "key", "generate", "--key", keyURI)
	if code != 0 {
		t.Fatalf("key generate: %s", errOut)
	}
	b, _ := pem.Decode([]byte(out))
	if b == nil {
		t.Fatalf("key generate printed no PEM: %q", out)
	}
	pub, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	certPath := testpki.WriteFile(t, t.TempDir(), "device.pem", testpki.CertPEM(ca.NewClient(t, cn, pub)), 0o644)
	return keyURI, certPath
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// subscribeWitness runs mosquitto_sub (the C client) for one message on
// topic and returns a function that waits for it.
func subscribeWitness(t *testing.T, m *testpeers.Mosquitto, ca *testpki.CA, topic string) func() string {
	t.Helper()
	sub := testpeers.Need(t, "mosquitto_sub")[0]
	dir := t.TempDir()
	pair := ca.NewClientPair(t, "witness")
	cert := testpki.WriteFile(t, dir, "w.pem", pair.CertPEM(), 0o644)
	key := testpki.WriteFile(t, dir, "w.key", pair.KeyPEM(), 0o600)
	out := &lockedBuffer{}
	before := strings.Count(m.Log(), "Sending SUBACK to witness")
	cmd := exec.Command(sub, "-d", "--cafile", m.CAFile, "--cert", cert, "--key", key,
		"-h", "127.0.0.1", "-p", strings.TrimPrefix(m.Addr, "127.0.0.1:"), "-t", topic, "-C", "1", "-v", "-i", "witness")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	})
	// mosquitto_sub's own output is buffered in a pipe: watch the broker's log
	// for one more SUBACK to a witness than before it started.
	const subacked = "Sending SUBACK to witness"
	for deadline := time.Now().Add(20 * time.Second); strings.Count(m.Log(), subacked) == before; time.Sleep(10 * time.Millisecond) {
		select {
		case <-done:
			t.Fatalf("mosquitto_sub exited:\n%s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto_sub did not subscribe:\n%s", out.String())
		}
	}
	return func() string {
		select {
		case <-done:
		case <-time.After(30 * time.Second): // hang guard
			t.Fatalf("mosquitto_sub received nothing:\n%s", out.String())
		}
		return out.String()
	}
}

func TestConnectPublishesToMosquitto(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	// 127.0.0.1 too: mosquitto_sub checks the address it dials.
	server := ca.NewServer(t, testEndpoint, "127.0.0.1")
	m := testpeers.StartMosquitto(t, testpeers.MosquittoConfig{CAPEM: ca.PEM(), CertPEM: server.CertPEM(), KeyPEM: server.KeyPEM()})
	for _, ks := range connectKeySources() {
		t.Run(ks.name, func(t *testing.T) {
			testConnectPublishes(t, ca, m, ks.keyURI(t))
		})
	}
}

func testConnectPublishes(t *testing.T, ca *testpki.CA, m *testpeers.Mosquitto, keyURI string) {
	keyURI, cert := deviceKey(t, ca, "device-1", keyURI)
	base := []string{"connect", "--endpoint", testEndpoint, "--address", m.Addr, "--ca", m.CAFile, "--key", keyURI, "--cert", cert}

	t.Run("text", func(t *testing.T) {
		wait := subscribeWitness(t, m, ca, "dt/device-1/hello")
		authenticated := strings.Count(m.Log(), "u'device-1'")
		out, errOut, code := run(t, append(base, "--publish", "dt/device-1/hello", "--message", "hi from the CLI")...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		for _, want := range []string{
			`connected to ` + testEndpoint + `:8883 via ` + m.Addr + ` as client ID "device-1"`,
			"TLS           TLS 1.3, TLS_",
			"SNI           " + testEndpoint,
			"ALPN          none offered (port 8883)",
			"client cert   CN=device-1",
			"server chain  0: CN=" + testEndpoint,
			`published 15 bytes to "dt/device-1/hello" with QoS 1: PUBACK received`,
			"timings: dial ", ", TLS ", ", CONNACK ", ", PUBACK ",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		if got := wait(); !strings.Contains(got, "dt/device-1/hello hi from the CLI") {
			t.Errorf("mosquitto_sub did not receive the message:\n%s", got)
		}
		if strings.Count(m.Log(), "u'device-1'") <= authenticated {
			t.Error("mosquitto did not authenticate the device certificate")
		}
	})

	t.Run("json on port 443", func(t *testing.T) {
		out, errOut, code := run(t, append(base, "--port", "443", "--client-id", "other-id", "--publish", "dt/x", "--message", "m", "--json")...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var rep struct {
			Endpoint string `json:"endpoint"`
			Port     int    `json:"port"`
			Address  string `json:"address"`
			ClientID string `json:"client_id"`
			TLS      struct {
				ServerName  string   `json:"server_name"`
				ALPNOffered []string `json:"alpn_offered"`
				Version     string   `json:"version"`
				CipherSuite string   `json:"cipher_suite"`
				ServerChain []struct {
					Subject string `json:"subject"`
				} `json:"server_chain"`
			} `json:"tls"`
			Published *struct {
				Topic string `json:"topic"`
				QoS   int    `json:"qos"`
			} `json:"published"`
			Timings map[string]float64 `json:"timings_ms"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		if rep.Endpoint != testEndpoint || rep.Port != 443 || rep.Address != m.Addr || rep.ClientID != "other-id" ||
			rep.TLS.ServerName != testEndpoint || len(rep.TLS.ALPNOffered) != 1 || rep.TLS.ALPNOffered[0] != "x-amzn-mqtt-ca" ||
			rep.TLS.Version != "TLS 1.3" || rep.TLS.CipherSuite == "" || len(rep.TLS.ServerChain) == 0 ||
			rep.Published == nil || rep.Published.Topic != "dt/x" || rep.Published.QoS != 1 {
			t.Errorf("report %+v", rep)
		}
		for _, k := range []string{"dial", "tls", "connack", "puback", "total"} {
			if _, ok := rep.Timings[k]; !ok {
				t.Errorf("timings lack %q: %v", k, rep.Timings)
			}
		}
	})
}

func TestConnectFailures(t *testing.T) {
	ca := testpki.NewCA(t, "test root")
	otherCA := testpki.NewCA(t, "someone else's root")
	server := ca.NewServer(t, testEndpoint)
	m := testpeers.StartMosquitto(t, testpeers.MosquittoConfig{CAPEM: ca.PEM(), CertPEM: server.CertPEM(), KeyPEM: server.KeyPEM()})
	keyURI, cert := deviceFiles(t, ca, "device-1")
	foreignKey, foreignCert := deviceFiles(t, otherCA, "device-1")
	conn := func(key, cert string, extra ...string) []string {
		return append([]string{"connect", "--endpoint", testEndpoint, "--address", m.Addr, "--key", key, "--cert", cert}, extra...)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		// Without --ca the built-in Amazon roots are used, and a test CA is not among them.
		{"default roots do not trust a test broker", conn(keyURI, cert), 1,
			[]string{"thingcert: iot: " + testEndpoint + ":8883 via " + m.Addr + ": server certificate not trusted", "--ca"}},
		{"client certificate refused", conn(foreignKey, foreignCert, "--ca", m.CAFile), 1,
			[]string{"client certificate refused by the server", "registered and ACTIVE"}},
		{"certificate of another key", conn(keyURI, foreignCert, "--ca", m.CAFile), 1,
			[]string{"was not issued for key " + keyURI}},
		// The key is opened while the connection is set up; its own error wins.
		{"key not found", conn("file:"+filepath.Join(t.TempDir(), "nokey.pem"), cert, "--ca", m.CAFile), 1,
			[]string{"nokey.pem", "key not found"}},
		{"missing flags", []string{"connect", "--endpoint", testEndpoint}, 2, []string{"needs --key and --cert"}},
		{"message without topic", conn(keyURI, cert, "--message", "x"), 2, []string{"--publish TOPIC and --message TEXT go together"}},
		{"IP as endpoint", []string{"connect", "--endpoint", "127.0.0.1", "--key", keyURI, "--cert", cert}, 2, []string{"is an IP address", "--address"}},
		{"unknown port", conn(keyURI, cert, "--port", "1883"), 2, []string{"8883 or 443"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := run(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d: %s", code, tc.code, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q: %s", w, errOut)
				}
			}
		})
	}

	t.Run("json failure", func(t *testing.T) {
		out, _, code := run(t, conn(foreignKey, foreignCert, "--ca", m.CAFile, "--json")...)
		var rep struct {
			Error *struct {
				Kind, Stage, Message string
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 1 || rep.Error == nil {
			t.Fatalf("exit %d, %v: %s", code, err, out)
		}
		if rep.Error.Kind != "client certificate refused by the server" || rep.Error.Stage != "mqtt" || !strings.Contains(rep.Error.Message, testEndpoint) {
			t.Errorf("error report %+v", rep.Error)
		}
	})
}
