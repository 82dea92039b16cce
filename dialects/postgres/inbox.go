package postgres

import (
	"cmp"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable/dialects"
)

var (
	_ dialects.InboxStore[pgx.Tx]  = (*Dialect)(nil)
	_ dialects.InboxStore[*sql.Tx] = (*SQLDialect)(nil)
)

// inboxQ returns the inbox statements for the dialect's schema.
func (c *core) inboxQ() *inboxQueries {
	qualifier := ""
	if len(c.table) == 2 {
		qualifier = pgx.Identifier{c.table[0]}.Sanitize() + "."
	}
	return inboxQueriesFor(qualifier)
}

// inboxMicros converts a duration to the bigint microseconds the statements take.
func inboxMicros(d time.Duration) int64 { return d.Microseconds() }

func (c *core) insertInbox(ctx context.Context, q querier, rows []dialects.InboxRow) ([]bool, error) {
	if c.err != nil {
		return nil, c.err
	}
	stored := make([]bool, len(rows))
	if len(rows) == 0 {
		return stored, nil
	}
	n := len(rows)
	var (
		sources, ids, topics, keys, headers = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		payloads                            = make([][]byte, n)
		created, expires, runAt             = make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n)
	)
	for i := range rows {
		r := &rows[i]
		h, err := headersJSON(r.Headers)
		if err != nil {
			return nil, fmt.Errorf("durable: postgres: insert inbox: headers of %q: %w", r.ID, err)
		}
		sources[i], ids[i], topics[i], keys[i], headers[i] = r.Source, r.ID, r.Topic, r.Key, h
		payloads[i] = r.Payload
		if payloads[i] == nil {
			payloads[i] = emptyPayload
		}
		created[i], expires[i], runAt[i] = nullTime(r.CreatedAt), nullTime(r.ExpiresAt), nullTime(r.RunAt)
	}
	iq := c.inboxQ()
	rs, err := q.query(ctx, iq.insert, sources, ids, topics, keys, headers, payloads, created, expires, runAt)
	if err != nil {
		return nil, c.opError(ctx, "insert inbox", err)
	}
	inserted, err := inboxScanKeys(rs)
	if err != nil {
		return nil, c.opError(ctx, "insert inbox", err)
	}
	if len(inserted) > 0 {
		ks, is := inboxKeyColumns(inserted)
		rs, err := q.query(ctx, iq.uninsertDead, ks, is)
		if err != nil {
			return nil, c.opError(ctx, "insert inbox: check dead letters", err)
		}
		removed, err := inboxScanKeys(rs)
		if err != nil {
			return nil, c.opError(ctx, "insert inbox: check dead letters", err)
		}
		for k := range removed {
			delete(inserted, k)
		}
	}
	for i := range rows {
		k := dialects.InboxKey{Source: rows[i].Source, ID: rows[i].ID}
		if _, ok := inserted[k]; ok {
			stored[i] = true
			delete(inserted, k) // a later repeat within rows is a duplicate
		}
	}
	return stored, nil
}

// inboxScanKeys reads (source, id) rows to the end and closes rs.
func inboxScanKeys(rs rows) (map[dialects.InboxKey]struct{}, error) {
	defer rs.Close()
	out := make(map[dialects.InboxKey]struct{})
	for rs.Next() {
		var k dialects.InboxKey
		if err := rs.Scan(&k.Source, &k.ID); err != nil {
			return nil, err
		}
		out[k] = struct{}{}
	}
	return out, rs.Err()
}

func inboxKeyColumns(m map[dialects.InboxKey]struct{}) (sources, ids []string) {
	for k := range m {
		sources = append(sources, k.Source)
		ids = append(ids, k.ID)
	}
	return sources, ids
}

// ownConn lends a connection of the dialect's pool (or database) to one
// call; release gives it back, discarding it when broken is true (the
// session state is unknown).
type ownConn func(ctx context.Context) (q querier, release func(broken bool), err error)

