package inbox

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/transport"
)

// BenchmarkHandle measures messages handled per second with a no-op
// handler, from a backlog delivered beforehand, next to the raw limit
// measured in the same run: a plain single-row UPDATE and COMMIT per
// transaction (16 writers on Postgres, one on SQLite).
//
//	go test -run='^$' -bench=Handle -benchtime=20000x ./inbox/
func BenchmarkHandle(b *testing.B) {
	b.Run("postgres", func(b *testing.B) {
		f := openPgx(b, "&pool_max_conns=32")
		b.Run("plain-update-commit-16", func(b *testing.B) {
			benchPlainUpdate(b, f, 16)
		})
		for _, workers := range []int{4, 8} {
			b.Run(fmt.Sprintf("inbox-noop-%d-workers", workers), func(b *testing.B) {
				benchInbox(b, f, workers)
			})
		}
	})
	b.Run("sqlite", func(b *testing.B) {
		f := openSQLite(b)
		b.Run("plain-update-commit-1", func(b *testing.B) {
			benchPlainUpdate(b, f, 1)
		})
		b.Run("inbox-noop-1-worker", func(b *testing.B) {
			benchInbox(b, f, 1)
		})
	})
}

// benchPlainUpdate runs b.N transactions of one single-row UPDATE each,
// from writers goroutines, each on a row of its own.
func benchPlainUpdate[TTx any](b *testing.B, f *fixture[TTx], writers int) {
	f.db.exec(b, `CREATE TABLE IF NOT EXISTS bench_counter (id integer PRIMARY KEY, n integer NOT NULL)`)
	f.db.exec(b, `DELETE FROM bench_counter`)
	for w := range writers {
		f.db.exec(b, `INSERT INTO bench_counter (id, n) VALUES ($1, 0)`, w)
	}
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	b.ResetTimer()
	began := time.Now()
	for w := range writers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				tx, err := f.d.Begin(ctx)
				if err == nil {
					err = f.txExec(ctx, tx, `UPDATE bench_counter SET n = n + 1 WHERE id = $1`, w)
					if err == nil {
						err = f.d.Commit(ctx, tx)
					} else {
						_ = f.d.Rollback(ctx, tx)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(began)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "commits/s")
}

// benchInbox delivers b.N messages, then times workers handling them with a
// no-op handler.
func benchInbox[TTx any](b *testing.B, f *fixture[TTx], workers int) {
	f.db.exec(b, `DELETE FROM durable_inbox`)
	cfg := fastConfig(b)
	cfg.Concurrency = workers
	ib, mux := newInbox(b, f, cfg)
	var handled atomic.Int64
	all := make(chan struct{})
	mux.HandleFunc("bench", func(ctx context.Context, tx TTx, m *Message) error {
		if handled.Add(1) == int64(b.N) {
			close(all)
		}
		return nil
	})
	ctx := context.Background()
	payload := make([]byte, 200)
	run := fmt.Sprint(time.Now().UnixNano())
	for start := 0; start < b.N; start += 1000 {
		envs := make([]transport.Envelope, 0, 1000)
		for i := start; i < min(start+1000, b.N); i++ {
			envs = append(envs, transport.Envelope{ID: fmt.Sprintf("%s-%d", run, i), Topic: "bench", Payload: payload, CreatedAt: time.Now()})
		}
		if _, err := ib.Deliver(ctx, &transport.Batch{Source: "bench", Envelopes: envs}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	began := time.Now()
	stop := start(b, ib)
	select {
	case <-all:
	case <-time.After(10 * time.Minute):
		b.Fatal("timed out")
	}
	elapsed := time.Since(began)
	b.StopTimer()
	stop()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
}
