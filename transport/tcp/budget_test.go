package tcp

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/durable-go/durable/transport"
)

// payloadBatch returns a one-envelope batch with id, a header, and a payload of n bytes.
func payloadBatch(id string, n int) []transport.Envelope {
	return []transport.Envelope{{ID: id, Topic: "t", SendAttempt: 1, Headers: map[string]string{"k": "v"}, Payload: make([]byte, n)}}
}

// batchCharge is what the server charges its budgets for a batch of envs (before clamping):
// the BATCH body plus the decoded size.
func batchCharge(t testing.TB, envs []transport.Envelope) int64 {
	t.Helper()
	frame, err := appendBatch(nil, 1, envs, DefaultMaxFrameSize)
	if err != nil {
		t.Fatal(err)
	}
	body := frame[frameHeaderLen:]
	_, _, extra, err := decodeBatchSized(body)
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(body)) + extra
}

// heldTracker is a Handler that counts the batches in Deliver and the bytes they hold, and
// blocks every batch until release is closed.
type heldTracker struct {
	t       testing.TB
	budget  int64
	release chan struct{}

	mu        sync.Mutex
	inside    int
	held      int64
	maxInside int
	maxHeld   int64
	seen      map[string]int
}

func newHeldTracker(t testing.TB, budget int64) *heldTracker {
	return &heldTracker{t: t, budget: budget, release: make(chan struct{}), seen: map[string]int{}}
}

func (h *heldTracker) Deliver(ctx context.Context, b *transport.Batch) (transport.Result, error) {
	charge := min(batchCharge(h.t, b.Envelopes), h.budget)
	h.mu.Lock()
	h.inside++
	h.held += charge
	h.maxInside = max(h.maxInside, h.inside)
	h.maxHeld = max(h.maxHeld, h.held)
	h.seen[b.Envelopes[0].ID]++
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.inside--
		h.held -= charge
		h.mu.Unlock()
	}()
	select {
	case <-h.release:
		return transport.Result{}, nil
	case <-ctx.Done():
		return transport.Result{}, ctx.Err()
	}
}

func (h *heldTracker) in() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.inside
}

// sendBatches writes BATCH frames with ids first..first+n-1 (envelope ids prefix-<id>) from a
// goroutine, since the server may stop reading them; its error arrives on the channel.
func sendBatches(t testing.TB, r *rawConn, prefix string, first uint64, n, payload int) <-chan error {
	t.Helper()
	var frames []byte
	for id := first; id < first+uint64(n); id++ {
		var err error
		frames, err = appendBatch(frames, id, payloadBatch(fmt.Sprintf("%s-%03d", prefix, id), payload), DefaultMaxFrameSize)
		if err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := r.c.Write(frames)
		done <- err
	}()
	return done
}

// expectAcks reads frames until every id in ids was ACKed, failing on anything else or on a
// second ACK for an id.
func expectAcks(t testing.TB, r *rawConn, ids ...uint64) {
	t.Helper()
	want := map[uint64]bool{}
	for _, id := range ids {
		want[id] = true
	}
	got := map[uint64]bool{}
	for len(got) < len(want) {
		typ, body := r.next()
		if typ != frameAck {
			t.Fatalf("got %v %q, want ACK", typ, body)
		}
		id, _, err := decodeAck(body)
		if err != nil {
			t.Fatal(err)
		}
		if !want[id] || got[id] {
			t.Fatalf("unexpected or repeated ACK for batch %d (got %v)", id, got)
		}
		got[id] = true
	}
}

func seq(first, n uint64) []uint64 {
	var ids []uint64
	for id := first; id < first+n; id++ {
		ids = append(ids, id)
	}
	return ids
}