// inOwnTx runs fn in a short transaction of its own on a connection of
// acquire, begun with sqlInboxOwnTx, and commits.
func (c *core) inOwnTx(ctx context.Context, acquire ownConn, fn func(q querier) error) (err error) {
	q, release, err := acquire(ctx)
	if err != nil {
		return err
	}
	if err := q.exec(ctx, sqlInboxOwnTx); err != nil {
		release(true)
		return err
	}
	if err := fn(q); err != nil {
		release(q.exec(context.WithoutCancel(ctx), "ROLLBACK") != nil)
		return err
	}
	if err := q.exec(ctx, "COMMIT"); err != nil {
		release(true)
		return err
	}
	release(false)
	return nil
}

func (c *core) claimInbox(ctx context.Context, acquire ownConn, cl dialects.InboxClaim) ([]dialects.InboxRow, error) {
	if c.err != nil {
		return nil, c.err
	}
	if cl.Token == "" || cl.Limit <= 0 || cl.Lease <= 0 {
		return nil, errors.New("durable: postgres: claim inbox: Token, a positive Limit and a positive Lease are required")
	}
	var filter strings.Builder
	if err := inboxTopicFilter(&filter, " AND i.topic IN (", cl.Topics); err != nil {
		return nil, err
	}
	if err := inboxTopicFilter(&filter, " AND i.topic NOT IN (", cl.ExcludeTopics); err != nil {
		return nil, err
	}
	stmt := strings.NewReplacer("{topics}", filter.String(), "{limit}", strconv.Itoa(cl.Limit)).Replace(c.inboxQ().claim)
	var out []dialects.InboxRow
	err := c.inOwnTx(ctx, acquire, func(q querier) error {
		rs, err := q.query(ctx, stmt, cl.Token, cl.Worker, inboxMicros(cl.Lease))
		if err != nil {
			return err
		}
		out, err = scanInboxRows(rs)
		return err
	})
	if err != nil {
		return nil, c.opError(ctx, "claim inbox", err)
	}
	slices.SortFunc(out, func(a, b dialects.InboxRow) int { return cmp.Compare(a.Seq, b.Seq) })
	return out, nil
}

// inboxTopicFilter writes op, topics as literals and ")" to b, or nothing
// for no topics.
func inboxTopicFilter(b *strings.Builder, op string, topics []string) error {
	if len(topics) == 0 {
		return nil
	}
	b.WriteString(op)
	for i, t := range topics {
		if strings.IndexByte(t, 0) >= 0 || !utf8.ValidString(t) {
			return fmt.Errorf("durable: postgres: claim inbox: invalid topic %q", t)
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(inboxLiteral(t))
	}
	b.WriteString(")")
	return nil
}

// inboxLiteral quotes s as an SQL string literal (standard_conforming_strings,
// on by default since Postgres 9.1, makes backslashes ordinary characters;
// an E” literal does not depend on it).
func inboxLiteral(s string) string {
	return "E'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", "''") + "'"
}

func (c *core) lockInbox(ctx context.Context, q querier, token string, keys []dialects.InboxKey) ([]dialects.InboxKey, error) {
	if c.err != nil {
		return nil, c.err
	}
	if len(keys) == 0 {
		return nil, nil
	}
	sources, ids := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		sources[i], ids[i] = k.Source, k.ID
	}
	rs, err := q.query(ctx, c.inboxQ().lock, token, sources, ids)
	if err != nil {
		return nil, c.opError(ctx, "lock inbox", err)
	}
	held, err := inboxScanKeys(rs)
	if err != nil {
		return nil, c.opError(ctx, "lock inbox", err)
	}
	out := make([]dialects.InboxKey, 0, len(held))
	for _, k := range keys {
		if _, ok := held[k]; ok {
			out = append(out, k)
			delete(held, k)
		}
	}
	return out, nil
}

