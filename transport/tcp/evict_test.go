package tcp

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/durable-go/durable/transport"
)

// dialRawFrom is dialRaw from the local IP address from (any of 127.0.0.0/8 on Linux).
func dialRawFrom(t testing.TB, addr, from string) *rawConn {
	t.Helper()
	d := net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(time.Minute)) // bounds a hang only
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

// handshakeCounts returns the handshakes the server tracks, and its authenticated connections.
func handshakeCounts(s *Server) (handshakes, authed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hs.n, s.authed
}

// TestEvictionOrder: when a handshake budget is full, a new connection is admitted and the
// oldest handshake of its own address (at MaxHandshakesPerAddr) or else of the address holding
// the most (at MaxHandshakes; the older oldest among equals) is closed with ERROR busy. The
// handshakes that stay are unaffected and authenticate; each evicted one released its slot
// exactly once; the evictions are logged in aggregate, and not one by one.
func TestEvictionOrder(t *testing.T) {
	log, sink := newLog(t)
	srv := startServer(t, acceptAll(), ServerConfig{Logger: log, MaxHandshakes: 4, MaxHandshakesPerAddr: 3})
	type hs struct {
		name string
		r    *rawConn
		ch   challengeMsg
	}
	// open connects from 127.0.0.<host>; the server admitted it once it sent CHALLENGE.
	open := func(name string, host int) *hs {
		r := dialRawFrom(t, srv.addr, fmt.Sprintf("127.0.0.%d", host))
		return &hs{name: name, r: r, ch: r.challenge()}
	}
	evicted := func(h *hs) {
		t.Helper()
		if m := h.r.expectError(codeBusy); m.msg != msgEvicted {
			t.Fatalf("%s: ERROR busy %q, want %q", h.name, m.msg, msgEvicted)
		}
	}

	a1, a2, a3 := open("a1", 2), open("a2", 2), open("a3", 2)
	a4 := open("a4", 2) // 127.0.0.2 is at MaxHandshakesPerAddr: its oldest goes
	evicted(a1)
	b1 := open("b1", 3)
	c1 := open("c1", 4) // MaxHandshakes: the oldest of the busiest address (127.0.0.2: a2 a3 a4)
	evicted(a2)
	b2 := open("b2", 3) // 127.0.0.2 holds 2 (a3 a4), 127.0.0.3 1, 127.0.0.4 1
	evicted(a3)
	d1 := open("d1", 5) // 127.0.0.3 holds 2 (b1 b2)
	evicted(b1)
	e1 := open("e1", 6) // every address holds 1: a4 is the oldest
	evicted(a4)

	if n := srv.evictions.Load(); n != 5 {
		t.Fatalf("%d evictions, want 5", n)
	}
	// The evicted connections are gone, and none took a slot along.
	waitUntil(t, "the evicted connections to end", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.conns) == 4
	})
	if n, _ := handshakeCounts(srv.Server); n != 4 {
		t.Fatalf("%d handshakes tracked, want 4", n)
	}
	for _, h := range []*hs{b2, c1, d1, e1} {
		h.r.write(hello(h.ch, testSecret, nil))
		if typ, body := h.r.next(); typ != frameWelcome {
			t.Fatalf("%s: got %v %q, want WELCOME", h.name, typ, body)
		}
	}
	if n, authed := handshakeCounts(srv.Server); n != 0 || authed != 4 {
		t.Fatalf("%d handshakes and %d authenticated connections, want 0 and 4", n, authed)
	}

	// Logged in aggregate: the counts add up to 5, and nothing was logged per connection.
	re := regexp.MustCompile(`evicted=(\d+)`)
	total := func() (n int) {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		for _, l := range sink.lines {
			if m := re.FindStringSubmatch(l); m != nil {
				v, _ := strconv.Atoi(m[1])
				n += v
			}
		}
		return n
	}
	waitUntil(t, "the evictions to be logged", func() bool { return total() >= 5 })
	if n := total(); n != 5 {
		t.Fatalf("the log reports %d evictions, want 5:\n%s", n, sink.dump())
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for _, l := range sink.lines {
		if strings.HasPrefix(l, "WARN") && !strings.Contains(l, "WARN tcp: too many connections are authenticating: closed the oldest with ERROR busy to make room evicted=") {
			t.Errorf("logged %q", l)
		}
		if strings.Contains(l, "evicted=") && !strings.Contains(l, "max_handshakes=4 max_handshakes_per_addr=3") {
			t.Errorf("eviction log line without the limits: %q", l)
		}
	}
}

