package tcp

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/durable-go/durable/transport"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
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

// waitFor waits up to 5s for a line containing every one of subs.
func (s *logSink) waitFor(t testing.TB, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
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
	s, err := NewServer(h, cfg)
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
	c, err := NewClient(addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
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

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
