package sqlite

import (
	"cmp"
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

var _ dialects.InboxStore[*sql.Tx] = (*Dialect)(nil)

// The inbox takes its instants from the process clock, which on an embedded
// database is the database's clock, formatted as every stored time
// (TimeLayout, UTC). Error-history entries carry RFC 3339 times, which both
// Go and SQLite's date functions read.
const inboxErrorTimeLayout = "2006-01-02T15:04:05.000Z07:00"

// inboxInsertColumns is the number of parameters per row of InsertInbox.
const inboxInsertColumns = 9

// InboxChunkRows is how many rows one INSERT statement of InsertInbox
// carries; larger batches are split into statements of this size.
const InboxChunkRows = maxParams / inboxInsertColumns

// inboxChunkRows is InboxChunkRows; tests lower it.
var inboxChunkRows = InboxChunkRows

const (
	sqlInboxInsertHead = `INSERT INTO durable_inbox
	(source, id, topic, key, headers, payload, created_at, expires_at, run_at)
SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, v.column9
FROM (VALUES `
	sqlInboxInsertRow = `(?,?,?,?,?,?,?,?,?)`
	// NOT EXISTS skips messages already in the dead letters; the WHERE also
	// tells SQLite's parser that ON CONFLICT is the upsert clause.
	sqlInboxInsertTail = `) AS v
WHERE NOT EXISTS (SELECT 1 FROM durable_dead_letters d
	WHERE d.side = 'inbox' AND d.source = v.column1 AND d.destination = '' AND d.id = v.column2)
ON CONFLICT (source, id) DO NOTHING
RETURNING source, id`

	sqlInboxColumns = `seq, source, id, topic, key, headers, payload, created_at, received_at, expires_at,
	state, attempts, run_at, lease_token, locked_by, locked_until, last_error, errors, handled_at, replayed_at`

	// ?1 now, ?2 token, ?3 worker, ?4 lease end, ?5 topics (JSON array),
	// ?6 excluded topics, ?7 limit. The subquery names rows by (source, id);
	// ordering keys as in the Postgres dialect (durable_inbox_key_idx).
	sqlInboxClaim = `UPDATE durable_inbox SET
	state = 'running',
	attempts = attempts + CASE WHEN expires_at <= ?1 THEN 0 ELSE 1 END,
	lease_token = ?2, locked_by = ?3, locked_until = ?4
WHERE (source, id) IN (
	SELECT i.source, i.id FROM durable_inbox i
	WHERE i.state = 'ready' AND i.run_at <= ?1
		AND (?5 = '[]' OR i.topic IN (SELECT value FROM json_each(?5)))
		AND i.topic NOT IN (SELECT value FROM json_each(?6))
		AND (i.key = '' OR NOT EXISTS (
			SELECT 1 FROM durable_inbox p
			WHERE p.source = i.source AND p.key = i.key AND p.key <> ''
				AND p.state <> 'handled' AND p.seq < i.seq))
	ORDER BY i.run_at, i.seq
	LIMIT ?7)
RETURNING ` + sqlInboxColumns + `, coalesce(expires_at <= ?1, 0)`

	// The immediate transaction holds the write lock: re-reading the tokens
	// in it is the fence.
	sqlInboxLock = `SELECT i.source, i.id FROM json_each(?2) k
JOIN durable_inbox i ON i.source = json_extract(k.value, '$[0]') AND i.id = json_extract(k.value, '$[1]')
WHERE i.state = 'running' AND i.lease_token = ?1`

	// Outcomes travel as one JSON array of [source, id, kind, error, run_at,
	// undo, reason]; kind: h handled, r retry, d dead.
	sqlInboxOutcomes = `o AS (
	SELECT json_extract(value, '$[0]') AS source, json_extract(value, '$[1]') AS id,
		json_extract(value, '$[2]') AS kind, json_extract(value, '$[3]') AS err,
		json_extract(value, '$[4]') AS run_at, json_extract(value, '$[5]') AS undo,
		json_extract(value, '$[6]') AS reason
	FROM json_each(?1))`

	// ?1 outcomes, ?2 token, ?3 now (stored time), ?4 now (error time).
	sqlInboxFinishUpdate = `WITH ` + sqlInboxOutcomes + `
UPDATE durable_inbox AS i SET
	state = CASE WHEN o.kind = 'h' THEN 'handled' ELSE 'ready' END,
	handled_at = CASE WHEN o.kind = 'h' THEN ?3 END,
	run_at = CASE WHEN o.kind = 'h' THEN i.run_at ELSE o.run_at END,
	attempts = CASE WHEN o.undo AND i.attempts > 0 THEN i.attempts - 1 ELSE i.attempts END,
	last_error = coalesce(nullif(o.err, ''), i.last_error),
	errors = CASE WHEN o.err = '' THEN i.errors
		ELSE json_insert(i.errors, '$[#]', json_object('attempt', i.attempts, 'at', ?4, 'error', o.err)) END,
	lease_token = NULL, locked_by = NULL, locked_until = NULL
FROM o
WHERE o.kind <> 'd' AND i.source = o.source AND i.id = o.id
	AND i.state = 'running' AND i.lease_token = ?2`

	// A message dead-lettered before (and replayed since) updates its row,
	// keeping first_failed_at and replayed_at.
	sqlInboxFinishDead = `WITH ` + sqlInboxOutcomes + `, m AS (
	SELECT i.source, i.id, i.topic, i.key, i.headers, i.payload, i.created_at, i.expires_at, i.attempts,
		o.reason, coalesce(nullif(o.err, ''), i.last_error, '') AS last_error,
		CASE WHEN o.err = '' THEN i.errors
			ELSE json_insert(i.errors, '$[#]', json_object('attempt', i.attempts, 'at', ?4, 'error', o.err)) END AS errors
	FROM durable_inbox i JOIN o ON i.source = o.source AND i.id = o.id
	WHERE o.kind = 'd' AND i.state = 'running' AND i.lease_token = ?2)
INSERT INTO durable_dead_letters AS dl
	(side, id, source, destination, topic, key, headers, payload, created_at, expires_at,
	reason, attempts, last_error, errors, first_failed_at, failed_at)
SELECT 'inbox', m.id, m.source, '', m.topic, m.key, m.headers, m.payload, m.created_at, m.expires_at,
	m.reason, m.attempts, m.last_error, m.errors,
	coalesce(strftime('%Y-%m-%d %H:%M:%f', json_extract(m.errors, '$[0].at')), ?3), ?3
FROM m WHERE true
ON CONFLICT (side, source, destination, id) DO UPDATE SET
	topic = excluded.topic, key = excluded.key, headers = excluded.headers,
	payload = excluded.payload, created_at = excluded.created_at, expires_at = excluded.expires_at,
	reason = excluded.reason, attempts = excluded.attempts, last_error = excluded.last_error,
	errors = excluded.errors, failed_at = excluded.failed_at`

	sqlInboxFinishDelete = `DELETE FROM durable_inbox
WHERE (source, id) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
		FROM json_each(?1) WHERE json_extract(value, '$[2]') = 'd')
	AND state = 'running' AND lease_token = ?2`

	// ?1 now, ?2 error time, ?3 limit.
	sqlInboxRescue = `UPDATE durable_inbox SET
	state = 'ready', run_at = ?1,
	last_error = 'lease of ' || coalesce(locked_by, 'a worker') || ' expired before it finished',
	errors = json_insert(errors, '$[#]', json_object('attempt', attempts, 'at', ?2,
		'error', 'lease of ' || coalesce(locked_by, 'a worker') || ' expired before it finished')),
	lease_token = NULL, locked_by = NULL, locked_until = NULL
WHERE (source, id) IN (
		SELECT source, id FROM durable_inbox
		WHERE state = 'running' AND locked_until < ?1
		ORDER BY locked_until LIMIT ?3)
	AND state = 'running' AND locked_until < ?1`

	sqlInboxPurge = `DELETE FROM durable_inbox
WHERE (source, id) IN (
		SELECT source, id FROM durable_inbox
		WHERE state = 'handled' AND handled_at < ?1
		ORDER BY handled_at LIMIT ?2)
	AND state = 'handled'`

	sqlInboxStats = `SELECT
	count(*) FILTER (WHERE state = 'ready' AND attempts = 0),
	count(*) FILTER (WHERE state = 'ready' AND attempts > 0),
	count(*) FILTER (WHERE state = 'running'),
	count(*) FILTER (WHERE state = 'handled'),
	(SELECT count(*) FROM durable_dead_letters
		WHERE side = 'inbox' AND (replayed_at IS NULL OR replayed_at < failed_at))
FROM durable_inbox`

	sqlInboxDeadColumns = `d.seq, d.source, d.id, d.topic, d.key, d.headers, d.payload, d.created_at, d.expires_at,
	d.reason, d.attempts, d.last_error, d.errors, d.first_failed_at, d.failed_at, d.replayed_at`

	// {where} and {limit} come from inboxDeadFilter.
	sqlInboxListDead = `SELECT ` + sqlInboxDeadColumns + ` FROM durable_dead_letters d
WHERE {where}
ORDER BY d.seq {limit}`

	sqlInboxReplayInsert = `INSERT INTO durable_inbox
	(source, id, topic, key, headers, payload, created_at, errors, replayed_at, run_at)
SELECT d.source, d.id, d.topic, d.key, d.headers, d.payload, d.created_at, d.errors, ?1, ?1
FROM durable_dead_letters d
WHERE {where} AND (d.replayed_at IS NULL OR d.replayed_at < d.failed_at)
ORDER BY d.seq {limit}
ON CONFLICT (source, id) DO NOTHING
RETURNING source, id`

	sqlInboxReplayMark = `UPDATE durable_dead_letters SET replayed_at = ?1
WHERE side = 'inbox' AND destination = ''
	AND (source, id) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?2))`

	// seq names rows only inside this one statement, where it cannot be
	// reused.
	sqlInboxPurgeDead = `DELETE FROM durable_dead_letters WHERE seq IN (
	SELECT d.seq FROM durable_dead_letters d
	WHERE {where}
	ORDER BY d.seq {limit})`
)

// inboxInsertSQL returns the InsertInbox statement for n rows.
func inboxInsertSQL(n int) string {
	var b strings.Builder
	b.Grow(len(sqlInboxInsertHead) + n*(len(sqlInboxInsertRow)+1) + len(sqlInboxInsertTail))
	b.WriteString(sqlInboxInsertHead)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(sqlInboxInsertRow)
	}
	b.WriteString(sqlInboxInsertTail)
	return b.String()
}

