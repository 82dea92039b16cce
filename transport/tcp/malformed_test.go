package tcp

import (
	"encoding/binary"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestMalformedInput sends each kind of malformed input on its own connection, before and after
// authentication, and checks that the server logs the reason, answers with an ERROR frame and
// closes that connection; that a well-behaved client keeps working throughout; and that the
// server's heap does not grow by more than 1 MiB over many rounds.
func TestMalformedInput(t *testing.T) {
	log, sink := newLog(t)
	srv := startServer(t, acceptAll(), ServerConfig{Logger: log})
	good := newClient(t, srv.addr, ClientConfig{})
	ctx := testCtx(t)
	ping := appendPing(nil, framePing, 1)
	batch, err := appendBatch(nil, 1, oneBatch("a", "b", "c").Envelopes, DefaultMaxFrameSize)
	if err != nil {
		t.Fatal(err)
	}
	fourGiB := []byte{0xff, 0xff, 0xff, 0xff, byte(frameBatch)}

	cases := []struct {
		name    string
		auth    bool   // handshake first
		send    []byte // then this
		halfEnd bool   // then close our write side
		code    uint16 // expected ERROR code (0: just closed)
		log     string // expected in the server log
	}{
		{"4GiB length", true, fourGiB, false, codeTooLarge, "exceeds the maximum of 16777216"},
		{"4GiB length before auth", false, fourGiB, false, codeTooLarge, "exceeds the maximum of 4096"},
		{"truncated frame", true, batch[:len(batch)-7], true, codeProtocol, "truncated frame body"},
		{"unknown frame type", true, []byte{0, 0, 0, 9, 0x7f, 1, 2, 3, 4, 5, 6, 7, 8}, false, codeProtocol, "unknown frame type 0x7f"},
		{"server-only frame", true, appendGoAway(nil, "x"), false, codeProtocol, "unexpected GOAWAY frame"},
		{"trailing bytes", true, withTrailing(batch), false, codeProtocol, "BATCH has 1 trailing bytes"},
		{"trailing bytes in PING", true, withTrailing(ping), false, codeProtocol, "PING frame body of 9 bytes"},
		{"wrong version", false, nil, false, codeVersion, "unsupported protocol version 7"},
		{"garbage instead of HELLO", false, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), false, codeTooLarge, "malformed handshake"},
	}
	run := func(t *testing.T, round int) {
		for _, tc := range cases {
			if round == 0 {
				t.Log(tc.name)
			}
			r := dialRaw(t, srv.addr)
			switch {
			case tc.auth:
				r.handshake()
			case tc.name == "wrong version":
				r.write(hello(r.challenge(), testSecret, func(h *helloMsg) { h.version = 7 }))
			default:
				r.challenge()
			}
			r.write(tc.send)
			if tc.halfEnd {
				r.c.(*net.TCPConn).CloseWrite()
			}
			if tc.code != 0 {
				r.expectError(tc.code)
			} else {
				r.expectClosed()
			}
			if round == 0 {
				sink.waitFor(t, tc.log)
			}
			r.c.Close()
			// The well-behaved client is not affected.
			if _, err := good.Send(ctx, oneBatch("still-working")); err != nil {
				t.Fatalf("after %s: good client failed: %v", tc.name, err)
			}
		}
	}
	run(t, 0) // warm up: first connections, buffers, log lines

	waitConns := func(n int) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			srv.mu.Lock()
			got := len(srv.conns)
			srv.mu.Unlock()
			if got == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d server connections, want %d", got, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitConns(1)
	heap := func() uint64 {
		var m runtime.MemStats
		for i := 0; i < 3; i++ {
			runtime.GC()
		}
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	for round := 1; round <= 10; round++ {
		run(t, round)
	}
	waitConns(1) // only the good client's connection is left
	after := heap()
	growth := int64(after) - int64(before)
	t.Logf("heap before %d, after %d bytes: growth %d over %d malformed connections", before, after, growth, 10*len(cases))
	if growth > 1<<20 {
		t.Fatalf("heap grew by %d bytes", growth)
	}
}

// TestDeclaredLengthNotAllocated: a peer that declares a maximal frame and then stalls costs
// the server only what it actually sent, not the declared length.
func TestDeclaredLengthNotAllocated(t *testing.T) {
	srv := startServer(t, acceptAll(), ServerConfig{MaxFrameSize: 1 << 30})
	r := dialRaw(t, srv.addr)
	r.handshake()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	hdr := make([]byte, 5, 5+100)
	binary.BigEndian.PutUint32(hdr, 1<<30-1)
	hdr[4] = byte(frameBatch)
	r.write(append(hdr, make([]byte, 100)...))
	time.Sleep(100 * time.Millisecond)
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
		t.Fatalf("server allocated %d bytes for a 1 GiB frame header and 100 bytes of body", d)
	}
}