// TestHandshakeSetModel checks the handshake bookkeeping against a plain list, over random
// admissions, evictions and completions from a few addresses.
func TestHandshakeSetModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	addrs := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3"),
		netip.MustParseAddr("::1"), netip.MustParseAddr("10.0.0.5")}
	const maxTotal, maxPer = 12, 5
	var hs handshakeSet
	var model []*serverConn // tracked, oldest first
	var seq uint64
	modelVictim := func(addr netip.Addr) *serverConn {
		count := map[netip.Addr]int{}
		oldest := map[netip.Addr]*serverConn{}
		for _, sc := range model {
			count[sc.ip]++
			if oldest[sc.ip] == nil {
				oldest[sc.ip] = sc
			}
		}
		if count[addr] >= maxPer {
			return oldest[addr]
		}
		if len(model) < maxTotal {
			return nil
		}
		var best *serverConn
		for a, sc := range oldest {
			if best == nil || count[a] > count[best.ip] || count[a] == count[best.ip] && sc.hsSeq < best.hsSeq {
				best = sc
			}
		}
		return best
	}
	drop := func(sc *serverConn) {
		for i, m := range model {
			if m == sc {
				model = append(model[:i], model[i+1:]...)
				return
			}
		}
		t.Fatal("not in the model")
	}
	for step := 0; step < 20000; step++ {
		if len(model) > 0 && rng.IntN(3) == 0 {
			// A handshake ends (authenticated or failed).
			sc := model[rng.IntN(len(model))]
			drop(sc)
			if !hs.remove(sc) || hs.remove(sc) {
				t.Fatalf("step %d: remove did not report exactly one removal", step)
			}
		} else {
			addr := addrs[rng.IntN(len(addrs))]
			want := modelVictim(addr)
			got := hs.victim(addr, maxTotal, maxPer)
			if got != want {
				t.Fatalf("step %d: victim for %v is seq %v, want %v", step, addr, seqOf(got), seqOf(want))
			}
			if got != nil {
				drop(got)
				hs.remove(got)
			}
			seq++
			sc := &serverConn{ip: addr, hsSeq: seq}
			hs.add(sc)
			model = append(model, sc)
		}
		if hs.n != len(model) || len(hs.heap) != len(hs.byAddr) {
			t.Fatalf("step %d: %d tracked (model %d), %d in the heap, %d addresses", step, hs.n, len(model), len(hs.heap), len(hs.byAddr))
		}
		for i, q := range hs.heap {
			if q.idx != i || q.n != hs.count(q.addr) || q.n == 0 {
				t.Fatalf("step %d: heap entry %d broken", step, i)
			}
			if i > 0 && before(q, hs.heap[(i-1)/2]) {
				t.Fatalf("step %d: heap order broken at %d", step, i)
			}
		}
	}
}

func seqOf(sc *serverConn) any {
	if sc == nil {
		return nil
	}
	return sc.hsSeq
}

// onlyConn returns the server's only connection.
func onlyConn(t testing.TB, s *Server) *serverConn {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) != 1 {
		t.Fatalf("%d server connections, want 1", len(s.conns))
	}
	for sc := range s.conns {
		return sc
	}
	return nil
}

// openConn waits until the server's only connection is open and returns it with its read
// buffer size and memory budget, read under its lock after the handshake set them.
func openConn(t testing.TB, s *Server) (sc *serverConn, bufSize int, mem *memBudget) {
	t.Helper()
	waitUntil(t, "an open connection", func() bool {
		sc = onlyConn(t, s)
		sc.mu.Lock()
		defer sc.mu.Unlock()
		if sc.state != stOpen {
			return false
		}
		bufSize, mem = sc.br.Size(), sc.mem
		return true
	})
	return sc, bufSize, mem
}

// TestHandshakeReadUnbuffered: until it authenticated, a connection has no read buffer (a flood
// of handshakes costs no 64 KiB buffer each); after the WELCOME it reads through a 64 KiB one,
// and frames the client pipelined right behind HELLO, in the same write, are not lost: in
// plaintext they wait in the socket, over TLS in the TLS connection's record buffer.
func TestHandshakeReadUnbuffered(t *testing.T) {
	ca := newCA(t, "durable test CA")
	for _, withTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "TLS"}[withTLS], func(t *testing.T) {
			cfg := ServerConfig{}
			if withTLS {
				cfg.TLS = &tls.Config{Certificates: []tls.Certificate{ca.valid(t, "server", true)}}
				cfg.Secret = testSecret
			}
			srv := startServer(t, acceptAll(), cfg)
			r := dialRaw(t, srv.addr)
			if withTLS {
				tc := tls.Client(r.c, &tls.Config{RootCAs: ca.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
				r = &rawConn{t: t, c: tc, br: bufio.NewReader(tc)}
			}
			ch := r.challenge()
			// The server waits for HELLO now.
			srv.mu.Lock()
			var sc *serverConn
			for c := range srv.conns {
				sc = c
			}
			inHandshake, buffered := sc.hsList != nil, sc.br != nil
			srv.mu.Unlock()
			if !inHandshake || buffered {
				t.Fatalf("waiting for HELLO: tracked as a handshake %v, has a read buffer %v; want true and false", inHandshake, buffered)
			}

			msg := hello(ch, testSecret, nil)
			msg, err := appendBatch(msg, 1, oneBatch("pipelined").Envelopes, DefaultMaxFrameSize)
			if err != nil {
				t.Fatal(err)
			}
			msg = appendPing(msg, framePing, 9)
			r.write(msg)
			if typ, body := r.next(); typ != frameWelcome {
				t.Fatalf("got %v %q, want WELCOME", typ, body)
			}
			// The ACK (from the Deliver goroutine) and the PONG (from the reader) in either order.
			var acked, ponged bool
			for range 2 {
				typ, body := r.next()
				switch typ {
				case frameAck:
					id, _, err := decodeAck(body)
					acked = err == nil && id == 1
				case framePong:
					tok, err := decodePing(body)
					ponged = err == nil && tok == 9
				default:
					t.Fatalf("got %v", typ)
				}
			}
			if !acked || !ponged {
				t.Fatalf("ACK of the pipelined batch %v, PONG of the pipelined PING %v", acked, ponged)
			}
			if _, size, _ := openConn(t, srv.Server); size != readBufferSize {
				t.Fatalf("read buffer of %d bytes after WELCOME, want %d", size, readBufferSize)
			}
		})
	}
}

