package tpmstore

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/thingcert/thingcert/keystore"
)

func TestParseKeyURI(t *testing.T) {
	tests := []struct {
		in      string
		want    keyRef
		wantErr string
	}{
		{in: "tpm:blob=/k/dev.tpmkey", want: keyRef{loc: location{blob: "/k/dev.tpmkey"}, device: DefaultDevice}},
		{in: "tpm:blob=/k/dev.tpmkey?device=tcp:127.0.0.1:2321", want: keyRef{loc: location{blob: "/k/dev.tpmkey"}, device: "tcp:127.0.0.1:2321"}},
		{in: "tpm:handle=0x81000010?device=/dev/tpm0&auth-source=file:/etc/a", want: keyRef{loc: location{handle: 0x81000010}, device: "/dev/tpm0", authSource: "/etc/a"}},
		{in: "tpm:blob=k.tpmkey", wantErr: "absolute path"},
		{in: "tpm:handle=0x80000001", wantErr: "not a persistent handle"},
		{in: "tpm:handle=foo", wantErr: "not a number"},
		{in: "tpm:blob=/a;handle=0x81000010", wantErr: "only one"},
		{in: "tpm:blob=/a?devcie=/dev/tpm0", wantErr: "unknown query attribute"},
		{in: "tpm:blb=/a", wantErr: "unknown attribute"},
		{in: "tpm:blob=/a?device=tcp:nohostport", wantErr: "tcp:HOST:PORT"},
		{in: "tpm:blob=/a?device=tpm0", wantErr: "want /dev/tpmrm0"},
		{in: "tpm:blob=/a?auth-source=relative", wantErr: "absolute file path"},
		{in: "tpm:?device=/dev/tpm0", wantErr: "names its key"},
		{in: "file:/a", wantErr: "not a tpm: URI"},
	}
	for _, tt := range tests {
		got, err := parseKeyURI(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, keystore.ErrInvalidURI) {
				t.Errorf("parseKeyURI(%q) = %v, want ErrInvalidURI mentioning %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseKeyURI(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestStoreURIAndKeyURIRoundTrip(t *testing.T) {
	tests := []struct{ store, name, wantKey string }{
		{"tpm:", "dev", "tpm:blob=/var/lib/thingcert/keys/dev.tpmkey"},
		{"tpm:?device=tcp:127.0.0.1:2321", "dev", "tpm:blob=/var/lib/thingcert/keys/dev.tpmkey?device=tcp:127.0.0.1:2321"},
		{"tpm:blob-dir=/srv/k/?device=/dev/tpmrm0", "a-1", "tpm:blob=/srv/k/a-1.tpmkey"},
		{"tpm:blob=/srv/k/old.tpmkey?device=/dev/tpm0&auth-source=/etc/a", "new", "tpm:blob=/srv/k/new.tpmkey?auth-source=/etc/a&device=/dev/tpm0"},
		{"tpm:handle=0x81000010", "n", "tpm:blob=/var/lib/thingcert/keys/n.tpmkey"},
	}
	for _, tt := range tests {
		ref, err := parseStoreURI(tt.store)
		if err != nil {
			t.Fatalf("parseStoreURI(%q): %v", tt.store, err)
		}
		s := &Store{ref: ref}
		got, err := s.KeyURI(tt.name)
		if err != nil || got != tt.wantKey {
			t.Errorf("store %q KeyURI(%q) = %q, %v; want %q", tt.store, tt.name, got, err, tt.wantKey)
		}
		// The key URI parses back to the same key on the same device.
		k, err := parseKeyURI(got)
		if err != nil || k.device != ref.device || keyURIOf(k) != got {
			t.Errorf("key URI %q does not round-trip: %+v %v", got, k, err)
		}
	}
	if _, err := (&Store{ref: storeRef{blobDir: "/k"}}).KeyURI("../x"); err == nil {
		t.Error("KeyURI accepted a name with a path in it")
	}
}

func TestReadAuth(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "auth")
	if err := os.WriteFile(p, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readAuth(p)
	if err != nil || string(got) != "s3cret" {
		t.Fatalf("readAuth = %q, %v; want s3cret", got, err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o620} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		_, err := readAuth(p)
		if !errors.Is(err, keystore.ErrInsecure) || !strings.Contains(err.Error(), "chmod 600 "+p) {
			t.Errorf("mode %04o: %v, want ErrInsecure naming chmod 600", mode, err)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error reveals the secret: %v", err)
		}
	}
	long := filepath.Join(dir, "long")
	if err := os.WriteFile(long, []byte(strings.Repeat("x", 33)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readAuth(long); err == nil {
		t.Error("a 33-byte authorization value was accepted")
	}
}

func TestECDSADER(t *testing.T) {
	der, err := ecdsaDER([]byte{0x00, 0x80}, []byte{0x01})
	if err != nil {
		t.Fatal(err)
	}
	// SEQUENCE { INTEGER 0x0080, INTEGER 0x01 }: r needs a leading zero to stay positive.
	want := []byte{0x30, 0x07, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x01}
	if string(der) != string(want) {
		t.Fatalf("ecdsaDER = % x, want % x", der, want)
	}
}

func TestCheckPSS(t *testing.T) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("m"))
	sign := func(salt int) []byte {
		sig, err := rsa.SignPSS(rand.Reader, priv, crypto.SHA256, digest[:], &rsa.PSSOptions{SaltLength: salt})
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	hashLen, maxSalt := sign(32), sign(rsa.PSSSaltLengthAuto)
	if n, err := pssSaltLength(&priv.PublicKey, crypto.SHA256, maxSalt); err != nil || n != 256-32-2 {
		t.Fatalf("pssSaltLength(max) = %d, %v; want %d", n, err, 256-32-2)
	}
	if n, err := pssSaltLength(&priv.PublicKey, crypto.SHA256, sign(20)); err != nil || n != 20 {
		t.Fatalf("pssSaltLength(20) = %d, %v", n, err)
	}
	if err := checkPSS(&priv.PublicKey, crypto.SHA256, digest[:], hashLen, rsa.PSSSaltLengthEqualsHash); err != nil {
		t.Errorf("hash-length salt refused: %v", err)
	}
	if err := checkPSS(&priv.PublicKey, crypto.SHA256, digest[:], maxSalt, rsa.PSSSaltLengthAuto); err != nil {
		t.Errorf("auto accepts any salt, got %v", err)
	}
	// A TPM that uses the largest salt where crypto/tls asked for the hash length.
	err = checkPSS(&priv.PublicKey, crypto.SHA256, digest[:], maxSalt, rsa.PSSSaltLengthEqualsHash)
	if err == nil || !strings.Contains(err.Error(), "222-byte salt, but 32 bytes were asked for") {
		t.Errorf("salt mismatch not explained: %v", err)
	}
	bad := append([]byte(nil), hashLen...)
	bad[10] ^= 1
	if err := checkPSS(&priv.PublicKey, crypto.SHA256, digest[:], bad, rsa.PSSSaltLengthEqualsHash); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Errorf("corrupt signature: %v", err)
	}
}

// scriptedTPM answers each command with the next canned response code.
type scriptedTPM struct {
	codes []tpm2.TPMRC
	sent  int
}

func (s *scriptedTPM) Send(cmd []byte) ([]byte, error) {
	rc := s.codes[min(s.sent, len(s.codes)-1)]
	s.sent++
	rsp := make([]byte, headerSize)
	binary.BigEndian.PutUint16(rsp[0:2], 0x8001)
	binary.BigEndian.PutUint32(rsp[2:6], headerSize)
	binary.BigEndian.PutUint32(rsp[6:10], uint32(rc))
	return rsp, nil
}

func (s *scriptedTPM) Close() error { return nil }

func TestRetry(t *testing.T) {
	p := retryPolicy{attempts: 4, delay: time.Microsecond, maxDelay: time.Microsecond}
	ctx := context.Background()

	s := &scriptedTPM{codes: []tpm2.TPMRC{tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCTesting, 0}}
	rsp, err := p.send(ctx, s, []byte("cmd"))
	if err != nil || responseCode(rsp) != 0 || s.sent != 4 {
		t.Fatalf("after RETRY, YIELDED, TESTING then success: rc %v, err %v, sent %d; want success after 4", responseCode(rsp), err, s.sent)
	}

	s = &scriptedTPM{codes: []tpm2.TPMRC{tpm2.TPMRCRetry}}
	rsp, _ = p.send(ctx, s, []byte("cmd"))
	if responseCode(rsp) != tpm2.TPMRCRetry || s.sent != 4 {
		t.Fatalf("a TPM that always says RETRY: rc %v after %d sends; want RETRY after exactly 4", responseCode(rsp), s.sent)
	}

	s = &scriptedTPM{codes: []tpm2.TPMRC{tpm2.TPMRCLockout}}
	rsp, _ = p.send(ctx, s, []byte("cmd"))
	if responseCode(rsp) != tpm2.TPMRCLockout || s.sent != 1 {
		t.Fatalf("LOCKOUT must not be retried: sent %d", s.sent)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	s = &scriptedTPM{codes: []tpm2.TPMRC{tpm2.TPMRCRetry}}
	if _, err := (retryPolicy{attempts: 100, delay: time.Hour, maxDelay: time.Hour}).send(cctx, s, []byte("cmd")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

// TestTCPShortReads serves responses in small pieces with pauses, so the client's
// reads return parts of a response; the transport must reassemble each whole.
func TestTCPShortReads(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	body := make([]byte, 3000)
	for i := range body {
		body[i] = byte(i)
	}
	rsp := make([]byte, headerSize+len(body))
	binary.BigEndian.PutUint16(rsp[0:2], 0x8001)
	binary.BigEndian.PutUint32(rsp[2:6], uint32(len(rsp)))
	copy(rsp[headerSize:], body)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.(*net.TCPConn).SetNoDelay(true)
		buf := make([]byte, 64)
		for n := 0; n < 2; n++ {
			if _, err := c.Read(buf); err != nil {
				return
			}
			for _, cut := range [][2]int{{0, 3}, {3, 10}, {10, 11}, {11, 1500}, {1500, len(rsp)}} {
				if _, err := c.Write(rsp[cut[0]:cut[1]]); err != nil {
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}()
	tr, err := DialTCP(context.Background(), l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for n := 0; n < 2; n++ {
		got, err := tr.SendContext(context.Background(), []byte("command"))
		if err != nil {
			t.Fatalf("response %d: %v", n, err)
		}
		if string(got) != string(rsp) {
			t.Fatalf("response %d: got %d bytes, not the %d sent", n, len(got), len(rsp))
		}
	}
}

func TestTCPRefusesNonsenseSize(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		_, _ = c.Read(buf)
		// An HTTP server, say: not a TPM.
		_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
	}()
	tr, err := DialTCP(context.Background(), l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if _, err := tr.Send([]byte("command")); err == nil || !strings.Contains(err.Error(), "not a TPM 2.0 response") {
		t.Fatalf("got %v, want a refusal of the response size", err)
	}
	if _, err := tr.Send([]byte("command")); err == nil || !strings.Contains(err.Error(), "reopen the store") {
		t.Fatalf("a broken connection must stay broken: %v", err)
	}
}

// TestTCPAbandonedCommand: a peer that never answers (swtpm busy with another
// client) does not hang the caller past its context, and the connection,
// now out of step, is not reused.
func TestTCPAbandonedCommand(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	received := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		if _, err := c.Read(buf); err == nil {
			close(received)
		}
		<-release
	}()
	tr, err := DialTCP(context.Background(), l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-received; cancel() }()
	if _, err := tr.SendContext(ctx, []byte("command")); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want the command abandoned with context.Canceled", err)
	}
	if _, err := tr.SendContext(context.Background(), []byte("command")); err == nil || !strings.Contains(err.Error(), "reopen the store") {
		t.Fatalf("the connection was reused after an abandoned command: %v", err)
	}
}
