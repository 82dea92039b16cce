package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
	"github.com/durable-go/durable/transport/tcp"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(relayHelper())
	}
	goleak.VerifyTestMain(m)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// logSink keeps every record as one line, for tests that check what the
// relay logged; it never writes to the test's log, so late records are safe.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func newLog() (*slog.Logger, *logSink) {
	s := &logSink{}
	return slog.New(s), s
}

func (s *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (s *logSink) WithGroup(string) slog.Handler            { return s }
func (s *logSink) WithAttrs([]slog.Attr) slog.Handler       { return s }
func (s *logSink) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	s.mu.Lock()
	s.lines = append(s.lines, b.String())
	s.mu.Unlock()
	return nil
}

// count returns how many lines contain every one of subs.
func (s *logSink) count(subs ...string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
next:
	for _, l := range s.lines {
		for _, sub := range subs {
			if !strings.Contains(l, sub) {
				continue next
			}
		}
		n++
	}
	return n
}

func (s *logSink) dump() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "\n")
}

// delivery is one envelope as the test handler received it.
type delivery struct {
	env transport.Envelope
	at  time.Time
}

// receiver is a transport.Handler that records every envelope it is given,
// like an inbox that dedupes by id: an id seen before is answered Duplicate.
// decide, when set, may fail a batch (its error is the NACK) or reject
// envelopes.
type receiver struct {
	mu      sync.Mutex
	got     []delivery
	counts  map[string]int
	changed chan struct{} // closed and replaced on every batch
	decide  func(b *transport.Batch) (transport.Result, error)
}

func newReceiver() *receiver {
	return &receiver{counts: map[string]int{}, changed: make(chan struct{})}
}

func (r *receiver) Deliver(ctx context.Context, b *transport.Batch) (transport.Result, error) {
	var res transport.Result
	if r.decide != nil {
		var err error
		if res, err = r.decide(b); err != nil {
			return transport.Result{}, err
		}
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]transport.Outcome, len(b.Envelopes))
	for i, e := range b.Envelopes {
		if o := res.Outcome(i); o.Status == transport.Rejected {
			out[i] = o
			continue
		}
		r.got = append(r.got, delivery{env: e, at: now})
		r.counts[e.ID]++
		if r.counts[e.ID] > 1 {
			out[i] = transport.Outcome{Status: transport.Duplicate}
		}
	}
	close(r.changed)
	r.changed = make(chan struct{})
	return transport.Result{Outcomes: out}, nil
}

// distinct returns the number of distinct ids received.
func (r *receiver) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.counts)
}

func (r *receiver) snapshot() ([]delivery, map[string]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	counts := make(map[string]int, len(r.counts))
	for k, v := range r.counts {
		counts[k] = v
	}
	return append([]delivery(nil), r.got...), counts
}

// waitDistinct waits until n distinct ids arrived.
func (r *receiver) waitDistinct(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		have, ch := len(r.counts), r.changed
		r.mu.Unlock()
		if have >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%d distinct messages received after %v, want %d", have, timeout, n)
		}
	}
}

// server runs a tcp.Server for h on a free loopback port.
type server struct {
	addr string
	srv  *tcp.Server
	done chan error
	once sync.Once
}

func startServer(t testing.TB, h transport.Handler) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, ln, h)
}