// TestMaxConnsAnswersBusy: MaxConns bounds authenticated connections; a client that
// authenticates beyond it is answered ERROR busy instead of WELCOME (logged at Warn), which the
// Client reports as a retryable transport.ErrUnavailable; it gets in once a connection ends.
func TestMaxConnsAnswersBusy(t *testing.T) {
	log, sink := newLog(t)
	srv := startServer(t, acceptAll(), ServerConfig{Logger: log, MaxConns: 1})
	ctx := testCtx(t)
	a := newClient(t, srv.addr, ClientConfig{})
	if _, err := a.Send(ctx, oneBatch("a")); err != nil {
		t.Fatal(err)
	}

	r := dialRaw(t, srv.addr)
	r.write(hello(r.challenge(), testSecret, nil))
	const want = "server busy: connection limit reached (max_conns 1); retry later"
	if m := r.expectError(codeBusy); m.msg != want {
		t.Fatalf("ERROR busy %q, want %q", m.msg, want)
	}
	line := sink.waitFor(t, "peer=raw")
	if w := fmt.Sprintf("WARN tcp: closing connection: %s remote=%s peer=raw code=busy max_conns=1", want, r.c.LocalAddr()); line != w {
		t.Fatalf("logged\n%q, want\n%q", line, w)
	}

	b := newClient(t, srv.addr, ClientConfig{BreakerThreshold: -1})
	_, err := b.Send(ctx, oneBatch("b"))
	var se *transport.SendError
	if !errors.As(err, &se) || se.Kind != transport.ErrUnavailable || !transport.IsRetryable(err) ||
		!strings.Contains(err.Error(), "server refused the connection (busy): "+want) {
		t.Fatalf("second client: %v; want a retryable ErrUnavailable saying busy", err)
	}
	if n, authed := handshakeCounts(srv.Server); n != 0 || authed != 1 {
		t.Fatalf("%d handshakes, %d authenticated connections; want 0 and 1", n, authed)
	}

	a.Close(ctx)
	waitUntil(t, "the first connection to end", func() bool { _, authed := handshakeCounts(srv.Server); return authed == 0 })
	if _, err := b.Send(ctx, oneBatch("b")); err != nil {
		t.Fatalf("second client after the first left: %v", err)
	}
}

// TestLimitDefaultsAndValidation: the new limits default as documented and refuse values below 1.
func TestLimitDefaultsAndValidation(t *testing.T) {
	s, err := NewServer(acceptAll(), &ServerConfig{Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	if c := s.cfg; c.MaxConns != 1024 || c.MaxHandshakes != 1024 || c.MaxHandshakesPerAddr != 1024 ||
		c.MaxBatchMemory != 64<<20 || c.MaxServerBatchMemory != 256<<20 {
		t.Fatalf("defaults %d %d %d %d %d", c.MaxConns, c.MaxHandshakes, c.MaxHandshakesPerAddr, c.MaxBatchMemory, c.MaxServerBatchMemory)
	}
	for _, tc := range []struct {
		cfg  ServerConfig
		want string
	}{
		{ServerConfig{MaxHandshakes: -1}, "tcp: NewServer: MaxHandshakes -1 < 1"},
		{ServerConfig{MaxHandshakesPerAddr: -2}, "tcp: NewServer: MaxHandshakesPerAddr -2 < 1"},
		{ServerConfig{MaxBatchMemory: -3}, "tcp: NewServer: MaxBatchMemory -3 < 1"},
		{ServerConfig{MaxServerBatchMemory: -4}, "tcp: NewServer: MaxServerBatchMemory -4 < 1"},
	} {
		tc.cfg.Secret = testSecret
		if _, err := NewServer(acceptAll(), &tc.cfg); err == nil || err.Error() != tc.want {
			t.Errorf("got %v, want %q", err, tc.want)
		}
	}
}
