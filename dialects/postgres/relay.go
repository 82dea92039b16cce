package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/internal/keyscan"
)

// The relay's operations, on core: both flavours run them on their pool or
// database alone. See dialects.Relayer.

// ClaimOutbox leases due rows of one destination to c.Token with one
// UPDATE over rows selected FOR UPDATE SKIP LOCKED, so that relays sharing
// the database never claim the same row; see dialects.Relayer.
//
// The claim runs in a short transaction of its own begun with
// sqlInboxOwnTx, for the same two reasons as the inbox's claim:
//
//   - Plan. The outbox fills by COPY and drains faster than autovacuum
//     analyzes it; on stale statistics the planner read every unsent row of
//     the destination through a bitmap scan (deliver_at_idx AND
//     destination_id_key) and sorted them to take the first 256: 207 ms per
//     claim on a backlog of 22,000, growing with it, where the ordered scan
//     stops after 256 rows. enable_sort and enable_bitmapscan off leave it
//     the ordered scan.
//   - Commit. synchronous_commit off: the claim's commit does not wait for
//     the WAL flush. If the database crashes before the flush, the claim is
//     undone as a whole: the rows are unleased, as if never claimed, with
//     their attempts uncounted, and any relay claims them again; a send of
//     them made meanwhile is at worst repeated, which the at-least-once
//     contract allows and the receiving inbox dedupes by (source, id). Any
//     later synchronous commit on the server (the ack) flushes the claim
//     with it, so no acknowledged row can come back.
//
// The ack, release and dead-letter moves stay synchronous single
// statements. A lost ack would only mean a resend (deduped), but relaxing it
// would add this transaction's two round trips to every batch and to the
// latency path; a lost dead-letter move would make the row's failure
// history disappear from durable_dead_letters after it was reported.
func (c *core) ClaimOutbox(ctx context.Context, cl dialects.OutboxClaim) ([]dialects.ClaimedRow, error) {
	switch {
	case cl.Token == "":
		return nil, errors.New("durable: postgres: claim outbox: empty token")
	case cl.Limit <= 0:
		return nil, fmt.Errorf("durable: postgres: claim outbox: limit %d, want > 0", cl.Limit)
	case cl.Lease <= 0:
		return nil, fmt.Errorf("durable: postgres: claim outbox: lease %v, want > 0", cl.Lease)
	}
	stmt := c.q.claimOutbox
	if cl.ExpiredOnly {
		stmt = c.q.claimExpiredOutbox
	}
	stmt = strings.NewReplacer("{limit}", strconv.Itoa(cl.Limit), "{pool}", strconv.Itoa(claimPool(cl.Limit))).Replace(stmt)
	var out []dialects.ClaimedRow
	err := c.inOwnTxBegun(ctx, sqlOutboxOwnTx, func(q querier) error {
		args := []any{cl.Destination, cl.Token, micros(cl.Lease)}
		if !cl.ExpiredOnly {
			// The keys whose heads this claim may take: see sqlOutboxKeys.
			visit := keyscan.PerClaim(cl.Limit)
			after := c.keys.Start(cl.Destination)
			rs, err := q.query(ctx, c.q.outboxKeys, cl.Destination, after, visit)
			if err != nil {
				return err
			}
			keys, err := scanAll(rs, func(rs rows, k *string) error { return rs.Scan(k) })
			if err != nil {
				return err
			}
			c.keys.Visited(cl.Destination, after, keys, visit)
			if keys == nil {
				keys = []string{}
			}
			args = append(args, keys)
		}
		rs, err := q.query(ctx, stmt, args...)
		if err != nil {
			return err
		}
		out, err = scanAll(rs, func(rs rows, r *dialects.ClaimedRow) error { return scanOutbox(rs, &r.OutboxRow, &r.Expired) })
		return err
	})
	if err != nil {
		return nil, c.opError(ctx, "claim outbox", err)
	}
	// RETURNING follows no order.
	slices.SortFunc(out, func(a, b dialects.ClaimedRow) int { return cmp.Compare(a.Seq, b.Seq) })
	return out, nil
}

