package tcp

import (
	"crypto/tls"
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
