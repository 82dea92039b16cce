package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/dialecttest"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/internal/testdb"
)

func insertRows(t *testing.T, pool *pgxpool.Pool, d *postgres.Dialect, rows ...dialects.OutboxRow) {
	t.Helper()
	ctx := ctxFor(t)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.InsertOutbox(ctx, tx, rows); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

func relayRow(i int, key string) dialects.OutboxRow {
	r := dialecttest.Row(i, "billing")
	r.Key = key
	r.CreatedAt, r.ExpiresAt = time.Time{}, time.Time{}
	r.DeliverAt = time.Now().Add(-time.Second)
	return r
}

// TestClaimSkipsLockedRows: a claim does not wait for rows another
// transaction holds locked (a claimer mid-statement), takes the others, and
// does not take the later row of a key whose first row is locked.
func TestClaimSkipsLockedRows(t *testing.T) {
	pool, _ := testdb.PostgresPool(t, true)
	d := newPgx(t, pool, nil)
	insertRows(t, pool, d, relayRow(1, "k"), relayRow(2, "k"), relayRow(3, ""), relayRow(4, ""))
	ctx := ctxFor(t)

	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	var locked []string
	rows, err := holder.Query(ctx, `SELECT id FROM durable_outbox WHERE id IN ($1, $2) FOR UPDATE`, dialecttest.Row(1, "").ID, dialecttest.Row(3, "").ID)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		locked = append(locked, id)
	}
	if rows.Err() != nil || len(locked) != 2 {
		t.Fatalf("locking rows: %v %v", locked, rows.Err())
	}

	// A claim that waited for the locks would wait until the holder's
	// rollback below, that is until this deadline: a minute bounds that
	// hang without betting on how fast a claim is on a loaded machine.
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	got, err := d.ClaimOutbox(cctx, dialects.OutboxClaim{Destination: "billing", Token: "t1", Limit: 10, Lease: time.Minute})
	if err != nil {
		t.Fatalf("claim while rows are locked: %v (did it wait for the lock?)", err)
	}
	var ids []string
	for _, r := range got {
		ids = append(ids, r.ID)
	}
	if want := []string{dialecttest.Row(4, "").ID}; !slices.Equal(ids, want) {
		t.Fatalf("claimed %v, want %v (row 1 and 3 locked, row 2 behind row 1's key)", ids, want)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	got, err = d.ClaimOutbox(ctx, dialects.OutboxClaim{Destination: "billing", Token: "t2", Limit: 10, Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ids = ids[:0]
	for _, r := range got {
		ids = append(ids, r.ID)
	}
	if want := []string{dialecttest.Row(1, "").ID, dialecttest.Row(3, "").ID}; !slices.Equal(ids, want) {
		t.Fatalf("claimed %v after the lock ended, want %v", ids, want)
	}
}

// TestClaimPassesConcurrentClaim: a claim whose limit's oldest rows another
// claimer holds locked (a concurrent claim of another relay) takes the
// next ones, a full claim, instead of coming back empty.
func TestClaimPassesConcurrentClaim(t *testing.T) {
	const limit = 5
	pool, _ := testdb.PostgresPool(t, true)
	d := newPgx(t, pool, nil)
	var all []dialects.OutboxRow
	for i := range 3 * limit {
		all = append(all, relayRow(i+1, ""))
	}
	insertRows(t, pool, d, all...)
	ctx := ctxFor(t)
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, `SELECT 1 FROM durable_outbox WHERE seq IN (
		SELECT seq FROM durable_outbox ORDER BY seq LIMIT $1) FOR UPDATE`, limit); err != nil {
		t.Fatal(err)
	}
	got, err := d.ClaimOutbox(ctx, dialects.OutboxClaim{Destination: "billing", Token: "t1", Limit: limit, Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var ids, want []string
	for _, r := range got {
		ids = append(ids, r.ID)
	}
	for i := limit; i < 2*limit; i++ {
		want = append(want, all[i].ID)
	}
	if !slices.Equal(ids, want) {
		t.Fatalf("claimed %v with the oldest %d rows locked, want the next %d: %v", ids, limit, limit, want)
	}
}

// TestRelayerSchema: the relay, inbox and dead-letter statements honour
// Config.Schema.
func TestRelayerSchema(t *testing.T) {
	_, schema := testdb.PostgresPool(t, true)
	pool := testdb.OpenPostgres(t, testdb.PostgresURL(t), false) // search_path without the schema
	d := newPgx(t, pool, &postgres.Config{Schema: schema})
	insertRows(t, pool, d, relayRow(1, ""))
	ctx := ctxFor(t)
	got, err := d.ClaimOutbox(ctx, dialects.OutboxClaim{Destination: "billing", Token: "t", Limit: 5, Lease: time.Minute})
	if err != nil || len(got) != 1 {
		t.Fatalf("claim: %v, %v", got, err)
	}
	if n, err := d.DeadLetterOutbox(ctx, "t", []dialects.OutboxDeadLetter{{Seq: got[0].Seq, Reason: dialects.ReasonRejected, Error: "x"}}); err != nil || n != 1 {
		t.Fatalf("dead letter: %d, %v", n, err)
	}
	dl, err := d.ListDeadLetters(ctx, dialects.DeadLetterQuery{})
	if err != nil || len(dl) != 1 {
		t.Fatalf("dead letters: %v, %v", dl, err)
	}
	if _, err := d.OutboxStats(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.OutboxDestinations(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.InboxStats(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ListInbox(ctx, dialects.InboxQuery{}); err != nil {
		t.Fatal(err)
	}
	if n, err := d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{}); err != nil || n != 0 {
		t.Fatalf("replay: %d, %v", n, err)
	}
	if n, err := d.PurgeDeadLetters(ctx, dialects.DeadLetterQuery{}); err != nil || n != 1 {
		t.Fatalf("purge: %d, %v", n, err)
	}
	if _, err := newPgx(t, pool, nil).ClaimOutbox(ctx, dialects.OutboxClaim{Destination: "billing", Token: "t", Limit: 5, Lease: time.Minute}); !errors.Is(err, dialects.ErrSchema) {
		t.Fatalf("claim without the schema on the search path = %v, want ErrSchema", err)
	}
}

// wakeLog collects ListenOutbox's calls.
type wakeLog struct {
	mu      sync.Mutex
	wakes   []string
	reports []error
	ch      chan string
}

func newWakeLog() *wakeLog { return &wakeLog{ch: make(chan string, 100)} }

func (w *wakeLog) wake(dest string) {
	w.mu.Lock()
	w.wakes = append(w.wakes, dest)
	w.mu.Unlock()
	w.ch <- dest
}

func (w *wakeLog) report(err error) {
	w.mu.Lock()
	w.reports = append(w.reports, err)
	w.mu.Unlock()
}

func (w *wakeLog) next(t *testing.T, what string) string {
	t.Helper()
	select {
	case d := <-w.ch:
		return d
	case <-time.After(time.Minute): // a bound on a hang, not on speed
		t.Fatalf("no wake-up within a minute: %s", what)
		return ""
	}
}

// TestListenOutbox: both flavours wake on a committed NotifyOutbox, never on
// a rolled-back one, and after the listening connection is killed they
// reconnect, report the failure and wake everyone ("").
func TestListenOutbox(t *testing.T) {
	for _, flavour := range []string{"pgx", "sql"} {
		t.Run(flavour, func(t *testing.T) {
			// The listener's connections carry an application_name of
			// their own, so that the test terminates its own listener
			// only: tests of other packages listen on the same channel of
			// the same database at the same time.
			app := randomName("listen-outbox-")
			connURL, schema := testdb.PostgresSchema(t)
			pool := testdb.OpenPostgres(t, withAppName(t, connURL, app), true)
			var l dialects.Listener
			notify := func(commit bool, dest string) {
				t.Helper()
				d := newPgx(t, pool, nil)
				ctx := ctxFor(t)
				tx, err := pool.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := d.NotifyOutbox(ctx, tx, []string{dest}); err != nil {
					t.Fatal(err)
				}
				if commit {
					err = tx.Commit(ctx)
				} else {
					err = tx.Rollback(ctx)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if flavour == "pgx" {
				l = newPgx(t, pool, nil)
			} else {
				l = newSQL(t, sqlDB(t, withAppName(t, testdb.WithSearchPath(t, testdb.PostgresURL(t), schema), app)), nil)
			}
			w := newWakeLog()
			ctx, cancel := context.WithCancel(ctxFor(t))
			done := make(chan error, 1)
			go func() { done <- l.ListenOutbox(ctx, w.wake, w.report) }()
			if got := w.next(t, "after connecting"); got != "" {
				t.Fatalf("first wake-up %q, want \"\" (listening)", got)
			}
			notify(false, "rolled-back")
			notify(true, "billing")
			if got := w.next(t, "after a commit"); got != "billing" {
				t.Fatalf("wake-up %q, want billing", got)
			}

			// Kill the listening backend: it reconnects and wakes everyone.
			var n int
			err := pool.QueryRow(ctxFor(t), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE query = $1 AND application_name = $2 AND datname = current_database() AND pid <> pg_backend_pid()`,
				fmt.Sprintf("LISTEN %q", postgres.OutboxChannel), app).Scan(&n)
			if err != nil || n != 1 {
				t.Fatalf("terminating the listener: %d backends, %v", n, err)
			}
			if got := w.next(t, "after the reconnect"); got != "" {
				t.Fatalf("wake-up after reconnect %q, want \"\"", got)
			}
			notify(true, "shipping")
			if got := w.next(t, "after a commit on the new connection"); got != "shipping" {
				t.Fatalf("wake-up %q, want shipping", got)
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("ListenOutbox returned %v after cancel, want nil", err)
				}
			case <-time.After(time.Minute): // a bound on a hang, not on speed
				t.Fatal("ListenOutbox did not return within a minute of cancel")
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			if len(w.reports) == 0 {
				t.Fatal("the broken connection was not reported")
			}
			if slices.Contains(w.wakes, "rolled-back") {
				t.Fatal("woken by a rolled-back transaction")
			}
		})
	}
}

// withAppName returns the Postgres URL u with application_name set to app.
func withAppName(t *testing.T, u, app string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	q := p.Query()
	q.Set("application_name", app)
	p.RawQuery = q.Encode()
	return p.String()
}
