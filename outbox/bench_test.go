package outbox_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/outbox"
)

// benchWriters is the concurrency of the enqueue benchmarks: 16 goroutines,
// each committing one message per transaction.
const benchWriters = 16

// BenchmarkEnqueuePostgres16 compares, in one run, Enqueue of one message per
// transaction from 16 goroutines with the raw limit: a plain single-row
// insert-and-commit of the same payload at the same concurrency.
//
//	go test -run='^$' -bench=EnqueuePostgres16 -benchtime=20000x ./outbox/
func BenchmarkEnqueuePostgres16(b *testing.B) {
	u, _ := testdb.PostgresSchema(b)
	pool := testdb.OpenPostgres(b, u+"&pool_max_conns=32", true)
	ctx := context.Background()
	payload := make([]byte, 256)

	b.Run("raw-insert-commit", func(b *testing.B) {
		if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS bench_raw (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload bytea NOT NULL)`); err != nil {
			b.Fatal(err)
		}
		runWriters(b, func(ctx context.Context) error {
			tx, err := pool.Begin(ctx)
			if err != nil {
				return err
			}
			defer tx.Rollback(ctx)
			if _, err := tx.Exec(ctx, `INSERT INTO bench_raw (payload) VALUES ($1)`, payload); err != nil {
				return err
			}
			return tx.Commit(ctx)
		})
	})
	b.Run("enqueue-commit", func(b *testing.B) {
		ob, err := outbox.New(pgDialect(b, pool), nil)
		if err != nil {
			b.Fatal(err)
		}
		runWriters(b, func(ctx context.Context) error {
			tx, err := pool.Begin(ctx)
			if err != nil {
				return err
			}
			defer tx.Rollback(ctx)
			if err := ob.Enqueue(ctx, tx, &outbox.Message{Destination: "billing", Topic: "bench", Payload: payload}); err != nil {
				return err
			}
			return tx.Commit(ctx)
		})
	})
}

// runWriters runs b.N transactions of fn spread over benchWriters goroutines
// and reports transactions per second.
func runWriters(b *testing.B, fn func(context.Context) error) {
	ctx := context.Background()
	var next atomic.Int64
	errs := make(chan error, benchWriters)
	b.ResetTimer()
	start := time.Now()
	for range benchWriters {
		go func() {
			for next.Add(1) <= int64(b.N) {
				if err := fn(ctx); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range benchWriters {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tx/s")
}