// inboxNow returns the stored form of now and the error-history form.
func inboxNow() (stored, errorTime string, now time.Time) {
	now = time.Now().UTC()
	return formatTime(now), now.Format(inboxErrorTimeLayout), now
}

// InsertInbox stores rows in tx with multi-row INSERT … SELECT … FROM
// (VALUES …) … ON CONFLICT DO NOTHING statements of up to InboxChunkRows rows
// each, and reports which were stored; see dialects.InboxStore. Each chunk
// is one statement that also skips messages already in the dead letters; tx
// holds SQLite's write lock, so no other writer can interleave.
func (d *Dialect) InsertInbox(ctx context.Context, tx *sql.Tx, rows []dialects.InboxRow) ([]bool, error) {
	if tx == nil {
		return nil, errNilTx
	}
	stored := make([]bool, len(rows))
	if len(rows) == 0 {
		return stored, nil
	}
	now, _, _ := inboxNow()
	enc := newHeaderEncoder()
	inserted := make(map[dialects.InboxKey]bool, len(rows))
	chunk := inboxChunkRows
	args := make([]any, 0, min(len(rows), chunk)*inboxInsertColumns)
	for start := 0; start < len(rows); start += chunk {
		part := rows[start:min(start+chunk, len(rows))]
		args = args[:0]
		for i := range part {
			r := &part[i]
			headers, err := enc.encode(r.Headers)
			if err != nil {
				return nil, fmt.Errorf("durable/sqlite: insert inbox: headers of %q: %w", r.ID, err)
			}
			payload := r.Payload
			if payload == nil {
				payload = []byte{}
			}
			created, runAt := now, now
			if !r.CreatedAt.IsZero() {
				created = formatTime(r.CreatedAt)
			}
			if !r.RunAt.IsZero() {
				runAt = formatTime(r.RunAt)
			}
			var expires any
			if !r.ExpiresAt.IsZero() {
				expires = formatTime(r.ExpiresAt)
			}
			args = append(args, r.Source, r.ID, r.Topic, r.Key, headers, payload, created, expires, runAt)
		}
		rs, err := tx.QueryContext(ctx, inboxInsertSQL(len(part)), args...)
		if err != nil {
			return nil, schemaError(ctx, tx, "insert inbox", err)
		}
		for rs.Next() {
			var k dialects.InboxKey
			if err := rs.Scan(&k.Source, &k.ID); err != nil {
				rs.Close()
				return nil, fmt.Errorf("durable/sqlite: insert inbox: %w", err)
			}
			inserted[k] = true
		}
		if err := rs.Err(); err != nil {
			return nil, schemaError(ctx, tx, "insert inbox", err)
		}
	}
	for i := range rows {
		k := dialects.InboxKey{Source: rows[i].Source, ID: rows[i].ID}
		if inserted[k] {
			stored[i] = true
			delete(inserted, k) // a later repeat within rows is a duplicate
		}
	}
	return stored, nil
}

