package dialects

import (
	"context"
	"time"
)

// Pause kinds: what Controller.Pause stops.
const (
	// PauseDestination pauses a relay's destination (outbox side): no relay
	// claims or sends its rows while the pause stands.
	PauseDestination = "destination"
	// PauseQueue pauses an inbox queue ("default" or a name of
	// inbox.Config.Queues): no worker claims its rows while the pause
	// stands; delivery still stores them.
	PauseQueue = "queue"
)

// Pause is a row of durable_pauses: a destination or an inbox queue that
// the relays or the inbox workers of every node leave alone until it is
// resumed.
type Pause struct {
	Kind     string    // PauseDestination or PauseQueue
	Name     string    // the destination or the queue
	PausedAt time.Time // set by the database on Pause
	PausedBy string    // who paused it (user name, "cli", ...)
	Reason   string    // why, free text; may be empty
}

// AuditEntry is a row of durable_audit: one operator action on durable's
// tables.
type AuditEntry struct {
	ID     int64     // assigned by the database, increasing
	At     time.Time // set by the database
	Actor  string    // who (user name, "cli", ...)
	Action string    // "replay", "purge", "pause", "resume"
	Target string    // what, human-readable: ids, or the filter
	Count  int       // how many rows the action changed
}

// AuditQuery selects audit entries for ListAudit, newest first.
type AuditQuery struct {
	BeforeID int64 // 0: newest first from the top; else entries with ID < BeforeID
	Limit    int   // 0: 100
}

// Throughput kinds: what durable_throughput counts.
const (
	// ThroughputEnqueued counts, per destination, the outbox rows a relay
	// claimed for their first send attempt: messages entering the relay's
	// pipeline (an approximation of enqueues that needs no work on the
	// enqueue path: a message counts when a relay first takes it up, not
	// when its transaction commits; one that expired before it is not
	// counted, and one a stopping relay hands back unsent counts again when
	// it is claimed anew).
	ThroughputEnqueued = "enqueued"
	// ThroughputSent counts, per destination, the messages a relay sent
	// and had acknowledged.
	ThroughputSent = "sent"
	// ThroughputHandled counts, per topic, the inbox messages handled.
	ThroughputHandled = "handled"
	// ThroughputDeadLettered counts, per topic, the inbox messages moved to
	// the dead letters.
	ThroughputDeadLettered = "dead_lettered"
)

// Throughput is one minute's count of one kind for one name.
type Throughput struct {
	Minute time.Time // start of the minute, UTC
	Kind   string    // one of the Throughput constants
	// Name is the destination (ThroughputEnqueued, ThroughputSent) or the
	// topic (ThroughputHandled, ThroughputDeadLettered).
	Name  string
	Count int64
}

// Controller is the dialect's part for operators: pauses that every node
// obeys, the audit of operator actions, and per-minute throughput
// counters. It is embedded in Dialect; the relay and the inbox read the
// pauses through it, and a console or the CLI drives it.
type Controller interface {
	// Pause records the pause (idempotent: false when it was already paused).
	Pause(ctx context.Context, p Pause) (bool, error)
	// Resume removes it (false when it was not paused).
	Resume(ctx context.Context, kind, name string) (bool, error)
	// ListPauses returns the current pauses, by kind then name.
	ListPauses(ctx context.Context) ([]Pause, error)
	// AppendAudit records e (ID and At assigned by the database).
	AppendAudit(ctx context.Context, e AuditEntry) error
	// ListAudit returns entries newest first (keyset by ID).
	ListAudit(ctx context.Context, q AuditQuery) ([]AuditEntry, error)
	// AddThroughput adds counts to the per-minute counters (upsert, additive).
	AddThroughput(ctx context.Context, counts []Throughput) error
	// ListThroughput returns the counters with Minute >= since, by minute
	// (then kind and name).
	ListThroughput(ctx context.Context, since time.Time) ([]Throughput, error)
}

// NodeControl is the part of the operators' tables that the relay and the
// inbox use themselves: they read the pauses once per poll, add their
// throughput counts, and their housekeeping deletes old counters. It is
// part of RelayStore, InboxDialect and Dialect.
type NodeControl interface {
	// ListPauses returns the current pauses; see Controller.
	ListPauses(ctx context.Context) ([]Pause, error)
	// AddThroughput adds counts to the per-minute counters; see Controller.
	AddThroughput(ctx context.Context, counts []Throughput) error
	// PurgeThroughput deletes at most limit counters (all when limit ≤ 0)
	// of minutes before before and returns how many it deleted.
	PurgeThroughput(ctx context.Context, before time.Time, limit int) (int, error)
}
