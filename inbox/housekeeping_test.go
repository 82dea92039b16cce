package inbox

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/housekeep"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/transport"
)

// fillHandled inserts n handled rows of source "old", handled eight days
// ago, with one statement.
func fillHandled[TTx any](t testing.TB, f *fixture[TTx], n int) {
	t.Helper()
	if f.d.Name() == "sqlite" {
		old := time.Now().Add(-8 * 24 * time.Hour).UTC().Format("2006-01-02 15:04:05.000")
		f.db.exec(t, `WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?1)
INSERT INTO durable_inbox (source, id, topic, payload, created_at, state, attempts, handled_at)
SELECT 'old', 'm' || n, 'order.placed', x'7061796c6f6164', ?2, 'handled', 1, ?2 FROM g`, n, old)
		return
	}
	f.db.exec(t, `INSERT INTO durable_inbox (source, id, topic, payload, created_at, state, attempts, handled_at)
SELECT 'old', 'm' || g, 'order.placed', 'payload'::bytea, now() - interval '9 days', 'handled', 1,
	now() - interval '8 days' - g * interval '1 millisecond'
FROM generate_series(1, $1::int) g`, n)
	if f.d.Name() == "postgres" {
		f.db.exec(t, `ANALYZE durable_inbox`)
	}
}

// opStats records the durations of one kind of live operation.
type opStats struct {
	mu    sync.Mutex
	n     int
	total time.Duration
	all   []time.Duration
}

func (s *opStats) add(d time.Duration) {
	s.mu.Lock()
	s.n++
	s.total += d
	s.all = append(s.all, d)
	s.mu.Unlock()
}

func (s *opStats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == 0 {
		return "none"
	}
	all := slices.Clone(s.all)
	slices.Sort(all)
	return fmt.Sprintf("n=%d mean=%v p99=%v max=%v", s.n, (s.total / time.Duration(s.n)).Round(time.Microsecond),
		all[len(all)*99/100].Round(time.Microsecond), all[len(all)-1].Round(time.Microsecond))
}

func (s *opStats) max() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.all) == 0 {
		return 0
	}
	return slices.Max(s.all)
}

// liveLoad stands for the traffic of a running inbox: writers store batches
// of new messages, a worker claims, locks and settles them, each operation
// timed, until stop is closed. It returns the counts of rows stored.
type liveLoad struct {
	insert, claim, finish opStats
	stored                atomic.Int64
	handled               atomic.Int64
}

func runLive[TTx any](ctx context.Context, t testing.TB, ib *Inbox[TTx], writers int, stop <-chan struct{}) (*liveLoad, func()) {
	l := &liveLoad{}
	var wg sync.WaitGroup
	fail := func(what string, err error) {
		if ctx.Err() == nil {
			t.Errorf("live %s: %v", what, err)
		}
	}
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	for w := range writers {
		wg.Go(func() {
			for i := 0; !stopped(); i++ {
				rows := make([]dialects.InboxRow, 10)
				for j := range rows {
					rows[j] = dialects.InboxRow{Envelope: transport.Envelope{ID: fmt.Sprintf("w%d-%d-%d", w, i, j), Topic: "order.placed", Payload: []byte("live")}, Source: "live"}
				}
				start := time.Now()
				stored, err := ib.insert(ctx, rows)
				if err != nil {
					fail("insert", err)
					return
				}
				l.insert.add(time.Since(start))
				for _, ok := range stored {
					if ok {
						l.stored.Add(1)
					}
				}
			}
		})
	}
	wg.Go(func() {
		for !stopped() {
			start := time.Now()
			token := fmt.Sprint("live-", start.UnixNano())
			rows, err := ib.store.ClaimInbox(ctx, dialects.InboxClaim{Token: token, Worker: "live", Limit: 10, Lease: time.Minute})
			if err != nil {
				fail("claim", err)
				return
			}
			l.claim.add(time.Since(start))
			if len(rows) == 0 {
				time.Sleep(time.Millisecond)
				continue
			}
			start = time.Now()
			tx, err := ib.d.Begin(ctx)
			if err != nil {
				fail("begin", err)
				return
			}
			keys := make([]dialects.InboxKey, len(rows))
			outcomes := make([]dialects.InboxOutcome, len(rows))
			for i, r := range rows {
				keys[i] = dialects.InboxKey{Source: r.Source, ID: r.ID}
				outcomes[i] = dialects.InboxOutcome{Source: r.Source, ID: r.ID, Kind: dialects.InboxHandled}
			}
			if _, err := ib.store.LockInbox(ctx, tx, token, keys); err != nil {
				_ = ib.d.Rollback(ctx, tx)
				fail("lock", err)
				return
			}
			n, err := ib.store.FinishInbox(ctx, tx, token, outcomes)
			if err == nil {
				err = ib.d.Commit(ctx, tx)
			}
			if err != nil {
				_ = ib.d.Rollback(ctx, tx)
				fail("finish", err)
				return
			}
			l.finish.add(time.Since(start))
			l.handled.Add(int64(n))
		}
	})
	return l, wg.Wait
}

