package postgres

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/durable-go/durable/dialects"
	insertedrows "github.com/durable-go/durable/dialects/internal/inserted"
)

// The inbox's operations. Those that take no transaction are methods of
// core, and so of both flavours; those that do are helpers here, which each
// flavour calls with its transaction. See dialects.InboxStore.

func (c *core) insertInbox(ctx context.Context, q querier, rows []dialects.InboxRow) ([]bool, error) {
	stored := make([]bool, len(rows))
	if len(rows) == 0 {
		return stored, nil
	}
	n := len(rows)
	var (
		sources, ids, topics, keys, headers = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		payloads                            = make([][]byte, n)
		created, expires, runAt             = make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n)
		handle                              = make([]bool, n)
		tokens                              = make([]string, n)
	)
	for i := range rows {
		r := &rows[i]
		h, err := headersJSON(r.Headers)
		if err != nil {
			return nil, fmt.Errorf("durable: postgres: insert inbox: headers of %q: %w", r.ID, err)
		}
		sources[i], ids[i], topics[i], keys[i], headers[i] = r.Source, r.ID, r.Topic, r.Key, h
		payloads[i] = payloadOf(r.Payload)
		created[i], expires[i], runAt[i] = nullTime(r.CreatedAt), nullTime(r.ExpiresAt), nullTime(r.RunAt)
		handle[i] = r.State == dialects.InboxStateHandled
		if handle[i] {
			tokens[i] = r.LeaseToken
		}
	}
	got, err := queryAll(ctx, c, q, "insert inbox", c.q.insertInbox,
		[]any{sources, ids, topics, keys, headers, payloads, created, expires, runAt, handle, tokens}, scanInsertedInbox)
	if err != nil {
		return nil, err
	}
	inserted := make(map[dialects.InboxKey]bool, len(got))
	for _, r := range got {
		inserted[r.key] = r.handled
	}
	if len(inserted) > 0 {
		ks, is := make([]string, 0, len(inserted)), make([]string, 0, len(inserted))
		for k := range inserted {
			ks, is = append(ks, k.Source), append(is, k.ID)
		}
		removed, err := c.queryKeys(ctx, q, "insert inbox: check dead letters", c.q.uninsertInboxDead, ks, is)
		if err != nil {
			return nil, err
		}
		for k := range removed {
			delete(inserted, k)
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

func scanInsertedInbox(rs rows, r *insertedInbox) error {
	return rs.Scan(&r.key.Source, &r.key.ID, &r.handled)
}

// queryKeys runs a statement that returns (source, id) rows through q and
// returns the set of them.
func (c *core) queryKeys(ctx context.Context, q querier, op, stmt string, args ...any) (map[dialects.InboxKey]struct{}, error) {
	keys, err := queryAll(ctx, c, q, op, stmt, args,
		func(rs rows, k *dialects.InboxKey) error { return rs.Scan(&k.Source, &k.ID) })
	if err != nil {
		return nil, err
	}
	out := make(map[dialects.InboxKey]struct{}, len(keys))
	for _, k := range keys {
		out[k] = struct{}{}
	}
	return out, nil
}

// ownConn lends a connection of the dialect's pool (or database) to one
// call; release gives it back, discarding it when broken is true (the
// session state is unknown).
type ownConn func(ctx context.Context) (q querier, release func(broken bool), err error)

// inOwnTx runs fn in a short transaction of its own on a connection of its
// own, begun with sqlInboxOwnTx, and commits.
func (c *core) inOwnTx(ctx context.Context, fn func(q querier) error) (err error) {
	return c.inOwnTxBegun(ctx, sqlInboxOwnTx, fn)
}

// ownTxAttempts bounds how many times inOwnTxBegun runs a transaction that
// the server aborted with a serialization failure.
const ownTxAttempts = 3

// inOwnTxBegun is inOwnTx with begin, a statement that begins the
// transaction and sets it up, in place of sqlInboxOwnTx. A transaction the
// server aborts with a serialization failure (SQLSTATE 40001, which
// SERIALIZABLE transactions get when concurrent claims touch the same rows:
// the default isolation of CockroachDB, or of Postgres with
// default_transaction_isolation = serializable) is run again at once, up to
// ownTxAttempts times in all: fn only claims or purges in a transaction of
// its own, so a repeat is what the caller would do after the error, minus
// its backoff and its report of a database failure.
func (c *core) inOwnTxBegun(ctx context.Context, begin string, fn func(q querier) error) (err error) {
	for attempt := 1; ; attempt++ {
		err = c.ownTxOnce(ctx, begin, fn)
		if attempt == ownTxAttempts || !isSerializationFailure(err) || ctx.Err() != nil {
			return err
		}
	}
}

// ownTxOnce runs one attempt of inOwnTxBegun.
func (c *core) ownTxOnce(ctx context.Context, begin string, fn func(q querier) error) error {
	q, release, err := c.conn(ctx)
	if err != nil {
		return err
	}
	if err := q.exec(ctx, begin); err != nil {
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

// ClaimInbox leases due ready rows with FOR UPDATE SKIP LOCKED in one
// statement, in a short transaction with planner settings that keep the
// claim an ordered index scan on stale statistics (see sqlInboxOwnTx); see
// dialects.InboxStore.
func (c *core) ClaimInbox(ctx context.Context, cl dialects.InboxClaim) ([]dialects.InboxRow, error) {
	if cl.Token == "" || cl.Limit <= 0 || cl.Lease <= 0 {
		return nil, errors.New("durable: postgres: claim inbox: Token, a positive Limit and a positive Lease are required")
	}
	var topics strings.Builder
	if err := inboxTopicFilter(&topics, " AND i.topic IN (", cl.Topics); err != nil {
		return nil, err
	}
	if err := inboxTopicFilter(&topics, " AND i.topic NOT IN (", cl.ExcludeTopics); err != nil {
		return nil, err
	}
	stmt := strings.NewReplacer("{topics}", topics.String(), "{limit}", strconv.Itoa(cl.Limit)).Replace(c.q.claimInbox)
	var out []dialects.InboxRow
	err := c.inOwnTx(ctx, func(q querier) error {
		rs, err := q.query(ctx, stmt, cl.Token, cl.Worker, micros(cl.Lease))
		if err != nil {
			return err
		}
		out, err = scanAll(rs, scanInboxRow)
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
	if len(keys) == 0 {
		return nil, nil
	}
	sources, ids := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		sources[i], ids[i] = k.Source, k.ID
	}
	held, err := c.queryKeys(ctx, q, "lock inbox", c.q.lockInbox, token, sources, ids)
	if err != nil {
		return nil, err
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
		delays[i], undo[i] = micros(max(o.RetryAfter, 0)), o.UndoAttempt
	}
	return c.count(ctx, q, "finish inbox", c.q.finishInbox, token, sources, ids, kinds, errs, delays, undo, reasons)
}

// RescueInbox makes rows with expired leases ready again, skipping rows a
// batch transaction holds; see dialects.InboxStore.
func (c *core) RescueInbox(ctx context.Context, limit int) (int, error) {
	if limit <= 0 {
		return 0, errors.New("durable: postgres: rescue inbox: limit must be positive")
	}
	return c.count(ctx, c.root, "rescue inbox", strings.Replace(c.q.rescueInbox, "{limit}", strconv.Itoa(limit), 1))
}

// PurgeInbox deletes handled rows older than age, up to limit, in a short
// transaction with the claim's planner settings; see dialects.InboxStore.
func (c *core) PurgeInbox(ctx context.Context, age time.Duration, limit int) (int, error) {
	if limit <= 0 {
		return 0, errors.New("durable: postgres: purge inbox: limit must be positive")
	}
	var n int
	err := c.inOwnTx(ctx, func(q querier) error {
		rs, err := q.query(ctx, strings.Replace(c.q.purgeInbox, "{limit}", strconv.Itoa(limit), 1), micros(age))
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

// InboxStats counts the inbox rows by state, those handled in the last
// minute by the server's clock, and the pending inbox dead letters, in
// total and per topic.
func (c *core) InboxStats(ctx context.Context) (dialects.InboxStats, error) {
	type topicCounts struct {
		topic string
		n     dialects.InboxCounts
	}
	parts, err := queryAll(ctx, c, c.root, "inbox stats", c.q.inboxStats, nil, func(rs rows, t *topicCounts) error {
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

// ListInbox returns the inbox rows matching q in seq order.
func (c *core) ListInbox(ctx context.Context, q dialects.InboxQuery) ([]dialects.InboxRow, error) {
	f := syntax.New(0)
	f.Eq("i.source", q.Source)
	f.In("i.id", q.IDs)
	f.Eq("i.state", q.State)
	return queryAll(ctx, c, c.root, "list inbox", f.Statement(c.q.listInbox, q.Limit), f.Args(), scanInboxRow)
}

// scanInboxRow reads a row of inboxColumns plus the expired flag; times are
// in UTC.
func scanInboxRow(rs rows, r *dialects.InboxRow) error {
	var (
		headers, errs                               []byte
		expires, lockedUntil, handledAt, replayedAt sql.NullTime
		leaseToken, lockedBy, lastError             sql.NullString
		created, received, runAt                    time.Time
	)
	if err := rs.Scan(&r.Seq, &r.Source, &r.ID, &r.Topic, &r.Key, &headers, &r.Payload, &created, &received,
		&expires, &r.State, &r.Attempts, &runAt, &leaseToken, &lockedBy, &lockedUntil,
		&lastError, &errs, &handledAt, &replayedAt, &r.Expired); err != nil {
		return err
	}
	if err := decodeJSON(r.ID, headers, &r.Headers, errs, &r.Errors); err != nil {
		return err
	}
	r.CreatedAt, r.ReceivedAt, r.RunAt = created.UTC(), received.UTC(), runAt.UTC()
	r.ExpiresAt, r.LockedUntil, r.HandledAt, r.ReplayedAt = utc(expires), utc(lockedUntil), utc(handledAt), utc(replayedAt)
	r.LeaseToken, r.LockedBy, r.LastError = leaseToken.String, lockedBy.String, lastError.String
	return nil
}
