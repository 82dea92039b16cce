package tcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/internal/testport"
	"github.com/durable-go/durable/transport"
)

func oneBatch(ids ...string) *transport.Batch {
	b := &transport.Batch{}
	for _, id := range ids {
		b.Envelopes = append(b.Envelopes, transport.Envelope{ID: id, Topic: "t", Payload: []byte(id), SendAttempt: 1})
	}
	return b
}

// TestHandlerErrorIsRetryableNack: a failing Handler yields a NACK that the Client reports as
// retryable, a Permanent error one that is not, and only batches the Handler accepted are
// reported as sent.
func TestHandlerErrorIsRetryableNack(t *testing.T) {
	var mu sync.Mutex
	stored := map[string]bool{}
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		switch b.Envelopes[0].Topic {
		case "fail":
			return transport.Result{}, errors.New("inbox insert: database unavailable")
		case "poison":
			return transport.Result{}, transport.Permanent(errors.New("payload cannot be decoded"))
		case "panic":
			panic("handler bug")
		case "miscount":
			return transport.Result{Outcomes: make([]transport.Outcome, len(b.Envelopes)+1)}, nil
		}
		mu.Lock()
		for _, e := range b.Envelopes {
			stored[e.ID] = true
		}
		mu.Unlock()
		return transport.Result{}, nil
	})
	log, sink := newLog(t)
	srv := startServer(t, h, ServerConfig{Logger: log})
	c := newClient(t, srv.addr, ClientConfig{})
	ctx := testCtx(t)

	send := func(topic string, ids ...string) error {
		b := oneBatch(ids...)
		for i := range b.Envelopes {
			b.Envelopes[i].Topic = topic
		}
		_, err := c.Send(ctx, b)
		return err
	}
	for _, topic := range []string{"fail", "panic", "miscount"} {
		err := send(topic, topic+"-1", topic+"-2")
		if !errors.Is(err, transport.ErrNack) || errors.Is(err, transport.ErrRejected) || !transport.IsRetryable(err) {
			t.Fatalf("%s: err %v: want a retryable NACK", topic, err)
		}
	}
	if err := send("fail", "x"); err == nil || !strings.Contains(err.Error(), "database unavailable") {
		t.Fatalf("NACK reason not reported: %v", err)
	}
	err := send("poison", "p-1")
	if !errors.Is(err, transport.ErrRejected) || !errors.Is(err, transport.ErrNack) || transport.IsRetryable(err) {
		t.Fatalf("poison: err %v: want a permanent NACK", err)
	}
	if err := send("ok", "ok-1", "ok-2"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(stored) != 2 || !stored["ok-1"] || !stored["ok-2"] {
		t.Fatalf("stored %v, want exactly the accepted batch", stored)
	}
	sink.waitFor(t, "handler panicked", "handler bug")
	sink.waitFor(t, "handler broke its contract")
}