func serveOn(t testing.TB, ln net.Listener, h transport.Handler) *server {
	t.Helper()
	srv, err := tcp.NewServer(h, &tcp.ServerConfig{NodeID: "receiver", Insecure: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: ln.Addr().String(), srv: srv, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(ln) }()
	t.Cleanup(s.close)
	return s
}

// close stops the server at once (a peer going down); it may be called
// more than once.
func (s *server) close() {
	s.once.Do(func() {
		_ = s.srv.Close()
		<-s.done
	})
}

// newClient returns a tcp.Client with fast reconnects, closed at cleanup.
func newClient(t testing.TB, addr string) *tcp.Client {
	t.Helper()
	c, err := tcp.NewClient(addr, &tcp.ClientConfig{
		NodeID: "sender", Logger: quiet, BackoffMin: 5 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	return c
}

// fastRelay is a relay configuration for tests: short poll and backoff, so
// that the tests wait little, but a lease and a send timeout long enough
// that a slow, loaded CI machine (the race detector, modernc's checkptr)
// never turns a slow send or ACK into a timeout, a retry or a resend that
// the test would count. Tests about leases that expire set their own.
func fastRelay(log *slog.Logger) *outbox.RelayConfig {
	if log == nil {
		log = quiet
	}
	return &outbox.RelayConfig{
		Logger:       log,
		PollInterval: 50 * time.Millisecond,
		RetryMin:     5 * time.Millisecond,
		RetryMax:     100 * time.Millisecond,
		Lease:        2 * time.Minute,
		SendTimeout:  30 * time.Second,
	}
}

// within waits for ch to deliver a value, for at most 30s (a bound on a
// hang, not on the machine's speed), and fails the test naming what it
// waited for.
func within[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out after 30s waiting for %s", what)
		panic("unreachable")
	}
}

// claimCounter wraps a dialect and counts the ClaimOutbox calls that
// returned, so that a test can tell when a relay has looked and is idle.
type claimCounter[TTx any] struct {
	dialects.Dialect[TTx]
	claims atomic.Int64
}

func (c *claimCounter[TTx]) ClaimOutbox(ctx context.Context, cl dialects.OutboxClaim) ([]dialects.ClaimedRow, error) {
	rows, err := c.Dialect.ClaimOutbox(ctx, cl)
	c.claims.Add(1)
	return rows, err
}

// listeningClaimCounter is a claimCounter for a dialect that is also a
// dialects.Listener, which the relay finds by a type assertion.
type listeningClaimCounter[TTx any] struct {
	*claimCounter[TTx]
	l dialects.Listener
}

func (c listeningClaimCounter[TTx]) ListenOutbox(ctx context.Context, wake func(string), report func(error)) error {
	return c.l.ListenOutbox(ctx, wake, report)
}

// countClaims returns d wrapped to count its claims (still a Listener when
// d is one) and the counter.
func countClaims[TTx any](d dialects.Dialect[TTx]) (dialects.Dialect[TTx], *atomic.Int64) {
	c := &claimCounter[TTx]{Dialect: d}
	if l, ok := d.(dialects.Listener); ok {
		return listeningClaimCounter[TTx]{claimCounter: c, l: l}, &c.claims
	}
	return c, &c.claims
}

func newRelay[TTx any](t testing.TB, d dialects.Dialect[TTx], senders map[string]transport.Sender, cfg *outbox.RelayConfig) *outbox.Relay {
	t.Helper()
	r, err := outbox.NewRelay(d, senders, cfg)
	if err != nil {
		t.Fatalf("NewRelay: %v", err)
	}
	return r
}

// start runs r until the returned stop is called (or the test ends); stop
// waits for Run and fails the test unless it returned nil.
func start(t testing.TB, r *outbox.Relay) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v, want nil after cancel", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("Run did not return within 30s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitUntil polls cond every 10ms until it holds or timeout passes.
func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// deadLettersOf returns every dead letter of d.
func deadLettersOf[TTx any](t *testing.T, d dialects.Dialect[TTx]) []dialects.DeadLetterRow {
	t.Helper()
	dl, err := d.ListDeadLetters(ctxT(t), dialects.DeadLetterQuery{IncludeReplayed: true})
	if err != nil {
		t.Fatal(err)
	}
	return dl
}

// mustEnqueue enqueues msgs in one committed transaction.
func mustEnqueue[TTx any](t *testing.T, ob *outbox.Outbox[TTx], msgs ...*outbox.Message) {
	t.Helper()
	if err := enqueueTx(t, ob, true, msgs...); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
}

func relayMsg(dest string, i int) *outbox.Message {
	return &outbox.Message{
		ID:          fmt.Sprintf("%s-%06d", dest, i),
		Destination: dest,
		Topic:       "test.relay",
		Headers:     map[string]string{"i": fmt.Sprint(i)},
		Payload:     []byte(fmt.Sprintf("payload %d", i)),
	}
}

var errNack = errors.New("receiver: try again")
