package tcp

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// rawConn speaks the protocol by hand, for tests that misbehave on purpose.
type rawConn struct {
	t   testing.TB
	c   net.Conn
	br  *bufio.Reader
	hdr [frameHeaderLen]byte
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(time.Minute)) // bounds a hang only
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

// next reads one frame; it fails the test on any error.
func (r *rawConn) next() (frameType, []byte) {
	r.t.Helper()
	t, body, err := r.read()
	if err != nil {
		r.t.Fatalf("reading a frame: %v", err)
	}
	return t, body
}

func (r *rawConn) read() (frameType, []byte, error) {
	t, n, err := readHeader(r.br, &r.hdr, DefaultMaxFrameSize)
	if err != nil {
		return 0, nil, err
	}
	body, err := readBody(r.br, n, nil)
	return t, body, err
}

func (r *rawConn) write(b []byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// challenge reads the server's CHALLENGE.
func (r *rawConn) challenge() challengeMsg {
	r.t.Helper()
	t, body := r.next()
	if t != frameChallenge {
		r.t.Fatalf("got %v, want CHALLENGE", t)
	}
	ch, err := decodeChallenge(body)
	if err != nil {
		r.t.Fatal(err)
	}
	return ch
}

// hello builds a valid HMAC HELLO answering ch; mutate may change it before the MAC is computed.
func hello(ch challengeMsg, secret []byte, mutate func(*helloMsg)) []byte {
	h := helloMsg{version: 1, auth: authHMAC, timeMillis: time.Now().UnixMilli(), serverNonce: ch.nonce, clientNonce: newNonce(), nodeID: "raw"}
	if mutate != nil {
		mutate(&h)
	}
	if h.auth == authHMAC && h.credential == nil {
		h.credential = helloMAC(secret, h.version, h.timeMillis, &h.serverNonce, &h.clientNonce, h.nodeID)
	}
	b, err := appendHello(nil, &h)
	if err != nil {
		panic(err)
	}
	return b
}

// handshake authenticates with testSecret and returns the HELLO that was sent.
func (r *rawConn) handshake() []byte {
	r.t.Helper()
	h := hello(r.challenge(), testSecret, nil)
	r.write(h)
	if t, body := r.next(); t != frameWelcome {
		r.t.Fatalf("got %v %q, want WELCOME", t, body)
	}
	return h
}

// expectError reads frames until an ERROR arrives, then expects the connection to close.
func (r *rawConn) expectError(code uint16) errorMsg {
	r.t.Helper()
	for {
		t, body, err := r.read()
		if err != nil {
			r.t.Fatalf("connection ended without ERROR: %v", err)
		}
		if t != frameError {
			continue
		}
		m, err := decodeError(body)
		if err != nil {
			r.t.Fatal(err)
		}
		if m.code != code {
			r.t.Fatalf("ERROR code %s (%q), want %s", codeName(m.code), m.msg, codeName(code))
		}
		r.expectClosed()
		return m
	}
}

func (r *rawConn) expectClosed() {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := r.br.ReadByte(); err == nil {
		r.t.Fatal("connection still open")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		r.t.Fatal("connection not closed by the server")
	}
}

// listenFake runs serve for every connection to a fake server and returns its address.
func listenFake(t testing.TB, serve func(*rawConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(30 * time.Second))
			serve(&rawConn{t: t, c: c, br: bufio.NewReader(c)})
			c.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}
