package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/durable-go/durable/dialects"
	insertedrows "github.com/durable-go/durable/dialects/internal/inserted"
)

// The inbox takes its instants from the process clock, which on an embedded
// database is the database's clock, formatted as every stored time
// (timeLayout, UTC). Error-history entries carry RFC 3339 times, which both
// Go and SQLite's date functions read.
const inboxErrorTimeLayout = "2006-01-02T15:04:05.000Z07:00"

// inboxInsertColumns is the number of parameters per row of InsertInbox.
const inboxInsertColumns = 11

// maxInboxChunkRows is how many rows one INSERT statement of InsertInbox
// carries; larger batches are split into statements of this size.
const maxInboxChunkRows = maxParams / inboxInsertColumns

// inboxChunkRows is maxInboxChunkRows; tests lower it.
var inboxChunkRows = maxInboxChunkRows

const (
	// column10 is the stored form of now for a row asked to be stored
	// handled that is due and not expired (decided by the caller, the
	// process clock being the database's), else NULL; the row is then
	// stored handled when no other unfinished row of its (source, key) is
	// in the inbox (durable_inbox_key_idx). column11 is the lease token a
	// row stored handled keeps (NULL for none), so that FinishInbox can
	// settle it otherwise in the same transaction.
	sqlInboxInsertHead = `INSERT INTO durable_inbox
	(source, id, topic, key, headers, payload, created_at, expires_at, run_at, state, attempts, handled_at, lease_token)
SELECT w.column1, w.column2, w.column3, w.column4, w.column5, w.column6, w.column7, w.column8, w.column9,
	CASE WHEN w.ok THEN 'handled' ELSE 'ready' END, w.ok, CASE WHEN w.ok THEN w.column10 END,
	CASE WHEN w.ok THEN w.column11 END
FROM (SELECT v.*, v.column10 IS NOT NULL AND (v.column4 = '' OR NOT EXISTS (
		SELECT 1 FROM durable_inbox p
		WHERE p.source = v.column1 AND p.key = v.column4 AND p.key <> '' AND p.state <> 'handled')) AS ok
	FROM (VALUES `
	sqlInboxInsertRow = `(?,?,?,?,?,?,?,?,?,?,?)`
	// NOT EXISTS skips messages already in the dead letters; the WHERE also
	// tells SQLite's parser that ON CONFLICT is the upsert clause.
	sqlInboxInsertTail = `) AS v) AS w
WHERE NOT EXISTS (SELECT 1 FROM durable_dead_letters d
	WHERE d.side = 'inbox' AND d.source = w.column1 AND d.destination = '' AND d.id = w.column2)
ON CONFLICT (source, id) DO NOTHING
RETURNING source, id, state = 'handled'`

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
	// undo, reason]; kind: h handled, r retry, d dead. The finishing
	// statements guard rows by the token and state running, or state
	// handled for rows InsertInbox stored handled under the token in this
	// transaction (inline handling whose handler failed).
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
	AND i.state IN ('running', 'handled') AND i.lease_token = ?2`

	// A message dead-lettered before (and replayed since) updates its row,
	// keeping first_failed_at and replayed_at, with a failed_at later than
	// replayed_at (see failedAfterReplay).
	sqlInboxFinishDead = `WITH ` + sqlInboxOutcomes + `, m AS (
	SELECT i.source, i.id, i.topic, i.key, i.headers, i.payload, i.created_at, i.expires_at, i.attempts,
		o.reason, coalesce(nullif(o.err, ''), i.last_error, '') AS last_error,
		CASE WHEN o.err = '' THEN i.errors
			ELSE json_insert(i.errors, '$[#]', json_object('attempt', i.attempts, 'at', ?4, 'error', o.err)) END AS errors
	FROM durable_inbox i JOIN o ON i.source = o.source AND i.id = o.id
	WHERE o.kind = 'd' AND i.state IN ('running', 'handled') AND i.lease_token = ?2)
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
	errors = excluded.errors, failed_at = ` + failedAfterReplayDL

	sqlInboxFinishDelete = `DELETE FROM durable_inbox
WHERE (source, id) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
		FROM json_each(?1) WHERE json_extract(value, '$[2]') = 'd')
	AND state IN ('running', 'handled') AND lease_token = ?2`

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

	// InboxStats: per topic, one row of the inbox's counts and one of its
	// pending dead letters (a topic may have either or both).
	sqlInboxStats = `SELECT topic,
	count(*) FILTER (WHERE state = 'ready' AND attempts = 0),
	count(*) FILTER (WHERE state = 'ready' AND attempts > 0),
	count(*) FILTER (WHERE state = 'running'),
	count(*) FILTER (WHERE state = 'handled'),
	0,
	count(*) FILTER (WHERE state = 'handled' AND handled_at > ?1)