func (c *core) inboxSavepoint(ctx context.Context, q querier, a dialects.SavepointAction) error {
	var stmt string
	switch a {
	case dialects.SavepointSet:
		stmt = sqlInboxSavepointSet
	case dialects.SavepointRelease:
		stmt = sqlInboxSavepointRelease
	case dialects.SavepointReleaseSet:
		stmt = sqlInboxSavepointReleaseSet
	case dialects.SavepointRollback:
		stmt = sqlInboxSavepointRollback
	default:
		return fmt.Errorf("durable: postgres: savepoint: unknown action %d", a)
	}
	if err := q.exec(ctx, stmt); err != nil {
		return fmt.Errorf("durable: postgres: %s: %w", stmt, err)
	}
	return nil
}

// inboxOutcomeKind is the kind column of sqlFinishInbox.
func inboxOutcomeKind(k dialects.InboxOutcomeKind) (string, error) {
	switch k {
	case dialects.InboxHandled:
		return "h", nil
	case dialects.InboxRetry:
		return "r", nil
	case dialects.InboxDead:
		return "d", nil
	}
	return "", fmt.Errorf("durable: postgres: finish inbox: unknown outcome kind %d", k)
}

func (c *core) finishInbox(ctx context.Context, q querier, token string, outs []dialects.InboxOutcome) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if len(outs) == 0 {
		return 0, nil
	}
	n := len(outs)
	var (
		sources, ids, kinds, errs, reasons = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		delays                             = make([]int64, n)
		undo                               = make([]bool, n)
	)
	for i, o := range outs {
		k, err := inboxOutcomeKind(o.Kind)
		if err != nil {
			return 0, err
		}
		if o.Kind == dialects.InboxDead && o.Reason == "" {
			return 0, fmt.Errorf("durable: postgres: finish inbox: dead letter %q without a reason", o.ID)
		}
		sources[i], ids[i], kinds[i], errs[i], reasons[i] = o.Source, o.ID, k, o.Error, o.Reason
		delays[i], undo[i] = inboxMicros(max(o.RetryAfter, 0)), o.UndoAttempt
	}
	var count int
	rs, err := q.query(ctx, c.inboxQ().finish, token, sources, ids, kinds, errs, delays, undo, reasons)
	if err == nil {
		err = scanOne(rs, &count)
	}
	if err != nil {
		return 0, c.opError(ctx, "finish inbox", err)
	}
	return count, nil
}

func (c *core) inboxCount(ctx context.Context, q querier, op, stmt string, args ...any) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	var count int
	rs, err := q.query(ctx, stmt, args...)
	if err == nil {
		err = scanOne(rs, &count)
	}
	if err != nil {
		return 0, c.opError(ctx, op, err)
	}
	return count, nil
}

func (c *core) rescueInbox(ctx context.Context, limit int) (int, error) {
	if limit <= 0 {
		return 0, errors.New("durable: postgres: rescue inbox: limit must be positive")
	}
	return c.inboxCount(ctx, c.root, "rescue inbox", strings.Replace(c.inboxQ().rescue, "{limit}", strconv.Itoa(limit), 1))
}

func (c *core) purgeInbox(ctx context.Context, acquire ownConn, age time.Duration, limit int) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if limit <= 0 {
		return 0, errors.New("durable: postgres: purge inbox: limit must be positive")
	}
	var n int
	err := c.inOwnTx(ctx, acquire, func(q querier) error {
		rs, err := q.query(ctx, strings.Replace(c.inboxQ().purge, "{limit}", strconv.Itoa(limit), 1), inboxMicros(age))
		if err != nil {
			return err
		}
		return scanOne(rs, &n)
	})
	if err != nil {
		return 0, c.opError(ctx, "purge inbox", err)
	}
	return n, nil
}

// pgxConn lends a connection of pool; a broken one is closed instead of
// returned (pgxpool also destroys a connection left inside a transaction).
func pgxConn(pool *pgxpool.Pool) ownConn {
	return func(ctx context.Context) (querier, func(bool), error) {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return nil, nil, err
		}
		return pgxQuerier{conn}, func(broken bool) {
			if broken {
				_ = conn.Conn().Close(context.Background())
			}
			conn.Release()
		}, nil
	}
}

