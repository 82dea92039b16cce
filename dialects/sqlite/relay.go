package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/internal/keyscan"
)

// The relay's statements. Seqs travel as one JSON array parameter.
//
// Times: SQLite is embedded, and its clock ('now') is the system clock this
// process reads too, so the dialect takes the time once per statement in Go
// and passes it as a parameter, in the stored format. That also spares
// SQLite from formatting the time again for every row a claim scans, which
// made claims several times slower.
const (
	// A claim is two statements of one transaction, each bounded by the
	// claim's limit, never by the backlog's shape (as in the Postgres
	// dialect, whose relay_sql.go tells the whole story).
	//
	// sqlOutboxKeys visits the ordering keys of destination ?1 that have
	// unsent rows, in key order after ?2, at most ?3 of them: one probe of
	// durable_outbox_key_idx per key. The dialect remembers where the last
	// claim of a destination stopped (dialects/internal/keyscan).
	sqlOutboxKeys = `WITH RECURSIVE k(key, n) AS (
	SELECT (SELECT min(e.key) FROM durable_outbox e
		WHERE e.destination = ?1 AND e.key > ?2 AND e.key <> '' AND e.sent_at IS NULL), 1
	UNION ALL
	SELECT (SELECT min(e.key) FROM durable_outbox e
		WHERE e.destination = ?1 AND e.key > k.key AND e.key <> '' AND e.sent_at IS NULL), k.n + 1
	FROM k WHERE k.key IS NOT NULL AND k.n < ?3
)
SELECT key FROM k WHERE key IS NOT NULL`

	// sqlClaim leases, oldest first, up to ?4 of: the due, unleased unkeyed
	// rows (durable_outbox_unkeyed_idx), and the head (oldest unsent row) of
	// each key in the JSON array ?6 when it is due and unleased. A row
	// behind its key's head is never a candidate, so a key's rows leave one
	// at a time, in enqueue order. SQLite has one writer, and rows are
	// numbered in commit order, so no other claim runs between the choice
	// of the rows and their lease, and no earlier row of a key can appear
	// after a later one was claimed. The IN subquery is not correlated, so
	// it is evaluated once, before any row changes.
	sqlClaim = `UPDATE durable_outbox SET
	locked_by = ?1,
	locked_until = ?2,
	attempts = attempts + CASE WHEN expires_at <= ?5 THEN 0 ELSE 1 END
WHERE seq IN (
	SELECT c.seq FROM (
		SELECT * FROM (
			SELECT o.seq FROM durable_outbox o
			WHERE o.destination = ?3 AND o.key = '' AND o.sent_at IS NULL AND o.deliver_at <= ?5
				AND (o.locked_until IS NULL OR o.locked_until <= ?5)
			ORDER BY o.seq
			LIMIT ?4)
		UNION ALL
		SELECT h.seq FROM (
			SELECT (SELECT e.seq FROM durable_outbox e
				WHERE e.destination = ?3 AND e.key = k.value AND e.key <> '' AND e.sent_at IS NULL
				ORDER BY e.seq LIMIT 1) AS seq
			FROM json_each(?6) k) h
		JOIN durable_outbox o ON o.seq = h.seq
		WHERE o.deliver_at <= ?5 AND (o.locked_until IS NULL OR o.locked_until <= ?5)) c
	ORDER BY c.seq
	LIMIT ?4)
RETURNING ` + listColumns + `, coalesce(expires_at <= ?5, 0)`

	// ClaimOutbox with ExpiredOnly; the same parameters as sqlClaim.
	sqlClaimExpired = `UPDATE durable_outbox SET
	locked_by = ?1,
	locked_until = ?2
WHERE seq IN (
	SELECT o.seq FROM durable_outbox o
	WHERE o.destination = ?3 AND o.sent_at IS NULL AND o.expires_at <= ?5
		AND (o.locked_until IS NULL OR o.locked_until <= ?5)
	ORDER BY o.seq
	LIMIT ?4)
RETURNING ` + listColumns + `, 1`

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
	failed_at = ` + failedAfterReplayD

	sqlDeadLetterDelete = `DELETE FROM durable_outbox
WHERE seq IN (SELECT json_extract(value, '$[0]') FROM json_each(?1)) AND locked_by = ?2 AND sent_at IS NULL`

	// ?1 now. The pending outbox dead letters are counted through the dead
	// letters' unique index, whose first column is side.
	sqlStats = `WITH u AS (
	SELECT destination, count(*) AS unsent,
		count(*) FILTER (WHERE locked_by IS NOT NULL AND locked_until > ?1) AS leased,
		count(*) FILTER (WHERE locked_by IS NULL AND locked_until > ?1) AS retrying,
		count(*) FILTER (WHERE deliver_at > ?1) AS scheduled,
		max((julianday(?1) - julianday(min(created_at))) * 86400.0, 0) AS age
	FROM durable_outbox
	WHERE sent_at IS NULL
	GROUP BY destination
), dl AS (
	SELECT destination, count(*) AS dead
	FROM durable_dead_letters
	WHERE side = 'outbox' AND (replayed_at IS NULL OR replayed_at < failed_at)
	GROUP BY destination
)
SELECT coalesce(u.destination, dl.destination), coalesce(u.unsent, 0), coalesce(u.leased, 0),
	coalesce(u.retrying, 0), coalesce(u.scheduled, 0), coalesce(u.age, 0.0), coalesce(dl.dead, 0)
FROM u FULL JOIN dl ON dl.destination = u.destination
ORDER BY 1`

	// The distinct destinations, one probe each of the two claim indexes
	// (unkeyed rows, keyed rows).
	sqlDestinations = `WITH RECURSIVE u(destination) AS (
	SELECT (SELECT min(destination) FROM durable_outbox WHERE sent_at IS NULL AND key = '')
	UNION ALL
	SELECT (SELECT min(o.destination) FROM durable_outbox o
		WHERE o.sent_at IS NULL AND o.key = '' AND o.destination > u.destination)
	FROM u WHERE u.destination IS NOT NULL
), k(destination) AS (
	SELECT (SELECT min(destination) FROM durable_outbox WHERE sent_at IS NULL AND key <> '')
	UNION ALL
	SELECT (SELECT min(o.destination) FROM durable_outbox o
		WHERE o.sent_at IS NULL AND o.key <> '' AND o.destination > k.destination)
	FROM k WHERE k.destination IS NOT NULL
)
SELECT destination FROM u WHERE destination IS NOT NULL
UNION
SELECT destination FROM k WHERE destination IS NOT NULL
ORDER BY 1`

	sqlPurge = `DELETE FROM durable_outbox WHERE seq IN (
	SELECT seq FROM durable_outbox
	WHERE sent_at IS NOT NULL AND sent_at < ?1
	ORDER BY sent_at
	LIMIT ?2)`
)

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
	args := []any{c.Token, formatTime(now.Add(c.Lease)), c.Destination, c.Limit, formatTime(now)}
	scan := func(rs *sql.Rows, r *dialects.ClaimedRow) error { return scanOutbox(rs, &r.OutboxRow, &r.Expired) }
	var out []dialects.ClaimedRow
	var err error
	if c.ExpiredOnly {
		// Expired rows go to the dead letters, never to a peer.
		out, err = queryAll(ctx, d.prep(ctx, d.db, sqlClaimExpired), "claim outbox", sqlClaimExpired, args, scan)
	} else {
		out, err = d.claimDurably(ctx, c.Destination, c.Limit, args, scan)
	}
	if err != nil {
		return nil, err
	}
	// RETURNING follows no order.
	slices.SortFunc(out, func(a, b dialects.ClaimedRow) int { return cmp.Compare(a.Seq, b.Seq) })
	return out, nil
}

// claimDurably runs the claim in a transaction of BeginDurable, whose commit
// syncs the log to disk. Syncing the log writes out every commit before it
// too, so the rows handed to the relay, and the app's rows committed with
// them, are on disk before they leave this database: with the DSN's
// synchronous=NORMAL, a power loss could otherwise take back a transaction
// whose message a peer already handled.
//
// The claim visits the heads of at most keyscan.PerClaim(limit) ordering
// keys, continuing where the last claim of destination stopped (see
// sqlOutboxKeys).
func (d *Dialect) claimDurably(ctx context.Context, destination string, limit int, args []any, scan func(*sql.Rows, *dialects.ClaimedRow) error) ([]dialects.ClaimedRow, error) {
	tx, err := d.BeginDurable(ctx)
	if err != nil {
		return nil, fmt.Errorf("durable/sqlite: claim outbox: %w", err)
	}
	visit := keyscan.PerClaim(limit)
	after := d.keys.Start(destination)
	keys, err := queryAll(ctx, d.prep(ctx, tx, sqlOutboxKeys), "claim outbox", sqlOutboxKeys,
		[]any{destination, after, visit}, func(rs *sql.Rows, k *string) error { return rs.Scan(k) })
	if err != nil {
		_ = d.Rollback(ctx, tx)
		return nil, err
	}
	d.keys.Visited(destination, after, keys, visit)
	keyList, err := json.Marshal(keys)
	if err != nil {
		_ = d.Rollback(ctx, tx)
		return nil, fmt.Errorf("durable/sqlite: claim outbox: %w", err)
	}
	if keys == nil {
		keyList = []byte("[]")
	}
	out, err := queryAll(ctx, d.prep(ctx, tx, sqlClaim), "claim outbox", sqlClaim, append(args, string(keyList)), scan)
	if err != nil {
		_ = d.Rollback(ctx, tx)
		return nil, err
	}
	if err := d.Commit(ctx, tx); err != nil {
		return nil, fmt.Errorf("durable/sqlite: claim outbox: %w", err)
	}
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
		&created, &deliver, &expires, &r.SendAttempt, &lockedBy, &lockedUntil, &lastError, &sent}, extra...)
	if err := rs.Scan(dest...); err != nil {
		return err
	}
	if err := decodeJSON(r.ID, headers, &r.Headers, "", nil); err != nil {
		return err
	}
	if r.Payload == nil {
		r.Payload = []byte{}
	}
	r.LeaseToken, r.LastError = lockedBy.String, lastError.String
	if err := parseTimes(storedTime{&r.CreatedAt, notNull(created)}, storedTime{&r.DeliverAt, notNull(deliver)},
		storedTime{&r.ExpiresAt, expires}, storedTime{&r.LockedUntil, lockedUntil}, storedTime{&r.SentAt, sent}); err != nil {
		return fmt.Errorf("seq %d: %w", r.Seq, err)
	}
	return nil
}

// AckOutbox deletes (or, with retain, stamps sent_at on) the rows leased to
// token, in one statement; see dialects.Relayer.
func (d *Dialect) AckOutbox(ctx context.Context, token string, seqs []int64, retain bool) (int, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	if retain {
		return exec(ctx, d.db, "ack outbox", sqlAckRetain, jsonParam(seqs), token, formatTime(time.Now()))
	}
	return exec(ctx, d.prep(ctx, d.db, sqlAckDelete), "ack outbox", sqlAckDelete, jsonParam(seqs), token)
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
	return exec(ctx, d.db, "release outbox", sqlRelease, jsonParam(seqs), token, until, r.Error, undo)
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
	js := jsonParam(list)
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
	if _, err := tx.ExecContext(ctx, sqlDeadLetterInsert, js, token, at); err != nil {
		return 0, schemaError(ctx, tx, "dead-letter outbox", err)
	}
	res, err := tx.ExecContext(ctx, sqlDeadLetterDelete, js, token)
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
	return queryAll(ctx, d.db, "outbox stats", sqlStats, []any{formatTime(time.Now())}, func(rs *sql.Rows, s *dialects.OutboxStats) error {
		var age float64
		if err := rs.Scan(&s.Destination, &s.Unsent, &s.Leased, &s.Retrying, &s.Scheduled, &age, &s.DeadLetters); err != nil {
			return err
		}
		s.OldestAge = time.Duration(age * float64(time.Second)).Round(time.Millisecond)
		return nil
	})
}

// OutboxDestinations returns the destinations with unsent rows; see
// dialects.Relayer.
func (d *Dialect) OutboxDestinations(ctx context.Context) ([]string, error) {
	return queryAll(ctx, d.db, "outbox destinations", sqlDestinations, nil, func(rs *sql.Rows, s *string) error { return rs.Scan(s) })
}

// PurgeOutbox deletes up to limit retained sent rows older than age; see
// dialects.Relayer.
func (d *Dialect) PurgeOutbox(ctx context.Context, age time.Duration, limit int) (int, error) {
	if limit <= 0 || age < 0 {
		return 0, fmt.Errorf("durable/sqlite: purge outbox: age %v and limit %d, want age ≥ 0 and limit > 0", age, limit)
	}
	return exec(ctx, d.db, "purge outbox", sqlPurge, formatTime(time.Now().Add(-age)), limit)
}
