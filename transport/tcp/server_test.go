package tcp

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/transport"
)

// blockingHandler holds every batch until release is closed (or its context ends).
func blockingHandler(entered chan<- string, release <-chan struct{}) transport.Handler {
	return transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		entered <- b.Envelopes[0].ID
		select {
		case <-release:
			return transport.Result{}, nil
		case <-ctx.Done():
			return transport.Result{}, ctx.Err()
		}
	})
}

// TestShutdownDrains: Shutdown sends GOAWAY, lets the batch in flight finish and be
// acknowledged, NACKs (retryably) a batch that arrives after the GOAWAY, then returns; Serve
// returns ErrServerClosed.
func TestShutdownDrains(t *testing.T) {
	entered := make(chan string, 4)
	release := make(chan struct{})
	srv := startServer(t, blockingHandler(entered, release), ServerConfig{})
	c := newClient(t, srv.addr, ClientConfig{})
	ctx := testCtx(t)

	sent := make(chan error, 1)
	go func() {
		_, err := c.Send(ctx, oneBatch("in-flight"))
		sent <- err
	}()
	recv(t, entered, "the in-flight batch in the Handler")

	// A raw connection sees the GOAWAY and gets a retryable NACK for a later batch.
	r := dialRaw(t, srv.addr)
	r.handshake()

	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	if typ, _ := r.next(); typ != frameGoAway {
		t.Fatalf("got %v, want GOAWAY", typ)
	}
	late, _ := appendBatch(nil, 5, oneBatch("late").Envelopes, DefaultMaxFrameSize)
	r.write(late)
	typ, body := r.next()
	if typ != frameNack {
		t.Fatalf("got %v, want NACK", typ)
	}
	if m, _ := decodeNack(body); m.id != 5 || m.permanent || !strings.Contains(m.reason, "shutting down") {
		t.Fatalf("NACK %+v", m)
	}
	r.c.Close()

	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a batch in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := recv(t, sent, "the in-flight batch's answer"); err != nil {
		t.Fatalf("in-flight batch: %v", err)
	}
	if err := recv(t, shut, "Shutdown to return"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := recv(t, srv.done, "Serve to return"); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
	srv.done <- ErrServerClosed // for the cleanup
	// New batches find nobody listening: a retryable error.
	if _, err := c.Send(ctx, oneBatch("after")); err == nil || !transport.IsRetryable(err) {
		t.Fatalf("send after shutdown: %v", err)
	}
	select {
	case id := <-entered:
		t.Fatalf("Handler saw %q after the GOAWAY", id)
	default:
	}
}

// TestShutdownTimeout: when ctx ends before the drain, Shutdown closes everything and returns
// ctx's error; the unacknowledged batch fails with a retryable error.
func TestShutdownTimeout(t *testing.T) {
	entered := make(chan string, 1)
	srv := startServer(t, blockingHandler(entered, nil), ServerConfig{})
	c := newClient(t, srv.addr, ClientConfig{})
	sent := make(chan error, 1)
	go func() {
		_, err := c.Send(context.Background(), oneBatch("stuck"))
		sent <- err
	}()
	recv(t, entered, "the stuck batch in the Handler")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := recv(t, sent, "the stuck batch's failure"); err == nil || !transport.IsRetryable(err) {
		t.Fatalf("stuck batch: %v", err)
	}
}

func TestMaxConns(t *testing.T) {
	log, sink := newLog(t)
	srv := startServer(t, acceptAll(), ServerConfig{Logger: log, MaxConns: 1})
	a := newClient(t, srv.addr, ClientConfig{})
	if _, err := a.Send(testCtx(t), oneBatch("a")); err != nil {
		t.Fatal(err)
	}
	b := newClient(t, srv.addr, ClientConfig{BreakerThreshold: -1})
	if _, err := b.Send(testCtx(t), oneBatch("b")); !errors.Is(err, transport.ErrUnavailable) {
		t.Fatalf("second connection: %v", err)
	}
	sink.waitFor(t, "connection limit reached")
	if _, err := a.Send(testCtx(t), oneBatch("a2")); err != nil {
		t.Fatal(err)
	}
}

// TestMaxInFlight: the client honours the server's in-flight limit from WELCOME, and a peer
// that exceeds it is disconnected.
func TestMaxInFlight(t *testing.T) {
	var inside, most atomic.Int32
	gate := make(chan struct{})
	var gateOnce sync.Once
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		n := inside.Add(1)
		defer inside.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		// The first batch waits for a second one in the Handler with it, so that the limit is
		// reached however the goroutines happen to be scheduled.
		if n >= 2 {
			gateOnce.Do(func() { close(gate) })
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return transport.Result{}, ctx.Err()
		}
		time.Sleep(5 * time.Millisecond)
		return transport.Result{}, nil
	})
	log, sink := newLog(t)
	srv := startServer(t, h, ServerConfig{Logger: log, MaxInFlight: 2})
	c := newClient(t, srv.addr, ClientConfig{MaxInFlight: 16})
	var wg sync.WaitGroup
	for i := 0; i < 12; i++ {
		wg.Go(func() {
			if _, err := c.Send(testCtx(t), oneBatch("x")); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if m := most.Load(); m != 2 {
		t.Fatalf("%d batches in the handler at once, want the server's limit of 2", m)
	}

	entered := make(chan string, 8)
	srv2 := startServer(t, blockingHandler(entered, nil), ServerConfig{Logger: log, MaxInFlight: 2})
	r := dialRaw(t, srv2.addr)
	r.handshake()
	for id := uint64(1); id <= 3; id++ {
		f, _ := appendBatch(nil, id, oneBatch("y").Envelopes, DefaultMaxFrameSize)
		r.write(f)
	}
	r.expectError(codeProtocol)
	sink.waitFor(t, "more than 2 batches in flight")
}

// TestIdleTimeout: a client that pings stays connected past the server's idle timeout; one that
// does not is disconnected, and its next Send reconnects transparently.
func TestIdleTimeout(t *testing.T) {
	// The pinging client pings 60 times per idle timeout: only a stall of seconds could make
	// the server miss its pings.
	log, sink := newLog(t)
	srv := startServer(t, acceptAll(), ServerConfig{Logger: log, IdleTimeout: 3 * time.Second})
	pinging := newClient(t, srv.addr, ClientConfig{PingInterval: 50 * time.Millisecond})
	silentLog, silentSink := newLog(t)
	silent := newClient(t, srv.addr, ClientConfig{Logger: silentLog, PingInterval: -1})
	ctx := testCtx(t)
	for _, c := range []*Client{pinging, silent} {
		if _, err := c.Send(ctx, oneBatch("a")); err != nil {
			t.Fatal(err)
		}
	}
	// The server closes the silent connection after 3s without a frame; by then the pinging
	// client, whose batch went first, has sent no batch for longer than that. The silent
	// client must have seen its connection end before its next Send (or that Send could go
	// out on the closing connection and fail).
	sink.waitFor(t, "no frame for 3s")
	silentSink.waitFor(t, "connection lost")
	for _, c := range []*Client{pinging, silent} {
		if _, err := c.Send(ctx, oneBatch("b")); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.ln.count(); n != 3 {
		t.Fatalf("%d connections, want 3 (the silent client reconnected once)", n)
	}
}

// TestDeliverFailureLogged: a batch whose Deliver fails on a live connection is logged as a
// failed Deliver (not as a message handler's failure) and NACKed; one whose client disconnects
// while Deliver is storing it is logged, at Info, as a batch whose client went away, with no
// NACK, and Deliver's context says why it ended.
func TestDeliverFailureLogged(t *testing.T) {
	t.Run("client went away", func(t *testing.T) {
		entered := make(chan struct{}, 1)
		causes := make(chan error, 1)
		h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
			entered <- struct{}{}
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return transport.Result{}, ctx.Err()
		})
		log, sink := newLog(t)
		// As a Node logs: its own name under "node"; the client's is "peer".
		srv := startServer(t, h, ServerConfig{Logger: log.With("node", "receiver")})
		r := dialRaw(t, srv.addr)
		r.handshake()
		f, _ := appendBatch(nil, 7, oneBatch("a", "b").Envelopes, DefaultMaxFrameSize)
		r.write(f)
		recv(t, entered, "the batch in Deliver")
		r.c.Close()

		if cause := recv(t, causes, "Deliver's context to end"); !errors.Is(cause, errPeerGone) {
			t.Errorf("Deliver's context ended with cause %v, want %v", cause, errPeerGone)
		}
		line := sink.waitFor(t, "batch=7")
		for _, want := range []string{"INFO tcp: the client went away while its batch was being stored", "nobody to send a NACK to", "remote=" + r.c.LocalAddr().String(), "node=receiver", "peer=raw", "batch=7", "envelopes=2", "cause=tcp: the client went away", "err=context canceled"} {
			if !strings.Contains(line, want) {
				t.Errorf("log line %q lacks %q", line, want)
			}
		}
		if n := strings.Count(line, "node="); n != 1 {
			t.Errorf("log line %q has %d node attributes, want 1 (the server's own)", line, n)
		}
		if l, ok := sink.find("sending NACK"); ok {
			t.Errorf("logged %q for a batch whose client is gone", l)
		}
		if l, ok := sink.find("handler failed"); ok {
			t.Errorf("logged %q: no message handler failed", l)
		}
	})
	t.Run("Deliver failed", func(t *testing.T) {
		h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
			return transport.Result{}, errors.New("disk full")
		})
		log, sink := newLog(t)
		srv := startServer(t, h, ServerConfig{Logger: log})
		r := dialRaw(t, srv.addr)
		r.handshake()
		f, _ := appendBatch(nil, 3, oneBatch("a").Envelopes, DefaultMaxFrameSize)
		r.write(f)
		typ, body := r.next()
		if typ != frameNack {
			t.Fatalf("got %v, want NACK", typ)
		}
		if m, err := decodeNack(body); err != nil || m.id != 3 || m.permanent || m.reason != "disk full" {
			t.Fatalf("NACK %+v, %v", m, err)
		}
		line := sink.waitFor(t, "batch=3")
		for _, want := range []string{"WARN tcp: Deliver failed to store the batch; sending NACK", "remote=" + r.c.LocalAddr().String(), "err=disk full", "permanent=false"} {
			if !strings.Contains(line, want) {
				t.Errorf("log line %q lacks %q", line, want)
			}
		}
	})
}