// sqlConn lends a connection of db; a broken one is discarded, never
// returned to the pool with a transaction open.
func sqlConn(db *sql.DB) ownConn {
	return func(ctx context.Context) (querier, func(bool), error) {
		conn, err := db.Conn(ctx)
		if err != nil {
			return nil, nil, err
		}
		return sqlQuerier{conn}, func(broken bool) {
			if broken {
				_ = conn.Raw(func(any) error { return driver.ErrBadConn })
			}
			_ = conn.Close()
		}, nil
	}
}

func (c *core) inboxStats(ctx context.Context) (dialects.InboxStats, error) {
	var s dialects.InboxStats
	if c.err != nil {
		return s, c.err
	}
	rs, err := c.root.query(ctx, c.inboxQ().stats)
	if err == nil {
		err = scanOne(rs, &s.Ready, &s.Retrying, &s.Running, &s.Handled, &s.Dead)
	}
	if err != nil {
		return s, c.opError(ctx, "inbox stats", err)
	}
	return s, nil
}

func (c *core) listInbox(ctx context.Context, f dialects.InboxQuery) ([]dialects.InboxRow, error) {
	if c.err != nil {
		return nil, c.err
	}
	var (
		b     strings.Builder
		args  []any
		where []string
	)
	b.WriteString(c.inboxQ().list)
	if f.Source != "" {
		args = append(args, f.Source)
		where = append(where, fmt.Sprintf("i.source = $%d", len(args)))
	}
	if len(f.IDs) > 0 {
		args = append(args, f.IDs)
		where = append(where, fmt.Sprintf("i.id = ANY($%d::text[])", len(args)))
	}
	if f.State != "" {
		args = append(args, f.State)
		where = append(where, fmt.Sprintf("i.state = $%d", len(args)))
	}
	if len(where) > 0 {
		b.WriteString("\nWHERE " + strings.Join(where, " AND "))
	}
	b.WriteString("\nORDER BY i.seq")
	if f.Limit > 0 {
		args = append(args, f.Limit)
		fmt.Fprintf(&b, "\nLIMIT $%d", len(args))
	}
	rs, err := c.root.query(ctx, b.String(), args...)
	if err != nil {
		return nil, c.opError(ctx, "list inbox", err)
	}
	out, err := scanInboxRows(rs)
	if err != nil {
		return nil, c.opError(ctx, "list inbox", err)
	}
	return out, nil
}

// scanInboxRows reads rows of inboxColumns plus the expired flag, and closes
// rs.
func scanInboxRows(rs rows) ([]dialects.InboxRow, error) {
	defer rs.Close()
	var out []dialects.InboxRow
	for rs.Next() {
		var (
			r                                           dialects.InboxRow
			headers, errs                               []byte
			expires, lockedUntil, handledAt, replayedAt sql.NullTime
			leaseToken, lockedBy, lastError             sql.NullString
			created, received, runAt                    time.Time
		)
		if err := rs.Scan(&r.Seq, &r.Source, &r.ID, &r.Topic, &r.Key, &headers, &r.Payload, &created, &received,
			&expires, &r.State, &r.Attempts, &runAt, &leaseToken, &lockedBy, &lockedUntil,
			&lastError, &errs, &handledAt, &replayedAt, &r.Expired); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(headers, &r.Headers); err != nil {
			return nil, fmt.Errorf("headers of %q: %w", r.ID, err)
		}
		if err := json.Unmarshal(errs, &r.Errors); err != nil {
			return nil, fmt.Errorf("errors of %q: %w", r.ID, err)
		}
		r.CreatedAt, r.ReceivedAt, r.RunAt = created.UTC(), received.UTC(), runAt.UTC()
		r.ExpiresAt, r.LockedUntil, r.HandledAt, r.ReplayedAt = inboxUTC(expires), inboxUTC(lockedUntil), inboxUTC(handledAt), inboxUTC(replayedAt)
		r.LeaseToken, r.LockedBy, r.LastError = leaseToken.String, lockedBy.String, lastError.String
		out = append(out, r)
	}
	return out, rs.Err()
}