// inboxJSON encodes v, a slice of strings or of string tuples, as a JSON
// parameter.
func inboxJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// ClaimInbox leases due ready rows in one UPDATE … RETURNING statement; see
// dialects.InboxStore. SQLite has one writer, so concurrent claims are
// serialized and never return the same row.
func (d *Dialect) ClaimInbox(ctx context.Context, c dialects.InboxClaim) ([]dialects.InboxRow, error) {
	if c.Token == "" || c.Limit <= 0 || c.Lease <= 0 {
		return nil, errors.New("durable/sqlite: claim inbox: Token, a positive Limit and a positive Lease are required")
	}
	topics, exclude := c.Topics, c.ExcludeTopics
	if topics == nil {
		topics = []string{}
	}
	if exclude == nil {
		exclude = []string{}
	}
	tj, err := inboxJSON(topics)
	if err != nil {
		return nil, fmt.Errorf("durable/sqlite: claim inbox: %w", err)
	}
	ej, err := inboxJSON(exclude)
	if err != nil {
		return nil, fmt.Errorf("durable/sqlite: claim inbox: %w", err)
	}
	now, _, t := inboxNow()
	rs, err := d.db.QueryContext(ctx, sqlInboxClaim, now, c.Token, c.Worker, formatTime(t.Add(c.Lease)), tj, ej, c.Limit)
	if err != nil {
		return nil, schemaError(ctx, d.db, "claim inbox", err)
	}
	out, err := scanInboxRows(rs)
	if err != nil {
		return nil, fmt.Errorf("durable/sqlite: claim inbox: %w", err)
	}
	slices.SortFunc(out, func(a, b dialects.InboxRow) int { return cmp.Compare(a.Seq, b.Seq) })
	return out, nil
}

