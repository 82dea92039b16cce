// Package pauses follows durable_pauses for a relay or an inbox: it reads
// the table once per poll, keeps the names of one kind that are paused, and
// logs at Info when it sees a pause begin or end.
package pauses

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/durable-go/durable/dialects"
)

// Lister reads the pauses (dialects.NodeControl.ListPauses).
type Lister interface {
	ListPauses(ctx context.Context) ([]dialects.Pause, error)
}

// failureLogInterval rate-limits the warning about a failed read.
const failureLogInterval = 30 * time.Second

// Watcher holds what the last read found of one kind.
type Watcher struct {
	d    Lister
	kind string
	log  *slog.Logger
	what string // "destination" or "queue", in log messages
	pre  string // log message prefix

	paused atomic.Pointer[map[string]dialects.Pause]
	polls  atomic.Int64

	mu       sync.Mutex
	warnedAt time.Time
}

// New returns a Watcher of the pauses of kind (dialects.PauseDestination or
// dialects.PauseQueue); prefix starts its log messages.
func New(d Lister, kind string, log *slog.Logger, prefix string) *Watcher {
	w := &Watcher{d: d, kind: kind, log: log, what: kind, pre: prefix}
	empty := map[string]dialects.Pause{}
	w.paused.Store(&empty)
	return w
}

// Paused reports whether name was paused at the last read.
func (w *Watcher) Paused(name string) bool {
	_, ok := (*w.paused.Load())[name]
	return ok
}

// Polls returns how many reads completed, successful or not.
func (w *Watcher) Polls() int64 { return w.polls.Load() }

// Poll reads the pauses once and returns the names of kind that were
// resumed since the last read. On failure the last known pauses stay.
func (w *Watcher) Poll(ctx context.Context) (resumed []string) {
	defer w.polls.Add(1)
	all, err := w.d.ListPauses(ctx)
	if err != nil {
		w.mu.Lock()
		log := time.Since(w.warnedAt) >= failureLogInterval
		if log {
			w.warnedAt = time.Now()
		}
		w.mu.Unlock()
		if log && ctx.Err() == nil {
			w.log.Warn(w.pre+"reading the pauses failed; the last known pauses stay in force", "err", err)
		}
		return nil
	}
	now := make(map[string]dialects.Pause)
	for _, p := range all {
		if p.Kind == w.kind {
			now[p.Name] = p
		}
	}
	old := *w.paused.Swap(&now)
	var names []string
	for n := range now {
		if _, ok := old[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		p := now[n]
		w.log.Info(w.pre+w.what+" paused by an operator", w.what, n, "paused_by", p.PausedBy, "reason", p.Reason)
	}
	for n := range old {
		if _, ok := now[n]; !ok {
			resumed = append(resumed, n)
		}
	}
	slices.Sort(resumed)
	for _, n := range resumed {
		w.log.Info(w.pre+w.what+" resumed by an operator", w.what, n)
	}
	return resumed
}

// Run polls every interval until ctx is done, calling resumed with the
// names resumed at each poll.
func (w *Watcher) Run(ctx context.Context, interval, timeout time.Duration, resumed func(names []string)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		names := w.Poll(pctx)
		cancel()
		if len(names) > 0 {
			resumed(names)
		}
	}
}
