package postgres

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

var (
	_ dialects.Relayer  = (*Dialect)(nil)
	_ dialects.Relayer  = (*SQLDialect)(nil)
	_ dialects.Listener = (*Dialect)(nil)
	_ dialects.Listener = (*SQLDialect)(nil)
)

// ClaimOutbox leases due rows of one destination to c.Token with one
// UPDATE over rows selected FOR UPDATE SKIP LOCKED, so that relays sharing
// the database never claim the same row; see dialects.Relayer.
func (d *Dialect) ClaimOutbox(ctx context.Context, c dialects.OutboxClaim) ([]dialects.ClaimedRow, error) {
	return d.claimOutbox(ctx, c)
}

// AckOutbox deletes (or, with retain, stamps sent_at on) the rows leased to
// token; see dialects.Relayer.
func (d *Dialect) AckOutbox(ctx context.Context, token string, seqs []int64, retain bool) (int, error) {
	return d.ackOutbox(ctx, token, seqs, retain)
}

// ReleaseOutbox ends the lease of rows leased to token; see
// dialects.Relayer.
func (d *Dialect) ReleaseOutbox(ctx context.Context, token string, seqs []int64, r dialects.OutboxRelease) (int, error) {
	return d.releaseOutbox(ctx, token, seqs, r)
}

// DeadLetterOutbox moves rows leased to token to durable_dead_letters in one
// statement; see dialects.Relayer.
func (d *Dialect) DeadLetterOutbox(ctx context.Context, token string, letters []dialects.OutboxDeadLetter) (int, error) {
	return d.deadLetterOutbox(ctx, token, letters)
}

// OutboxStats returns the backlog per destination; see dialects.Relayer.
func (d *Dialect) OutboxStats(ctx context.Context) ([]dialects.OutboxStats, error) {
	return d.outboxStats(ctx)
}

// OutboxDestinations returns the destinations with unsent rows; see
// dialects.Relayer.
func (d *Dialect) OutboxDestinations(ctx context.Context) ([]string, error) {
	return d.outboxDestinations(ctx)
}

// PurgeOutbox deletes up to limit retained sent rows older than age; see
// dialects.Relayer.
func (d *Dialect) PurgeOutbox(ctx context.Context, age time.Duration, limit int) (int, error) {
	return d.purgeOutbox(ctx, age, limit)
}

// ListDeadLetters returns the dead letters matching q in seq order; see
// dialects.Relayer.
func (d *Dialect) ListDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) ([]dialects.DeadLetterRow, error) {
	return d.listDeadLetters(ctx, q)
}

// ClaimOutbox leases due rows of one destination to c.Token with one
// UPDATE over rows selected FOR UPDATE SKIP LOCKED, so that relays sharing
// the database never claim the same row; see dialects.Relayer.
func (d *SQLDialect) ClaimOutbox(ctx context.Context, c dialects.OutboxClaim) ([]dialects.ClaimedRow, error) {
	return d.claimOutbox(ctx, c)
}

// AckOutbox deletes (or, with retain, stamps sent_at on) the rows leased to
// token; see dialects.Relayer.
func (d *SQLDialect) AckOutbox(ctx context.Context, token string, seqs []int64, retain bool) (int, error) {
	return d.ackOutbox(ctx, token, seqs, retain)
}

// ReleaseOutbox ends the lease of rows leased to token; see
// dialects.Relayer.
func (d *SQLDialect) ReleaseOutbox(ctx context.Context, token string, seqs []int64, r dialects.OutboxRelease) (int, error) {
	return d.releaseOutbox(ctx, token, seqs, r)
}

// DeadLetterOutbox moves rows leased to token to durable_dead_letters in one
// statement; see dialects.Relayer.
func (d *SQLDialect) DeadLetterOutbox(ctx context.Context, token string, letters []dialects.OutboxDeadLetter) (int, error) {
	return d.deadLetterOutbox(ctx, token, letters)
}

// OutboxStats returns the backlog per destination; see dialects.Relayer.
func (d *SQLDialect) OutboxStats(ctx context.Context) ([]dialects.OutboxStats, error) {
	return d.outboxStats(ctx)
}

// OutboxDestinations returns the destinations with unsent rows; see
// dialects.Relayer.
func (d *SQLDialect) OutboxDestinations(ctx context.Context) ([]string, error) {
	return d.outboxDestinations(ctx)
}

// PurgeOutbox deletes up to limit retained sent rows older than age; see
// dialects.Relayer.
func (d *SQLDialect) PurgeOutbox(ctx context.Context, age time.Duration, limit int) (int, error) {
	return d.purgeOutbox(ctx, age, limit)
}