// LockInbox returns the rows of keys still leased to token. tx, an immediate
// transaction, holds the database's write lock, so they stay so until it
// ends.
func (d *Dialect) LockInbox(ctx context.Context, tx *sql.Tx, token string, keys []dialects.InboxKey) ([]dialects.InboxKey, error) {
	if tx == nil {
		return nil, errNilTx
	}
	if len(keys) == 0 {
		return nil, nil
	}
	pairs := make([][2]string, len(keys))
	for i, k := range keys {
		pairs[i] = [2]string{k.Source, k.ID}
	}
	kj, err := inboxJSON(pairs)
	if err != nil {
		return nil, fmt.Errorf("durable/sqlite: lock inbox: %w", err)
	}
	rs, err := tx.QueryContext(ctx, sqlInboxLock, token, kj)
	if err != nil {
		return nil, schemaError(ctx, tx, "lock inbox", err)
	}
	defer rs.Close()
	held := make(map[dialects.InboxKey]bool, len(keys))
	for rs.Next() {
		var k dialects.InboxKey
		if err := rs.Scan(&k.Source, &k.ID); err != nil {
			return nil, fmt.Errorf("durable/sqlite: lock inbox: %w", err)
		}
		held[k] = true
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("durable/sqlite: lock inbox: %w", err)
	}
	out := make([]dialects.InboxKey, 0, len(held))
	for _, k := range keys {
		if held[k] {
			out = append(out, k)
			delete(held, k)
		}
	}
	return out, nil
}