// testHousekeepingBounded: the housekeeping deletes 10,000 handled rows
// past the retention in batches of at most DefaultCleanupBatch while live
// messages are stored and handled, leaves every live row (and the recently
// handled ones) alone, and runs in one inbox at a time.
func testHousekeepingBounded[TTx any](t *testing.T, f *fixture[TTx]) {
	const old = 10_000
	ctx := context.Background()
	fillHandled(t, f, old)
	f.db.exec(t, `INSERT INTO durable_inbox (source, id, topic, payload, created_at, state, attempts, handled_at)
VALUES ('recent', 'r1', 't', 'p', '2000-01-01 00:00:00.000', 'handled', 1, `+nowSQL(f)+`)`)
	ib, err := New(f.d, nil, &Config{Logger: quiet(t)})
	if err != nil {
		t.Fatal(err)
	}
	other, err := New(f.d, nil, &Config{Logger: quiet(t)})
	if err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	live, wait := runLive(ctx, t, ib, 1, stop)
	waitFor(t, "some live rows first", 60*time.Second, func() bool { return live.stored.Load() > 0 })
	res, err := ib.hk.Once(ctx)
	close(stop)
	wait()
	if err != nil {
		t.Fatal(err)
	}
	if res.Skipped || res.Deleted["inbox"] != old || res.MaxBatch > DefaultCleanupBatch || res.Batches < old/DefaultCleanupBatch {
		t.Fatalf("housekeeping = %+v; want %d rows deleted in batches of at most %d", res, old, DefaultCleanupBatch)
	}
	if res, err := other.hk.Once(ctx); err != nil || !res.Skipped {
		t.Fatalf("a second inbox's housekeeping while the first holds the lease = %+v, %v; want skipped", res, err)
	}
	ib.hk.Release(ctx)
	if n := f.db.int(t, `SELECT count(*) FROM durable_inbox WHERE source = 'old'`); n != 0 {
		t.Errorf("%d old handled rows left", n)
	}
	if n := f.db.int(t, `SELECT count(*) FROM durable_inbox WHERE source = 'recent'`); n != 1 {
		t.Errorf("the recently handled row was deleted")
	}
	if n, want := f.db.int(t, `SELECT count(*) FROM durable_inbox WHERE source = 'live'`), live.stored.Load(); n != want || want == 0 {
		t.Errorf("%d live rows in the inbox, %d stored", n, want)
	}
	t.Logf("%s: purge %+v; live insert %v; claim %v; lock+finish %v", f.name, res, &live.insert, &live.claim, &live.finish)
}

// nowSQL is the dialect's expression of the current time.
func nowSQL[TTx any](f *fixture[TTx]) string {
	if f.d.Name() == "sqlite" {
		return `strftime('%Y-%m-%d %H:%M:%f', 'now')`
	}
	return `now()`
}

func TestHousekeepingBounded(t *testing.T) {
	// The two run at once: each has its own database.
	t.Run("postgres-pgx", func(t *testing.T) { t.Parallel(); testHousekeepingBounded(t, openPgx(t, "")) })
	t.Run("sqlite", func(t *testing.T) { t.Parallel(); testHousekeepingBounded(t, openSQLite(t)) })
}

