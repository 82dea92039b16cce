package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/internal/filter"
)

// The dead-letter statements, of both sides. Each gets "{where}" (empty, or
// WHERE and conditions on d) and "{limit}" (empty, or LIMIT ?n) from package
// filter.
const (
	deadLetterColumns = `d.seq, d.side, d.id, d.source, d.destination, d.topic, d.key, d.headers, d.payload,
	d.created_at, d.expires_at, d.reason, d.attempts, d.last_error, d.errors, d.first_failed_at, d.failed_at,
	d.replayed_at`

	sqlListDeadLetters = `SELECT ` + deadLetterColumns + ` FROM durable_dead_letters d
{where}
ORDER BY d.seq {order} {limit}`

	sqlCountDeadLetters = `SELECT count(*) FROM durable_dead_letters d
{where}`

	// The inbox side, ?1 now: only pending inbox dead letters (the filter says
	// so); the WHERE also tells SQLite's parser that ON CONFLICT is the
	// upsert clause.
	sqlReplayInsert = `INSERT INTO durable_inbox
	(source, id, topic, key, headers, payload, created_at, errors, replayed_at, run_at)
SELECT d.source, d.id, d.topic, d.key, d.headers, d.payload, d.created_at, d.errors, ?1, ?1
FROM durable_dead_letters d
{where}
ORDER BY d.seq {limit}
ON CONFLICT (source, id) DO NOTHING
RETURNING source, id`

	sqlReplayMark = `UPDATE durable_dead_letters SET replayed_at = ?1
WHERE side = 'inbox' AND destination = ''
	AND (source, id) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?2))`

	// The outbox side: ?1 now (deliver_at). A row of the same message for
	// the destination still in the outbox makes the replay skip it.
	sqlReplayOutboxInsert = `INSERT INTO durable_outbox
	(id, destination, topic, key, headers, payload, created_at, deliver_at)
SELECT d.id, d.destination, d.topic, d.key, d.headers, d.payload, d.created_at, ?1
FROM durable_dead_letters d
{where}
ORDER BY d.seq {limit}
ON CONFLICT (destination, id) DO NOTHING
RETURNING destination, id`

	sqlReplayOutboxMark = `UPDATE durable_dead_letters SET replayed_at = ?1
WHERE side = 'outbox' AND source = ''
	AND (destination, id) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?2))`

	// seq names rows only inside this one statement, where it cannot be
	// reused.
	sqlPurgeDeadLetters = `DELETE FROM durable_dead_letters WHERE seq IN (
	SELECT d.seq FROM durable_dead_letters d
	{where}
	ORDER BY d.seq {limit})`
)

// deadLetterStmt fills the {where} and {limit} of stmt from q, with
// parameters numbered after the first ones of stmt, and returns the
// statement with the filter's arguments.
func deadLetterStmt(stmt string, first int, q dialects.DeadLetterQuery) (string, []any) {
	f := syntax.New(first)
	f.DeadLetters(q)
	return f.Statement(stmt, q.Limit), f.Args()
}

// ListDeadLetters returns the dead letters of either side matching q in seq
// order (descending when q.Descending); see dialects.Dialect.
func (d *Dialect) ListDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) ([]dialects.DeadLetterRow, error) {
	stmt, args := deadLetterStmt(strings.Replace(sqlListDeadLetters, "{order}", filter.Order(q), 1), 0, q)
	return queryAll(ctx, d.db, "list dead letters", stmt, args, scanDeadLetter)
}

// CountDeadLetters counts the dead letters matching q, without its limit
// and cursors; see dialects.DeadLetterStore.
func (d *Dialect) CountDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) (int, error) {
	stmt, args := deadLetterStmt(sqlCountDeadLetters, 0, filter.CountQuery(q))
	var n int
	rows, err := queryAll(ctx, d.db, "count dead letters", stmt, args, func(rs *sql.Rows, v *int) error { return rs.Scan(v) })
	if len(rows) == 1 {
		n = rows[0]
	}
	return n, err
}