// InboxSavepoint runs a savepoint step in tx; see dialects.SavepointAction.
func (d *Dialect) InboxSavepoint(ctx context.Context, tx *sql.Tx, a dialects.SavepointAction) error {
	if tx == nil {
		return errNilTx
	}
	var stmts []string
	switch a {
	case dialects.SavepointSet:
		stmts = []string{"SAVEPOINT durable_message"}
	case dialects.SavepointRelease:
		stmts = []string{"RELEASE durable_message"}
	case dialects.SavepointReleaseSet:
		stmts = []string{"RELEASE durable_message", "SAVEPOINT durable_message"}
	case dialects.SavepointRollback:
		stmts = []string{"ROLLBACK TO durable_message"}
	default:
		return fmt.Errorf("durable/sqlite: savepoint: unknown action %d", a)
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("durable/sqlite: %s: %w", s, err)
		}
	}
	return nil
}

// FinishInbox settles a batch in tx: one UPDATE for the handled and retried
// rows, and for dead ones an INSERT into the dead letters and a DELETE; see
// dialects.InboxStore.
func (d *Dialect) FinishInbox(ctx context.Context, tx *sql.Tx, token string, outcomes []dialects.InboxOutcome) (int, error) {
	if tx == nil {
		return 0, errNilTx
	}
	if len(outcomes) == 0 {
		return 0, nil
	}
	now, errTime, t := inboxNow()
	list := make([][7]any, len(outcomes))
	dead := false
	for i, o := range outcomes {
		var kind string
		switch o.Kind {
		case dialects.InboxHandled:
			kind = "h"
		case dialects.InboxRetry:
			kind = "r"
		case dialects.InboxDead:
			kind, dead = "d", true
			if o.Reason == "" {
				return 0, fmt.Errorf("durable/sqlite: finish inbox: dead letter %q without a reason", o.ID)
			}
		default:
			return 0, fmt.Errorf("durable/sqlite: finish inbox: unknown outcome kind %d", o.Kind)
		}
		undo := 0
		if o.UndoAttempt {
			undo = 1
		}
		list[i] = [7]any{o.Source, o.ID, kind, o.Error, formatTime(t.Add(max(o.RetryAfter, 0))), undo, o.Reason}
	}
	oj, err := inboxJSON(list)
	if err != nil {
		return 0, fmt.Errorf("durable/sqlite: finish inbox: %w", err)
	}
	res, err := tx.ExecContext(ctx, sqlInboxFinishUpdate, oj, token, now, errTime)
	if err != nil {
		return 0, schemaError(ctx, tx, "finish inbox", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("durable/sqlite: finish inbox: %w", err)
	}
	if dead {
		if _, err := tx.ExecContext(ctx, sqlInboxFinishDead, oj, token, now, errTime); err != nil {
			return 0, schemaError(ctx, tx, "finish inbox: dead letters", err)
		}
		res, err := tx.ExecContext(ctx, sqlInboxFinishDelete, oj, token)
		if err != nil {
			return 0, schemaError(ctx, tx, "finish inbox: dead letters", err)
		}
		m, err := res.RowsAffected()
		if err != nil {
			return 0, fmt.Errorf("durable/sqlite: finish inbox: %w", err)
		}
		n += m
	}
	return int(n), nil
}

// RescueInbox makes up to limit rows with expired leases ready again; see
// dialects.InboxStore. A batch transaction of this process or another holds
// the write lock, so a row it works on cannot be rescued under it.
func (d *Dialect) RescueInbox(ctx context.Context, limit int) (int, error) {
	if limit <= 0 {
		return 0, errors.New("durable/sqlite: rescue inbox: limit must be positive")
	}
	now, errTime, _ := inboxNow()
	return d.inboxExec(ctx, "rescue inbox", sqlInboxRescue, now, errTime, limit)
}

// PurgeInbox deletes up to limit handled rows older than age, oldest first;
// see dialects.InboxStore.
func (d *Dialect) PurgeInbox(ctx context.Context, age time.Duration, limit int) (int, error) {
	if limit <= 0 {
		return 0, errors.New("durable/sqlite: purge inbox: limit must be positive")
	}
	return d.inboxExec(ctx, "purge inbox", sqlInboxPurge, formatTime(time.Now().Add(-age)), limit)
}

// inboxExec runs one statement on the database and returns the rows it
// changed.
func (d *Dialect) inboxExec(ctx context.Context, op, stmt string, args ...any) (int, error) {
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

// ListInbox returns the inbox rows matching q in seq order.
func (d *Dialect) ListInbox(ctx context.Context, q dialects.InboxQuery) ([]dialects.InboxRow, error) {
	var (
		b    strings.Builder
		args []any
	)
	b.WriteString("SELECT " + sqlInboxColumns + ", 0 FROM durable_inbox WHERE 1=1")
	if q.Source != "" {
		b.WriteString(" AND source = ?")
		args = append(args, q.Source)
	}
	if len(q.IDs) > 0 {
		ids, err := inboxJSON(q.IDs)
		if err != nil {
			return nil, fmt.Errorf("durable/sqlite: list inbox: %w", err)
		}
		b.WriteString(" AND id IN (SELECT value FROM json_each(?))")
		args = append(args, ids)
	}
	if q.State != "" {
		b.WriteString(" AND state = ?")
		args = append(args, q.State)
	}
	b.WriteString(" ORDER BY seq")
	if q.Limit > 0 {
		b.WriteString(" LIMIT ?")
		args = append(args, q.Limit)
	}
	rs, err := d.db.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return nil, schemaError(ctx, d.db, "list inbox", err)
	}
	out, err := scanInboxRows(rs)
	if err != nil {
		return nil, fmt.Errorf("durable/sqlite: list inbox: %w", err)
	}
	return out, nil
}

// scanInboxRows reads rows of sqlInboxColumns plus the expired flag and
// closes rs.
func scanInboxRows(rs *sql.Rows) ([]dialects.InboxRow, error) {
	defer rs.Close()
	var out []dialects.InboxRow
	for rs.Next() {
		var (
			r                                     dialects.InboxRow
			headers, errs, created, received, run string
			expires, lockedUntil, handled, replay sql.NullString
			token, lockedBy, lastError            sql.NullString
		)
		if err := rs.Scan(&r.Seq, &r.Source, &r.ID, &r.Topic, &r.Key, &headers, &r.Payload, &created, &received,
			&expires, &r.State, &r.Attempts, &run, &token, &lockedBy, &lockedUntil, &lastError, &errs,
			&handled, &replay, &r.Expired); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(headers), &r.Headers); err != nil {
			return nil, fmt.Errorf("headers of %q: %w", r.ID, err)
		}
		if err := json.Unmarshal([]byte(errs), &r.Errors); err != nil {
			return nil, fmt.Errorf("errors of %q: %w", r.ID, err)
		}
		r.LeaseToken, r.LockedBy, r.LastError = token.String, lockedBy.String, lastError.String
		for _, f := range []struct {
			dst *time.Time
			src sql.NullString
		}{
			{&r.CreatedAt, sql.NullString{String: created, Valid: true}},
			{&r.ReceivedAt, sql.NullString{String: received, Valid: true}},
			{&r.RunAt, sql.NullString{String: run, Valid: true}},
			{&r.ExpiresAt, expires},
			{&r.LockedUntil, lockedUntil},
			{&r.HandledAt, handled},
			{&r.ReplayedAt, replay},
		} {
			var err error
			if *f.dst, err = parseNullTime(f.src); err != nil {
				return nil, fmt.Errorf("%q: %w", r.ID, err)
			}
		}
		out = append(out, r)
	}
	return out, rs.Err()
}

