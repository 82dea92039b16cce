package housekeep_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/housekeep"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
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

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// sqliteLeaser returns a dialect on a fresh, migrated SQLite database. The
// leases themselves are checked for every dialect by the conformance suite
// (dialecttest, Lease/...); here they only serve the runner.
func sqliteLeaser(t *testing.T) dialects.Leaser {
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
	d, err := sqlite.New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
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
	l := sqliteLeaser(t)
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
// is returned.
func TestRunnerErrors(t *testing.T) {
	boom := errors.New("boom")
	var pile fakePurge
	pile.left.Store(3)
	r := housekeep.New(housekeep.Config{
		Lease: "test", Holder: "x", Leaser: sqliteLeaser(t), Interval: time.Minute, Log: quiet,
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
