package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/durable-go/durable/dialects"
)

var _ dialects.Relayer = (*Dialect)(nil)

// The relay's statements. Seqs travel as one JSON array parameter.
//
// Times: SQLite is embedded, and its clock ('now') is the system clock this
// process reads too, so the dialect takes the time once per statement in Go
// and passes it as a parameter, in the stored format. That also spares
// SQLite from formatting the time again for every row a claim scans, which
// made claims several times slower.
const (
	// One UPDATE … RETURNING: SQLite has one writer, so no other claim runs
	// between the choice of the rows and their lease. The IN subquery is
	// not correlated, so it is evaluated once, before any row changes.
	sqlClaim = `UPDATE durable_outbox SET
	locked_by = ?1,
	locked_until = ?2,
	attempts = attempts + CASE WHEN expires_at <= ?5 THEN 0 ELSE 1 END
WHERE seq IN (
	SELECT o.seq FROM durable_outbox o
	WHERE o.destination = ?3 AND o.sent_at IS NULL AND o.deliver_at <= ?5
		AND (o.locked_until IS NULL OR o.locked_until <= ?5)
		AND (o.key = '' OR NOT EXISTS (
			SELECT 1 FROM durable_outbox e
			WHERE e.destination = o.destination AND e.key = o.key AND e.key <> ''
				AND e.sent_at IS NULL AND e.seq < o.seq))
	ORDER BY o.seq
	LIMIT ?4)
RETURNING ` + listColumns + `, coalesce(expires_at <= ?5, 0)`

	sqlAckDelete = `DELETE FROM durable_outbox
WHERE seq IN (SELECT value FROM json_each(?1)) AND locked_by = ?2 AND sent_at IS NULL`

	sqlAckRetain = `UPDATE durable_outbox SET sent_at = ?3, locked_until = NULL
WHERE seq IN (SELECT value FROM json_each(?1)) AND locked_by = ?2 AND sent_at IS NULL`

	sqlRelease = `UPDATE durable_outbox SET
	locked_by = NULL,
	locked_until = ?3,
	last_error = coalesce(nullif(?4, ''), last_error),
	attempts = max(attempts - ?5, 0)
WHERE seq IN (SELECT value FROM json_each(?1)) AND locked_by = ?2 AND sent_at IS NULL`

	// ?1 is a JSON array of [seq, reason, error]. The error history holds
	// the last retry error (if another) and the final one; a dead letter of
	// the same message is updated in place, its history appended to.
	sqlDeadLetterInsert = `INSERT INTO durable_dead_letters AS d
	(side, id, destination, topic, key, headers, payload, created_at, expires_at, reason, attempts, last_error, errors)
SELECT 'outbox', o.id, o.destination, o.topic, o.key, o.headers, o.payload, o.created_at, o.expires_at,
	l.reason, o.attempts, l.error,
	CASE WHEN coalesce(o.last_error, '') NOT IN ('', l.error)
		THEN json_array(json_object('attempt', max(o.attempts - 1, 0), 'error', o.last_error),
			json_object('at', ?3, 'attempt', o.attempts, 'error', l.error))
		ELSE json_array(json_object('at', ?3, 'attempt', o.attempts, 'error', l.error))
	END
FROM durable_outbox o
JOIN (SELECT json_extract(value, '$[0]') AS seq, json_extract(value, '$[1]') AS reason,
		json_extract(value, '$[2]') AS error FROM json_each(?1)) l ON o.seq = l.seq
WHERE o.locked_by = ?2 AND o.sent_at IS NULL
ON CONFLICT (side, source, destination, id) DO UPDATE SET
	topic = excluded.topic, key = excluded.key, headers = excluded.headers, payload = excluded.payload,
	created_at = excluded.created_at, expires_at = excluded.expires_at, reason = excluded.reason,
	attempts = d.attempts + excluded.attempts, last_error = excluded.last_error,
	errors = json_insert(
		CASE WHEN json_array_length(excluded.errors) > 1
			THEN json_insert(d.errors, '$[#]', json(json_extract(excluded.errors, '$[0]')))
			ELSE d.errors END,
		'$[#]', json(json_extract(excluded.errors, '$[#-1]'))),
	failed_at = excluded.failed_at`

	sqlDeadLetterDelete = `DELETE FROM durable_outbox
WHERE seq IN (SELECT json_extract(value, '$[0]') FROM json_each(?1)) AND locked_by = ?2 AND sent_at IS NULL`

	sqlStats = `SELECT destination, count(*),
	count(*) FILTER (WHERE locked_by IS NOT NULL AND locked_until > ?1),
	count(*) FILTER (WHERE locked_by IS NULL AND locked_until > ?1),
	count(*) FILTER (WHERE deliver_at > ?1),
	max((julianday(?1) - julianday(min(created_at))) * 86400.0, 0)
FROM durable_outbox
WHERE sent_at IS NULL
GROUP BY destination
ORDER BY destination`

	// The distinct destinations, one index probe each.
	sqlDestinations = `WITH RECURSIVE d(destination) AS (
	SELECT (SELECT min(destination) FROM durable_outbox WHERE sent_at IS NULL)
	UNION ALL
	SELECT (SELECT min(o.destination) FROM durable_outbox o WHERE o.sent_at IS NULL AND o.destination > d.destination)
	FROM d WHERE d.destination IS NOT NULL
)
SELECT destination FROM d WHERE destination IS NOT NULL`

	sqlPurge = `DELETE FROM durable_outbox WHERE seq IN (
	SELECT seq FROM durable_outbox
	WHERE sent_at IS NOT NULL AND sent_at < ?1
	ORDER BY sent_at
	LIMIT ?2)`

	deadLetterColumns = "seq, side, id, source, destination, topic, key, headers, payload, created_at, expires_at, reason, attempts, last_error, errors, first_failed_at, failed_at, replayed_at"
)

