// Package throughput counts, in memory, what a relay or an inbox did per
// minute, and flushes the counts to durable_throughput
// (dialects.NodeControl.AddThroughput) now and then, so that a console can
// chart them without a query per message.
package throughput

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/durable-go/durable/dialects"
)

// DefaultFlush is how often a Counter's counts are written, unless
// configured otherwise.
const DefaultFlush = 10 * time.Second

// Retention is how long the counters are kept: the housekeeping deletes
// older minutes.
const Retention = 24 * time.Hour

// maxPending bounds the counters kept in memory while the database does
// not take them; beyond it, the newest counts are dropped (they are
// statistics, not data).
const maxPending = 100_000

type key struct {
	minute     time.Time
	kind, name string
}

// Counter collects counts. The zero Counter is not usable; call New.
type Counter struct {
	adder interface {
		AddThroughput(ctx context.Context, counts []dialects.Throughput) error
	}
	log *slog.Logger
	now func() time.Time

	mu     sync.Mutex
	counts map[key]int64
	warned time.Time // last failure logged
}

// New returns a Counter that writes through d and logs failures to log.
func New(d interface {
	AddThroughput(ctx context.Context, counts []dialects.Throughput) error
}, log *slog.Logger) *Counter {
	return &Counter{adder: d, log: log, now: time.Now, counts: make(map[key]int64)}
}

// Add counts n of kind for name in the current minute. A nil Counter or
// n ≤ 0 counts nothing.
func (c *Counter) Add(kind, name string, n int) {
	if c == nil || n <= 0 || name == "" {
		return
	}
	k := key{c.now().UTC().Truncate(time.Minute), kind, name}
	c.mu.Lock()
	if _, ok := c.counts[k]; ok || len(c.counts) < maxPending {
		c.counts[k] += int64(n)
	}
	c.mu.Unlock()
}

// Flush writes the counts collected since the last flush in one call. On
// failure it keeps them for the next flush and logs a warning at most once
// a minute (a failure the database had committed after all, such as a
// timeout at the commit, counts them twice: they are statistics).
func (c *Counter) Flush(ctx context.Context) {
	if c == nil {
		return
	}
	c.mu.Lock()
	counts := c.counts
	c.counts = make(map[key]int64, len(counts))
	c.mu.Unlock()
	if len(counts) == 0 {
		return
	}
	out := make([]dialects.Throughput, 0, len(counts))
	for k, n := range counts {
		out = append(out, dialects.Throughput{Minute: k.minute, Kind: k.kind, Name: k.name, Count: n})
	}
	err := c.adder.AddThroughput(ctx, out)
	if err == nil {
		return
	}
	c.mu.Lock()
	for k, n := range counts {
		if _, ok := c.counts[k]; ok || len(c.counts) < maxPending {
			c.counts[k] += n
		}
	}
	log := time.Since(c.warned) >= time.Minute
	if log {
		c.warned = time.Now()
	}
	c.mu.Unlock()
	if log && ctx.Err() == nil {
		c.log.Warn("durable: writing the throughput counters failed; they are kept for the next try", "err", err)
	}
}

// Run flushes every interval until ctx is done. The caller flushes once
// more when the counting has stopped.
//
// Each flush runs to its end, bounded by timeout, even when ctx ends
// meanwhile: a write cancelled after the database committed it would be
// reported failed, kept, and written again.
func (c *Counter) Run(ctx context.Context, interval, timeout time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
			c.Flush(fctx)
			cancel()
		}
	}
}
