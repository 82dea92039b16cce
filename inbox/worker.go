package inbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"runtime/debug"
	"strings"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/crashpoint"
)

// opTimeout is the part of a batch's deadline not spent in handlers: its
// own statements, and the wait for a connection.
const opTimeout = 30 * time.Second

// maxErrorBytes bounds one error as stored in a message's history.
const maxErrorBytes = 8 << 10

// work runs one worker of q until ctx ends.
func (ib *Inbox[TTx]) work(ctx context.Context, q *queue, worker string) {
	failures := 0
	for ctx.Err() == nil {
		if ib.pauses.Paused(q.name) {
			// Paused by an operator: claim nothing; the queue's poller
			// wakes the worker to look again, the pause watcher at once
			// when it sees the resume.
			select {
			case <-ctx.Done():
			case <-q.wake:
			}
			continue
		}
		token, rows, err := ib.claim(ctx, q, worker)
		if err != nil {
			failures++
			if ctx.Err() != nil {
				return
			}
			// Every worker of a queue fails alike when the database is
			// down: log once per poll interval per queue.
			now := time.Now().UnixNano()
			if last := q.lastClaimFail.Load(); now-last > int64(ib.cfg.PollInterval) && q.lastClaimFail.CompareAndSwap(last, now) {
				ib.log.Warn("durable/inbox: claim failed", "queue", q.name, "err", err)
			}
			sleep(ctx, nil, min(ib.cfg.PollInterval<<min(failures, 5), 30*time.Second))
			continue
		}
		failures = 0
		if len(rows) == 0 {
			// Idle: wait for a wake-up (the queue's poller, a Deliver, a
			// sibling that found a full batch), so that idle workers cost
			// one claim per poll interval per queue, not one each.
			select {
			case <-ctx.Done():
			case <-q.wake:
			}
			continue
		}
		crashpoint.Hit("inbox.after-claim")
		if len(rows) == q.batch {
			q.signal() // there may be more: let an idle sibling look
		}
		rows = ib.isolate(ctx, worker, token, rows)
		ib.mx.claimed(q.name, len(rows))
		ib.process(ctx, q, worker, token, rows)
	}
}

// isolate returns rows, or, when more than one was claimed and some lost
// their previous attempt (rescued: its worker died or stalled past its
// lease), only the first of those, after releasing the others with their
// attempt taken back. A message whose handler kills the process (a fatal
// error, an exit, the OOM killer) then costs its batch-mates one attempt,
// in the batch it first killed, and not one per crash until all of them
// are out of attempts: after that crash every message of the batch is
// suspect, and each runs alone until it is handled, fails as usual, or,
// for the culprit, runs out of attempts and is dead-lettered.
func (ib *Inbox[TTx]) isolate(ctx context.Context, worker, token string, rows []dialects.InboxRow) []dialects.InboxRow {
	if len(rows) < 2 {
		return rows
	}
	first := -1
	for i := range rows {
		if strings.HasSuffix(rows[i].LastError, dialects.RescuedError) || strings.HasSuffix(rows[i].LastError, dialects.ReleasedError) {
			first = i
			break
		}
	}
	if first < 0 {
		return rows
	}
	rest := make([]dialects.InboxRow, 0, len(rows)-1)
	rest = append(rest, rows[:first]...)
	rest = append(rest, rows[first+1:]...)
	log := ib.log.With("worker", worker)
	// Debug: the rescue that made them suspect has logged a Warn already,
	// and after a crash every batch of the rescued messages comes here.
	log.Debug("durable/inbox: a claimed batch holds messages whose last attempt was lost (a worker died or stalled); running them one at a time",
		"message_id", rows[first].ID, "source", rows[first].Source, "released", len(rest))
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	ib.settleAfterFailure(rctx, log, token, rest, nil, nil, nil)
	return rows[first : first+1]
}

// poll wakes an idle worker of q every poll interval (with jitter) until
// ctx ends: polling is the source of truth, wake-ups only make it sooner.
func (ib *Inbox[TTx]) poll(ctx context.Context, q *queue) {
	for {
		sleep(ctx, nil, jitter(ib.cfg.PollInterval))
		if ctx.Err() != nil {
			return
		}
		q.signal()
	}
}

// sleep waits for d, a wake-up on wake (if not nil) or the end of ctx.
func sleep(ctx context.Context, wake <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-wake:
	case <-t.C:
	}
}

