package tpmstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/thingcert/thingcert/keystore"
)

// Device is one open TPM: its connection, the lock that makes commands from
// many goroutines and stores take turns, and the storage root key shared by
// the stores that use it. Several stores may share one Device (NewStore);
// that is required for swtpm and /dev/tpm0, which admit a single connection.
type Device struct {
	name  string
	tpm   transport.TPMCloser
	turn  chan struct{} // a one-slot semaphore: holding it is holding the TPM
	retry retryPolicy

	// Guarded by turn.
	closed   bool
	parents  map[tpm2.TPMHandle]*parentKey // loaded or persistent storage parents
	srkProbe *parentKey                    // the persistent SRK, once looked for
	probed   bool
	support  map[keystore.Algorithm]error // what the TPM said about each algorithm
	orphans  bool                         // flush transient objects before the first command (raw TPMs)
}

// parentKey is a storage key that new keys are made under and loaded into.
type parentKey struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	// fileParent is what a key file records as its parent: TPM_RH_OWNER for a
	// primary made from the template (any TPM can remake it), or the
	// persistent handle.
	fileParent tpm2.TPMHandle
	transient  bool // made by CreatePrimary: flush on Close
	public     tpm2.TPMTPublic
}

// OpenDevice opens a TPM by name: /dev/tpmrm0, /dev/tpm0 or tcp:HOST:PORT.
func OpenDevice(ctx context.Context, device string) (*Device, error) {
	if device == "" {
		device = DefaultDevice
	}
	t, err := OpenTransport(ctx, device)
	if err != nil {
		return nil, err
	}
	d := NewDevice(device, t)
	// Done at first use rather than here: swtpm serves one connection at a
	// time, and a caller may open the next connection before closing the last.
	d.orphans = !strings.HasPrefix(device, "/dev/tpmrm")
	return d, nil
}

// flushOrphans flushes every transient object in the TPM. Without the
// kernel's resource manager (/dev/tpm0, swtpm over TCP) a TPM has one opener
// at a time, so what is loaded when thingcert opens it belongs to nobody: a
// process that was killed or lost power before it could flush its keys, or a
// tool that left them. Left there, they would fill the TPM's few object slots
// and the next key load would fail. Call with the turn held.
func flushOrphans(t transport.TPM) error {
	for {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(tpm2.TPMHTTransient) << 24, PropertyCount: 64}.Execute(t)
		if err != nil {
			return fmt.Errorf("listing transient objects: %w", err)
		}
		hl, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return fmt.Errorf("listing transient objects: %w", err)
		}
		var flushed int
		for _, h := range hl.Handle {
			if uint32(h)>>24 != uint32(tpm2.TPMHTTransient) {
				continue
			}
			if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(t); err != nil {
				return fmt.Errorf("flushing 0x%08x: %w", uint32(h), err)
			}
			flushed++
		}
		// Flushing shifts nothing, so asking again from the start finds what a
		// capped answer left out.
		if !rsp.MoreData || flushed == 0 {
			return nil
		}
	}
}

// NewDevice wraps an open transport; the Device owns it and closes it. name is
// the device as key URIs name it (device=...).
func NewDevice(name string, t transport.TPMCloser) *Device {
	return &Device{
		name:    name,
		tpm:     t,
		turn:    make(chan struct{}, 1),
		retry:   defaultRetry,
		parents: map[tpm2.TPMHandle]*parentKey{},
		support: map[keystore.Algorithm]error{},
	}
}

// Name is the device as key URIs name it.
func (d *Device) Name() string { return d.name }

// Run gives fn the TPM to itself: no other command from this process reaches
// the TPM until fn returns. Commands fn sends are retried when the TPM answers
// TPM_RC_RETRY, TPM_RC_YIELDED or TPM_RC_TESTING, and abandoned when ctx ends.
// It is for TPM commands thingcert does not wrap, such as attestation.
func (d *Device) Run(ctx context.Context, fn func(t transport.TPM) error) error {
	if err := d.acquire(ctx); err != nil {
		return err
	}
	defer d.release()
	if d.closed {
		return fmt.Errorf("tpmstore: TPM %s is closed", d.name)
	}
	t := boundTPM{d: d, ctx: ctx}
	if d.orphans {
		if err := flushOrphans(t); err != nil {
			return fmt.Errorf("tpmstore: %s: flushing objects left loaded by an earlier process: %w", d.name, err)
		}
		d.orphans = false
	}
	return fn(t)
}

func (d *Device) acquire(ctx context.Context) error {
	select {
	case d.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("tpmstore: waiting for TPM %s: %w", d.name, ctx.Err())
	}
}

func (d *Device) release() { <-d.turn }

// Close flushes the storage root key it made and closes the connection.
// Stores sharing the Device must be closed first.
func (d *Device) Close() error {
	d.turn <- struct{}{}
	defer d.release()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for _, p := range d.parents {
		if p.transient {
			if _, err := (tpm2.FlushContext{FlushHandle: p.handle}).Execute(d.tpm); err != nil {
				errs = append(errs, fmt.Errorf("tpmstore: flushing the storage root key on %s: %w", d.name, err))
			}
		}
	}
	if err := d.tpm.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// boundTPM is the transport seen inside Run: the caller's context and the
// retry policy applied to every command.
type boundTPM struct {
	d   *Device
	ctx context.Context
}

func (b boundTPM) Send(cmd []byte) ([]byte, error) {
	return b.d.retry.send(b.ctx, b.d.tpm, cmd)
}

// retryPolicy retries the TPM's "not now" warnings a bounded number of times.
type retryPolicy struct {
	attempts int           // total tries of one command
	delay    time.Duration // first pause; doubled each time up to maxDelay
	maxDelay time.Duration
}

var defaultRetry = retryPolicy{attempts: 10, delay: 10 * time.Millisecond, maxDelay: 500 * time.Millisecond}

// retryable reports whether a response code asks the caller to send the same
// command again: the TPM was busy (RETRY), gave way to other work (YIELDED)
// or is still testing itself after power-on (TESTING).
func retryable(rc tpm2.TPMRC) bool {
	return rc == tpm2.TPMRCRetry || rc == tpm2.TPMRCYielded || rc == tpm2.TPMRCTesting
}

// responseCode reads the response code from a response header.
func responseCode(rsp []byte) tpm2.TPMRC {
	if len(rsp) < headerSize {
		return 0
	}
	return tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
}

func (p retryPolicy) send(ctx context.Context, t transport.TPM, cmd []byte) ([]byte, error) {
	delay := p.delay
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var rsp []byte
		var err error
		if cs, ok := t.(contextSender); ok {
			rsp, err = cs.SendContext(ctx, cmd)
		} else {
			rsp, err = t.Send(cmd)
		}
		if err != nil {
			return nil, err
		}
		rc := responseCode(rsp)
		if !retryable(rc) || attempt >= p.attempts {
			return rsp, nil
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("tpmstore: TPM busy (%v), gave up waiting: %w", rc, ctx.Err())
		case <-timer.C:
		}
		delay = min(2*delay, p.maxDelay)
	}
}