// TestServerKilledMidStream closes the server abruptly (listener and connections) while batches
// are in flight, brings it back on the same address, and checks that the client reconnects,
// that every batch is eventually delivered, and that no batch was reported sent without the
// Handler having accepted it.
func TestServerKilledMidStream(t *testing.T) {
	var (
		mu       sync.Mutex
		accepted = map[int]bool{}
		calls    atomic.Int64
		hundred  = make(chan struct{}) // closed by the 100th Handler call
		once     sync.Once
		down     = make(chan struct{}) // closed once the first server is dead
	)
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		if calls.Add(1) >= 100 {
			// From the 100th call on, batches stay in flight until the server is killed, so
			// that the kill surely catches some unanswered, however fast or slow the machine.
			once.Do(func() { close(hundred) })
			select {
			case <-down:
			case <-ctx.Done():
				return transport.Result{}, ctx.Err()
			}
		}
		time.Sleep(time.Millisecond)
		var n int
		fmt.Sscanf(b.Envelopes[0].ID, "batch-%d", &n)
		mu.Lock()
		accepted[n] = true
		mu.Unlock()
		return transport.Result{}, nil
	})
	port := testport.Reserve(t)
	ln, err := port.Listen()
	if err != nil {
		t.Fatal(err)
	}
	srv1 := serveOn(t, ln, h, ServerConfig{})

	log, sink := newLog(t)
	c := newClient(t, port.Addr(), ClientConfig{
		Logger: log, BackoffMin: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
		BreakerThreshold: 3, AckTimeout: 2 * time.Second,
	})
	// Only bounds a hang: 400 batches with a kill and retries, on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const batches = 400
	var reported sync.Map // batch -> true once Send returned nil
	var retries atomic.Int64
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Go(func() {
			for n := range work {
				for {
					_, err := c.Send(ctx, oneBatch(fmt.Sprintf("batch-%d", n), fmt.Sprintf("batch-%d-b", n)))
					if err == nil {
						mu.Lock()
						ok := accepted[n]
						mu.Unlock()
						if !ok {
							t.Errorf("batch %d reported sent but never accepted by the Handler", n)
						}
						reported.Store(n, true)
						break
					}
					if !transport.IsRetryable(err) {
						t.Errorf("batch %d: non-retryable error %v", n, err)
						return
					}
					if ctx.Err() != nil {
						t.Errorf("batch %d: gave up: %v", n, err)
						return
					}
					retries.Add(1)
					time.Sleep(2 * time.Millisecond)
				}
			}
		})
	}
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		select {
		case <-hundred:
		case <-ctx.Done():
			t.Errorf("the Handler was never called 100 times")
			return
		}
		srv1.Close() // abrupt: listener and every connection closed, in-flight batches unanswered
		close(down)
		time.Sleep(150 * time.Millisecond) // down for a while: sends fail meanwhile (the port refuses)
		ln2, err := port.Listen()
		if err != nil {
			t.Errorf("listening again: %v", err)
			return
		}
		serveOn(t, ln2, h, ServerConfig{})
	}()
	for n := 0; n < batches; n++ {
		work <- n
	}
	close(work)
	wg.Wait()
	<-killed
	for n := 0; n < batches; n++ {
		if _, ok := reported.Load(n); !ok {
			t.Fatalf("batch %d never reported sent", n)
		}
	}
	if retries.Load() == 0 {
		t.Fatal("no send failed: the server was not killed mid-stream")
	}
	sink.waitFor(t, "connection lost")
	t.Logf("%d handler calls for %d batches, %d retried sends", calls.Load(), batches, retries.Load())
}

// TestCircuitBreaker: repeated connection failures open the circuit (Sends fail fast with a
// retryable ErrCircuitOpen); when the server comes back the probe's PING closes it.
func TestCircuitBreaker(t *testing.T) {
	port := testport.Reserve(t) // nothing listens: every dial is refused
	// Once the circuit is open, dials stall until unstall is closed: a Send that dialed (or
	// waited for the probe's dial) instead of failing fast would hang there.
	var stall atomic.Bool
	unstall := make(chan struct{})
	var d net.Dialer
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if stall.Load() {
			select {
			case <-unstall:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return d.DialContext(ctx, network, addr)
	}

	log, sink := newLog(t)
	c := newClient(t, port.Addr(), ClientConfig{Logger: log, Dial: dial, BackoffMin: time.Millisecond, BackoffMax: 20 * time.Millisecond, BreakerThreshold: 3})
	ctx := testCtx(t)
	var last error
	for i := 0; i < 50 && !errors.Is(last, transport.ErrCircuitOpen); i++ {
		_, last = c.Send(ctx, oneBatch("a"))
		if last == nil || !transport.IsRetryable(last) {
			t.Fatalf("send %d: %v", i, last)
		}
	}
	if !errors.Is(last, transport.ErrCircuitOpen) || !errors.Is(last, transport.ErrUnavailable) {
		t.Fatalf("circuit did not open (it should also carry the last cause): %v", last)
	}
	stall.Store(true)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err := c.Send(sctx, oneBatch("a"))
	cancel()
	if !errors.Is(err, transport.ErrCircuitOpen) {
		t.Fatalf("open circuit should fail fast, without dialing: %v", err)
	}
	sink.waitFor(t, "circuit open")

	stall.Store(false)
	close(unstall)
	ln, err := port.Listen()
	if err != nil {
		t.Fatalf("cannot listen on %s again: %v", port.Addr(), err)
	}
	serveOn(t, ln, acceptAll(), ServerConfig{})
	sink.waitFor(t, "circuit closed")
	if _, err := c.Send(ctx, oneBatch("a")); err != nil {
		t.Fatalf("after the circuit closed: %v", err)
	}
}

// TestAckTimeout: a Handler that does not return in time makes Send fail with a retryable
// ErrAckTimeout, without breaking the connection for later batches.
func TestAckTimeout(t *testing.T) {
	release := make(chan struct{})
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		if b.Envelopes[0].ID == "slow" {
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return transport.Result{}, nil
	})
	srv := startServer(t, h, ServerConfig{})
	c := newClient(t, srv.addr, ClientConfig{AckTimeout: time.Second, BreakerThreshold: -1})
	ctx := testCtx(t)
	_, err := c.Send(ctx, oneBatch("slow"))
	if !errors.Is(err, transport.ErrAckTimeout) || !transport.IsRetryable(err) {
		t.Fatalf("err %v, want retryable ErrAckTimeout", err)
	}
	// A later batch is acknowledged on the same connection. The AckTimeout is short for the
	// sake of the slow batch, so on a loaded machine the fast one may time out as well: it is
	// sent again then, on the same connection.
	for deadline := time.Now().Add(time.Minute); ; {
		_, err := c.Send(ctx, oneBatch("fast"))
		if err == nil {
			break
		}
		if !errors.Is(err, transport.ErrAckTimeout) || time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	if n := srv.ln.count(); n != 1 {
		t.Fatalf("%d connections, want 1: the ack timeout broke the connection", n)
	}
	close(release)
	// Context cancellation while waiting is retryable too.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Send(cctx, oneBatch("x")); err == nil || !transport.IsRetryable(err) || !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled send: %v", err)
	}
}