// TestHousekeepingMillionRows measures the housekeeping of 1,000,000
// handled rows on Postgres while live traffic runs, and reports the longest
// wait of any live operation, and of any lock wait seen in pg_stat_activity.
// It fails if a live operation waited a second or more. It is a
// measurement, not a CI test: set DURABLE_HOUSEKEEPING_1M=1 to run it.
//
//	DURABLE_HOUSEKEEPING_1M=1 go test -run TestHousekeepingMillionRows -v -timeout 30m ./inbox
func TestHousekeepingMillionRows(t *testing.T) {
	if os.Getenv("DURABLE_HOUSEKEEPING_1M") == "" {
		t.Skip("a measurement: set DURABLE_HOUSEKEEPING_1M=1 to run it")
	}
	const rows = 1_000_000
	f := openPgx(t, "")
	ctx := context.Background()
	start := time.Now()
	fillHandled(t, f, rows)
	t.Logf("filled %d handled rows in %v", rows, time.Since(start).Round(time.Millisecond))

	// Sample lock waits of other sessions every 10ms.
	pool := testdb.OpenPostgres(t, testdb.PostgresURL(t), false)
	var lockWait atomic.Int64 // longest, in microseconds
	samples := atomic.Int64{}
	stopSampling := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(10 * time.Millisecond):
			}
			var us int64
			err := pool.QueryRow(ctx, `SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start) * 1e6), 0)::bigint
FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`).Scan(&us)
			if err != nil {
				if ctx.Err() == nil {
					t.Errorf("sampling lock waits: %v", err)
				}
				return
			}
			samples.Add(1)
			if us > lockWait.Load() {
				lockWait.Store(us)
			}
		}
	})

	ib, err := New(f.d, nil, &Config{Logger: quiet(t)})
	if err != nil {
		t.Fatal(err)
	}
	// Time each purge statement: the longest is the longest any purged row
	// stays locked.
	var batch opStats
	ib.hk = housekeep.New(housekeep.Config{
		Lease: retentionLease, Holder: "measure", Leaser: f.d, Interval: time.Minute,
		Batch: DefaultCleanupBatch, Log: quiet(t),
		Jobs: []housekeep.Job{{Table: "inbox", Purge: func(ctx context.Context, limit int) (int, error) {
			s := time.Now()
			n, err := ib.store.PurgeInbox(ctx, ib.cfg.Retention, limit)
			batch.add(time.Since(s))
			return n, err
		}}},
	})

	stop := make(chan struct{})
	live, wait := runLive(ctx, t, ib, 2, stop)
	time.Sleep(time.Second)
	start = time.Now()
	res, err := ib.hk.Once(ctx)
	took := time.Since(start)
	close(stop)
	wait()
	close(stopSampling)
	sampler.Wait()
	ib.hk.Release(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Deleted["inbox"] != rows {
		t.Fatalf("deleted %d rows, want %d", res.Deleted["inbox"], rows)
	}
	t.Logf("purge: %d rows in %d batches (at most %d rows each) in %v; batch statement %v", res.Deleted["inbox"], res.Batches, res.MaxBatch, took.Round(time.Millisecond), &batch)
	t.Logf("live during the purge: stored %d, handled %d", live.stored.Load(), live.handled.Load())
	t.Logf("live insert (tx of 10 rows + commit): %v", &live.insert)
	t.Logf("live claim (10 rows): %v", &live.claim)
	t.Logf("live lock + finish + commit (10 rows): %v", &live.finish)
	t.Logf("longest lock wait seen in pg_stat_activity: %v (%d samples)", time.Duration(lockWait.Load())*time.Microsecond, samples.Load())
	for name, s := range map[string]*opStats{"insert": &live.insert, "claim": &live.claim, "finish": &live.finish} {
		if m := s.max(); m >= time.Second {
			t.Errorf("a live %s took %v, over a second", name, m)
		}
	}
	if n := f.db.int(t, `SELECT count(*) FROM durable_inbox WHERE source = 'live'`); n != live.stored.Load() {
		t.Errorf("%d live rows in the inbox, %d stored", n, live.stored.Load())
	}
}