// jitter spreads d by ±20 %, so that idle workers do not poll in step.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*mrand.Float64()))
}

// newToken returns a new lease token: random, after the incarnation when
// one is set (see Config.Incarnation).
func (ib *Inbox[TTx]) newToken() string {
	if ib.cfg.Incarnation != "" {
		return ib.cfg.Incarnation + "/" + rand.Text()
	}
	return rand.Text()
}

// claim leases a batch for worker under a new token. A shutdown may
// interrupt it: the claim then rolls back, or, if it committed unseen,
// its lease expires and it is rescued. There is no timeout: on SQLite a
// claim waits, legitimately, for the batch that holds the only connection.
func (ib *Inbox[TTx]) claim(ctx context.Context, q *queue, worker string) (string, []dialects.InboxRow, error) {
	token := ib.newToken()
	rows, err := ib.store.ClaimInbox(ctx, dialects.InboxClaim{
		Token:         token,
		Worker:        worker,
		Limit:         q.batch,
		Lease:         ib.cfg.Lease,
		Topics:        q.topics,
		ExcludeTopics: q.exclude,
	})
	return token, rows, err
}

// spState tracks the per-message savepoint of a batch transaction.
type spState uint8

const (
	spNone  spState = iota // no savepoint yet
	spClean                // established, nothing done since (after a rollback to it)
	spDirty                // established, a handler succeeded since
)

// errBroken carries the failure that made a batch transaction unusable and
// the message that was being handled then (nil if none).
type errBroken struct {
	culprit *dialects.InboxRow
	err     error
}

// process handles a claimed batch in one transaction: lock the rows still
// leased to token, run the handlers (see handle), settle all of them in
// one statement, commit.
func (ib *Inbox[TTx]) process(ctx context.Context, q *queue, worker, token string, rows []dialects.InboxRow) {
	// The batch outlives ctx: a shutdown lets it finish. Its own deadline
	// only guards against a hung database.
	budget := ib.cfg.Lease + opTimeout
	for i := range rows {
		budget += ib.policy(rows[i].Topic).timeout
	}
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), budget)
	defer cancel()
	log := ib.log.With("worker", worker)

	tx, err := ib.d.Begin(bctx)
	if err != nil {
		log.Warn("durable/inbox: cannot begin a batch; its messages wait for their lease to expire", "messages", len(rows), "err", err)
		return
	}
	done := false
	defer func() {
		if !done {
			_ = ib.d.Rollback(bctx, tx)
		}
	}()
	keys := make([]dialects.InboxKey, len(rows))
	for i, r := range rows {
		keys[i] = dialects.InboxKey{Source: r.Source, ID: r.ID}
	}
	heldKeys, err := ib.store.LockInbox(bctx, tx, token, keys)
	if err != nil {
		_ = ib.d.Rollback(bctx, tx)
		done = true
		log.Warn("durable/inbox: cannot lock a claimed batch; releasing it", "messages", len(rows), "err", err)
		ib.settleAfterFailure(bctx, log, token, rows, nil, nil, nil)
		return
	}
	held := make(map[dialects.InboxKey]bool, len(heldKeys))
	for _, k := range heldKeys {
		held[k] = true
	}
	if len(heldKeys) < len(rows) {
		log.Debug("durable/inbox: lost the lease of claimed messages before handling them", "lost", len(rows)-len(heldKeys))
	}
	mine := rows[:0:0]
	for _, r := range rows {
		if held[dialects.InboxKey{Source: r.Source, ID: r.ID}] {
			mine = append(mine, r)
		}
	}
	if len(mine) == 0 {
		return
	}

	outcomes, broken := ib.handle(ctx, bctx, bctx, tx, mine)
	if broken != nil {
		_ = ib.d.Rollback(bctx, tx)
		done = true
		attrs := []any{"messages", len(mine), "err", broken.err}
		if c := broken.culprit; c != nil {
			attrs = append(attrs, "message_id", c.ID, "source", c.Source, "topic", c.Topic)
		}
		log.Warn("durable/inbox: a handler left the batch transaction unusable; retrying the batch without it", attrs...)
		ib.settleAfterFailure(bctx, log, token, mine, broken.culprit, broken.err, nil)
		return
	}
	crashpoint.Hit("inbox.after-handlers")
	n, err := ib.store.FinishInbox(bctx, tx, token, outcomes)
	if err == nil {
		err = ib.d.Commit(bctx, tx)
		done = err == nil
	}
	if err != nil {
		_ = ib.d.Rollback(bctx, tx)
		done = true
		log.Warn("durable/inbox: cannot commit a batch; its messages count a failed attempt", "messages", len(mine), "err", err)
		ib.settleAfterFailure(bctx, log, token, mine, nil, nil, fmt.Errorf("durable/inbox: the batch transaction failed: %w", err))
		return
	}
	crashpoint.Hit("inbox.after-finish")
	ib.settled(log, mine, outcomes)
	if n != len(outcomes) {
		log.Warn("durable/inbox: a batch settled fewer messages than it handled", "settled", n, "handled", len(outcomes))
	}
	ib.wakeForRetries(q.signal, outcomes)
	log.Debug("durable/inbox: batch done", "messages", len(outcomes))
}

