package emulator

import (
	"fmt"
	"io"
	"net"
	"slices"
	"strings"

	"golang.org/x/crypto/cryptobyte"
)

// The emulator reads a connection's ClientHello itself before crypto/tls sees
// it, for one reason: crypto/tls answers every refusal made while it reads the
// ClientHello (GetConfigForClient) with alert 80, internal_error, which tells
// the device nothing. A missing SNI and a missing ALPN protocol have alerts of
// their own, and the emulator sends those. When the bytes are not a ClientHello
// it can read, they go to crypto/tls unchanged, which refuses them as it would.

// TLS alert descriptions the emulator sends itself (RFC 8446 §6.2).
const (
	alertMissingExtension      = 109 // RFC 8446 §9.2: a server that requires SNI answers its absence so
	alertNoApplicationProtocol = 120 // RFC 7301 §3.2: no protocol the server accepts was offered
	recordTypeHandshake        = 22
	recordTypeAlert            = 21
	handshakeTypeClientHello   = 1
	extensionServerName        = 0
	extensionALPN              = 16
	maxClientHelloSize         = 1 << 16      // as crypto/tls: no ClientHello is larger
	maxRecordPayload           = 1<<14 + 2048 // crypto/tls's maxCiphertext
	recordHeaderLen            = 5
	handshakeHeaderLen         = 4
	serverNameTypeHostName     = 0
	legacyRecordVersion        = 0x0303
)

// clientHello is what the emulator's connection rules need from a ClientHello.
type clientHello struct {
	ServerName string   // the host_name of server_name, "" when absent
	ALPN       []string // the protocols offered, in the client's order
}

// readClientHello reads the TLS records that carry the ClientHello from r and
// returns every byte read (to replay to crypto/tls) and the parsed message.
// hello is nil when the bytes are not a ClientHello this parser understands;
// err is set only when reading failed.
func readClientHello(r io.Reader) (raw []byte, hello *clientHello, err error) {
	var msg []byte
	for {
		hdr := make([]byte, recordHeaderLen)
		if _, err := io.ReadFull(r, hdr); err != nil {
			return append(raw, hdr...), nil, err
		}
		raw = append(raw, hdr...)
		n := int(hdr[3])<<8 | int(hdr[4])
		if hdr[0] != recordTypeHandshake || n > maxRecordPayload {
			return raw, nil, nil
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return raw, nil, err
		}
		raw = append(raw, body...)
		msg = append(msg, body...)
		if len(raw) > 2*maxClientHelloSize {
			return raw, nil, nil // a stream of empty records, not a device
		}
		if len(msg) < handshakeHeaderLen {
			continue
		}
		bodyLen := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
		if msg[0] != handshakeTypeClientHello || bodyLen > maxClientHelloSize {
			return raw, nil, nil
		}
		if want := handshakeHeaderLen + bodyLen; len(msg) >= want {
			// Bytes after the ClientHello are replayed too; crypto/tls
			// decides what they mean.
			h, ok := parseClientHello(msg[handshakeHeaderLen:want])
			if !ok {
				return raw, nil, nil
			}
			return raw, h, nil
		}
	}
}

// parseClientHello reads a ClientHello body (RFC 8446 §4.1.2) as crypto/tls
// does for the two extensions it needs: a malformed or repeated server_name or
// ALPN extension fails the parse, as it fails crypto/tls's.
func parseClientHello(body []byte) (*clientHello, bool) {
	s := cryptobyte.String(body)
	var version uint16
	var random, sessionID, suites, compression cryptobyte.String
	if !s.ReadUint16(&version) || !s.ReadBytes((*[]byte)(&random), 32) ||
		// RFC 8446 caps legacy_session_id at 32 bytes, but crypto/tls reads
		// longer ones, and the reader must read all crypto/tls reads.
		!s.ReadUint8LengthPrefixed(&sessionID) ||
		!s.ReadUint16LengthPrefixed(&suites) || len(suites)%2 != 0 ||
		!s.ReadUint8LengthPrefixed(&compression) {
		return nil, false
	}
	h := &clientHello{}
	if s.Empty() {
		return h, true // no extensions at all (TLS 1.2 allows it)
	}
	var exts cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return nil, false
	}
	seen := map[uint16]bool{}
	for !exts.Empty() {
		var typ uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
			return nil, false
		}
		if seen[typ] {
			return nil, false // RFC 8446 §4.2: an extension appears once
		}
		seen[typ] = true
		switch typ {
		case extensionServerName:
			var names cryptobyte.String
			if !data.ReadUint16LengthPrefixed(&names) || names.Empty() {
				return nil, false
			}
			for !names.Empty() {
				var nameType uint8
				var name cryptobyte.String
				if !names.ReadUint8(&nameType) || !names.ReadUint16LengthPrefixed(&name) || name.Empty() {
					return nil, false
				}
				if nameType != serverNameTypeHostName {
					continue
				}
				if h.ServerName != "" {
					return nil, false // one host_name only (RFC 6066 §3)
				}
				h.ServerName = string(name)
				if strings.HasSuffix(h.ServerName, ".") {
					return nil, false // RFC 6066 §3: no trailing dot
				}
			}
		case extensionALPN:
			var list cryptobyte.String
			if !data.ReadUint16LengthPrefixed(&list) || list.Empty() {
				return nil, false
			}
			for !list.Empty() {
				var proto cryptobyte.String
				if !list.ReadUint8LengthPrefixed(&proto) || proto.Empty() {
					return nil, false
				}
				h.ALPN = append(h.ALPN, string(proto))
			}
		default:
			continue
		}
		if !data.Empty() {
			return nil, false
		}
	}
	return h, true
}

// writeAlert sends a fatal TLS alert as the first server record, before any
// ServerHello (so in the clear, with the legacy record version).
func writeAlert(w io.Writer, description byte) error {
	_, err := w.Write([]byte{recordTypeAlert, legacyRecordVersion >> 8, legacyRecordVersion & 0xff, 0, 2, 2, description})
	return err
}

// replayConn is a connection whose first reads return bytes already read.
type replayConn struct {
	net.Conn
	pending []byte
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			// An empty slice of the ClientHello would keep its ~1.5 KiB
			// alive as long as the connection (crypto/tls holds this conn).
			c.pending = nil
		}
		return n, nil
	}
	return c.Conn.Read(b)
}

// checkHello applies the rules that need only the ClientHello: AWS IoT's ATS
// endpoints require SNI, and its port 443 requires ALPN x-amzn-mqtt-ca for
// MQTT with a client certificate. It returns the alert to send, or 0.
func checkHello(h *clientHello, requireALPN bool) (verdict, byte) {
	var v verdict
	if requireALPN && !slices.Contains(h.ALPN, alpnMQTT) {
		offered := "none"
		if len(h.ALPN) > 0 {
			offered = fmt.Sprintf("%q", h.ALPN)
		}
		return v.refuse(RuleALPN, "MQTT on port 443 needs ALPN %q (offered: %s); send it, or use port 8883", alpnMQTT, offered), alertNoApplicationProtocol
	}
	if h.ServerName == "" {
		return v.refuse(RuleSNIRequired, "the ClientHello has no SNI (server_name): AWS IoT Core requires it; send the endpoint host name (%s) as SNI", "<prefix>-ats.iot.<region>.amazonaws.com"), alertMissingExtension
	}
	return v, 0
}
