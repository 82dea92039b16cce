package postgres

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/internal/filter"
)

// The dead-letter statements, of both sides. Each gets "{where}" (empty, or
// WHERE and conditions on d) and "{limit}" (empty, or LIMIT $n) from package
// filter.
const (
	deadLetterColumns = `d.seq, d.side, d.id, d.source, d.destination, d.topic, d.key, d.headers, d.payload,
	d.created_at, d.expires_at, d.reason, d.attempts, d.last_error, d.errors, d.first_failed_at, d.failed_at,
	d.replayed_at`

	sqlListDeadLetters = `SELECT ` + deadLetterColumns + ` FROM {schema}durable_dead_letters d
{where}
ORDER BY d.seq {order} {limit}`

	sqlCountDeadLetters = `SELECT count(*) FROM {schema}durable_dead_letters d
{where}`

	// The inbox side: only pending inbox dead letters (the filter says so).
	// FOR UPDATE serializes concurrent replays of the same dead letter: the
	// second waits, re-checks that it is still pending, and skips it.
	sqlReplayDeadLetters = `WITH c AS (
	SELECT d.seq FROM {schema}durable_dead_letters d
	{where}
	ORDER BY d.seq {limit}
	FOR UPDATE
), ins AS (
	INSERT INTO {schema}durable_inbox (source, id, topic, key, headers, payload, created_at, errors, replayed_at)
	SELECT d.source, d.id, d.topic, d.key, d.headers, d.payload, d.created_at, d.errors, now()
	FROM {schema}durable_dead_letters d JOIN c ON c.seq = d.seq
	ORDER BY d.seq
	ON CONFLICT (source, id) DO NOTHING
	RETURNING source, id
), upd AS (
	UPDATE {schema}durable_dead_letters d SET replayed_at = now()
	FROM ins
	WHERE d.side = 'inbox' AND d.destination = '' AND d.source = ins.source AND d.id = ins.id
	RETURNING 1
)
SELECT count(*) FROM upd`

	// The outbox side: back into the outbox, due now, for the relay, and a
	// NOTIFY per destination (sent at commit) that wakes the relays
	// listening on OutboxChannel, wherever they run.
	sqlReplayOutboxDeadLetters = `WITH c AS (
	SELECT d.seq FROM {schema}durable_dead_letters d
	{where}
	ORDER BY d.seq {limit}
	FOR UPDATE
), ins AS (
	INSERT INTO {schema}durable_outbox (id, destination, topic, key, headers, payload, created_at)
	SELECT d.id, d.destination, d.topic, d.key, d.headers, d.payload, d.created_at
	FROM {schema}durable_dead_letters d JOIN c ON c.seq = d.seq
	ORDER BY d.seq
	ON CONFLICT (destination, id) DO NOTHING
	RETURNING destination, id
), upd AS (
	UPDATE {schema}durable_dead_letters d SET replayed_at = now()
	FROM ins
	WHERE d.side = 'outbox' AND d.source = '' AND d.destination = ins.destination AND d.id = ins.id
	RETURNING 1
), woken AS (
	SELECT pg_notify('` + OutboxChannel + `', x.destination) FROM (SELECT DISTINCT destination FROM ins) x
)
SELECT (SELECT count(*) FROM upd) + 0 * (SELECT count(*) FROM woken)`

	sqlPurgeDeadLetters = `WITH c AS (
	SELECT d.seq FROM {schema}durable_dead_letters d
	{where}
	ORDER BY d.seq {limit}
), del AS (
	DELETE FROM {schema}durable_dead_letters d USING c WHERE d.seq = c.seq
	RETURNING 1
)
SELECT count(*) FROM del`
)

// deadLetterStmt fills the {where} and {limit} of stmt from q and returns
// the statement with its arguments.
func deadLetterStmt(stmt string, q dialects.DeadLetterQuery) (string, []any) {
	f := syntax.New(0)
	f.DeadLetters(q)
	return f.Statement(stmt, q.Limit), f.Args()
}

// ListDeadLetters returns the dead letters of either side matching q in seq
// order (descending when q.Descending); see dialects.Dialect.
func (c *core) ListDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) ([]dialects.DeadLetterRow, error) {
	stmt, args := deadLetterStmt(strings.Replace(c.q.listDeadLetters, "{order}", filter.Order(q), 1), q)
	return queryAll(ctx, c, c.root, "list dead letters", stmt, args, scanDeadLetter)
}

// CountDeadLetters counts the dead letters matching q, without its limit
// and cursors; see dialects.DeadLetterStore.
func (c *core) CountDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) (int, error) {
	stmt, args := deadLetterStmt(c.q.countDeadLetters, filter.CountQuery(q))
	return c.count(ctx, c.root, "count dead letters", stmt, args...)
}

// ReplayDeadLetters puts the pending dead letters of one side back into the
// inbox or the outbox in one statement; see dialects.Dialect.
func (c *core) ReplayDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) (int, error) {
	q, err := filter.ReplayQuery(q)
	if err != nil {
		return 0, fmt.Errorf("durable: postgres: %w", err)
	}
	stmt := c.q.replayDeadLetters
	if q.Side == dialects.SideOutbox {
		stmt = c.q.replayOutboxDeadLetters
	}
	stmt, args := deadLetterStmt(stmt, q)
	return c.count(ctx, c.root, "replay dead letters", stmt, args...)
}

// PurgeDeadLetters deletes the dead letters matching q in one statement; see
// dialects.Dialect.
func (c *core) PurgeDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) (int, error) {
	stmt, args := deadLetterStmt(c.q.purgeDeadLetters, q)
	return c.count(ctx, c.root, "purge dead letters", stmt, args...)
}

// scanDeadLetter reads a row of deadLetterColumns; times are in UTC.
func scanDeadLetter(rs rows, r *dialects.DeadLetterRow) error {
	var (
		headers, errs          []byte
		expires, replayedAt    sql.NullTime
		created, first, failed time.Time
	)
	if err := rs.Scan(&r.Seq, &r.Side, &r.ID, &r.Source, &r.Destination, &r.Topic, &r.Key, &headers, &r.Payload,
		&created, &expires, &r.Reason, &r.Attempts, &r.LastError, &errs, &first, &failed, &replayedAt); err != nil {
		return err
	}
	if err := decodeJSON(r.ID, headers, &r.Headers, errs, &r.Errors); err != nil {
		return err
	}
	r.CreatedAt, r.FirstFailedAt, r.FailedAt = created.UTC(), first.UTC(), failed.UTC()
	r.ExpiresAt, r.ReplayedAt = utc(expires), utc(replayedAt)
	return nil
}

// decodeJSON decodes the headers and the error history (errors column) of
// the message id; a nil errs is not decoded.
func decodeJSON(id string, headers []byte, h *map[string]string, errs []byte, e *[]dialects.AttemptError) error {
	if err := json.Unmarshal(headers, h); err != nil {
		return fmt.Errorf("headers of %q: %w", id, err)
	}
	if errs == nil {
		return nil
	}
	if err := json.Unmarshal(errs, e); err != nil {
		return fmt.Errorf("errors of %q: %w", id, err)
	}
	return nil
}
