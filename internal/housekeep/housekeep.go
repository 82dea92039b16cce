// Package housekeep runs the retention work of the inbox and the relay —
// deleting rows past their retention, in small batches — in one process at a
// time, under a lease row in durable_leases (dialects.Leaser).
//
// Each run takes (or renews) the lease; a process that finds it held by
// another skips the run. The holder renews it at every run and, during a
// long purge, whenever a third of its time to live has passed, and gives it
// up when it stops, so another process takes over at its next run; a holder
// that dies without releasing it is replaced once the lease expired.
package housekeep

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/durable-go/durable/dialects"
)

// Defaults.
const (
	// DefaultBatch is how many rows one purge statement deletes.
	DefaultBatch = 1000
	// DefaultPause is the pause between two batches of a purge: it lets the
	// live traffic have the database (on SQLite, its only writer) between
	// batches, at 5 s per million rows.
	DefaultPause = 5 * time.Millisecond
	// minTTL is the shortest lease time to live.
	minTTL = 30 * time.Second
	// opTimeout bounds one lease statement or purge batch.
	opTimeout = 30 * time.Second
)

// Job is one purge: a statement, repeated while it deletes a full batch.
type Job struct {
	// Table names the job in logs and metrics: "inbox", "outbox",
	// "dead_letters".
	Table string
	// Purge deletes up to limit rows and returns how many it deleted.
	Purge func(ctx context.Context, limit int) (int, error)
}

// Config configures a Runner.
type Config struct {
	// Lease is the name of the lease row. Required.
	Lease string
	// Holder names this process in the lease; a random suffix is added, so
	// that two processes configured alike still differ.
	Holder string
	// Leaser holds the lease (every dialect is one). Required.
	Leaser dialects.Leaser
	// Interval is the time between runs; the lease lives three intervals
	// (at least 30 s), so the holder keeps it from run to run. Required.
	Interval time.Duration
	// Batch bounds each purge statement. Zero: DefaultBatch.
	Batch int
	// Pause separates two batches. Zero: DefaultPause; negative: none.
	Pause time.Duration
	// Jobs run in order at every run.
	Jobs []Job
	// Log receives failures at Warn and what was deleted at Debug.
	Log *slog.Logger
	// Deleted, when set, is told how many rows each batch deleted.
	Deleted func(table string, n int)
}

// Runner runs the jobs of one Config. Its methods must not be called
// concurrently.
type Runner struct {
	cfg     Config
	holder  string
	ttl     time.Duration
	held    bool      // the lease was ours at the last look
	renewed time.Time // when it was last taken or renewed
}

// New returns a Runner for cfg.
func New(cfg Config) *Runner {
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	switch {
	case cfg.Pause == 0:
		cfg.Pause = DefaultPause
	case cfg.Pause < 0:
		cfg.Pause = 0
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Runner{cfg: cfg, holder: cfg.Holder + "/" + rand.Text()[:8], ttl: max(3*cfg.Interval, minTTL)}
}

// Holder returns the name this runner holds the lease under.
func (r *Runner) Holder() string { return r.holder }

// Result is what one run did.
type Result struct {
	// Skipped reports that another process holds the lease.
	Skipped bool
	// Deleted counts the rows deleted per job table.
	Deleted map[string]int
	// Batches counts the purge statements run, and MaxBatch is the most
	// rows one of them deleted.
	Batches, MaxBatch int
}

// errLost stops a run whose lease another holder took.
var errLost = errors.New("durable: housekeeping lease lost to another process")

// Once runs every job once, under the lease. It returns the first error of a
// lease statement or a purge; a job that fails does not stop the others.
func (r *Runner) Once(ctx context.Context) (Result, error) {
	res := Result{Deleted: map[string]int{}}
	ok, err := r.acquire(ctx)
	if err != nil || !ok {
		res.Skipped = err == nil
		return res, err
	}
	var errs []error
	for _, job := range r.cfg.Jobs {
		err := r.purge(ctx, job, &res)
		if errors.Is(err, errLost) {
			r.cfg.Log.Warn("durable: housekeeping: another process took the lease during a purge; leaving the rest to it",
				"lease", r.cfg.Lease, "table", job.Table)
			return res, nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("purge %s: %w", job.Table, err))
		}
	}
	return res, errors.Join(errs...)
}

// purge runs job's statement while it deletes full batches.
func (r *Runner) purge(ctx context.Context, job Job, res *Result) error {
	total := 0
	defer func() {
		if total > 0 {
			r.cfg.Log.Debug("durable: housekeeping: deleted rows past their retention", "table", job.Table, "rows", total)
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Since(r.renewed) > r.ttl/3 {
			ok, err := r.acquire(ctx)
			if err != nil {
				return err
			}
			if !ok {
				return errLost
			}
		}
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		n, err := job.Purge(octx, r.cfg.Batch)
		cancel()
		if n > 0 {
			total += n
			res.Deleted[job.Table] += n
			if r.cfg.Deleted != nil {
				r.cfg.Deleted(job.Table, n)
			}
		}
		res.Batches++
		res.MaxBatch = max(res.MaxBatch, n)
		if err != nil {
			return err
		}
		if n < r.cfg.Batch {
			return nil
		}
		if r.cfg.Pause > 0 {
			t := time.NewTimer(r.cfg.Pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
	}
}

// acquire takes or renews the lease.
func (r *Runner) acquire(ctx context.Context) (bool, error) {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	ok, err := r.cfg.Leaser.AcquireLease(octx, r.cfg.Lease, r.holder, r.ttl)
	if err != nil {
		return false, fmt.Errorf("acquire lease %s: %w", r.cfg.Lease, err)
	}
	if ok != r.held {
		if ok {
			r.cfg.Log.Debug("durable: housekeeping: took the lease", "lease", r.cfg.Lease, "holder", r.holder)
		} else {
			r.cfg.Log.Debug("durable: housekeeping: lease held by another process", "lease", r.cfg.Lease)
		}
	}
	r.held = ok
	if ok {
		r.renewed = time.Now()
	}
	return ok, nil
}

// Release gives the lease up if this runner holds it, so that another
// process can take it at once. It runs even when ctx is done.
func (r *Runner) Release(ctx context.Context) {
	if !r.held {
		return
	}
	r.held = false
	octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := r.cfg.Leaser.ReleaseLease(octx, r.cfg.Lease, r.holder); err != nil {
		r.cfg.Log.Warn("durable: housekeeping: releasing the lease failed; another process takes it when it expires",
			"lease", r.cfg.Lease, "err", err, "expires_in", r.ttl)
	}
}
