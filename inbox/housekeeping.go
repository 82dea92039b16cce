package inbox

import (
	"context"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/housekeep"
	"github.com/durable-go/durable/internal/throughput"
)

// Housekeeping. Every CleanupInterval, Run deletes handled messages past
// the retention (Config.Retention, the dedupe window) and, with
// Config.DeadLetterRetention, the inbox's dead letters that failed longer
// ago, and the throughput counters (durable_throughput) older than a day, DefaultCleanupBatch rows per statement with a short pause between
// statements. Among all the inboxes on one database, one at a time does
// it: the one that holds the lease "durable.inbox.retention" in
// durable_leases (judged by the database's clock on Postgres). It renews the
// lease at every run and during long purges, and releases it when Run
// returns; if it dies, another inbox takes over once the lease expired
// (three cleanup intervals, at least 30 s). The inbox that holds the lease
// applies its own retention settings: configure them alike.
//
// Each statement deletes rows by the handled_at index and skips rows
// another transaction has locked, and only handled rows past the retention
// qualify, so live messages (ready, running, or handled within the window)
// are never touched and never wait for the purge.

// retentionLease names the lease of the inbox's housekeeping.
const retentionLease = "durable.inbox.retention"

// newHousekeeper returns the runner of the inbox's retention jobs.
func (ib *Inbox[TTx]) newHousekeeper() *housekeep.Runner {
	jobs := []housekeep.Job{{
		Table: "inbox",
		Purge: func(ctx context.Context, limit int) (int, error) {
			return ib.store.PurgeInbox(ctx, ib.cfg.Retention, limit)
		},
	}}
	jobs = append(jobs, housekeep.Job{
		Table: "throughput",
		Purge: func(ctx context.Context, limit int) (int, error) {
			return ib.d.PurgeThroughput(ctx, time.Now().Add(-throughput.Retention), limit)
		},
	})
	if age := ib.cfg.DeadLetterRetention; age > 0 {
		jobs = append(jobs, housekeep.Job{
			Table: "dead_letters",
			Purge: func(ctx context.Context, limit int) (int, error) {
				return ib.d.PurgeDeadLetters(ctx, dialects.DeadLetterQuery{
					Side: dialects.SideInbox, Before: time.Now().Add(-age), IncludeReplayed: true, Limit: limit,
				})
			},
		})
	}
	return housekeep.New(housekeep.Config{
		Lease:    retentionLease,
		Holder:   ib.name,
		Leaser:   ib.d,
		Interval: ib.cfg.CleanupInterval,
		Batch:    DefaultCleanupBatch,
		Jobs:     jobs,
		Log:      ib.log,
		Deleted:  ib.mx.deleted,
	})
}

// retention runs the housekeeping once, if this inbox holds the lease, and
// logs a failure.
func (ib *Inbox[TTx]) retention(ctx context.Context) {
	if _, err := ib.hk.Once(ctx); err != nil && ctx.Err() == nil {
		ib.log.Warn("durable/inbox: deleting messages past their retention failed", "err", err)
	}
}