// ReplayDeadLetters puts the pending dead letters of one side back into the
// inbox or the outbox in one transaction of two statements; see
// dialects.Dialect.
func (d *Dialect) ReplayDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) (n int, err error) {
	q, err = filter.ReplayQuery(q)
	if err != nil {
		return 0, fmt.Errorf("durable/sqlite: %w", err)
	}
	insert, mark := sqlReplayInsert, sqlReplayMark
	if q.Side == dialects.SideOutbox {
		insert, mark = sqlReplayOutboxInsert, sqlReplayOutboxMark
	}
	stmt, args := deadLetterStmt(insert, 1, q)
	now, _, _ := inboxNow()
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("durable/sqlite: replay dead letters: begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	keys, err := queryAll(ctx, tx, "replay dead letters", stmt, append([]any{now}, args...),
		func(rs *sql.Rows, k *[2]string) error { return rs.Scan(&k[0], &k[1]) })
	if err != nil {
		return 0, err
	}
	if len(keys) > 0 {
		if _, err := tx.ExecContext(ctx, mark, now, jsonParam(keys)); err != nil {
			return 0, fmt.Errorf("durable/sqlite: replay dead letters: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("durable/sqlite: replay dead letters: commit: %w", err)
	}
	return len(keys), nil
}

// PurgeDeadLetters deletes the dead letters matching q in one statement;
// see dialects.Dialect.
func (d *Dialect) PurgeDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) (int, error) {
	stmt, args := deadLetterStmt(sqlPurgeDeadLetters, 0, q)
	return exec(ctx, d.db, "purge dead letters", stmt, args...)
}

// scanDeadLetter reads a row of deadLetterColumns.
func scanDeadLetter(rs *sql.Rows, r *dialects.DeadLetterRow) error {
	var (
		headers, errs, created, first, failed string
		expires, replayed                     sql.NullString
	)
	if err := rs.Scan(&r.Seq, &r.Side, &r.ID, &r.Source, &r.Destination, &r.Topic, &r.Key, &headers, &r.Payload,
		&created, &expires, &r.Reason, &r.Attempts, &r.LastError, &errs, &first, &failed, &replayed); err != nil {
		return err
	}
	if err := decodeJSON(r.ID, headers, &r.Headers, errs, &r.Errors); err != nil {
		return err
	}
	if err := parseTimes(storedTime{&r.CreatedAt, notNull(created)}, storedTime{&r.ExpiresAt, expires},
		storedTime{&r.FirstFailedAt, notNull(first)}, storedTime{&r.FailedAt, notNull(failed)},
		storedTime{&r.ReplayedAt, replayed}); err != nil {
		return fmt.Errorf("%q: %w", r.ID, err)
	}
	return nil
}

// decodeJSON decodes the headers (nil: none) and the error history (errors
// column; "" is not decoded) of the message id.
func decodeJSON(id, headers string, h *map[string]string, errs string, e *[]dialects.AttemptError) error {
	if err := json.Unmarshal([]byte(headers), h); err != nil {
		return fmt.Errorf("headers of %q: %w", id, err)
	}
	if *h == nil {
		*h = map[string]string{}
	}
	if errs == "" {
		return nil
	}
	if err := json.Unmarshal([]byte(errs), e); err != nil {
		return fmt.Errorf("errors of %q: %w", id, err)
	}
	return nil
}

// failedAfterReplay is the failed_at of a dead letter that failed again (the
// upsert's excluded row against the stored one, alias dl or d):
// excluded.failed_at, or, when that is not later than the replay (both in
// one millisecond, the precision of the stored times), one millisecond past
// replayed_at, so that the dead letter reads as pending again
// (replayed_at < failed_at).
const (
	failedAfterReplayDL = `CASE WHEN dl.replayed_at IS NOT NULL AND excluded.failed_at <= dl.replayed_at
		THEN strftime('%Y-%m-%d %H:%M:%f', dl.replayed_at, '+0.001 seconds') ELSE excluded.failed_at END`
	failedAfterReplayD = `CASE WHEN d.replayed_at IS NOT NULL AND excluded.failed_at <= d.replayed_at
		THEN strftime('%Y-%m-%d %H:%M:%f', d.replayed_at, '+0.001 seconds') ELSE excluded.failed_at END`
)
