package inbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/crashpoint"
)

// inlineCooldown is how many deliveries after an inline batch fell back are
// stored for the workers without trying inline: while handlers keep
// failing, running them twice would cost more than inline handling saves.
const inlineCooldown = 8

// canInline reports whether r may be handled inline: its topic has a
// handler and belongs to no Queue (a queue exists to give its topics
// workers and a concurrency of their own). Whether it is due, unexpired and
// free of an unfinished row of its key, InsertInbox decides.
func (ib *Inbox[TTx]) canInline(r *dialects.InboxRow) bool {
	if ib.queued[r.Topic] {
		return false
	}
	_, ok := ib.Mux.Handler(r.Topic)
	return ok
}

// deliverInline stores rows and handles those it can in the same
// transaction (see "Inline handling" in doc.go), and reports which rows were
// stored, as insert does; the State of each stored row tells whether it was
// handled. If a handler fails, or the transaction does, everything is
// rolled back and the rows are stored for the workers instead, so that the
// failure is handled by the worker's machinery (attempts, backoff, dead
// letters, a savepoint per message): the failed handler runs again there,
// and the other handlers' work in the rolled-back transaction is redone.
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
	if ib.inlineCool.Load() > 0 {
		ib.inlineCool.Add(-1)
		return ib.insert(ctx, rows)
	}
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
	ib.inlineCool.Store(inlineCooldown)
	ib.log.Debug("durable/inbox: inline handling failed; the batch is stored for the workers", "messages", len(rows), "err", err)
	for i := range rows {
		rows[i].State = ""
	}
	return ib.insert(ctx, rows)
}

// tryInline is deliverInline's transaction. Its error means the transaction
// was rolled back and nothing of it stays.
func (ib *Inbox[TTx]) tryInline(ctx context.Context, rows []dialects.InboxRow) (_ []bool, err error) {
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
	hctx, cancel := context.WithTimeout(ctx, ib.cfg.InlineTimeout)
	defer cancel()
	var (
		handled  []dialects.InboxRow
		outcomes []dialects.InboxOutcome
		now      = time.Now()
	)
	for i := range rows {
		r := &rows[i]
		if !stored[i] || r.State != dialects.InboxStateHandled {
			continue
		}
		r.Attempts, r.ReceivedAt = 1, now
		timeout := ib.policy(r.Topic).timeout
		if herr := ib.call(hctx, timeout, tx, r); herr != nil {
			if errors.Is(hctx.Err(), context.DeadlineExceeded) {
				herr = fmt.Errorf("the inline batch took longer than InlineTimeout (%v): %w", ib.cfg.InlineTimeout, herr)
			}
			return nil, fmt.Errorf("message %s: %w", r.ID, herr)
		}
		handled = append(handled, *r)
		outcomes = append(outcomes, dialects.InboxOutcome{Source: r.Source, ID: r.ID, Kind: dialects.InboxHandled})
	}
	crashpoint.Hit("inbox.inline.after-handlers")
	if err := ib.d.Commit(ctx, tx); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	ib.mx.claimed("inline", len(handled))
	ib.settled(ib.log, handled, outcomes)
	return stored, nil
}