// ListDeadLetters returns the dead letters matching q in seq order; see
// dialects.Relayer.
func (d *SQLDialect) ListDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) ([]dialects.DeadLetterRow, error) {
	return d.listDeadLetters(ctx, q)
}

// micros converts a duration to the microseconds the statements take,
// rounding a positive remainder up so that a tiny positive duration stays
// positive.
func micros(d time.Duration) int64 {
	us := d / time.Microsecond
	if d%time.Microsecond > 0 {
		us++
	}
	return int64(us)
}

func (c *core) claimOutbox(ctx context.Context, cl dialects.OutboxClaim) ([]dialects.ClaimedRow, error) {
	if c.err != nil {
		return nil, c.err
	}
	switch {
	case cl.Token == "":
		return nil, errors.New("durable: postgres: claim outbox: empty token")
	case cl.Limit <= 0:
		return nil, fmt.Errorf("durable: postgres: claim outbox: limit %d, want > 0", cl.Limit)
	case cl.Lease <= 0:
		return nil, fmt.Errorf("durable: postgres: claim outbox: lease %v, want > 0", cl.Lease)
	}
	rs, err := c.root.query(ctx, c.relayQueries().claim, cl.Destination, cl.Token, micros(cl.Lease), cl.Limit)
	if err != nil {
		return nil, c.opError(ctx, "claim outbox", err)
	}
	defer rs.Close()
	var out []dialects.ClaimedRow
	for rs.Next() {
		var r dialects.ClaimedRow
		if err := scanOutbox(rs, &r.OutboxRow, &r.Expired); err != nil {
			return nil, c.opError(ctx, "claim outbox", err)
		}
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		return nil, c.opError(ctx, "claim outbox", err)
	}
	// RETURNING follows no order.
	slices.SortFunc(out, func(a, b dialects.ClaimedRow) int { return cmpInt64(a.Seq, b.Seq) })
	return out, nil
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// scanOutbox reads the outbox columns in the order of sqlListOutbox into r,
// then any extra columns into extra.
func scanOutbox(rs rows, r *dialects.OutboxRow, extra ...any) error {
	var (
		headers                      []byte
		expires, lockedUntil, sentAt sql.NullTime
		lockedBy, lastError          sql.NullString
	)
	dest := append([]any{&r.Seq, &r.ID, &r.Destination, &r.Topic, &r.Key, &headers, &r.Payload,
		&r.CreatedAt, &r.DeliverAt, &expires, &r.Attempts, &lockedBy, &lockedUntil, &lastError, &sentAt}, extra...)
	if err := rs.Scan(dest...); err != nil {
		return err
	}
	if err := json.Unmarshal(headers, &r.Headers); err != nil {
		return fmt.Errorf("headers of %q: %w", r.ID, err)
	}
	r.ExpiresAt, r.LockedUntil, r.SentAt = expires.Time, lockedUntil.Time, sentAt.Time
	r.LockedBy, r.LastError = lockedBy.String, lastError.String
	return nil
}

// count runs a statement whose single result row is a count.
func (c *core) count(ctx context.Context, op, stmt string, args ...any) (int, error) {
	rs, err := c.root.query(ctx, stmt, args...)
	if err != nil {
		return 0, c.opError(ctx, op, err)
	}
	var n int64
	if err := scanOne(rs, &n); err != nil {
		return 0, c.opError(ctx, op, err)
	}
	return int(n), nil
}

func (c *core) ackOutbox(ctx context.Context, token string, seqs []int64, retain bool) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if len(seqs) == 0 {
		return 0, nil
	}
	q := c.relayQueries()
	stmt := q.ackDelete
	if retain {
		stmt = q.ackRetain
	}
	return c.count(ctx, "ack outbox", stmt, token, seqs)
}

func (c *core) releaseOutbox(ctx context.Context, token string, seqs []int64, r dialects.OutboxRelease) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if len(seqs) == 0 {
		return 0, nil
	}
	if r.RetryAfter < 0 {
		return 0, fmt.Errorf("durable: postgres: release outbox: negative delay %v", r.RetryAfter)
	}
	undo := 0
	if r.Unsent {
		undo = 1
	}
	return c.count(ctx, "release outbox", c.relayQueries().release, token, seqs, micros(r.RetryAfter), r.Error, undo)
}

func (c *core) deadLetterOutbox(ctx context.Context, token string, letters []dialects.OutboxDeadLetter) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if len(letters) == 0 {
		return 0, nil
	}
	seqs, reasons, errs := make([]int64, len(letters)), make([]string, len(letters)), make([]string, len(letters))
	for i, l := range letters {
		if l.Reason == "" {
			return 0, fmt.Errorf("durable: postgres: dead-letter outbox: seq %d has no reason", l.Seq)
		}
		seqs[i], reasons[i], errs[i] = l.Seq, l.Reason, l.Error
	}
	return c.count(ctx, "dead-letter outbox", c.relayQueries().deadLetter, token, seqs, reasons, errs)
}

