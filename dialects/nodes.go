package dialects

import (
	"context"
	"time"
)

// Incarnation is one run of a process (a durable.Node) on a database: a row
// of durable_nodes, which the process inserts when it starts, heartbeats
// while it runs and deletes when it stops. Its ID is part of every lease
// token the process takes (the relay's durable_outbox.locked_by and the
// inbox workers' durable_inbox.lease_token), so that once the process is
// known to be gone, a single statement can release everything it held.
type Incarnation struct {
	// ID is unique to the run: random, without '/' or '%'.
	ID string
	// Name is the node's name (durable.Config.Name). Several incarnations
	// may share it: replicas of one service, or a process and the run
	// before it that was killed.
	Name string
	// Host and PID identify the process, so that a run on the same host
	// can tell whether an earlier run is still alive.
	Host string
	PID  int
	// StartedAt is when the row was inserted, by the database's clock.
	StartedAt time.Time
	// Silence is how long ago the last heartbeat was, by the database's
	// clock, when the row was read. Set by ListIncarnations and
	// RegisterIncarnation; ignored on input.
	Silence time.Duration
}

// Registry keeps the running incarnations in durable_nodes and releases
// the claims of those that are gone. It is part of NodeDialect, the role
// durable.NewNode takes, and of Dialect.
type Registry interface {
	// RegisterIncarnation inserts inc (its ID must be new; StartedAt and
	// Silence are ignored) and returns the other incarnations of the
	// database, of every name, with their silence.
	RegisterIncarnation(ctx context.Context, inc Incarnation) ([]Incarnation, error)

	// Heartbeat records that the incarnation id is alive. It reports false
	// when the row is gone: another process found the incarnation silent
	// and released its claims, and the caller must register again.
	Heartbeat(ctx context.Context, id string) (bool, error)

	// ListIncarnations returns every incarnation with its silence, in the
	// order they registered (by started_at on Postgres, whose clock has
	// microseconds; by insertion on SQLite, whose stored times have
	// milliseconds).
	ListIncarnations(ctx context.Context) ([]Incarnation, error)

	// ReleaseIncarnation releases what the incarnation id holds, in one
	// transaction: its outbox claims become claimable at once (locked_by
	// and locked_until cleared) and the inbox rows its workers had leased
	// become ready, with reason recorded as their last error and in their
	// error history, as the rescue of an expired lease does (reason should
	// end with ReleasedError, so that the workers run those messages one
	// at a time, as they run rescued ones); then the row of id is deleted.
	// Since the lease tokens are cleared, a process of that incarnation
	// that still runs can no longer settle those rows. Releasing an
	// incarnation that is not registered still releases its claims.
	ReleaseIncarnation(ctx context.Context, id, reason string) (Released, error)
}

// ReleasedError ends the last_error of an inbox row that
// ReleaseIncarnation made ready: like RescuedError, it marks a row whose
// last attempt was lost with the process that ran it.
const ReleasedError = " it stopped before it finished"

// Released counts what ReleaseIncarnation released.
type Released struct {
	Outbox int // outbox rows whose claim was cleared
	Inbox  int // inbox rows made ready
}