// claimPool is how many of the oldest due rows a claim of limit rows
// considers ({pool} in sqlClaimOutbox); see there.
func claimPool(limit int) int { return 2 * limit }

// scanOutbox reads the outbox columns in the order of sqlListOutbox into r,
// then any extra columns into extra.
func scanOutbox(rs rows, r *dialects.OutboxRow, extra ...any) error {
	// pgtype's nullable types, not database/sql's: pgx scans them directly
	// instead of through the sql.Scanner interface (this runs for every
	// row the relay claims), and database/sql's Scan accepts them too.
	var (
		headers                      []byte
		expires, lockedUntil, sentAt pgtype.Timestamptz
		lockedBy, lastError          pgtype.Text
		buf                          [16]any
	)
	dest := append(append(buf[:0], &r.Seq, &r.ID, &r.Destination, &r.Topic, &r.Key, &headers, &r.Payload,
		&r.CreatedAt, &r.DeliverAt, &expires, &r.SendAttempt, &lockedBy, &lockedUntil, &lastError, &sentAt), extra...)
	if err := rs.Scan(dest...); err != nil {
		return err
	}
	if err := decodeJSON(r.ID, headers, &r.Headers, nil, nil); err != nil {
		return err
	}
	r.ExpiresAt, r.LockedUntil, r.SentAt = expires.Time, lockedUntil.Time, sentAt.Time
	r.LeaseToken, r.LastError = lockedBy.String, lastError.String
	return nil
}

// AckOutbox deletes (or, with retain, stamps sent_at on) the rows leased to
// token; see dialects.Relayer.
func (c *core) AckOutbox(ctx context.Context, token string, seqs []int64, retain bool) (int, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	stmt := c.q.ackDelete
	if retain {
		stmt = c.q.ackRetain
	}
	return c.count(ctx, c.root, "ack outbox", stmt, token, seqs)
}

// ReleaseOutbox ends the lease of rows leased to token; see
// dialects.Relayer.
func (c *core) ReleaseOutbox(ctx context.Context, token string, seqs []int64, r dialects.OutboxRelease) (int, error) {
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
	return c.count(ctx, c.root, "release outbox", c.q.release, token, seqs, micros(r.RetryAfter), r.Error, undo)
}

// DeadLetterOutbox moves rows leased to token to durable_dead_letters in one
// statement; see dialects.Relayer.
func (c *core) DeadLetterOutbox(ctx context.Context, token string, letters []dialects.OutboxDeadLetter) (int, error) {
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
	return c.count(ctx, c.root, "dead-letter outbox", c.q.deadLetterOutbox, token, seqs, reasons, errs)
}

// OutboxStats returns the backlog per destination; see dialects.Relayer.
func (c *core) OutboxStats(ctx context.Context) ([]dialects.OutboxStats, error) {
	return queryAll(ctx, c, c.root, "outbox stats", c.q.outboxStats, nil, func(rs rows, s *dialects.OutboxStats) error {
		var age float64
		if err := rs.Scan(&s.Destination, &s.Unsent, &s.Leased, &s.Retrying, &s.Scheduled, &age, &s.DeadLetters); err != nil {
			return err
		}
		s.OldestAge = time.Duration(age * float64(time.Second))
		return nil
	})
}

// OutboxDestinations returns the destinations with unsent rows; see
// dialects.Relayer.
func (c *core) OutboxDestinations(ctx context.Context) ([]string, error) {
	return queryAll(ctx, c, c.root, "outbox destinations", c.q.outboxDestinations, nil, scanValue[string])
}

// PurgeOutbox deletes up to limit retained sent rows older than age; see
// dialects.Relayer.
func (c *core) PurgeOutbox(ctx context.Context, age time.Duration, limit int) (int, error) {
	if limit <= 0 || age < 0 {
		return 0, fmt.Errorf("durable: postgres: purge outbox: age %v and limit %d, want age ≥ 0 and limit > 0", age, limit)
	}
	return c.count(ctx, c.root, "purge outbox", c.q.purgeOutbox, micros(age), limit)
}