// seqsJSON renders seqs as a JSON array.
func seqsJSON(seqs []int64) string {
	b, _ := json.Marshal(seqs) // cannot fail
	return string(b)
}

// ClaimOutbox leases due rows of one destination to c.Token with a single
// UPDATE … RETURNING; see dialects.Relayer.
func (d *Dialect) ClaimOutbox(ctx context.Context, c dialects.OutboxClaim) ([]dialects.ClaimedRow, error) {
	switch {
	case c.Token == "":
		return nil, errors.New("durable/sqlite: claim outbox: empty token")
	case c.Limit <= 0:
		return nil, fmt.Errorf("durable/sqlite: claim outbox: limit %d, want > 0", c.Limit)
	case c.Lease <= 0:
		return nil, fmt.Errorf("durable/sqlite: claim outbox: lease %v, want > 0", c.Lease)
	}
	now := time.Now()
	rs, err := d.db.QueryContext(ctx, sqlClaim, c.Token, formatTime(now.Add(c.Lease)), c.Destination, c.Limit, formatTime(now))
	if err != nil {
		return nil, schemaError(ctx, d.db, "claim outbox", err)
	}
	defer rs.Close()
	var out []dialects.ClaimedRow
	for rs.Next() {
		var r dialects.ClaimedRow
		if err := scanOutbox(rs, &r.OutboxRow, &r.Expired); err != nil {
			return nil, fmt.Errorf("durable/sqlite: claim outbox: %w", err)
		}
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		return nil, schemaError(ctx, d.db, "claim outbox", err)
	}
	// RETURNING follows no order.
	slices.SortFunc(out, func(a, b dialects.ClaimedRow) int {
		switch {
		case a.Seq < b.Seq:
			return -1
		case a.Seq > b.Seq:
			return 1
		}
		return 0
	})
	return out, nil
}

// scanOutbox reads listColumns into r, then any extra columns.
func scanOutbox(rs *sql.Rows, r *dialects.OutboxRow, extra ...any) error {
	var (
		headers, created, deliver      string
		expires, lockedBy, lockedUntil sql.NullString
		lastError, sent                sql.NullString
	)
	dest := append([]any{&r.Seq, &r.ID, &r.Destination, &r.Topic, &r.Key, &headers, &r.Payload,
		&created, &deliver, &expires, &r.Attempts, &lockedBy, &lockedUntil, &lastError, &sent}, extra...)
	if err := rs.Scan(dest...); err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(headers), &r.Headers); err != nil {
		return fmt.Errorf("headers of seq %d: %w", r.Seq, err)
	}
	if r.Headers == nil {
		r.Headers = map[string]string{}
	}
	if r.Payload == nil {
		r.Payload = []byte{}
	}
	r.LockedBy, r.LastError = lockedBy.String, lastError.String
	for _, f := range []struct {
		dst *time.Time
		src sql.NullString
	}{
		{&r.CreatedAt, sql.NullString{String: created, Valid: true}},
		{&r.DeliverAt, sql.NullString{String: deliver, Valid: true}},
		{&r.ExpiresAt, expires},
		{&r.LockedUntil, lockedUntil},
		{&r.SentAt, sent},
	} {
		var err error
		if *f.dst, err = parseNullTime(f.src); err != nil {
			return fmt.Errorf("seq %d: %w", r.Seq, err)
		}
	}
	return nil
}