// InboxStats counts the inbox rows by state and the pending inbox dead
// letters.
func (d *Dialect) InboxStats(ctx context.Context) (dialects.InboxStats, error) {
	var s dialects.InboxStats
	err := d.db.QueryRowContext(ctx, sqlInboxStats).Scan(&s.Ready, &s.Retrying, &s.Running, &s.Handled, &s.Dead)
	if err != nil {
		return s, schemaError(ctx, d.db, "inbox stats", err)
	}
	return s, nil
}

// inboxDeadFilter builds the conditions on durable_dead_letters d of an inbox
// dead-letter statement and its LIMIT clause, with their arguments, which
// start at parameter number first.
func inboxDeadFilter(f dialects.InboxDeadLetterQuery, first int) (stmt func(string) string, args []any, err error) {
	conds := []string{"d.side = 'inbox'", "d.destination = ''"}
	add := func(cond string, arg any) {
		args = append(args, arg)
		conds = append(conds, fmt.Sprintf(cond, first+len(args)-1))
	}
	if f.Source != "" {
		add("d.source = ?%d", f.Source)
	}
	if f.Topic != "" {
		add("d.topic = ?%d", f.Topic)
	}
	if f.Reason != "" {
		add("d.reason = ?%d", f.Reason)
	}
	if len(f.IDs) > 0 {
		ids, err := inboxJSON(f.IDs)
		if err != nil {
			return nil, nil, err
		}
		add("d.id IN (SELECT value FROM json_each(?%d))", ids)
	}
	if !f.Since.IsZero() {
		add("d.failed_at >= ?%d", formatTime(f.Since))
	}
	if !f.Before.IsZero() {
		add("d.failed_at < ?%d", formatTime(f.Before))
	}
	if !f.IncludeReplayed {
		conds = append(conds, "(d.replayed_at IS NULL OR d.replayed_at < d.failed_at)")
	}
	limit := ""
	if f.Limit > 0 {
		args = append(args, f.Limit)
		limit = fmt.Sprintf("LIMIT ?%d", first+len(args)-1)
	}
	r := strings.NewReplacer("{where}", strings.Join(conds, " AND "), "{limit}", limit)
	return r.Replace, args, nil
}