// TestBatchMemoryPerConnection: with MaxBatchMemory room for three batches and a Handler that
// holds them, exactly three batches are in Deliver at once and the connection's reader waits
// for memory instead of reading on; the bytes held in Deliver never exceed the budget; once the
// Handler lets go, every batch is ACKed exactly once and the budget is empty again.
func TestBatchMemoryPerConnection(t *testing.T) {
	const n, payload = 10, 10_000
	c := batchCharge(t, payloadBatch("b-001", payload))
	budget := 3*c + c/2
	h := newHeldTracker(t, budget)
	srv := startServer(t, h, ServerConfig{MaxBatchMemory: int(budget)})
	r := dialRaw(t, srv.addr)
	r.handshake()
	sent := sendBatches(t, r, "b", 1, n, payload)
	_, _, mem := openConn(t, srv.Server)

	waitUntil(t, "three batches in Deliver and the reader waiting for memory", func() bool {
		_, waiting := mem.state()
		return h.in() == 3 && waiting == 1
	})
	if used, _ := mem.state(); used != 3*c {
		t.Fatalf("the connection's budget holds %d bytes, want %d (three batches of %d)", used, 3*c, c)
	}
	// Nothing more is read while the memory is held. (A slow machine can only make this miss a
	// bug, not fail.)
	time.Sleep(100 * time.Millisecond)
	if in := h.in(); in != 3 {
		t.Fatalf("%d batches in Deliver, want 3", in)
	}
	close(h.release)
	expectAcks(t, r, seq(1, n)...)
	if err := recv(t, sent, "the batches to be written"); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.maxInside != 3 || h.maxHeld > budget {
		t.Fatalf("at most %d batches holding %d bytes in Deliver at once; want 3 and at most %d", h.maxInside, h.maxHeld, budget)
	}
	for id := 1; id <= n; id++ {
		if k := h.seen[fmt.Sprintf("b-%03d", id)]; k != 1 {
			t.Errorf("batch %d delivered %d times", id, k)
		}
	}
	waitUntil(t, "the budgets to empty", func() bool {
		used, _ := mem.state()
		srvUsed, _ := srv.batchMem.state()
		return used == 0 && srvUsed == 0
	})
}

