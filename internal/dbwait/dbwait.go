// Package dbwait waits at start for a database that does not answer yet.
//
// A service often starts before its database does (a container
// orchestrator starts both at once; the database restarts for an upgrade).
// The Node, the relay and the inbox check the schema when they start; when
// the database does not answer, they wait for it with a capped backoff and
// log each failure, instead of failing the service. When the database
// answers with an error — the schema is missing or older, the password is
// wrong, the database does not exist — waiting would not help, and the
// error is returned at once.
package dbwait

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"syscall"
	"time"
)

// Backoff between two checks: First, doubling up to Max, with ±20% jitter.
const (
	First = 100 * time.Millisecond
	Max   = 5 * time.Second
)

// AttemptTimeout bounds one check, so that a server that accepts the
// connection and then says nothing counts as one failed attempt.
const AttemptTimeout = 10 * time.Second

// Transient reports whether err means that the database did not answer
// (yet), so that waiting may help: the connection was refused, reset,
// closed early or timed out; the server is starting up or shutting down
// (SQLSTATE 57P01–57P03), has too many connections (53300), or reports a
// connection exception (class 08); or the driver says the call is safe to
// retry because nothing reached the server. Everything else is an answer:
// a schema error, a failed authentication, an unknown database or host.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		// A name that does not exist is a wrong address, not a late one.
		return !dns.IsNotFound
	}
	var state interface{ SQLState() string }
	if errors.As(err, &state) {
		switch s := state.SQLState(); {
		case len(s) == 5 && s[:2] == "08":
			return true
		case s == "57P01", s == "57P02", s == "57P03", s == "53300":
			return true
		default:
			return false
		}
	}
	var retry interface{ SafeToRetry() bool }
	if errors.As(err, &retry) && retry.SafeToRetry() {
		return true
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.ETIMEDOUT),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, context.DeadlineExceeded):
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op)
}

// Options tune Wait.
type Options struct {
	// Logger receives one Warn per failed attempt and one Info when the
	// database answers after failures. Nil: slog.Default().
	Logger *slog.Logger
	// What names the waiting part in the logs ("node", "relay", "inbox").
	What string
	// Timeout bounds the whole wait: once it has passed, the last
	// transient error is returned. Zero: no limit.
	Timeout time.Duration
}

// Wait calls check until it returns nil (Wait returns nil), returns an
// error that is not Transient (Wait returns it), the Timeout has passed
// (Wait returns the last error), or ctx ends (Wait returns ctx's error
// joined with the last one). Each call is bounded by AttemptTimeout.
func Wait(ctx context.Context, check func(context.Context) error, o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	var deadline time.Time
	if o.Timeout > 0 {
		deadline = time.Now().Add(o.Timeout)
	}
	start := time.Now()
	delay := First
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, AttemptTimeout)
		err := check(actx)
		cancel()
		if err == nil {
			if attempt > 1 {
				log.Info("durable: the database answers; starting", "part", o.What,
					"attempts", attempt, "waited", time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		if ctx.Err() != nil {
			return errors.Join(ctx.Err(), err)
		}
		if !Transient(err) {
			return err
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			log.Error("durable: the database did not answer in time; giving up", "part", o.What,
				"attempts", attempt, "timeout", o.Timeout, "err", err)
			return err
		}
		sleep := jitter(delay)
		log.Warn("durable: the database does not answer; waiting for it", "part", o.What,
			"attempt", attempt, "retry_in", sleep.Round(time.Millisecond), "err", err)
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), err)
		case <-t.C:
		}
		delay = min(2*delay, Max)
	}
}

// jitter returns d ± 20%.
func jitter(d time.Duration) time.Duration {
	return d - d/5 + rand.N(2*d/5+1)
}