// preset returns the outcome of r decided without running its handler, if
// any: released at shutdown (ctx ended), expired, out of attempts.
func (ib *Inbox[TTx]) preset(ctx context.Context, r *dialects.InboxRow) (dialects.InboxOutcome, bool) {
	if ctx.Err() != nil {
		return dialects.InboxOutcome{Source: r.Source, ID: r.ID, Kind: dialects.InboxRetry, UndoAttempt: true}, true
	}
	if r.Expired {
		return dialects.InboxOutcome{Source: r.Source, ID: r.ID, Kind: dialects.InboxDead,
			Reason: dialects.ReasonExpired, Error: "durable/inbox: expired at " + r.ExpiresAt.UTC().Format(time.RFC3339Nano) + " before it was handled"}, true
	}
	if pol := ib.policy(r.Topic); r.Attempts > pol.maxAttempts {
		// Attempts ended without an outcome (a crash, a lost lease)
		// until none was left.
		return dialects.InboxOutcome{Source: r.Source, ID: r.ID, Kind: dialects.InboxDead,
			Reason: dialects.ReasonHandlerError, Error: fmt.Sprintf("durable/inbox: attempt %d of at most %d: gave up", r.Attempts, pol.maxAttempts)}, true
	}
	return dialects.InboxOutcome{}, false
}