// exec runs a statement and returns the number of rows it changed.
func (d *Dialect) exec(ctx context.Context, op, stmt string, args ...any) (int, error) {
	res, err := d.db.ExecContext(ctx, stmt, args...)
	if err != nil {
		return 0, schemaError(ctx, d.db, op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("durable/sqlite: %s: %w", op, err)
	}
	return int(n), nil
}

// AckOutbox deletes (or, with retain, stamps sent_at on) the rows leased to
// token, in one statement; see dialects.Relayer.
func (d *Dialect) AckOutbox(ctx context.Context, token string, seqs []int64, retain bool) (int, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	if retain {
		return d.exec(ctx, "ack outbox", sqlAckRetain, seqsJSON(seqs), token, formatTime(time.Now()))
	}
	return d.exec(ctx, "ack outbox", sqlAckDelete, seqsJSON(seqs), token)
}

// ReleaseOutbox ends the lease of rows leased to token; see
// dialects.Relayer.
func (d *Dialect) ReleaseOutbox(ctx context.Context, token string, seqs []int64, r dialects.OutboxRelease) (int, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	if r.RetryAfter < 0 {
		return 0, fmt.Errorf("durable/sqlite: release outbox: negative delay %v", r.RetryAfter)
	}
	undo := 0
	if r.Unsent {
		undo = 1
	}
	var until any // NULL: claimable at once
	if r.RetryAfter > 0 {
		until = formatTime(time.Now().Add(r.RetryAfter))
	}
	return d.exec(ctx, "release outbox", sqlRelease, seqsJSON(seqs), token, until, r.Error, undo)
}

// DeadLetterOutbox moves rows leased to token to durable_dead_letters: an
// INSERT … SELECT and a DELETE in one transaction; see dialects.Relayer.
func (d *Dialect) DeadLetterOutbox(ctx context.Context, token string, letters []dialects.OutboxDeadLetter) (n int, err error) {
	if len(letters) == 0 {
		return 0, nil
	}
	list := make([][3]any, len(letters))
	for i, l := range letters {
		if l.Reason == "" {
			return 0, fmt.Errorf("durable/sqlite: dead-letter outbox: seq %d has no reason", l.Seq)
		}
		list[i] = [3]any{l.Seq, l.Reason, l.Error}
	}
	js, err := json.Marshal(list)
	if err != nil {
		return 0, fmt.Errorf("durable/sqlite: dead-letter outbox: %w", err)
	}
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("durable/sqlite: dead-letter outbox: begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	at := time.Now().UTC().Format(time.RFC3339Nano)
	if _, err := tx.ExecContext(ctx, sqlDeadLetterInsert, string(js), token, at); err != nil {
		return 0, schemaError(ctx, tx, "dead-letter outbox", err)
	}
	res, err := tx.ExecContext(ctx, sqlDeadLetterDelete, string(js), token)
	if err != nil {
		return 0, schemaError(ctx, tx, "dead-letter outbox", err)
	}
	moved, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("durable/sqlite: dead-letter outbox: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("durable/sqlite: dead-letter outbox: commit: %w", err)
	}
	return int(moved), nil
}

// OutboxStats returns the backlog per destination; see dialects.Relayer.
func (d *Dialect) OutboxStats(ctx context.Context) ([]dialects.OutboxStats, error) {
	rs, err := d.db.QueryContext(ctx, sqlStats, formatTime(time.Now()))
	if err != nil {
		return nil, schemaError(ctx, d.db, "outbox stats", err)
	}
	defer rs.Close()
	var out []dialects.OutboxStats
	for rs.Next() {
		var (
			s   dialects.OutboxStats
			age float64
		)
		if err := rs.Scan(&s.Destination, &s.Unsent, &s.Leased, &s.Retrying, &s.Scheduled, &age); err != nil {
			return nil, fmt.Errorf("durable/sqlite: outbox stats: %w", err)
		}
		s.OldestAge = time.Duration(age * float64(time.Second)).Round(time.Millisecond)
		out = append(out, s)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("durable/sqlite: outbox stats: %w", err)
	}
	return out, nil
}

// OutboxDestinations returns the destinations with unsent rows; see
// dialects.Relayer.
func (d *Dialect) OutboxDestinations(ctx context.Context) ([]string, error) {
	rs, err := d.db.QueryContext(ctx, sqlDestinations)
	if err != nil {
		return nil, schemaError(ctx, d.db, "outbox destinations", err)
	}
	defer rs.Close()
	var out []string
	for rs.Next() {
		var s string
		if err := rs.Scan(&s); err != nil {
			return nil, fmt.Errorf("durable/sqlite: outbox destinations: %w", err)
		}
		out = append(out, s)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("durable/sqlite: outbox destinations: %w", err)
	}
	return out, nil
}

// PurgeOutbox deletes up to limit retained sent rows older than age; see
// dialects.Relayer.
func (d *Dialect) PurgeOutbox(ctx context.Context, age time.Duration, limit int) (int, error) {
	if limit <= 0 || age < 0 {
		return 0, fmt.Errorf("durable/sqlite: purge outbox: age %v and limit %d, want age ≥ 0 and limit > 0", age, limit)
	}
	return d.exec(ctx, "purge outbox", sqlPurge, formatTime(time.Now().Add(-age)), limit)
}

// ListDeadLetters returns the dead letters matching q in seq order; see
// dialects.Relayer.
func (d *Dialect) ListDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) ([]dialects.DeadLetterRow, error) {
	var (
		b    strings.Builder
		args []any
	)
	b.WriteString("SELECT " + deadLetterColumns + " FROM durable_dead_letters WHERE 1=1")
	for _, eq := range []struct{ col, val string }{{"side", q.Side}, {"destination", q.Destination}, {"reason", q.Reason}} {
		if eq.val != "" {
			b.WriteString(" AND " + eq.col + " = ?")
			args = append(args, eq.val)
		}
	}
	if len(q.IDs) > 0 {
		js, err := json.Marshal(q.IDs)
		if err != nil {
			return nil, fmt.Errorf("durable/sqlite: list dead letters: %w", err)
		}
		b.WriteString(" AND id IN (SELECT value FROM json_each(?))")
		args = append(args, string(js))
	}
	b.WriteString(" ORDER BY seq")
	if q.Limit > 0 {
		b.WriteString(" LIMIT ?")
		args = append(args, q.Limit)
	}
	rs, err := d.db.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return nil, schemaError(ctx, d.db, "list dead letters", err)
	}
	defer rs.Close()
	var out []dialects.DeadLetterRow
	for rs.Next() {
		var (
			r                                     dialects.DeadLetterRow
			headers, errs, created, first, failed string
			expires, replayed                     sql.NullString
		)
		if err := rs.Scan(&r.Seq, &r.Side, &r.ID, &r.Source, &r.Destination, &r.Topic, &r.Key, &headers, &r.Payload,
			&created, &expires, &r.Reason, &r.Attempts, &r.LastError, &errs, &first, &failed, &replayed); err != nil {
			return nil, fmt.Errorf("durable/sqlite: list dead letters: %w", err)
		}
		if err := json.Unmarshal([]byte(headers), &r.Headers); err != nil {
			return nil, fmt.Errorf("durable/sqlite: list dead letters: headers of seq %d: %w", r.Seq, err)
		}
		if r.Headers == nil {
			r.Headers = map[string]string{}
		}
		if err := json.Unmarshal([]byte(errs), &r.Errors); err != nil {
			return nil, fmt.Errorf("durable/sqlite: list dead letters: errors of seq %d: %w", r.Seq, err)
		}
		for _, f := range []struct {
			dst *time.Time
			src sql.NullString
		}{
			{&r.CreatedAt, sql.NullString{String: created, Valid: true}},
			{&r.ExpiresAt, expires},
			{&r.FirstFailedAt, sql.NullString{String: first, Valid: true}},
			{&r.FailedAt, sql.NullString{String: failed, Valid: true}},
			{&r.ReplayedAt, replayed},
		} {
			if *f.dst, err = parseNullTime(f.src); err != nil {
				return nil, fmt.Errorf("durable/sqlite: list dead letters: seq %d: %w", r.Seq, err)
			}
		}
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("durable/sqlite: list dead letters: %w", err)
	}
	return out, nil
}
