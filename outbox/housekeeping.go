package outbox

import (
	"context"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/housekeep"
	"github.com/durable-go/durable/internal/throughput"
)

// Housekeeping. Every housekeepingInterval (a minute) the relay deletes
// the throughput counters (durable_throughput) older than a day, with
// RelayConfig.Retention the acknowledged rows kept longer than the
// retention and, with RelayConfig.DeadLetterRetention, the outbox's dead
// letters that failed longer ago: purgeBatch rows per statement, oldest
// first, by index, with a short pause between statements. Among all the
// relays on one database, one at a time does it: the one that holds the
// lease "durable.outbox.retention" in durable_leases (judged by the
// database's clock on Postgres). It renews the lease at every run and during
// long purges and releases it when Run returns; if it dies, another relay
// takes over once the lease expired (three minutes). The relay that holds
// the lease applies its own settings: configure them alike.
//
// Of the outbox, only rows with sent_at set qualify, which no claim,
// acknowledgement or release touches, so the purge never touches unsent rows nor waits for
// the relay's work.

const (
	// retentionLease names the lease of the relay's housekeeping.
	retentionLease = "durable.outbox.retention"
	// purgeBatch is the number of rows deleted per statement.
	purgeBatch = 1000
)

// housekeepStore is the part of a dialect the housekeeping needs beyond the
// Relayer: the lease and the dead-letter expiry.
type housekeepStore interface {
	dialects.Leaser
	PurgeThroughput(ctx context.Context, before time.Time, limit int) (int, error)
	PurgeDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) (int, error)
}

// newHousekeeper returns the runner of the relay's retention jobs: the
// throughput counters older than a day, and what Retention and
// DeadLetterRetention ask for.
func newHousekeeper(d housekeepStore, c *relayCore) *housekeep.Runner {
	var jobs []housekeep.Job
	if age := c.cfg.Retention; age > 0 {
		jobs = append(jobs, housekeep.Job{
			Table: "outbox",
			Purge: func(ctx context.Context, limit int) (int, error) {
				return c.store.PurgeOutbox(ctx, age, limit)
			},
		})
	}
	if age := c.cfg.DeadLetterRetention; age > 0 {
		jobs = append(jobs, housekeep.Job{
			Table: "dead_letters",
			Purge: func(ctx context.Context, limit int) (int, error) {
				return d.PurgeDeadLetters(ctx, dialects.DeadLetterQuery{
					Side: dialects.SideOutbox, Before: time.Now().Add(-age), IncludeReplayed: true, Limit: limit,
				})
			},
		})
	}
	jobs = append(jobs, housekeep.Job{
		Table: "throughput",
		Purge: func(ctx context.Context, limit int) (int, error) {
			return d.PurgeThroughput(ctx, time.Now().Add(-throughput.Retention), limit)
		},
	})
	return housekeep.New(housekeep.Config{
		Lease:    retentionLease,
		Holder:   c.cfg.ID,
		Leaser:   d,
		Interval: housekeepingInterval,
		Batch:    purgeBatch,
		Jobs:     jobs,
		Log:      c.log,
		Deleted:  c.mx.deleted,
	})
}

// retention runs the housekeeping once, if this relay holds the lease, and
// logs a failure.
func (c *relayCore) retention(ctx context.Context) {
	if c.hk == nil {
		return
	}
	if _, err := c.hk.Once(ctx); err != nil && ctx.Err() == nil {
		c.log.Warn("durable/outbox: relay: deleting rows past their retention failed", "err", err)
	}
}

// releaseRetention gives up the housekeeping lease, if held.
func (c *relayCore) releaseRetention(ctx context.Context) {
	if c.hk != nil {
		c.hk.Release(ctx)
	}
}
