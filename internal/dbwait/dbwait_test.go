package dbwait

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/durable-go/durable/internal/testport"
)

// TestMain fails the run if goroutines outlive the tests, waiting up to 30s for them to end
// (goleak.VerifyTestMain retries for well under a second, short for a loaded machine).
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

// refused returns the error of a real dial to a port where nothing listens.
func refused(t *testing.T) error {
	t.Helper()
	addr := testport.Reserve(t).Addr()
	c, err := net.Dial("tcp", addr)
	if err == nil {
		c.Close()
		t.Fatalf("dialing the reserved port %s succeeded", addr)
	}
	return err
}

// pgConnect returns pgconn's error for a connection to addr.
func pgConnect(t *testing.T, dsn string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, dsn)
	if err == nil {
		c.Close(ctx)
		t.Fatalf("connect to %s succeeded", dsn)
	}
	return err
}

func TestTransient(t *testing.T) {
	dead := testport.Reserve(t).Addr() // refuses connections
	// A server that accepts and closes at once, as one shutting down.
	closer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := closer.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer closer.Close()

	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"dial refused", refused(t), true},
		{"pgconn refused", pgConnect(t, "postgres://u@"+dead+"/db?connect_timeout=2"), true},
		{"pgconn closed early", pgConnect(t, "postgres://u@"+closer.Addr().String()+"/db?sslmode=disable&connect_timeout=2"), true},
		{"wrapped EOF", fmt.Errorf("check: %w", io.ErrUnexpectedEOF), true},
		{"attempt timeout", fmt.Errorf("check: %w", context.DeadlineExceeded), true},
		{"cannot connect now", &pgconn.PgError{Code: "57P03"}, true},
		{"admin shutdown", fmt.Errorf("q: %w", &pgconn.PgError{Code: "57P01"}), true},
		{"too many connections", &pgconn.PgError{Code: "53300"}, true},
		{"connection exception", &pgconn.PgError{Code: "08006"}, true},
		{"bad password", &pgconn.PgError{Code: "28P01"}, false},
		{"unknown database", &pgconn.PgError{Code: "3D000"}, false},
		{"undefined table", &pgconn.PgError{Code: "42P01"}, false},
		{"unknown host", &net.DNSError{Err: "no such host", Name: "nope.invalid", IsNotFound: true}, false},
		{"dns timeout", &net.DNSError{Err: "timeout", Name: "db", IsTimeout: true}, true},
		{"plain error", errors.New("durable: schema is at version 0"), false},
		{"cancelled", context.Canceled, false},
	}
	for _, c := range cases {
		if got := Transient(c.err); got != c.want {
			t.Errorf("%s: Transient(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestWaitSucceedsAfterFailures(t *testing.T) {
	fail := refused(t)
	calls := 0
	start := time.Now()
	err := Wait(context.Background(), func(ctx context.Context) error {
		calls++
		if _, ok := ctx.Deadline(); !ok {
			t.Error("the check's context has no deadline")
		}
		if calls < 4 {
			return fail
		}
		return nil
	}, Options{Logger: quiet(), What: "test"})
	if err != nil {
		t.Fatalf("Wait = %v, want nil", err)
	}
	if calls != 4 {
		t.Fatalf("calls = %d, want 4", calls)
	}
	// Three sleeps of at least 80, 160 and 320 ms (First doubling, -20%).
	if d := time.Since(start); d < 560*time.Millisecond {
		t.Fatalf("waited %v, want the backoff (≥ 560ms)", d)
	}
}

func TestWaitReturnsAnswerAtOnce(t *testing.T) {
	answer := fmt.Errorf("durable: %w", &pgconn.PgError{Code: "28P01", Message: "password authentication failed"})
	calls := 0
	err := Wait(context.Background(), func(context.Context) error { calls++; return answer }, Options{Logger: quiet()})
	if !errors.Is(err, answer) || calls != 1 {
		t.Fatalf("Wait = %v after %d calls, want the answer after 1", err, calls)
	}
}

func TestWaitTimeout(t *testing.T) {
	fail := refused(t)
	calls := 0
	// ctx only bounds a hang: a Wait that ignored Timeout would end with it instead.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	err := Wait(ctx, func(context.Context) error { calls++; return fail }, Options{Logger: quiet(), Timeout: time.Second})
	if !errors.Is(err, fail) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want the last error", err)
	}
	// The time bounds: exact below, room for a loaded machine above.
	if d := time.Since(start); d < time.Second || d > 30*time.Second {
		t.Fatalf("gave up after %v, want about the timeout", d)
	}
	// "About the timeout" in attempts too, which a slow machine cannot raise: the checks come
	// after sleeps of at least 80, 160, 320 and 640ms, so the 5th comes after the timeout and
	// is the last.
	if calls < 2 || calls > 5 {
		t.Fatalf("calls = %d, want retries before giving up, and no more than 5", calls)
	}
}

func TestWaitContextEnds(t *testing.T) {
	fail := refused(t)
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	err := Wait(ctx, func(context.Context) error { return fail }, Options{Logger: quiet()})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, fail) {
		t.Fatalf("Wait = %v, want ctx's error joined with the last failure", err)
	}
}