// TestBatchMemoryServer: MaxServerBatchMemory bounds the batches of all connections together:
// with room for three, two connections sending five each get three into Deliver, and both
// readers wait; afterwards every batch of both is ACKed exactly once.
func TestBatchMemoryServer(t *testing.T) {
	const n, payload = 5, 10_000
	c := batchCharge(t, payloadBatch("a-001", payload))
	budget := 3*c + c/2
	h := newHeldTracker(t, budget)
	srv := startServer(t, h, ServerConfig{MaxServerBatchMemory: int(budget)})
	r1, r2 := dialRaw(t, srv.addr), dialRaw(t, srv.addr)
	r1.handshake()
	r2.handshake()
	sent1 := sendBatches(t, r1, "a", 1, n, payload)
	sent2 := sendBatches(t, r2, "b", 101, n, payload)

	waitUntil(t, "three batches in Deliver and both readers waiting for memory", func() bool {
		_, waiting := srv.batchMem.state()
		return h.in() == 3 && waiting == 2
	})
	if used, _ := srv.batchMem.state(); used != 3*c {
		t.Fatalf("the server's budget holds %d bytes, want %d", used, 3*c)
	}
	time.Sleep(100 * time.Millisecond)
	if in := h.in(); in != 3 {
		t.Fatalf("%d batches in Deliver, want 3", in)
	}
	close(h.release)
	expectAcks(t, r1, seq(1, n)...)
	expectAcks(t, r2, seq(101, n)...)
	for _, sent := range []<-chan error{sent1, sent2} {
		if err := recv(t, sent, "the batches to be written"); err != nil {
			t.Fatal(err)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.maxInside != 3 || h.maxHeld > budget {
		t.Fatalf("at most %d batches holding %d bytes in Deliver at once; want 3 and at most %d", h.maxInside, h.maxHeld, budget)
	}
	for k, v := range h.seen {
		if v != 1 {
			t.Errorf("batch %s delivered %d times", k, v)
		}
	}
	if len(h.seen) != 2*n {
		t.Errorf("%d batches delivered, want %d", len(h.seen), 2*n)
	}
}

// TestBatchLargerThanBudget: a batch larger than both budgets is charged the whole of each and
// goes through, alone: a small batch behind it waits until its Deliver returned.
func TestBatchLargerThanBudget(t *testing.T) {
	const connBudget, srvBudget = 16 << 10, 32 << 10
	release := make(chan struct{})
	entered := make(chan string, 2)
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		entered <- b.Envelopes[0].ID
		if b.Envelopes[0].ID == "big" {
			select {
			case <-release:
			case <-ctx.Done():
				return transport.Result{}, ctx.Err()
			}
		}
		return transport.Result{}, nil
	})
	srv := startServer(t, h, ServerConfig{MaxBatchMemory: connBudget, MaxServerBatchMemory: srvBudget})
	r := dialRaw(t, srv.addr)
	r.handshake()
	frames, _ := appendBatch(nil, 1, payloadBatch("big", 100_000), DefaultMaxFrameSize)
	frames, _ = appendBatch(frames, 2, payloadBatch("small", 10), DefaultMaxFrameSize)
	r.write(frames)
	if id := recv(t, entered, "the big batch in Deliver"); id != "big" {
		t.Fatalf("%q entered Deliver first", id)
	}
	_, _, mem := openConn(t, srv.Server)
	waitUntil(t, "the reader to wait for memory", func() bool { _, waiting := mem.state(); return waiting == 1 })
	used, _ := mem.state()
	srvUsed, _ := srv.batchMem.state()
	if used != connBudget || srvUsed != srvBudget {
		t.Fatalf("the big batch holds %d and %d bytes, want the whole budgets %d and %d", used, srvUsed, connBudget, srvBudget)
	}
	select {
	case id := <-entered:
		t.Fatalf("%q entered Deliver while the big batch held the budget", id)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if id := recv(t, entered, "the small batch in Deliver"); id != "small" {
		t.Fatalf("got %q", id)
	}
	expectAcks(t, r, 1, 2)
}

// TestBatchMemoryWaitEndsOnClose: a reader waiting for memory stops waiting when the server
// closes, even while the Deliver holding the memory has not returned.
func TestBatchMemoryWaitEndsOnClose(t *testing.T) {
	stuck := make(chan struct{})
	entered := make(chan struct{}, 1)
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		entered <- struct{}{}
		<-stuck // ignores its context
		return transport.Result{}, nil
	})
	srv := startServer(t, h, ServerConfig{MaxServerBatchMemory: 1})
	r := dialRaw(t, srv.addr)
	r.handshake()
	frames, _ := appendBatch(nil, 1, payloadBatch("first", 10), DefaultMaxFrameSize)
	frames, _ = appendBatch(frames, 2, payloadBatch("second", 10), DefaultMaxFrameSize)
	r.write(frames)
	recv(t, entered, "the first batch in Deliver")
	waitUntil(t, "the reader to wait for memory", func() bool { _, waiting := srv.batchMem.state(); return waiting == 1 })
	srv.Close()
	waitUntil(t, "the reader to stop waiting", func() bool { _, waiting := srv.batchMem.state(); return waiting == 0 })
	if used, _ := srv.batchMem.state(); used != 1 {
		t.Fatalf("the server's budget holds %d bytes, want 1 (the stuck batch's)", used)
	}
	close(stuck)
	waitUntil(t, "the connection to end", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.conns) == 0
	})
	if used, _ := srv.batchMem.state(); used != 0 {
		t.Fatalf("the server's budget holds %d bytes after everything ended", used)
	}
}