// handle runs the handlers of rows in tx, one after the other, each after
// a savepoint, and returns their outcomes; a non-nil errBroken means tx is
// unusable. Each handler runs once per attempt: a failing one (error,
// panic, timeout) is rolled back to its savepoint alone, and the work of
// the others stays in tx, to commit with the batch. The savepoint costs
// one round trip per message on Postgres (RELEASE and SAVEPOINT in one
// statement). Where the dialect can tell when a handler first uses tx
// (dialects.TxWatcher: pgx), the savepoint is set only then, so a handler
// that never touches tx costs none, and a failing one that did not touch it
// has nothing to roll back.
//
// stop is the context whose end releases the messages not started yet
// (the Run context for a worker); the handlers' contexts derive from hctx
// and the statements run under sctx.
//
// A handler that returns nil but leaves tx unusable (it swallowed a failed
// statement on Postgres, or ended tx) is found at the next savepoint step:
// its work is rolled back, and it fails with the transaction's error. If
// even the savepoint is gone (tx was ended), the batch is broken, and that
// handler is its culprit.
func (ib *Inbox[TTx]) handle(stop, hctx, sctx context.Context, tx TTx, rows []dialects.InboxRow) ([]dialects.InboxOutcome, *errBroken) {
	sp := spNone
	outcomes := make([]dialects.InboxOutcome, 0, len(rows))
	last := -1 // index in rows of the last message whose handler used tx and succeeded after the savepoint
	// confirm checks, at the next savepoint step, that the last successful
	// handler left tx usable: if not, its work is rolled back and it fails.
	confirm := func(action dialects.SavepointAction) *errBroken {
		err := ib.store.InboxSavepoint(sctx, tx, action)
		if err == nil {
			return nil
		}
		culprit := &rows[last]
		if rerr := ib.store.InboxSavepoint(sctx, tx, dialects.SavepointRollback); rerr != nil {
			return &errBroken{culprit: culprit, err: err}
		}
		for i := range outcomes {
			if outcomes[i].Source == culprit.Source && outcomes[i].ID == culprit.ID {
				outcomes[i] = ib.failure(culprit, fmt.Errorf("durable/inbox: the handler returned nil, but its transaction failed: %w", err))
			}
		}
		sp = spClean // rolled back to it: established and clean
		return nil
	}
	// step sets the savepoint for the next handler's work.
	step := func() *errBroken {
		switch sp {
		case spNone:
			if err := ib.store.InboxSavepoint(sctx, tx, dialects.SavepointSet); err != nil {
				return &errBroken{err: err}
			}
			sp = spClean
		case spDirty:
			if b := confirm(dialects.SavepointReleaseSet); b != nil {
				return b
			}
			sp = spClean
		}
		return nil
	}
	_, lazy := ib.d.(dialects.TxWatcher[TTx])
	for i := range rows {
		r := &rows[i]
		if o, ok := ib.preset(stop, r); ok {
			outcomes = append(outcomes, o)
			continue
		}
		var (
			used   bool       // the handler's work is after the savepoint step
			broken *errBroken // the step failed
			first  func(context.Context) error
		)
		if lazy {
			first = func(context.Context) error {
				used = true
				if broken = step(); broken != nil {
					return broken.err
				}
				return nil
			}
		} else {
			used = true
			if broken = step(); broken != nil {
				return nil, broken
			}
		}
		herr := ib.call(hctx, ib.policy(r.Topic).timeout, tx, r, first)
		if broken != nil {
			return nil, broken
		}
		if herr == nil {
			outcomes = append(outcomes, dialects.InboxOutcome{Source: r.Source, ID: r.ID, Kind: dialects.InboxHandled})
			if used {
				sp, last = spDirty, i
			}
			continue
		}
		if used {
			if err := ib.store.InboxSavepoint(sctx, tx, dialects.SavepointRollback); err != nil {
				return nil, &errBroken{culprit: r, err: errors.Join(herr, err)}
			}
			sp = spClean
		}
		outcomes = append(outcomes, ib.failure(r, herr))
	}
	if sp == spDirty {
		if b := confirm(dialects.SavepointRelease); b != nil {
			return nil, b
		}
	}
	return outcomes, nil
}

// wakeForRetries gives a retry among outcomes that is due before the next
// poll a wake-up (signal) of its own, so that short backoffs and snoozes
// are not stretched to the poll interval.
func (ib *Inbox[TTx]) wakeForRetries(signal func(), outcomes []dialects.InboxOutcome) {
	soonest := time.Duration(-1)
	for _, o := range outcomes {
		if o.Kind == dialects.InboxRetry && (soonest < 0 || o.RetryAfter < soonest) {
			soonest = o.RetryAfter
		}
	}
	switch {
	case soonest == 0:
		signal()
	case soonest > 0 && soonest < ib.cfg.PollInterval:
		time.AfterFunc(soonest, signal)
	}
}

// call runs the handler of r with the timeout, turning a panic into a
// *PanicError. With first set (the dialect is a dialects.TxWatcher), the
// handler's tx calls it before the handler first uses tx.
func (ib *Inbox[TTx]) call(ctx context.Context, timeout time.Duration, tx TTx, r *dialects.InboxRow, first func(context.Context) error) (err error) {
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg := message(r)
	if w, ok := ib.d.(dialects.TxWatcher[TTx]); ok && first != nil {
		tx = w.WatchTx(tx, first)
	} else if g, ok := ib.d.(dialects.TxGuard[TTx]); ok {
		tx = g.GuardTx(tx)
	}
	hctx, end := ib.tr.start(hctx, msg)
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
		}
		if err != nil && errors.Is(hctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("durable/inbox: handler timed out after %v: %w", timeout, err)
		}
		end(err)
		ib.mx.handlerDone(msg.Topic, time.Since(start), err)
	}()
	if ib.h == nil {
		return fmt.Errorf("%w %q", ErrNoHandler, msg.Topic)
	}
	return ib.h.HandleMessage(hctx, tx, msg)
}

