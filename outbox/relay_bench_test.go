package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
)

// arrivals is a Handler that reports every envelope's arrival time.
type arrivals struct {
	mu sync.Mutex
	at map[string]time.Time
	ch chan string
}

func newArrivals(capacity int) *arrivals {
	return &arrivals{at: map[string]time.Time{}, ch: make(chan string, capacity)}
}

func (a *arrivals) Deliver(_ context.Context, b *transport.Batch) (transport.Result, error) {
	now := time.Now()
	a.mu.Lock()
	for _, e := range b.Envelopes {
		a.at[e.ID] = now
	}
	a.mu.Unlock()
	for _, e := range b.Envelopes {
		a.ch <- e.ID
	}
	return transport.Result{}, nil
}

// BenchmarkRelayLatency measures at light load (one message at a time, 2ms
// apart) the time from the return of the enqueuing transaction's Commit to
// the Handler behind a tcp.Server, on Postgres. The poll interval is a
// minute, so only wake-ups explain a short latency:
//
//   - notify: NOTIFY at commit (Config.Notify) wakes the relay, as when it
//     runs in another process;
//   - in-process: Enqueue wakes it (RelayConfig.Outbox), no NOTIFY.
//
// It reports the median and the 99th percentile in milliseconds.
//
//	go test -run='^$' -bench=RelayLatency -benchtime=1000x ./outbox/
func BenchmarkRelayLatency(b *testing.B) {
	for _, mode := range []string{"notify", "in-process"} {
		b.Run(mode, func(b *testing.B) {
			pool, _ := testdb.PostgresPool(b, true)
			d := pgDialect(b, pool)
			ob, err := outbox.New(d, &outbox.Config{Notify: mode == "notify"})
			if err != nil {
				b.Fatal(err)
			}
			rcv := newArrivals(b.N + 1)
			srv := startServer(b, rcv)
			cfg := &outbox.RelayConfig{Logger: quiet, PollInterval: time.Minute}
			if mode == "in-process" {
				cfg.Outbox = ob
			}
			start(b, newRelay(b, dialects.Dialect[pgxTx](d), map[string]transport.Sender{"billing": newClient(b, srv.addr)}, cfg))
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			time.Sleep(50 * time.Millisecond) // past the relay's first claim
			b.ResetTimer()
			for i := range b.N {
				id := fmt.Sprintf("lat-%d", i)
				tx, err := pool.Begin(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if err := ob.Enqueue(ctx, tx, &outbox.Message{ID: id, Destination: "billing", Topic: "bench", Payload: make([]byte, 256)}); err != nil {
					b.Fatal(err)
				}
				if err := tx.Commit(ctx); err != nil {
					b.Fatal(err)
				}
				committed := time.Now()
				select {
				case got := <-rcv.ch:
					if got != id {
						b.Fatalf("received %s, want %s", got, id)
					}
				case <-time.After(10 * time.Second):
					b.Fatalf("message %d not delivered in 10s", i)
				}
				rcv.mu.Lock()
				at := rcv.at[id]
				rcv.mu.Unlock()
				lat = append(lat, at.Sub(committed))
				time.Sleep(2 * time.Millisecond)
			}
			b.StopTimer()
			slices.Sort(lat)
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
			b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
			b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkRelayThroughput measures a bulk run: b.N messages committed
// beforehand (in transactions of 1,000), then relayed by one relay to one
// peer; it reports messages per second from the relay's start until the
// last acknowledgement is recorded (the outbox is empty).
//
//	go test -run='^$' -bench=RelayThroughput -benchtime=100000x ./outbox/
func BenchmarkRelayThroughput(b *testing.B) {
	b.Run("postgres", func(b *testing.B) {
		u, _ := testdb.PostgresSchema(b)
		benchThroughput(b, dialects.Dialect[pgxTx](pgDialect(b, testdb.OpenPostgres(b, u+"&pool_max_conns=8", true))))
	})
	b.Run("sqlite", func(b *testing.B) {
		db, err := sql.Open("sqlite", sqlite.DSN(testdb.SQLitePath(b)))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
		for _, stmt := range testdb.UpSQL(b, migrations.SQLite) {
			if _, err := db.Exec(stmt); err != nil {
				b.Fatal(err)
			}
		}
		d, err := sqlite.New(db, nil)
		if err != nil {
			b.Fatal(err)
		}
		benchThroughput(b, dialects.Dialect[sqlTx](d))
	})
}

func benchThroughput[TTx any](b *testing.B, d dialects.Dialect[TTx]) {
	ctx := context.Background()
	ob, err := outbox.New(d, nil)
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 256)
	for from := 0; from < b.N; from += 1000 {
		tx, err := d.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		var msgs []*outbox.Message
		for i := from; i < min(from+1000, b.N); i++ {
			msgs = append(msgs, &outbox.Message{ID: fmt.Sprintf("bulk-%d", i), Destination: "billing", Topic: "bench", Payload: payload})
		}
		if err := ob.Enqueue(ctx, tx, msgs...); err != nil {
			b.Fatal(err)
		}
		if err := d.Commit(ctx, tx); err != nil {
			b.Fatal(err)
		}
	}
	rcv := newArrivals(b.N + 1)
	srv := startServer(b, rcv)
	relay := newRelay(b, d, map[string]transport.Sender{"billing": newClient(b, srv.addr)}, &outbox.RelayConfig{Logger: quiet, PollInterval: 10 * time.Millisecond})
	b.ResetTimer()
	began := time.Now()
	stop := start(b, relay)
	for range b.N {
		<-rcv.ch
	}
	for {
		st, err := d.OutboxStats(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if len(st) == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(began)
	b.StopTimer()
	stop()
	b.ReportMetric(float64(b.N)/took.Seconds(), "msg/s")
	b.ReportMetric(0, "ns/op")
}