FROM durable_inbox
GROUP BY topic
UNION ALL
SELECT topic, 0, 0, 0, 0, count(*), 0
FROM durable_dead_letters
WHERE side = 'inbox' AND (replayed_at IS NULL OR replayed_at < failed_at)
GROUP BY topic`
)

// inboxInsertSQL returns the InsertInbox statement for n rows.
func inboxInsertSQL(n int) string {
	return valuesSQL(sqlInboxInsertHead, sqlInboxInsertRow, sqlInboxInsertTail, n)
}

// inboxNow returns the stored form of now and the error-history form.
func inboxNow() (stored, errorTime string, now time.Time) {
	now = time.Now().UTC()
	return formatTime(now), now.Format(inboxErrorTimeLayout), now
}

// InsertInbox stores rows in tx with multi-row INSERT … SELECT … FROM
// (VALUES …) … ON CONFLICT DO NOTHING statements of up to 2,978 rows
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
	now, _, t := inboxNow()
	enc := newHeaderEncoder()
	inserted := make(map[dialects.InboxKey]bool, len(rows))
	chunk := inboxChunkRows
	args := make([]any, 0, min(len(rows), chunk)*inboxInsertColumns)
	for part := range slices.Chunk(rows, chunk) {
		args = args[:0]
		for i := range part {
			r := &part[i]
			headers, err := enc.encode(r.Headers)
			if err != nil {
				return nil, fmt.Errorf("durable/sqlite: insert inbox: headers of %q: %w", r.ID, err)
			}
			var handleAt, token any // NULL: store ready; no token
			if r.State == dialects.InboxStateHandled && !r.RunAt.After(t) && (r.ExpiresAt.IsZero() || r.ExpiresAt.After(t)) {
				handleAt = now
				if r.LeaseToken != "" {
					token = r.LeaseToken
				}
			}
			args = append(args, r.Source, r.ID, r.Topic, r.Key, headers, payloadOf(r.Payload),
				timeOr(r.CreatedAt, now), nullTime(r.ExpiresAt), timeOr(r.RunAt, now), handleAt, token)
		}
		got, err := queryAll(ctx, tx, "insert inbox", inboxInsertSQL(len(part)), args, scanInserted)
		if err != nil {
			return nil, err
		}
		for _, g := range got {
			inserted[g.key] = g.handled
		}
	}
	return insertedrows.Mark(rows, inserted), nil
}

// insertedInbox is a row InsertInbox stored, and whether it stored it
// handled.
type insertedInbox struct {
	key     dialects.InboxKey
	handled bool
}

func scanInserted(rs *sql.Rows, r *insertedInbox) error {
	return rs.Scan(&r.key.Source, &r.key.ID, &r.handled)
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
	now, _, t := inboxNow()
	out, err := queryAll(ctx, d.prep(ctx, d.db, sqlInboxClaim), "claim inbox", sqlInboxClaim,
		[]any{now, c.Token, c.Worker, formatTime(t.Add(c.Lease)), jsonParam(topics), jsonParam(exclude), c.Limit}, scanInboxRow)
	if err != nil {
		return nil, err
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
	found, err := queryAll(ctx, d.prep(ctx, tx, sqlInboxLock), "lock inbox", sqlInboxLock, []any{token, jsonParam(pairs)}, scanKey)
	if err != nil {
		return nil, err
	}
	held := make(map[dialects.InboxKey]bool, len(found))
	for _, k := range found {
		held[k] = true
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
	oj := jsonParam(list)
	res, err := d.prep(ctx, tx, sqlInboxFinishUpdate).ExecContext(ctx, sqlInboxFinishUpdate, oj, token, now, errTime)
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
	return exec(ctx, d.db, "rescue inbox", sqlInboxRescue, now, errTime, limit)
}

// PurgeInbox deletes up to limit handled rows older than age, oldest first;
// see dialects.InboxStore.
func (d *Dialect) PurgeInbox(ctx context.Context, age time.Duration, limit int) (int, error) {
	if limit <= 0 {
		return 0, errors.New("durable/sqlite: purge inbox: limit must be positive")
	}
	return exec(ctx, d.db, "purge inbox", sqlInboxPurge, formatTime(time.Now().Add(-age)), limit)
}

// ListInbox returns the inbox rows matching q in seq order.
func (d *Dialect) ListInbox(ctx context.Context, q dialects.InboxQuery) ([]dialects.InboxRow, error) {
	f := syntax.New(0)
	f.Eq("source", q.Source)
	f.In("id", q.IDs)
	f.Eq("state", q.State)
	stmt := f.Statement("SELECT "+sqlInboxColumns+", 0 FROM durable_inbox {where} ORDER BY seq {limit}", q.Limit)
	return queryAll(ctx, d.db, "list inbox", stmt, f.Args(), scanInboxRow)
}

// scanInboxRow reads a row of sqlInboxColumns plus the expired flag.
func scanInboxRow(rs *sql.Rows, r *dialects.InboxRow) error {
	var (
		headers, errs, created, received, run string
		expires, lockedUntil, handled, replay sql.NullString
		token, lockedBy, lastError            sql.NullString
	)
	if err := rs.Scan(&r.Seq, &r.Source, &r.ID, &r.Topic, &r.Key, &headers, &r.Payload, &created, &received,
		&expires, &r.State, &r.Attempts, &run, &token, &lockedBy, &lockedUntil, &lastError, &errs,
		&handled, &replay, &r.Expired); err != nil {
		return err
	}
	if err := decodeJSON(r.ID, headers, &r.Headers, errs, &r.Errors); err != nil {
		return err
	}
	r.LeaseToken, r.LockedBy, r.LastError = token.String, lockedBy.String, lastError.String
	if err := parseTimes(storedTime{&r.CreatedAt, notNull(created)}, storedTime{&r.ReceivedAt, notNull(received)},
		storedTime{&r.RunAt, notNull(run)}, storedTime{&r.ExpiresAt, expires}, storedTime{&r.LockedUntil, lockedUntil},
		storedTime{&r.HandledAt, handled}, storedTime{&r.ReplayedAt, replay}); err != nil {
		return fmt.Errorf("%q: %w", r.ID, err)
	}
	return nil
}

// InboxStats counts the inbox rows by state, those handled in the last
// minute by the process clock, and the pending inbox dead letters, in total
// and per topic.
func (d *Dialect) InboxStats(ctx context.Context) (dialects.InboxStats, error) {
	type topicCounts struct {
		topic string
		n     dialects.InboxCounts
	}
	since := formatTime(time.Now().Add(-time.Minute))
	parts, err := queryAll(ctx, d.db, "inbox stats", sqlInboxStats, []any{since}, func(rs *sql.Rows, t *topicCounts) error {
		return rs.Scan(&t.topic, &t.n.Ready, &t.n.Retrying, &t.n.Running, &t.n.Handled, &t.n.Dead, &t.n.HandledLastMinute)
	})
	if err != nil {
		return dialects.InboxStats{}, err
	}
	var s dialects.InboxStats
	for _, p := range parts {
		if s.Topics == nil {
			s.Topics = make(map[string]dialects.InboxCounts)
		}
		s.Topics[p.topic] = addInboxCounts(s.Topics[p.topic], p.n)
		s.InboxCounts = addInboxCounts(s.InboxCounts, p.n)
	}
	return s, nil
}

// addInboxCounts returns a + b.
func addInboxCounts(a, b dialects.InboxCounts) dialects.InboxCounts {
	return dialects.InboxCounts{
		Ready: a.Ready + b.Ready, Retrying: a.Retrying + b.Retrying, Running: a.Running + b.Running,
		Handled: a.Handled + b.Handled, Dead: a.Dead + b.Dead, HandledLastMinute: a.HandledLastMinute + b.HandledLastMinute,
	}
}