// ListInboxDeadLetters returns the inbox's dead letters matching q in seq
// order.
func (d *Dialect) ListInboxDeadLetters(ctx context.Context, q dialects.InboxDeadLetterQuery) ([]dialects.InboxDeadLetter, error) {
	stmt, args, err := inboxDeadFilter(q, 1)
	if err != nil {
		return nil, fmt.Errorf("durable/sqlite: list inbox dead letters: %w", err)
	}
	rs, err := d.db.QueryContext(ctx, stmt(sqlInboxListDead), args...)
	if err != nil {
		return nil, schemaError(ctx, d.db, "list inbox dead letters", err)
	}
	defer rs.Close()
	var out []dialects.InboxDeadLetter
	for rs.Next() {
		var (
			r                             dialects.InboxDeadLetter
			headers, errs, created, first string
			failed                        string
			expires, replayed             sql.NullString
		)
		if err := rs.Scan(&r.Seq, &r.Source, &r.ID, &r.Topic, &r.Key, &headers, &r.Payload, &created, &expires,
			&r.Reason, &r.Attempts, &r.LastError, &errs, &first, &failed, &replayed); err != nil {
			return nil, fmt.Errorf("durable/sqlite: list inbox dead letters: %w", err)
		}
		if err := json.Unmarshal([]byte(headers), &r.Headers); err != nil {
			return nil, fmt.Errorf("durable/sqlite: list inbox dead letters: headers of %q: %w", r.ID, err)
		}
		if err := json.Unmarshal([]byte(errs), &r.Errors); err != nil {
			return nil, fmt.Errorf("durable/sqlite: list inbox dead letters: errors of %q: %w", r.ID, err)
		}
		for _, f := range []struct {
			dst *time.Time
			src sql.NullString
		}{
			{&r.CreatedAt, sql.NullString{String: created, Valid: true}},
			{&r.FirstFailedAt, sql.NullString{String: first, Valid: true}},
			{&r.FailedAt, sql.NullString{String: failed, Valid: true}},
			{&r.ExpiresAt, expires},
			{&r.ReplayedAt, replayed},
		} {
			if *f.dst, err = parseNullTime(f.src); err != nil {
				return nil, fmt.Errorf("durable/sqlite: list inbox dead letters: %q: %w", r.ID, err)
			}
		}
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("durable/sqlite: list inbox dead letters: %w", err)
	}
	return out, nil
}

