package tpm_bench

import (
	"context"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/thingcert/thingcert/emulator"
	"github.com/thingcert/thingcert/internal/testpeers"
	"github.com/thingcert/thingcert/iot"
	"github.com/thingcert/thingcert/keystore"
	"github.com/thingcert/thingcert/keystore/tpmstore"
)

// timer counts the commands that reach the TPM and the time spent waiting
// for its answers.
type timer struct {
	transport.TPMCloser
	n    atomic.Int64
	wait atomic.Int64 // ns
	cmds []tpm2.TPMCC // when set non-nil: the command codes sent
}

func (t *timer) Send(cmd []byte) ([]byte, error) {
	t.n.Add(1)
	if t.cmds != nil && len(cmd) >= 10 {
		t.cmds = append(t.cmds, tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])))
	}
	start := time.Now()
	rsp, err := t.TPMCloser.Send(cmd)
	t.wait.Add(int64(time.Since(start)))
	return rsp, err
}

// BenchmarkConnect is `thingcert connect --publish` with a TPM key, in one
// process for the counting: each iteration does what one connect process
// does with the TPM — open the TPM (a new connection to swtpm), open the key
// by its URI (its blob loaded under the SRK), a mutual-TLS connect to the
// emulator whose handshake the TPM signs, one QoS 1 publish and its PUBACK,
// disconnect, close the store (the loaded key flushed) — and reports the TPM
// commands per connect and the time spent waiting for the TPM. Two cases:
// the key made under the owner hierarchy's storage root key, which each
// process creates again (transient-srk), and under a storage root key
// persisted at 0x81000001 beforehand, as tpm2_evictcontrol or an OS
// provisions it (persistent-srk).
//
//	go test -run '^$' -bench Connect -count 3 ./bench/tpm/
func BenchmarkConnect(b *testing.B) {
	b.Run("transient-srk", func(b *testing.B) { benchConnect(b, false) })
	b.Run("persistent-srk", func(b *testing.B) { benchConnect(b, true) })
}

func benchConnect(b *testing.B, persistentSRK bool) {
	ctx := context.Background()
	sw := testpeers.StartSWTPM(b)
	if persistentSRK {
		persistSRK(b, sw.Device())
	}
	storeURI := "tpm:blob-dir=" + b.TempDir() + "?device=" + sw.Device()

	emu, err := emulator.Start(ctx, emulator.Config{Accounts: []emulator.Account{{Name: "bench"}}})
	if err != nil {
		b.Fatal(err)
	}
	defer emu.Close()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(emu.RootCAPEM())

	// The key, made once (a device makes it at provisioning), and its
	// certificate from the emulator.
	s, err := keystore.Open(ctx, storeURI, keystore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	keyURI, _ := s.KeyURI("device")
	key, err := s.Generate(ctx, keyURI, keystore.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	csr, err := keystore.CreateCSR(key, "CN=bench-tpm", keystore.CSROptions{})
	if err != nil {
		b.Fatal(err)
	}
	s.Close()
	// Attached to no thing, so that each connect can take a client ID of
	// its own: the emulator, as AWS, admits one CONNECT per second per
	// client ID.
	c, err := emu.IssueCertificate(ctx, "bench", keystore.EncodeCSR(csr), emulator.IssueOptions{})
	if err != nil {
		b.Fatal(err)
	}
	const policy = `{"Version":"2012-10-17","Statement":[` +
		`{"Effect":"Allow","Action":["iot:Connect"],"Resource":["arn:aws:iot:*:*:client/bench-tpm-*"]},` +
		`{"Effect":"Allow","Action":["iot:Publish"],"Resource":["arn:aws:iot:*:*:topic/dt/bench-tpm/*"]}]}`
	if _, err := emu.CreatePolicy(ctx, "bench", "device", policy); err != nil {
		b.Fatal(err)
	}
	if err := emu.AttachPolicy(ctx, "bench", "device", c.ID); err != nil {
		b.Fatal(err)
	}
	blk, _ := pem.Decode([]byte(c.PEM))
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		b.Fatal(err)
	}

	var seq atomic.Int64
	connect := func(t *timer) error {
		raw, err := tpmstore.OpenTransport(ctx, sw.Device())
		if err != nil {
			return err
		}
		t.TPMCloser = raw
		dev := tpmstore.NewDevice(sw.Device(), t)
		defer dev.Close()
		s, err := tpmstore.NewStore(ctx, dev, storeURI, keystore.Options{})
		if err != nil {
			return err
		}
		defer s.Close()
		k, err := s.Open(ctx, keyURI)
		if err != nil {
			return err
		}
		id, err := iot.NewIdentity(k, []*x509.Certificate{leaf})
		if err != nil {
			return err
		}
		cl, err := iot.New(iot.Config{
			Endpoint: iot.Endpoint{Host: emu.Endpoint("bench"), Address: emu.Addr()},
			Identity: iot.NewIdentitySource(id),
			Roots:    roots,
			ClientID: fmt.Sprintf("bench-tpm-%d", seq.Add(1)),
		})
		if err != nil {
			return err
		}
		if _, err := cl.Connect(ctx); err != nil {
			return err
		}
		if err := cl.Publish(ctx, "dt/bench-tpm/hello", iot.AtLeastOnce, []byte("hello")); err != nil {
			return err
		}
		return cl.Disconnect(ctx)
	}
	// Warm up: swtpm answers TPM_RC_RETRY to its first ECDSA signature.
	if err := connect(&timer{}); err != nil {
		b.Fatal(err)
	}
	// Which commands one connect sends.
	first := &timer{cmds: []tpm2.TPMCC{}}
	if err := connect(first); err != nil {
		b.Fatal(err)
	}
	names := map[tpm2.TPMCC]string{tpm2.TPMCCCreatePrimary: "CreatePrimary", tpm2.TPMCCLoad: "Load", tpm2.TPMCCSign: "Sign",
		tpm2.TPMCCFlushContext: "FlushContext", tpm2.TPMCCReadPublic: "ReadPublic", tpm2.TPMCCStartAuthSession: "StartAuthSession"}
	var seen []string
	for _, c := range first.cmds {
		if n, ok := names[c]; ok {
			seen = append(seen, n)
		} else {
			seen = append(seen, fmt.Sprintf("%#x", uint32(c)))
		}
	}
	b.Logf("TPM commands of one connect: %v", seen)
	var cmds, wait, total int64
	for b.Loop() {
		t := &timer{}
		start := time.Now()
		if err := connect(t); err != nil {
			b.Fatal(err)
		}
		total += int64(time.Since(start))
		cmds += t.n.Load()
		wait += t.wait.Load()
	}
	n := float64(b.N)
	b.ReportMetric(float64(cmds)/n, "tpm-cmds/connect")
	b.ReportMetric(float64(wait)/n/1e6, "tpm-ms/connect")
	b.ReportMetric(float64(wait)/float64(total), "tpm-share")
}

// persistSRK makes the TCG ECC P-256 storage root key and persists it at
// 0x81000001, where thingcert looks for one before making keys.
func persistSRK(b *testing.B, device string) {
	b.Helper()
	ctx := context.Background()
	t, err := tpmstore.OpenTransport(ctx, device)
	if err != nil {
		b.Fatal(err)
	}
	defer t.Close()
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	srk, err := tpm2.CreatePrimary{PrimaryHandle: owner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(t)
	if err != nil {
		b.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(t)
	if _, err := (tpm2.EvictControl{
		Auth:             owner,
		ObjectHandle:     &tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name},
		PersistentHandle: 0x81000001,
	}).Execute(t); err != nil {
		b.Fatal(err)
	}
}
