package housekeep_test

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/housekeep"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func leasers(t *testing.T) map[string]func(t *testing.T) dialects.Leaser {
	return map[string]func(t *testing.T) dialects.Leaser{
		"postgres-pgx": func(t *testing.T) dialects.Leaser {
			pool, _ := testdb.PostgresPool(t, true)
			return postgres.New(pool)
		},
		"postgres-sql": func(t *testing.T) dialects.Leaser {
			u, _ := testdb.PostgresSchema(t)
			db, err := sql.Open("pgx", u)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Close() })
			for _, stmt := range testdb.UpSQL(t, migrations.Postgres) {
				if _, err := db.Exec(stmt); err != nil {
					t.Fatal(err)
				}
			}
			return postgres.NewSQL(db)
		},
		"sqlite": func(t *testing.T) dialects.Leaser {
			db, err := sql.Open("sqlite", sqlite.DSN(testdb.SQLitePath(t)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Close() })
			for _, stmt := range testdb.UpSQL(t, migrations.SQLite) {
				if _, err := db.Exec(stmt); err != nil {
					t.Fatal(err)
				}
			}
			d, err := sqlite.New(db)
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
	}
}

// TestLease: a free lease is taken, a held one is refused to others and
// renewed for its holder, an expired one is taken over, a released one is
// free at once, and releasing another's lease does nothing.
func TestLease(t *testing.T) {
	for name, open := range leasers(t) {
		t.Run(name, func(t *testing.T) {
			l := open(t)
			ctx := context.Background()
			must := func(ok bool, err error) bool {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
				return ok
			}
			if !must(l.AcquireLease(ctx, "job", "a", time.Minute)) {
				t.Fatal("a could not take a free lease")
			}
			if must(l.AcquireLease(ctx, "job", "b", time.Minute)) {
				t.Fatal("b took a lease a holds")
			}
			if !must(l.AcquireLease(ctx, "job", "a", 300*time.Millisecond)) {
				t.Fatal("a could not renew its lease")
			}
			if !must(l.AcquireLease(ctx, "other", "b", time.Minute)) {
				t.Fatal("b could not take another lease")
			}
			time.Sleep(400 * time.Millisecond)
			if !must(l.AcquireLease(ctx, "job", "b", time.Minute)) {
				t.Fatal("b could not take over an expired lease")
			}
			if must(l.AcquireLease(ctx, "job", "a", time.Minute)) {
				t.Fatal("a took back a lease b holds")
			}
			if err := l.ReleaseLease(ctx, "job", "a"); err != nil {
				t.Fatal(err)
			}
			if must(l.AcquireLease(ctx, "job", "a", time.Minute)) {
				t.Fatal("a's release of b's lease freed it")
			}
			if err := l.ReleaseLease(ctx, "job", "b"); err != nil {
				t.Fatal(err)
			}
			if !must(l.AcquireLease(ctx, "job", "a", time.Minute)) {
				t.Fatal("a could not take a released lease")
			}
			if _, err := l.AcquireLease(ctx, "job", "a", 0); err == nil {
				t.Fatal("AcquireLease with a zero ttl succeeded")
			}
		})
	}
}

// fakePurge deletes from a pile of rows, limit at a time.
type fakePurge struct {
	left  atomic.Int64
	calls atomic.Int64
	max   atomic.Int64
}

func (f *fakePurge) purge(_ context.Context, limit int) (int, error) {
	f.calls.Add(1)
	n := min(int64(limit), f.left.Load())
	f.left.Add(-n)
	if n > f.max.Load() {
		f.max.Store(n)
	}
	return int(n), nil
}

// TestRunnerOneAtATime: of two runners on one database, only the lease's
// holder purges, in bounded batches; after it releases, the other takes
// over.
func TestRunnerOneAtATime(t *testing.T) {
	l := leasers(t)["sqlite"](t)
	ctx := context.Background()
	var pile fakePurge
	pile.left.Store(10_500)
	var deleted atomic.Int64
	cfg := housekeep.Config{
		Lease: "test", Holder: "same-name", Leaser: l, Interval: time.Minute, Batch: 1000, Pause: -1,
		Jobs:    []housekeep.Job{{Table: "inbox", Purge: pile.purge}},
		Log:     quiet,
		Deleted: func(_ string, n int) { deleted.Add(int64(n)) },
	}
	a, b := housekeep.New(cfg), housekeep.New(cfg)
	if a.Holder() == b.Holder() {
		t.Fatalf("two runners share the holder name %q", a.Holder())
	}
	res, err := a.Once(ctx)
	if err != nil || res.Skipped {
		t.Fatalf("first runner: %+v, %v", res, err)
	}
	if res.Deleted["inbox"] != 10_500 || res.MaxBatch != 1000 || res.Batches != 11 || deleted.Load() != 10_500 {
		t.Fatalf("first runner: %+v (reported %d), want 10,500 rows in 11 batches of at most 1,000", res, deleted.Load())
	}
	pile.left.Store(5)
	if res, err := b.Once(ctx); err != nil || !res.Skipped || pile.left.Load() != 5 {
		t.Fatalf("second runner while the first holds the lease: %+v, %v, %d rows left", res, err, pile.left.Load())
	}
	a.Release(ctx)
	if res, err := b.Once(ctx); err != nil || res.Skipped || pile.left.Load() != 0 {
		t.Fatalf("second runner after the release: %+v, %v, %d rows left", res, err, pile.left.Load())
	}
	if res, err := a.Once(ctx); err != nil || !res.Skipped {
		t.Fatalf("first runner after the takeover: %+v, %v", res, err)
	}
	b.Release(ctx)
}

// TestRunnerErrors: a failing job does not stop the next one, and its error
// is returned; without a Leaser every run purges.
func TestRunnerErrors(t *testing.T) {
	boom := errors.New("boom")
	var pile fakePurge
	pile.left.Store(3)
	r := housekeep.New(housekeep.Config{
		Lease: "test", Holder: "x", Interval: time.Minute, Log: quiet,
		Jobs: []housekeep.Job{
			{Table: "outbox", Purge: func(context.Context, int) (int, error) { return 0, boom }},
			{Table: "dead_letters", Purge: pile.purge},
		},
	})
	res, err := r.Once(context.Background())
	if !errors.Is(err, boom) || res.Deleted["dead_letters"] != 3 {
		t.Fatalf("run = %+v, %v; want boom and the second job done", res, err)
	}
	r.Release(context.Background())
}