// inboxUTC returns the time of t in UTC, or the zero time for NULL.
func inboxUTC(t sql.NullTime) time.Time {
	if !t.Valid {
		return time.Time{}
	}
	return t.Time.UTC()
}

// inboxDeadFilter builds the conditions on durable_dead_letters d of an inbox
// dead-letter statement and its LIMIT clause, with their arguments.
func inboxDeadFilter(f dialects.InboxDeadLetterQuery) (where, limit string, args []any) {
	conds := []string{"d.side = 'inbox'", "d.destination = ''"}
	add := func(cond string, arg any) {
		args = append(args, arg)
		conds = append(conds, fmt.Sprintf(cond, len(args)))
	}
	if f.Source != "" {
		add("d.source = $%d", f.Source)
	}
	if f.Topic != "" {
		add("d.topic = $%d", f.Topic)
	}
	if f.Reason != "" {
		add("d.reason = $%d", f.Reason)
	}
	if len(f.IDs) > 0 {
		add("d.id = ANY($%d::text[])", f.IDs)
	}
	if !f.Since.IsZero() {
		add("d.failed_at >= $%d", f.Since)
	}
	if !f.Before.IsZero() {
		add("d.failed_at < $%d", f.Before)
	}
	if !f.IncludeReplayed {
		conds = append(conds, "(d.replayed_at IS NULL OR d.replayed_at < d.failed_at)")
	}
	if f.Limit > 0 {
		args = append(args, f.Limit)
		limit = fmt.Sprintf("LIMIT $%d", len(args))
	}
	return strings.Join(conds, " AND "), limit, args
}

func inboxDeadStmt(stmt string, f dialects.InboxDeadLetterQuery) (string, []any) {
	where, limit, args := inboxDeadFilter(f)
	return strings.NewReplacer("{where}", where, "{limit}", limit).Replace(stmt), args
}

func (c *core) listInboxDead(ctx context.Context, f dialects.InboxDeadLetterQuery) ([]dialects.InboxDeadLetter, error) {
	if c.err != nil {
		return nil, c.err
	}
	stmt, args := inboxDeadStmt(c.inboxQ().listDead, f)
	rs, err := c.root.query(ctx, stmt, args...)
	if err != nil {
		return nil, c.opError(ctx, "list inbox dead letters", err)
	}
	defer rs.Close()
	var out []dialects.InboxDeadLetter
	for rs.Next() {
		var (
			r                   dialects.InboxDeadLetter
			headers, errs       []byte
			expires, replayedAt sql.NullTime
			created, first, at  time.Time
		)
		if err := rs.Scan(&r.Seq, &r.Source, &r.ID, &r.Topic, &r.Key, &headers, &r.Payload, &created, &expires,
			&r.Reason, &r.Attempts, &r.LastError, &errs, &first, &at, &replayedAt); err != nil {
			return nil, c.opError(ctx, "list inbox dead letters", err)
		}
		if err := json.Unmarshal(headers, &r.Headers); err != nil {
			return nil, fmt.Errorf("durable: postgres: list inbox dead letters: headers of %q: %w", r.ID, err)
		}
		if err := json.Unmarshal(errs, &r.Errors); err != nil {
			return nil, fmt.Errorf("durable: postgres: list inbox dead letters: errors of %q: %w", r.ID, err)
		}
		r.CreatedAt, r.FirstFailedAt, r.FailedAt = created.UTC(), first.UTC(), at.UTC()
		r.ExpiresAt, r.ReplayedAt = inboxUTC(expires), inboxUTC(replayedAt)
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		return nil, c.opError(ctx, "list inbox dead letters", err)
	}
	return out, nil
}