// testDeadLetterExpiry: with DeadLetterRetention, the housekeeping deletes
// the inbox's dead letters that failed longer ago, replayed or not, and
// leaves newer ones and the outbox's alone; without it, none.
func testDeadLetterExpiry[TTx any](t *testing.T, f *fixture[TTx]) {
	ctx := context.Background()
	longAgo := "'2000-01-01 00:00:00.000'"
	for _, r := range []struct{ side, id, src, dest, failed, replayed string }{
		{"inbox", "old", "a", "", longAgo, "NULL"},
		{"inbox", "old-replayed", "a", "", longAgo, longAgo},
		{"inbox", "new", "a", "", nowSQL(f), "NULL"},
		{"outbox", "old-outbox", "", "b", longAgo, "NULL"},
	} {
		f.db.exec(t, `INSERT INTO durable_dead_letters (side, id, source, destination, topic, payload, created_at, reason, failed_at, first_failed_at, replayed_at)
VALUES ('`+r.side+`', '`+r.id+`', '`+r.src+`', '`+r.dest+`', 't', 'p', `+longAgo+`, 'permanent', `+r.failed+`, `+r.failed+`, `+r.replayed+`)`)
	}
	keep, err := New(f.d, nil, &Config{Logger: quiet(t)})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := keep.hk.Once(ctx); err != nil || res.Deleted["dead_letters"] != 0 {
		t.Fatalf("housekeeping without DeadLetterRetention = %+v, %v; want no dead letter deleted", res, err)
	}
	keep.hk.Release(ctx)
	expire, err := New(f.d, nil, &Config{Logger: quiet(t), DeadLetterRetention: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := expire.hk.Once(ctx); err != nil || res.Deleted["dead_letters"] != 2 {
		t.Fatalf("housekeeping with DeadLetterRetention = %+v, %v; want the 2 old inbox dead letters deleted", res, err)
	}
	expire.hk.Release(ctx)
	got := f.db.strings(t, `SELECT id FROM durable_dead_letters ORDER BY id`)
	if !slices.Equal(got, []string{"new", "old-outbox"}) {
		t.Fatalf("dead letters left: %v, want [new old-outbox]", got)
	}
}

func TestDeadLetterExpiry(t *testing.T) {
	t.Run("postgres-pgx", func(t *testing.T) { testDeadLetterExpiry(t, openPgx(t, "")) })
	t.Run("sqlite", func(t *testing.T) { testDeadLetterExpiry(t, openSQLite(t)) })
}

// TestThroughputExpiry: the housekeeping deletes the throughput counters
// older than a day and keeps the others.
func TestThroughputExpiry(t *testing.T) {
	t.Run("postgres-pgx", func(t *testing.T) { testThroughputExpiry(t, openPgx(t, "")) })
	t.Run("sqlite", func(t *testing.T) { testThroughputExpiry(t, openSQLite(t)) })
}

func testThroughputExpiry[TTx any](t *testing.T, f *fixture[TTx]) {
	ctx := context.Background()
	now := time.Now()
	if err := f.d.AddThroughput(ctx, []dialects.Throughput{
		{Minute: now.Add(-25 * time.Hour), Kind: dialects.ThroughputHandled, Name: "old", Count: 1},
		{Minute: now.Add(-23 * time.Hour), Kind: dialects.ThroughputHandled, Name: "recent", Count: 2},
		{Minute: now, Kind: dialects.ThroughputSent, Name: "now", Count: 3},
	}); err != nil {
		t.Fatal(err)
	}
	ib, err := New(f.d, nil, &Config{Logger: quiet(t)})
	if err != nil {
		t.Fatal(err)
	}
	res, err := ib.hk.Once(ctx)
	if err != nil || res.Deleted["throughput"] != 1 {
		t.Fatalf("housekeeping = %+v, %v; want 1 throughput counter deleted", res, err)
	}
	ib.hk.Release(ctx)
	got, err := f.d.ListThroughput(ctx, time.Time{})
	if err != nil || len(got) != 2 || got[0].Name != "recent" || got[1].Name != "now" {
		t.Fatalf("counters left: %+v, %v; want recent and now", got, err)
	}
}
