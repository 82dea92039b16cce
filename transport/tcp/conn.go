package tcp

import (
	"crypto/tls"
	"encoding/binary"
	"net"
	"os"
	"time"
)

const readBufferSize = 64 << 10

// deadlineReader sets a fresh read deadline before every read, so that d is the longest
// silence tolerated from the peer. d == 0 leaves the connection's deadline alone (used during
// the handshake, which runs under one absolute deadline).
type deadlineReader struct {
	c net.Conn
	d time.Duration
}

func (r *deadlineReader) Read(p []byte) (int, error) {
	if r.d > 0 {
		if err := r.c.SetReadDeadline(time.Now().Add(r.d)); err != nil {
			return 0, err
		}
	}
	return r.c.Read(p)
}

// countingConn counts the bytes read through it, so that a failed TLS handshake can tell a peer
// that sent nothing at all from one that sent something else.
type countingConn struct {
	net.Conn
	n int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n += int64(n)
	return n, err
}

// isTLSHandshakeRecord reports whether hdr, read as a frame header, is the start of a TLS
// handshake record (a ClientHello: 0x16, then version 3.x): a TLS client talking to a server
// without TLS.
func isTLSHandshakeRecord(hdr [frameHeaderLen]byte) bool {
	return hdr[0] == 0x16 && hdr[1] == 0x03
}

// plainFrameHeader reports whether the 5 bytes a TLS client received in place of a TLS record
// header are the header of a CHALLENGE or ERROR frame: a server without TLS talking to a TLS
// client.
func plainFrameHeader(h [5]byte) (frameType, bool) {
	n := binary.BigEndian.Uint32(h[:4])
	t := frameType(h[4])
	return t, (t == frameChallenge || t == frameError) && n >= 1 && n <= preAuthMaxFrame
}

// tls13 returns a copy of cfg that refuses anything older than TLS 1.3.
func tls13(cfg *tls.Config) *tls.Config {
	if cfg == nil {
		return nil
	}
	c := cfg.Clone()
	if c.MinVersion < tls.VersionTLS13 {
		c.MinVersion = tls.VersionTLS13
	}
	if c.MaxVersion != 0 && c.MaxVersion < tls.VersionTLS13 {
		c.MaxVersion = tls.VersionTLS13
	}
	return c
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "unknown"
	}
	if len(h) > maxNodeIDLen {
		h = h[:maxNodeIDLen]
	}
	return h
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