func (c *core) replayInboxDead(ctx context.Context, f dialects.InboxDeadLetterQuery) (int, error) {
	stmt, args := inboxDeadStmt(c.inboxQ().replayDead, f)
	return c.inboxCount(ctx, c.root, "replay inbox dead letters", stmt, args...)
}

func (c *core) purgeInboxDead(ctx context.Context, f dialects.InboxDeadLetterQuery) (int, error) {
	stmt, args := inboxDeadStmt(c.inboxQ().purgeDead, f)
	return c.inboxCount(ctx, c.root, "purge inbox dead letters", stmt, args...)
}

// InsertInbox stores rows in tx with one INSERT … FROM unnest … ON CONFLICT
// DO NOTHING statement, whatever their number, and reports which were stored;
// see dialects.InboxStore. A second statement, run only when rows were
// stored, takes back a row whose message was moved to the dead letters by a
// transaction that committed while the insert waited for it.
func (d *Dialect) InsertInbox(ctx context.Context, tx pgx.Tx, rows []dialects.InboxRow) ([]bool, error) {
	return d.insertInbox(ctx, pgxQuerier{tx}, rows)
}

// ClaimInbox leases due ready rows with FOR UPDATE SKIP LOCKED in one
// statement, in a short transaction with planner settings that keep the
// claim an ordered index scan on stale statistics (see sqlInboxOwnTx); see
// dialects.InboxStore.
func (d *Dialect) ClaimInbox(ctx context.Context, c dialects.InboxClaim) ([]dialects.InboxRow, error) {
	return d.claimInbox(ctx, pgxConn(d.pool), c)
}

// LockInbox locks, with SELECT … FOR UPDATE in tx, the rows of keys still
// leased to token and returns them; see dialects.InboxStore.
func (d *Dialect) LockInbox(ctx context.Context, tx pgx.Tx, token string, keys []dialects.InboxKey) ([]dialects.InboxKey, error) {
	return d.lockInbox(ctx, pgxQuerier{tx}, token, keys)
}

// InboxSavepoint runs a savepoint step in tx; see dialects.SavepointAction.
func (d *Dialect) InboxSavepoint(ctx context.Context, tx pgx.Tx, a dialects.SavepointAction) error {
	return d.inboxSavepoint(ctx, pgxQuerier{tx}, a)
}

// FinishInbox settles a batch in one statement in tx; see
// dialects.InboxStore.
func (d *Dialect) FinishInbox(ctx context.Context, tx pgx.Tx, token string, outcomes []dialects.InboxOutcome) (int, error) {
	return d.finishInbox(ctx, pgxQuerier{tx}, token, outcomes)
}

// RescueInbox makes rows with expired leases ready again, skipping rows a
// batch transaction holds; see dialects.InboxStore.
func (d *Dialect) RescueInbox(ctx context.Context, limit int) (int, error) {
	return d.rescueInbox(ctx, limit)
}

// PurgeInbox deletes handled rows older than age, up to limit; see
// dialects.InboxStore.
func (d *Dialect) PurgeInbox(ctx context.Context, age time.Duration, limit int) (int, error) {
	return d.purgeInbox(ctx, pgxConn(d.pool), age, limit)
}

// ListInbox returns the inbox rows matching q in seq order.
func (d *Dialect) ListInbox(ctx context.Context, q dialects.InboxQuery) ([]dialects.InboxRow, error) {
	return d.listInbox(ctx, q)
}

// InboxStats counts the inbox rows by state and the pending inbox dead
// letters.
func (d *Dialect) InboxStats(ctx context.Context) (dialects.InboxStats, error) {
	return d.inboxStats(ctx)
}

// ListInboxDeadLetters returns the inbox's dead letters matching q in seq
// order.
func (d *Dialect) ListInboxDeadLetters(ctx context.Context, q dialects.InboxDeadLetterQuery) ([]dialects.InboxDeadLetter, error) {
	return d.listInboxDead(ctx, q)
}

