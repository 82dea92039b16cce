package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/transport"
)

// BenchmarkInsertOutbox compares the two write paths of the pgx flavour at
// several batch sizes; copyThreshold (pgcopy.Threshold) is chosen from its
// results:
//
//	go test -run '^$' -bench InsertOutbox -benchtime 20x ./dialects/postgres/
//
// Each iteration writes one batch in a transaction that is rolled back: the
// commit costs the same on both paths and is left out.
func BenchmarkInsertOutbox(b *testing.B) {
	pool, _ := testdb.PostgresPool(b, true)
	d, err := New(pool, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	base := time.Now()
	round := 0
	for _, n := range []int{10, 100, 250, 500, 1000, 2000, 5000, 10000} {
		rows := make([]dialects.OutboxRow, n)
		for i := range rows {
			rows[i] = dialects.OutboxRow{
				Envelope: transport.Envelope{
					Topic:     "order.placed",
					Key:       fmt.Sprintf("customer-%d", i%100),
					Headers:   map[string]string{"trace": fmt.Sprintf("%032x", i)},
					Payload:   make([]byte, 200),
					CreatedAt: base,
					DeliverAt: base,
				},
				Destination: "billing",
			}
		}
		for _, path := range []string{"unnest", "copy"} {
			b.Run(fmt.Sprintf("%s/%d", path, n), func(b *testing.B) {
				for b.Loop() {
					// Fresh ids each time: rolled back rows leave dead index
					// entries that a repeated id would have to step over.
					round++
					for i := range rows {
						rows[i].ID = fmt.Sprintf("%08d-7a3b-7c4d-8e5f-%012d", round, i)
					}
					tx, err := d.Begin(ctx)
					if err != nil {
						b.Fatal(err)
					}
					if path == "copy" {
						err = d.copyOutbox(ctx, tx, rows)
					} else {
						err = d.insertUnnest(ctx, pgxQuerier{tx}, rows)
					}
					if err != nil {
						b.Fatal(err)
					}
					if err := tx.Rollback(ctx); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/row")
			})
		}
	}
}
