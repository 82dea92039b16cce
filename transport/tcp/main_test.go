package tcp

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/durable-go/durable/transport"
)

// TestMain fails the run if goroutines outlive the tests. goleak.VerifyTestMain retries for
// well under a second, which a loaded machine can need just to schedule the goroutines that a
// test's cleanup told to end; this waits up to 30s for them before it reports a leak.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := goleak.Find()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "goleak: goroutines still running 30s after the tests ended: %v\n", err)
				code = 1
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	os.Exit(code)
}

// waitUntil polls cond until it holds, failing the test after 30s with what it waited for.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 30s waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recv waits for a value from ch, failing the test after 30s with what it waited for.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out after 30s waiting for %s", what)
		var zero T
		return zero
	}
}

var testSecret = []byte("correct horse battery staple")

// logSink is a slog.Handler that keeps every record as one line of text, for tests that check
// that a reason was logged.
type logSink struct {
	mu    sync.Mutex
	lines []string
	t     testing.TB
}

func newLog(t testing.TB) (*slog.Logger, *logSink) {
	s := &logSink{t: t}
	return slog.New(s), s
}

func (s *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (s *logSink) WithGroup(string) slog.Handler            { return s }
func (s *logSink) WithAttrs(as []slog.Attr) slog.Handler {
	return &logSinkChild{s: s, attrs: as}
}

func (s *logSink) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "stack" {
			return true
		}
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	s.mu.Lock()
	s.lines = append(s.lines, b.String())
	s.mu.Unlock()
	return nil
}

type logSinkChild struct {
	s     *logSink
	attrs []slog.Attr
}

func (c *logSinkChild) Enabled(context.Context, slog.Level) bool { return true }
func (c *logSinkChild) WithGroup(string) slog.Handler            { return c }
func (c *logSinkChild) WithAttrs(as []slog.Attr) slog.Handler {
	return &logSinkChild{s: c.s, attrs: append(c.attrs[:len(c.attrs):len(c.attrs)], as...)}
}
func (c *logSinkChild) Handle(ctx context.Context, r slog.Record) error {
	r.AddAttrs(c.attrs...)
	return c.s.Handle(ctx, r)
}

// find returns the first logged line containing every one of subs.
func (s *logSink) find(subs ...string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
next:
	for _, l := range s.lines {
		for _, sub := range subs {
			if !strings.Contains(l, sub) {
				continue next
			}
		}
		return l, true
	}
	return "", false
}

// waitFor waits up to 30s for a line containing every one of subs.
func (s *logSink) waitFor(t testing.TB, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if l, ok := s.find(subs...); ok {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line containing %q; got:\n%s", subs, s.dump())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *logSink) dump() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "\n")
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	mu sync.Mutex
	n  int
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.n++
		l.mu.Unlock()
	}
	return c, err
}

func (l *countingListener) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

type testServer struct {
	*Server
	addr string
	ln   *countingListener
	done chan error
}

// startServer serves h on a fresh 127.0.0.1 port; the server is closed when the test ends.
func startServer(t testing.TB, h transport.Handler, cfg ServerConfig) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, ln, h, cfg)
}

func serveOn(t testing.TB, ln net.Listener, h transport.Handler, cfg ServerConfig) *testServer {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger, _ = newLog(t)
	}
	if len(cfg.Secret) == 0 && cfg.Verify == nil && cfg.TLS == nil && !cfg.Insecure {
		cfg.Secret = testSecret
	}
	// Legitimate handshakes and writes must not lose a race against a loaded machine: tests that
	// prove a timeout fires set theirs explicitly.
	cfg.AuthTimeout = orDefault(cfg.AuthTimeout, 30*time.Second)
	cfg.WriteTimeout = orDefault(cfg.WriteTimeout, time.Minute)
	s, err := NewServer(h, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: s, addr: ln.Addr().String(), ln: &countingListener{Listener: ln}, done: make(chan error, 1)}
	go func() { ts.done <- s.Serve(ts.ln) }()
	t.Cleanup(func() {
		s.Close()
		<-ts.done
	})
	return ts
}

// newClient returns a client for addr that is closed when the test ends.
func newClient(t testing.TB, addr string, cfg ClientConfig) *Client {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger, _ = newLog(t)
	}
	if len(cfg.Secret) == 0 && len(cfg.Token) == 0 && cfg.TLS == nil {
		cfg.Secret = testSecret
	}
	// As in serveOn: room for a loaded machine, unless the test sets a timeout on purpose.
	cfg.DialTimeout = orDefault(cfg.DialTimeout, 30*time.Second)
	cfg.HandshakeTimeout = orDefault(cfg.HandshakeTimeout, 30*time.Second)
	cfg.WriteTimeout = orDefault(cfg.WriteTimeout, time.Minute)
	c, err := NewClient(addr, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c.Close(ctx)
	})
	return c
}

func acceptAll() transport.Handler {
	return transport.HandlerFunc(func(context.Context, *transport.Batch) (transport.Result, error) {
		return transport.Result{}, nil
	})
}

// testCtx bounds a test's sends: generously, since it only guards against a hang.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}