// ReplayInboxDeadLetters puts pending dead letters back into the inbox in
// one statement; see dialects.InboxStore.
func (d *Dialect) ReplayInboxDeadLetters(ctx context.Context, q dialects.InboxDeadLetterQuery) (int, error) {
	return d.replayInboxDead(ctx, q)
}

// PurgeInboxDeadLetters deletes the inbox's dead letters matching q.
func (d *Dialect) PurgeInboxDeadLetters(ctx context.Context, q dialects.InboxDeadLetterQuery) (int, error) {
	return d.purgeInboxDead(ctx, q)
}

// InsertInbox is Dialect.InsertInbox for a *sql.Tx.
func (d *SQLDialect) InsertInbox(ctx context.Context, tx *sql.Tx, rows []dialects.InboxRow) ([]bool, error) {
	return d.insertInbox(ctx, sqlQuerier{tx}, rows)
}

// ClaimInbox is Dialect.ClaimInbox.
func (d *SQLDialect) ClaimInbox(ctx context.Context, c dialects.InboxClaim) ([]dialects.InboxRow, error) {
	return d.claimInbox(ctx, sqlConn(d.db), c)
}

// LockInbox is Dialect.LockInbox for a *sql.Tx.
func (d *SQLDialect) LockInbox(ctx context.Context, tx *sql.Tx, token string, keys []dialects.InboxKey) ([]dialects.InboxKey, error) {
	return d.lockInbox(ctx, sqlQuerier{tx}, token, keys)
}

// InboxSavepoint is Dialect.InboxSavepoint for a *sql.Tx.
func (d *SQLDialect) InboxSavepoint(ctx context.Context, tx *sql.Tx, a dialects.SavepointAction) error {
	return d.inboxSavepoint(ctx, sqlQuerier{tx}, a)
}

// FinishInbox is Dialect.FinishInbox for a *sql.Tx.
func (d *SQLDialect) FinishInbox(ctx context.Context, tx *sql.Tx, token string, outcomes []dialects.InboxOutcome) (int, error) {
	return d.finishInbox(ctx, sqlQuerier{tx}, token, outcomes)
}

// RescueInbox is Dialect.RescueInbox.
func (d *SQLDialect) RescueInbox(ctx context.Context, limit int) (int, error) {
	return d.rescueInbox(ctx, limit)
}

// PurgeInbox is Dialect.PurgeInbox.
func (d *SQLDialect) PurgeInbox(ctx context.Context, age time.Duration, limit int) (int, error) {
	return d.purgeInbox(ctx, sqlConn(d.db), age, limit)
}

// ListInbox is Dialect.ListInbox.
func (d *SQLDialect) ListInbox(ctx context.Context, q dialects.InboxQuery) ([]dialects.InboxRow, error) {
	return d.listInbox(ctx, q)
}

// InboxStats is Dialect.InboxStats.
func (d *SQLDialect) InboxStats(ctx context.Context) (dialects.InboxStats, error) {
	return d.inboxStats(ctx)
}

// ListInboxDeadLetters is Dialect.ListInboxDeadLetters.
func (d *SQLDialect) ListInboxDeadLetters(ctx context.Context, q dialects.InboxDeadLetterQuery) ([]dialects.InboxDeadLetter, error) {
	return d.listInboxDead(ctx, q)
}

// ReplayInboxDeadLetters is Dialect.ReplayInboxDeadLetters.
func (d *SQLDialect) ReplayInboxDeadLetters(ctx context.Context, q dialects.InboxDeadLetterQuery) (int, error) {
	return d.replayInboxDead(ctx, q)
}

// PurgeInboxDeadLetters is Dialect.PurgeInboxDeadLetters.
func (d *SQLDialect) PurgeInboxDeadLetters(ctx context.Context, q dialects.InboxDeadLetterQuery) (int, error) {
	return d.purgeInboxDead(ctx, q)
}