// failure turns a handler's error into the outcome of r's attempt.
func (ib *Inbox[TTx]) failure(r *dialects.InboxRow, herr error) dialects.InboxOutcome {
	o := dialects.InboxOutcome{Source: r.Source, ID: r.ID, Error: errorText(herr)}
	var (
		decode *DecodeError
		perm   *permanentError
		retry  *retryError
	)
	switch {
	case errors.Is(herr, ErrNoHandler):
		if wait := ib.noHandlerWait(r); wait > 0 {
			o.Kind, o.RetryAfter, o.UndoAttempt = dialects.InboxRetry, wait, true
			o.Error += fmt.Sprintf(" (retried until %v after it was received, in case a handler is deployed meanwhile)", ib.cfg.NoHandlerGrace)
		} else {
			o.Kind, o.Reason = dialects.InboxDead, dialects.ReasonNoHandler
		}
	case errors.As(herr, &decode):
		o.Kind, o.Reason = dialects.InboxDead, dialects.ReasonDecodeError
	case errors.As(herr, &perm):
		o.Kind, o.Reason = dialects.InboxDead, dialects.ReasonPermanent
	case errors.As(herr, &retry):
		o.Kind, o.RetryAfter, o.UndoAttempt, o.Error = dialects.InboxRetry, retry.after, true, ""
	default:
		pol := ib.policy(r.Topic)
		if r.Attempts >= pol.maxAttempts {
			o.Kind, o.Reason = dialects.InboxDead, dialects.ReasonHandlerError
		} else {
			o.Kind, o.RetryAfter = dialects.InboxRetry, max(pol.backoff(r.Attempts), 0)
		}
	}
	return o
}

// noHandlerWait returns how long r, whose topic has no handler, waits
// before it is tried again, or 0 when its grace (Config.NoHandlerGrace)
// is over and it goes to the dead letters. The time since it was received
// is read on the process clock (on Postgres ReceivedAt is the database's):
// a skew between the two shifts the grace by as much.
func (ib *Inbox[TTx]) noHandlerWait(r *dialects.InboxRow) time.Duration {
	grace := ib.cfg.NoHandlerGrace
	if grace <= 0 || r.ReceivedAt.IsZero() {
		return 0
	}
	elapsed := time.Since(r.ReceivedAt)
	if elapsed >= grace {
		return 0
	}
	return min(max(elapsed/2, time.Second), 30*time.Second, grace-elapsed+time.Millisecond)
}

// errorText is err's message as stored: valid UTF-8 without NUL bytes
// (which Postgres text cannot hold), at most maxErrorBytes.
func errorText(err error) string {
	s := strings.ToValidUTF8(err.Error(), "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	if len(s) > maxErrorBytes {
		cut := maxErrorBytes
		for cut > 0 && !utf8RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + " …(truncated)"
	}
	if s == "" {
		s = fmt.Sprintf("%T with an empty message", err)
	}
	return s
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }

// settleAfterFailure settles, in a transaction of its own, a batch whose
// transaction failed. With cause set, every message counts a failed attempt
// with that error (the commit failed: the culprit is unknown). Otherwise
// the culprit, if any, fails with culpritErr and the others are released
// without counting their attempt: their work was rolled back with the
// batch, and they run again. If even this fails, the leases expire and the
// messages are rescued.
func (ib *Inbox[TTx]) settleAfterFailure(ctx context.Context, log *slog.Logger, token string, rows []dialects.InboxRow, culprit *dialects.InboxRow, culpritErr, cause error) {
	outcomes := make([]dialects.InboxOutcome, 0, len(rows))
	for i := range rows {
		r := &rows[i]
		switch {
		case cause != nil:
			outcomes = append(outcomes, ib.failure(r, cause))
		case culprit != nil && r.Source == culprit.Source && r.ID == culprit.ID:
			outcomes = append(outcomes, ib.failure(r, culpritErr))
		default:
			outcomes = append(outcomes, dialects.InboxOutcome{Source: r.Source, ID: r.ID, Kind: dialects.InboxRetry, UndoAttempt: true})
		}
	}
	tx, err := ib.d.Begin(ctx)
	if err == nil {
		_, err = ib.store.FinishInbox(ctx, tx, token, outcomes)
		if err == nil {
			err = ib.d.Commit(ctx, tx)
		}
		if err != nil {
			_ = ib.d.Rollback(ctx, tx)
		}
	}
	if err != nil {
		log.Warn("durable/inbox: cannot settle a failed batch; its messages wait for their lease to expire", "messages", len(rows), "err", err)
		return
	}
	ib.settled(log, rows, outcomes)
	ib.wakeAll()
}