// ReplayInboxDeadLetters puts pending dead letters back into the inbox in
// one transaction of two statements; see dialects.InboxStore.
func (d *Dialect) ReplayInboxDeadLetters(ctx context.Context, q dialects.InboxDeadLetterQuery) (n int, err error) {
	stmt, args, err := inboxDeadFilter(q, 2)
	if err != nil {
		return 0, fmt.Errorf("durable/sqlite: replay inbox dead letters: %w", err)
	}
	now, _, _ := inboxNow()
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("durable/sqlite: replay inbox dead letters: begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	rs, err := tx.QueryContext(ctx, stmt(sqlInboxReplayInsert), append([]any{now}, args...)...)
	if err != nil {
		return 0, schemaError(ctx, tx, "replay inbox dead letters", err)
	}
	var keys [][2]string
	for rs.Next() {
		var k [2]string
		if err := rs.Scan(&k[0], &k[1]); err != nil {
			rs.Close()
			return 0, fmt.Errorf("durable/sqlite: replay inbox dead letters: %w", err)
		}
		keys = append(keys, k)
	}
	if err := rs.Err(); err != nil {
		return 0, fmt.Errorf("durable/sqlite: replay inbox dead letters: %w", err)
	}
	if len(keys) > 0 {
		kj, err := inboxJSON(keys)
		if err != nil {
			return 0, fmt.Errorf("durable/sqlite: replay inbox dead letters: %w", err)
		}
		if _, err := tx.ExecContext(ctx, sqlInboxReplayMark, now, kj); err != nil {
			return 0, fmt.Errorf("durable/sqlite: replay inbox dead letters: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("durable/sqlite: replay inbox dead letters: commit: %w", err)
	}
	return len(keys), nil
}

// PurgeInboxDeadLetters deletes the inbox's dead letters matching q in one
// statement.
func (d *Dialect) PurgeInboxDeadLetters(ctx context.Context, q dialects.InboxDeadLetterQuery) (int, error) {
	stmt, args, err := inboxDeadFilter(q, 1)
	if err != nil {
		return 0, fmt.Errorf("durable/sqlite: purge inbox dead letters: %w", err)
	}
	return d.inboxExec(ctx, "purge inbox dead letters", stmt(sqlInboxPurgeDead), args...)
}
