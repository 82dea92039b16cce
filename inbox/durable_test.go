package inbox

import (
	"context"
	"database/sql"
	"sync"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/transport"
)

// syncProbe is the SQLite dialect, recording the synchronous setting inside every transaction
// durable begins through it.
type syncProbe struct {
	*sqlite.Dialect
	mu      sync.Mutex
	durable []int // PRAGMA synchronous inside each BeginDurable transaction
	plain   int   // Begin calls
}

func (p *syncProbe) BeginDurable(ctx context.Context) (*sql.Tx, error) {
	tx, err := p.Dialect.BeginDurable(ctx)
	if err != nil {
		return nil, err
	}
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&v); err != nil {
		_ = p.Rollback(ctx, tx)
		return nil, err
	}
	p.mu.Lock()
	p.durable = append(p.durable, v)
	p.mu.Unlock()
	return tx, nil
}

func (p *syncProbe) Begin(ctx context.Context) (*sql.Tx, error) {
	p.mu.Lock()
	p.plain++
	p.mu.Unlock()
	return p.Dialect.Begin(ctx)
}

func (p *syncProbe) counts() ([]int, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int(nil), p.durable...), p.plain
}

// TestDeliverCommitsDurably: on SQLite, whose DSN syncs the log only at checkpoints, Deliver
// stores a batch in a transaction that commits with synchronous=FULL, stored for the workers
// and handled inline alike, since the ACK that follows lets the sender delete its copy; the
// workers' own transactions keep the DSN's NORMAL.
func TestDeliverCommitsDurably(t *testing.T) {
	f := openSQLite(t)
	probe := &syncProbe{Dialect: f.d.(*sqlite.Dialect)}
	f.d = probe
	cfg := inlineConfig(t)
	ib, mux := newInbox(t, f, cfg)
	mux.HandleFunc("ok", func(ctx context.Context, tx *sql.Tx, m *Message) error { return nil })

	// Not running: stored for the workers.
	deliver(t, ib, batch("orders", envelope(0, "ok"), envelope(1, "ok")))
	if durable, plain := probe.counts(); len(durable) != 1 || durable[0] != 2 || plain != 0 {
		t.Fatalf("stored delivery: synchronous %v in BeginDurable, %d Begin; want [2], 0", durable, plain)
	}
	// Running: handled inline, in the same kind of transaction.
	start(t, ib)
	waitFor(t, "Run to start inline handling", 30*time.Second, ib.inline.Load)
	res := deliver(t, ib, batch("orders", envelope(2, "ok")))
	if s := statuses(res, 1); s[0] != transport.Accepted {
		t.Fatalf("status %v", s)
	}
	if r := row(t, ib, "orders", envelope(2, "ok").ID); r.State != "handled" {
		t.Fatalf("inline delivery: state %s, want handled", r.State)
	}
	durable, _ := probe.counts()
	if len(durable) != 2 || durable[1] != 2 {
		t.Fatalf("inline delivery: synchronous %v in BeginDurable, want [2 2]", durable)
	}
	// The workers handle the first two in ordinary transactions, and the connection is back
	// at NORMAL.
	waitFor(t, "the workers to handle the stored messages", 60*time.Second, func() bool {
		return row(t, ib, "orders", envelope(0, "ok").ID).State == "handled" && row(t, ib, "orders", envelope(1, "ok").ID).State == "handled"
	})
	if got := f.db.int(t, "PRAGMA synchronous"); got != 1 {
		t.Fatalf("synchronous %d after the deliveries, want 1 (the DSN's NORMAL)", got)
	}
}
