package postgres

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
)

// Reconnection backoff of ListenOutbox: exponential from listenBackoffMin to
// listenBackoffMax, with jitter; reset once a connection is listening.
const (
	listenBackoffMin = 100 * time.Millisecond
	listenBackoffMax = 5 * time.Second
)

// ListenOutbox listens on OutboxChannel on a dedicated connection, opened
// with the pool's connection settings but outside the pool (so that it
// takes no pool slot), until ctx ends; see dialects.Listener. It does not
// work through a transaction-mode pooler such as PgBouncer, which does not
// pass notifications: relays then rely on polling.
func (d *Dialect) ListenOutbox(ctx context.Context, wake func(string), report func(error)) error {
	cfg := d.pool.Config().ConnConfig
	return listenLoop(ctx, report, func(ctx context.Context, listening func()) error {
		conn, err := pgx.ConnectConfig(ctx, cfg.Copy())
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		return listenOn(ctx, conn, wake, listening)
	})
}

// ListenOutbox listens on OutboxChannel on a connection taken from the
// database's pool for as long as ctx lives (database/sql offers no
// connection outside it), and discarded afterwards; see dialects.Listener.
// Raise the pool's limit by one for it.
func (d *SQLDialect) ListenOutbox(ctx context.Context, wake func(string), report func(error)) error {
	return listenLoop(ctx, report, func(ctx context.Context, listening func()) error {
		conn, err := d.db.Conn(ctx)
		if err != nil {
			return err
		}
		defer conn.Close()
		var lerr error
		err = conn.Raw(func(dc any) error {
			pc, ok := dc.(interface{ Conn() *pgx.Conn })
			if !ok {
				lerr = permanentListenError{fmt.Errorf("the database/sql driver connection is a %T, not one of pgx's stdlib driver", dc)}
				return nil
			}
			lerr = listenOn(ctx, pc.Conn(), wake, listening)
			// A connection that listened, or broke, never returns to
			// the pool.
			return driver.ErrBadConn
		})
		if lerr != nil {
			return lerr
		}
		if err != nil && !errors.Is(err, driver.ErrBadConn) {
			return err
		}
		return nil
	})
}

// permanentListenError is a session failure that retrying cannot cure (a
// database/sql connection of another driver); ListenOutbox returns it.
type permanentListenError struct{ error }

// listenOn runs LISTEN on conn, calls listening and wake("") once listening,
// then wake with each notification's payload until ctx ends or the
// connection fails.
func listenOn(ctx context.Context, conn *pgx.Conn, wake func(string), listening func()) error {
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{OutboxChannel}.Sanitize()); err != nil {
		return err
	}
	listening()
	wake("")
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Channel == OutboxChannel {
			wake(n.Payload)
		}
	}
}

// listenLoop runs session until ctx ends, reporting its failures and
// starting it again after a backoff, which grows with consecutive failures
// and starts over once a session got to listen.
func listenLoop(ctx context.Context, report func(error), session func(ctx context.Context, listening func()) error) error {
	failures := 0
	for ctx.Err() == nil {
		err := session(ctx, func() { failures = 0 })
		if ctx.Err() != nil {
			return nil
		}
		var perm permanentListenError
		if errors.As(err, &perm) {
			return perm.error
		}
		if err == nil {
			err = errors.New("connection closed")
		}
		failures++
		if report != nil {
			report(fmt.Errorf("durable: postgres: listen on %s: %w", OutboxChannel, err))
		}
		wait := listenBackoffMin << min(failures-1, 16)
		wait = min(wait, listenBackoffMax)
		wait = wait/2 + rand.N(wait/2+1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	return nil
}