func (c *core) outboxStats(ctx context.Context) ([]dialects.OutboxStats, error) {
	if c.err != nil {
		return nil, c.err
	}
	rs, err := c.root.query(ctx, c.relayQueries().stats)
	if err != nil {
		return nil, c.opError(ctx, "outbox stats", err)
	}
	defer rs.Close()
	var out []dialects.OutboxStats
	for rs.Next() {
		var (
			s   dialects.OutboxStats
			age float64
		)
		if err := rs.Scan(&s.Destination, &s.Unsent, &s.Leased, &s.Retrying, &s.Scheduled, &age); err != nil {
			return nil, c.opError(ctx, "outbox stats", err)
		}
		s.OldestAge = time.Duration(age * float64(time.Second))
		out = append(out, s)
	}
	if err := rs.Err(); err != nil {
		return nil, c.opError(ctx, "outbox stats", err)
	}
	return out, nil
}

func (c *core) outboxDestinations(ctx context.Context) ([]string, error) {
	if c.err != nil {
		return nil, c.err
	}
	rs, err := c.root.query(ctx, c.relayQueries().destinations)
	if err != nil {
		return nil, c.opError(ctx, "outbox destinations", err)
	}
	defer rs.Close()
	var out []string
	for rs.Next() {
		var d string
		if err := rs.Scan(&d); err != nil {
			return nil, c.opError(ctx, "outbox destinations", err)
		}
		out = append(out, d)
	}
	if err := rs.Err(); err != nil {
		return nil, c.opError(ctx, "outbox destinations", err)
	}
	return out, nil
}

func (c *core) purgeOutbox(ctx context.Context, age time.Duration, limit int) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if limit <= 0 || age < 0 {
		return 0, fmt.Errorf("durable: postgres: purge outbox: age %v and limit %d, want age ≥ 0 and limit > 0", age, limit)
	}
	return c.count(ctx, "purge outbox", c.relayQueries().purge, micros(age), limit)
}

func (c *core) listDeadLetters(ctx context.Context, f dialects.DeadLetterQuery) ([]dialects.DeadLetterRow, error) {
	if c.err != nil {
		return nil, c.err
	}
	var (
		b     strings.Builder
		args  []any
		where []string
	)
	b.WriteString(c.relayQueries().listDeadLetters)
	for _, eq := range []struct{ col, val string }{{"side", f.Side}, {"destination", f.Destination}, {"reason", f.Reason}} {
		if eq.val != "" {
			args = append(args, eq.val)
			where = append(where, fmt.Sprintf("%s = $%d", eq.col, len(args)))
		}
	}
	if len(f.IDs) > 0 {
		args = append(args, f.IDs)
		where = append(where, fmt.Sprintf("id = ANY($%d::text[])", len(args)))
	}
	if len(where) > 0 {
		b.WriteString("\nWHERE ")
		b.WriteString(strings.Join(where, " AND "))
	}
	b.WriteString("\nORDER BY seq")
	if f.Limit > 0 {
		args = append(args, f.Limit)
		fmt.Fprintf(&b, "\nLIMIT $%d", len(args))
	}
	rs, err := c.root.query(ctx, b.String(), args...)
	if err != nil {
		return nil, c.opError(ctx, "list dead letters", err)
	}
	defer rs.Close()
	var out []dialects.DeadLetterRow
	for rs.Next() {
		var (
			r                   dialects.DeadLetterRow
			headers, errs       []byte
			expires, replayedAt sql.NullTime
		)
		err := rs.Scan(&r.Seq, &r.Side, &r.ID, &r.Source, &r.Destination, &r.Topic, &r.Key, &headers, &r.Payload,
			&r.CreatedAt, &expires, &r.Reason, &r.Attempts, &r.LastError, &errs, &r.FirstFailedAt, &r.FailedAt, &replayedAt)
		if err != nil {
			return nil, c.opError(ctx, "list dead letters", err)
		}
		if err := json.Unmarshal(headers, &r.Headers); err != nil {
			return nil, fmt.Errorf("durable: postgres: list dead letters: headers of %q: %w", r.ID, err)
		}
		if err := json.Unmarshal(errs, &r.Errors); err != nil {
			return nil, fmt.Errorf("durable: postgres: list dead letters: errors of %q: %w", r.ID, err)
		}
		r.ExpiresAt, r.ReplayedAt = expires.Time, replayedAt.Time
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		return nil, c.opError(ctx, "list dead letters", err)
	}
	return out, nil
}
