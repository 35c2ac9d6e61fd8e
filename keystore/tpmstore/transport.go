package tpmstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

// A TPM response starts with a 10-byte header: tag (2), size of the whole
// response (4), response code (4).
const (
	headerSize = 10
	// maxResponse bounds what a peer may make us allocate; real TPMs answer at
	// most a few KiB (TPM_PT_MAX_RESPONSE_SIZE is typically 4096).
	maxResponse = 1 << 20
)

// DefaultCommandTimeout bounds one command sent to a TPM over TCP when the
// context has no earlier deadline. RSA key creation on a slow simulator takes
// seconds; a peer that says nothing for this long is stuck or busy with
// another client.
const DefaultCommandTimeout = 2 * time.Minute

// contextSender is a transport that can abandon a command when ctx ends.
type contextSender interface {
	SendContext(ctx context.Context, cmd []byte) ([]byte, error)
}

// OpenTransport opens a raw connection to a TPM: a device file (/dev/tpmrm0,
// /dev/tpm0) or swtpm's TCP data port (tcp:HOST:PORT). Most programs want
// OpenDevice, which adds locking and retries; this is for wrapping the
// transport (to count commands, say) before handing it to NewDevice.
func OpenTransport(ctx context.Context, device string) (transport.TPMCloser, error) {
	if addr, ok := strings.CutPrefix(device, "tcp:"); ok {
		return DialTCP(ctx, addr)
	}
	return openFile(device)
}

// TCPTransport speaks the raw TPM 2.0 command stream over TCP, as swtpm's
// --server type=tcp port does. It reads each response whole: the header, then
// exactly the size the header announces, however the bytes arrive.
type TCPTransport struct {
	addr    string
	timeout time.Duration

	mu     sync.Mutex
	conn   net.Conn
	broken error // set when a command was cut off: the stream is out of step
}

// DialTCP connects to a TPM's TCP data port (host:port). It never sends
// swtpm's control-port commands such as power-on: start swtpm with
// --flags not-need-init,startup-clear.
func DialTCP(ctx context.Context, addr string) (*TCPTransport, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("tpmstore: connecting to the TPM at tcp:%s: %w (is swtpm running with --server type=tcp,port=...?)", addr, err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return &TCPTransport{addr: addr, conn: conn, timeout: DefaultCommandTimeout}, nil
}

// Send implements transport.TPM, bounded by DefaultCommandTimeout.
func (t *TCPTransport) Send(cmd []byte) ([]byte, error) {
	return t.send(nil, cmd)
}

// SendContext is Send that gives up when ctx ends. A command given up midway
// leaves the stream out of step, so the connection is closed and later calls
// fail: reopen the store.
func (t *TCPTransport) SendContext(ctx context.Context, cmd []byte) ([]byte, error) {
	return t.send(ctx, cmd)
}

func (t *TCPTransport) send(ctx context.Context, cmd []byte) (rsp []byte, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.broken != nil {
		return nil, t.broken
	}
	deadline := time.Now().Add(t.timeout)
	if ctx != nil {
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		stop := context.AfterFunc(ctx, func() { _ = t.conn.SetDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	if err := t.conn.SetDeadline(deadline); err != nil {
		return nil, t.fail(ctx, err)
	}
	if _, err := t.conn.Write(cmd); err != nil {
		return nil, t.fail(ctx, err)
	}
	rsp, err = readResponse(t.conn)
	if err != nil {
		return nil, t.fail(ctx, err)
	}
	return rsp, nil
}

// readResponse reads one response: the 10-byte header, then the rest of the
// size it announces. A single Read may return less than a whole response.
func readResponse(r io.Reader) ([]byte, error) {
	var hdr [headerSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("reading the response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < headerSize || size > maxResponse {
		return nil, fmt.Errorf("response header announces %d bytes: not a TPM 2.0 response", size)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr[:])
	if _, err := io.ReadFull(r, rsp[headerSize:]); err != nil {
		return nil, fmt.Errorf("reading a %d-byte response: %w", size, err)
	}
	return rsp, nil
}

// fail marks the connection unusable and explains what happened.
func (t *TCPTransport) fail(ctx context.Context, err error) error {
	_ = t.conn.Close()
	switch {
	case ctx != nil && ctx.Err() != nil:
		err = fmt.Errorf("tpmstore: command to the TPM at tcp:%s abandoned: %w", t.addr, ctx.Err())
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = fmt.Errorf("tpmstore: the TPM at tcp:%s did not answer within %s: swtpm serves one connection at a time; is another program (tpm2-tools, another thingcert) connected to it?", t.addr, t.timeout)
	default:
		err = fmt.Errorf("tpmstore: talking to the TPM at tcp:%s: %w", t.addr, err)
	}
	t.broken = fmt.Errorf("%w (connection closed; reopen the store)", err)
	return err
}

// Close closes the connection.
func (t *TCPTransport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.broken == nil {
		t.broken = errors.New("tpmstore: TPM connection closed")
	}
	return t.conn.Close()
}

// fileTransport talks to a TPM character device. The kernel returns a whole
// response to one read, but a short one is handled as on TCP all the same.
type fileTransport struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

func openFile(path string) (*fileTransport, error) {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("tpmstore: no TPM at %s: is a TPM 2.0 present and enabled, and its driver loaded (on a Raspberry Pi, dtoverlay=tpm-slb9670 in config.txt)? For swtpm use device=tcp:HOST:PORT", path)
		}
		return nil, fmt.Errorf("tpmstore: %w", err)
	}
	if fi.Mode()&os.ModeDevice == 0 {
		return nil, fmt.Errorf("tpmstore: %s is not a device (want /dev/tpmrm0 or /dev/tpm0)", path)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("tpmstore: opening %s: %w: add the user to the tss group (sudo usermod -aG tss USER, then log in again)", path, err)
		}
		if strings.Contains(err.Error(), "device or resource busy") {
			return nil, fmt.Errorf("tpmstore: opening %s: %w: /dev/tpm0 admits one program at a time (tpm2-abrmd may hold it); use /dev/tpmrm0", path, err)
		}
		return nil, fmt.Errorf("tpmstore: opening %s: %w", path, err)
	}
	return &fileTransport{path: path, f: f}, nil
}

func (t *fileTransport) Send(cmd []byte) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, err := t.f.Write(cmd); err != nil {
		return nil, fmt.Errorf("tpmstore: writing to %s: %w", t.path, err)
	}
	// One large read first: kernels before 4.18 drop whatever a first read
	// leaves behind, so the header alone must not be read on its own.
	buf := make([]byte, 8192)
	n, err := t.f.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("tpmstore: reading from %s: %w", t.path, err)
	}
	rsp, err := readResponse(io.MultiReader(bytes.NewReader(buf[:n]), t.f))
	if err != nil {
		return nil, fmt.Errorf("tpmstore: %s: %w", t.path, err)
	}
	return rsp, nil
}

func (t *fileTransport) Close() error { return t.f.Close() }