// TestClientCloseWaitsForInFlight: Close lets the batches in flight finish; after Close, Send
// fails with ErrClosed. A Close whose context expires fails the remaining batches instead.
func TestClientCloseWaitsForInFlight(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return transport.Result{}, nil
	})
	srv := startServer(t, h, ServerConfig{})

	t.Run("graceful", func(t *testing.T) {
		c := newClient(t, srv.addr, ClientConfig{})
		errc := make(chan error, 1)
		go func() {
			_, err := c.Send(context.Background(), oneBatch("a"))
			errc <- err
		}()
		recv(t, entered, "the batch in the Handler")
		closed := make(chan error, 1)
		go func() { closed <- c.Close(context.Background()) }()
		waitUntil(t, "Close to begin", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.closed
		})
		if _, err := c.Send(context.Background(), oneBatch("b")); !errors.Is(err, transport.ErrClosed) {
			t.Errorf("send after Close: %v", err)
		}
		select {
		case <-closed:
			t.Fatal("Close returned before the in-flight batch was acknowledged")
		default:
		}
		release <- struct{}{}
		if err := recv(t, errc, "the in-flight batch's answer"); err != nil {
			t.Fatalf("in-flight batch: %v", err)
		}
		if err := recv(t, closed, "Close to return"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("forced", func(t *testing.T) {
		c := newClient(t, srv.addr, ClientConfig{})
		errc := make(chan error, 1)
		go func() {
			_, err := c.Send(context.Background(), oneBatch("a"))
			errc <- err
		}()
		recv(t, entered, "the batch in the Handler")
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if err := c.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Close: %v", err)
		}
		if err := recv(t, errc, "the in-flight batch's failure"); !errors.Is(err, transport.ErrClosed) || !transport.IsRetryable(err) {
			t.Fatalf("in-flight batch after forced close: %v", err)
		}
	})
	close(release)
}

func TestPingAndDial(t *testing.T) {
	srv := startServer(t, acceptAll(), ServerConfig{NodeID: "srv-1"})
	log, _ := newLog(t)
	c, err := Dial(testCtx(t), srv.addr, &ClientConfig{Secret: testSecret, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if err := c.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := Dial(testCtx(t), "127.0.0.1:1", &ClientConfig{Secret: testSecret, Logger: log}); !errors.Is(err, transport.ErrUnavailable) {
		t.Fatalf("dial to a closed port: %v", err)
	}
}

func TestBackoff(t *testing.T) {
	c, err := NewClient("127.0.0.1:1", &ClientConfig{BackoffMin: 10 * time.Millisecond, BackoffMax: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	for n := 1; n <= 40; n++ {
		base := min(10*time.Millisecond<<min(n-1, 20), time.Second)
		seen := map[time.Duration]bool{}
		for i := 0; i < 50; i++ {
			d := c.backoff(n)
			if d < base/2 || d > base {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, d, base/2, base)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Fatalf("backoff(%d) has little jitter: %d distinct values", n, len(seen))
		}
	}
}
