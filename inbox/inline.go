package inbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/crashpoint"
)

// canInline reports whether r may be handled inline: its topic has a
// handler and belongs to no Queue (a queue exists to give its topics
// workers and a concurrency of their own), and the default queue, whose
// topics those are, is not paused by an operator. Whether it is due, unexpired and
// free of an unfinished row of its key, InsertInbox decides. A handler that
// routes (a *Mux) tells whether the topic has a handler; any other handler
// takes every topic.
func (ib *Inbox[TTx]) canInline(r *dialects.InboxRow) bool {
	if _, queued := ib.queueOf[r.Topic]; queued || ib.h == nil || ib.pauses.Paused(DefaultQueue) {
		return false
	}
	if rt, ok := ib.h.(router[TTx]); ok {
		_, ok = rt.Handler(r.Topic)
		return ok
	}
	return true
}

// router is a Handler that tells which topics it handles, as Mux does.
type router[TTx any] interface {
	Handler(topic string) (Handler[TTx], bool)
}

// deliverInline stores rows and handles those it can in the same
// transaction (see "Inline handling" in doc.go), and reports which rows were
// stored, as insert does; the State of each stored row tells whether it was
// handled inline. Each handler runs after a savepoint, as in a worker's
// batch: a failing one is rolled back alone and its message settled as a
// failed attempt (retried later by the workers, or dead-lettered) in the
// same transaction, so no handler runs twice for one attempt. Only if the
// transaction itself fails (or a handler ended it) is everything rolled
// back and stored for the workers, which then run the handlers again: the
// work of the first run was lost with its transaction.
//
// A row whose envelope was sent before (resent[i]: Attempt > 1) is not
// handled inline. Its earlier delivery got no ACK: the link may have
// failed, but this process may also have died inside that delivery's
// inline handlers, which leaves no trace (the transaction is rolled back).
// Were such a handler to kill the process every time, handling the resend
// inline again would repeat the crash forever; the workers count an
// attempt when they claim a message, so a handler that keeps crashing
// ends in the dead letters after MaxAttempts.
func (ib *Inbox[TTx]) deliverInline(ctx context.Context, rows []dialects.InboxRow, resent []bool) ([]bool, error) {
	want := false
	// Only the first message of a key in the batch may go inline: the
	// insert's check of the key's unfinished messages does not see the
	// batch's own rows, so a later one of the key could otherwise be
	// handled before an earlier one that is stored for the workers.
	var keys map[string]bool
	for i := range rows {
		r := &rows[i]
		if r.Key != "" {
			if keys == nil {
				keys = make(map[string]bool)
			}
			first := !keys[r.Key]
			keys[r.Key] = true
			if !first {
				continue
			}
		}
		if !resent[i] && ib.canInline(r) {
			r.State = dialects.InboxStateHandled
			want = true
		}
	}
	if !want {
		return ib.insert(ctx, rows)
	}
	stored, err := ib.tryInline(ctx, rows)
	if err == nil {
		return stored, nil
	}
	ib.log.Warn("durable/inbox: the inline transaction failed; the batch is stored for the workers", "messages", len(rows), "err", err)
	for i := range rows {
		rows[i].State, rows[i].LeaseToken = "", ""
	}
	return ib.insert(ctx, rows)
}

// tryInline is deliverInline's transaction. Its error means the transaction
// was rolled back and nothing of it stays.
func (ib *Inbox[TTx]) tryInline(ctx context.Context, rows []dialects.InboxRow) (_ []bool, err error) {
	token := rand.Text() // guards the settling of rows whose handler fails
	for i := range rows {
		if rows[i].State == dialects.InboxStateHandled {
			rows[i].LeaseToken = token
		}
	}
	tx, err := ib.beginDelivery(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = ib.d.Rollback(context.WithoutCancel(ctx), tx)
		}
	}()
	stored, err := ib.store.InsertInbox(ctx, tx, rows)
	if err != nil {
		return nil, err
	}
	var inline []dialects.InboxRow
	now := time.Now()
	for i := range rows {
		r := &rows[i]
		if stored[i] && r.State == dialects.InboxStateHandled {
			r.Attempts, r.ReceivedAt = 1, now
			inline = append(inline, *r)
		}
	}
	// InlineTimeout bounds the handlers: once it passes, the running
	// handler sees its ctx end and fails its attempt, and the messages not
	// started yet are released to the workers without counting one.
	hctx, cancel := context.WithTimeout(ctx, ib.cfg.InlineTimeout)
	defer cancel()
	outcomes, broken := ib.handle(hctx, hctx, ctx, tx, inline)
	if broken != nil {
		if c := broken.culprit; c != nil {
			return nil, fmt.Errorf("message %s: %w", c.ID, broken.err)
		}
		return nil, broken.err
	}
	var unhandled []dialects.InboxOutcome
	for i := range outcomes {
		o := &outcomes[i]
		if o.Kind != dialects.InboxHandled {
			if o.Error != "" && errors.Is(hctx.Err(), context.DeadlineExceeded) {
				o.Error = fmt.Sprintf("the inline batch took longer than InlineTimeout (%v): %s", ib.cfg.InlineTimeout, o.Error)
			}
			unhandled = append(unhandled, *o)
		}
	}
	if len(unhandled) > 0 {
		n, err := ib.store.FinishInbox(ctx, tx, token, unhandled)
		if err != nil {
			return nil, fmt.Errorf("settle the failed messages: %w", err)
		}
		if n != len(unhandled) {
			return nil, fmt.Errorf("settle the failed messages: %d of %d settled", n, len(unhandled))
		}
	}
	crashpoint.Hit("inbox.inline.after-handlers")
	if err := ib.d.Commit(ctx, tx); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	for i := range rows {
		rows[i].LeaseToken = ""
	}
	if len(unhandled) > 0 {
		// What was not handled is stored for the workers: Deliver wakes
		// them for rows not stored handled, and a retry due before the
		// next poll gets a wake-up of its own.
		left := make(map[dialects.InboxKey]bool, len(unhandled))
		for _, o := range unhandled {
			left[dialects.InboxKey{Source: o.Source, ID: o.ID}] = true
		}
		for i := range rows {
			if left[dialects.InboxKey{Source: rows[i].Source, ID: rows[i].ID}] {
				rows[i].State = dialects.InboxStateReady
			}
		}
		ib.wakeForRetries(ib.wakeAll, unhandled)
	}
	ib.mx.claimed("inline", len(inline))
	ib.settled(ib.log, inline, outcomes)
	return stored, nil
}