// TestMemBudget: requests are granted in order (a small one does not overtake a large one that
// waits), a waiter whose done channel closes holds nothing and lets the next in, and grow
// waits for the whole amount without holding a part.
func TestMemBudget(t *testing.T) {
	b := newMemBudget(10)
	never := make(chan struct{})
	if !b.acquire(6, never) {
		t.Fatal("acquire failed")
	}
	result := func(f func() bool) <-chan bool {
		ch := make(chan bool, 1)
		go func() { ch <- f() }()
		return ch
	}
	waiting := func(n int) {
		t.Helper()
		waitUntil(t, fmt.Sprintf("%d waiters", n), func() bool { _, w := b.state(); return w == n })
	}
	cancelBig := make(chan struct{})
	big := result(func() bool { return b.acquire(6, cancelBig) })
	waiting(1)
	small := result(func() bool { return b.acquire(3, never) }) // would fit, but waits its turn
	waiting(2)
	select {
	case <-small:
		t.Fatal("a small request overtook a waiting large one")
	case <-time.After(20 * time.Millisecond):
	}
	close(cancelBig)
	if ok := recv(t, big, "the canceled request"); ok {
		t.Fatal("canceled acquire succeeded")
	}
	if ok := recv(t, small, "the small request"); !ok {
		t.Fatal("small acquire failed")
	}
	if used, w := b.state(); used != 9 || w != 0 {
		t.Fatalf("used %d, %d waiting; want 9, 0", used, w)
	}

	// grow: 9 used (6 + 3); growing the 3 by 4 does not fit: it lets go of its 3 and waits for 7.
	type grown struct {
		n  int64
		ok bool
	}
	g := make(chan grown, 1)
	go func() { n, ok := b.grow(3, 4, never); g <- grown{n, ok} }()
	waiting(1)
	if used, _ := b.state(); used != 6 {
		t.Fatalf("used %d while grow waits, want 6 (it holds nothing)", used)
	}
	b.release(6)
	if r := recv(t, g, "grow"); r.n != 7 || !r.ok {
		t.Fatalf("grow returned %d, %v; want 7, true", r.n, r.ok)
	}
	// grow is clamped to the size, and does not wait when the rest is free.
	if n, ok := b.grow(7, 100, never); n != 10 || !ok {
		t.Fatalf("grow beyond the size returned %d, %v; want 10, true", n, ok)
	}
	b.release(10)
	if used, w := b.state(); used != 0 || w != 0 {
		t.Fatalf("used %d, %d waiting at the end", used, w)
	}
}

// TestWriteTimeoutLogged: a connection whose client stopped reading is closed when a write
// times out, with a Warn naming the client.
func TestWriteTimeoutLogged(t *testing.T) {
	// Each ACK carries 64 reasons of 60,000 bytes: about 3.8 MB that the client never reads.
	reason := strings.Repeat("x", 60_000)
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		out := make([]transport.Outcome, len(b.Envelopes))
		for i := range out {
			out[i] = transport.Outcome{Status: transport.Rejected, Reason: reason}
		}
		return transport.Result{Outcomes: out}, nil
	})
	log, sink := newLog(t)
	srv := startServer(t, h, ServerConfig{Logger: log, WriteTimeout: 200 * time.Millisecond})
	r := dialRaw(t, srv.addr)
	if err := r.c.(interface{ SetReadBuffer(int) error }).SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	r.handshake()
	envs := make([]transport.Envelope, 64)
	for i := range envs {
		envs[i] = transport.Envelope{ID: fmt.Sprint(i), Topic: "t", SendAttempt: 1}
	}
	for id := uint64(1); id <= 4; id++ {
		f, err := appendBatch(nil, id, envs, DefaultMaxFrameSize)
		if err != nil {
			t.Fatal(err)
		}
		r.write(f)
	}
	line := sink.waitFor(t, "the client stopped reading")
	want := fmt.Sprintf("WARN tcp: closing connection: the client stopped reading (write timed out after 200ms) remote=%s peer=raw", r.c.LocalAddr())
	if line != want {
		t.Fatalf("logged\n%q, want\n%q", line, want)
	}
	waitUntil(t, "the connection to be closed", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.conns) == 0
	})
}
