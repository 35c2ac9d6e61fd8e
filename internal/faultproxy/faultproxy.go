// Package faultproxy is a loopback TCP proxy for tests that puts a faulty
// network between a device and its broker: each new connection gets the
// fault the test set for it (delay, drop, reset, truncate, black-hole, or a
// forged TLS alert before the server speaks), so a test can break one phase
// of provisioning, rotation or job handling and heal the link for the next.
//
// It is written here rather than taken from toxiproxy because the faults the
// tests need are TLS-aware (a reset right after the client's CONNECT record,
// an alert forged before ServerHello), which toxiproxy's byte-stream toxics
// do not express.
package faultproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Kind is what the proxy does to a connection.
type Kind string

const (
	// Pass forwards both ways.
	Pass Kind = "pass"
	// Delay forwards both ways, each chunk after Fault.Delay.
	Delay Kind = "delay"
	// Drop accepts and closes at once, before any byte.
	Drop Kind = "drop"
	// Reset forwards until the client sends its Fault.Records-th TLS
	// application-data record, then resets both sides (RST) without
	// forwarding it. With a Go TLS 1.3 client presenting a certificate the
	// 4th is the first after the handshake (Certificate, CertificateVerify
	// and Finished come first): MQTT's CONNECT.
	Reset Kind = "reset"
	// Truncate forwards Fault.Bytes bytes from the server, then closes both
	// sides.
	Truncate Kind = "truncate"
	// BlackHole accepts and reads from the client but never forwards or
	// answers, until the proxy closes.
	BlackHole Kind = "black-hole"
	// ForgedAlert waits for the client's first bytes (its ClientHello),
	// answers with a plaintext TLS alert of Fault.Alert (default 42,
	// bad_certificate) as a server that refused it would, and closes: what
	// anyone on the path can send before the server is verified.
	ForgedAlert Kind = "forged-alert"
)

// Fault is one connection's treatment.
type Fault struct {
	Kind    Kind
	Delay   time.Duration // Delay
	Records int           // Reset: the client's application-data record that triggers it
	Bytes   int           // Truncate: how much of the server's stream passes
	Alert   byte          // ForgedAlert: the alert description
}

// Proxy forwards 127.0.0.1 connections to an upstream address.
type Proxy struct {
	l        net.Listener
	upstream string

	mu     sync.Mutex
	queue  []Fault // the faults of the next connections, in order
	dflt   Fault   // then this
	conns  []net.Conn
	seen   []Kind
	closed bool
	wg     sync.WaitGroup
}

// Start listens on a free loopback port and forwards to upstream.
func Start(upstream string) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{l: l, upstream: upstream, dflt: Fault{Kind: Pass}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the address devices dial.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// Next queues faults for the next connections, one each, after those
// already queued; later connections get the default.
func (p *Proxy) Next(f ...Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.queue = append(p.queue, f...)
}

// SetDefault sets the fault of every connection once the queue is empty.
func (p *Proxy) SetDefault(f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dflt = f
}

// Pending is how many queued faults have not met a connection yet.
func (p *Proxy) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue)
}

// Seen lists the fault each connection so far got, in order.
func (p *Proxy) Seen() []Kind {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Kind(nil), p.seen...)
}

// CutAll closes every connection open now (a link that went down).
func (p *Proxy) CutAll() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// Close stops listening, closes every connection and waits for the
// proxy's goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.l.Close()
	p.CutAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns = append(p.conns, c)
	return true
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		f := p.dflt
		if len(p.queue) > 0 {
			f, p.queue = p.queue[0], p.queue[1:]
		}
		p.seen = append(p.seen, f.Kind)
		p.mu.Unlock()
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(c, f)
		}()
	}
}

func (p *Proxy) handle(c net.Conn, f Fault) {
	defer c.Close()
	switch f.Kind {
	case Drop:
		return
	case BlackHole:
		_, _ = io.Copy(io.Discard, c)
		return
	case ForgedAlert:
		buf := make([]byte, 1024)
		if _, err := c.Read(buf); err != nil {
			return
		}
		a := f.Alert
		if a == 0 {
			a = 42
		}
		// A record of type alert (21), version TLS 1.2, length 2: level
		// fatal (2) and the description.
		_, _ = c.Write([]byte{21, 3, 3, 0, 2, 2, a})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	var d net.Dialer
	up, err := d.DialContext(ctx, "tcp", p.upstream)
	cancel()
	if err != nil {
		return
	}
	if !p.track(up) {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { p.clientToServer(c, up, f); done <- struct{}{} }()
	go func() { p.serverToClient(up, c, f); done <- struct{}{} }()
	<-done
	// One side ended: end the other (a closed TCP connection both ways).
	c.Close()
	up.Close()
	<-done
}

func (p *Proxy) clientToServer(c, up net.Conn, f Fault) {
	if f.Kind != Reset {
		copyChunks(up, c, f, -1)
		return
	}
	// Read whole TLS records and count the application-data ones.
	n := 0
	hdr := make([]byte, 5)
	for {
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
		if _, err := io.ReadFull(c, body); err != nil {
			return
		}
		if hdr[0] == 23 {
			n++
			if n >= f.Records {
				resetConn(c)
				resetConn(up)
				return
			}
		}
		if _, err := up.Write(append(hdr, body...)); err != nil {
			return
		}
		hdr = make([]byte, 5)
	}
}

func (p *Proxy) serverToClient(up, c net.Conn, f Fault) {
	limit := -1
	if f.Kind == Truncate {
		limit = f.Bytes
	}
	copyChunks(c, up, f, limit)
}

// copyChunks copies src to dst, each chunk after f's delay, at most limit
// bytes (-1: no limit).
func copyChunks(dst, src net.Conn, f Fault, limit int) {
	buf := make([]byte, 32<<10)
	sent := 0
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if f.Kind == Delay {
				time.Sleep(f.Delay)
			}
			chunk := buf[:n]
			if limit >= 0 && sent+n > limit {
				chunk = buf[:limit-sent]
			}
			if _, werr := dst.Write(chunk); werr != nil {
				return
			}
			sent += len(chunk)
			if limit >= 0 && sent >= limit {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
				}
			}
			return
		}
	}
}

// resetConn closes c with a TCP RST rather than a FIN.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
