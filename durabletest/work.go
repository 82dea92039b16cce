package durabletest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/transport"
)

// DefaultSource is the sending node of a message given to Work without a
// Source.
const DefaultSource = "durabletest"

// pollInterval is how often Work reads the inbox while it waits.
const pollInterval = 20 * time.Millisecond

// State is where Work left a message: handled or dead-lettered.
type State string

// The states of a Result.
const (
	// Handled: a handler returned nil and its writes committed with the
	// message's completion.
	Handled State = "handled"
	// DeadLettered: the message is in the inbox's dead letters (see
	// Result.Reason): its handler failed for good or ran out of attempts,
	// or it has no handler, or it expired.
	DeadLettered State = "dead_lettered"
)

// Result is the outcome of one message given to Work.
type Result struct {
	// Source and ID name the message in the inbox: those of the
	// inbox.Message given to Work, or DefaultSource and the id Work made up
	// when they were empty.
	Source string
	ID     string
	Topic  string
	// State is Handled or DeadLettered.
	State State
	// Duplicate reports that the inbox had received the message before
	// (stored, or in the dead letters): Deliver answered it Duplicate and
	// the Result is that of the earlier delivery.
	Duplicate bool
	// Attempts is how many attempts the message took. A snooze
	// (inbox.Retry) does not count, nor does the handling of an expired
	// message or one without a handler.
	Attempts int
	// Reason is the dead-letter reason (deadletter.ReasonPermanent,
	// deadletter.ReasonHandlerError, ...), empty when handled.
	Reason string
	// LastError is the error of the last failed attempt, empty if none
	// failed. A handler's error is stored as text: compare it with
	// strings.Contains, not errors.Is.
	LastError string
	// Errors is the error of every failed attempt, oldest first.
	Errors []deadletter.AttemptError
}

// Work delivers msgs to ib through its public API, as the TCP server does
// (Deliver, one transport.Batch per source), runs ib's workers until every
// message is handled or dead-lettered, stops them, and returns the
// messages' outcomes in the order of msgs. The handlers run as in
// production: in the transaction that completes the message, with ib's
// Config (retries, backoff, timeouts, middleware). Their effects in the
// database are committed when Work returns, ready to be asserted.
//
// A message is what a handler would receive; Work delivers its Envelope
// (ID empty: a random one; SendAttempt zero: 1) from its Source (empty:
// DefaultSource), and ignores the fields the inbox sets (Attempt,
// ReceivedAt, LastError, ReplayedAt).
//
// Work starts ib.Run and, before it returns, ends it and waits for it to
// return, so no goroutine of Work outlives the call. When ib is running
// already (its Run is in progress elsewhere), Work only delivers and waits.
//
// A failed attempt is retried after ib's Config.Backoff (by default 2 s,
// doubling), so to run a failing handler to its dead letter in a test, give
// the inbox a short Backoff and a small MaxAttempts; a snoozed message
// (inbox.Retry) waits for its delay likewise, and a message whose topic has
// no handler is retried for ib's Config.NoHandlerGrace (5 minutes by
// default; set it negative to see it dead-lettered at once). When ctx has no
// deadline, DefaultTimeout bounds the wait. Work fails t when a message is
// rejected by Deliver, when ib cannot run (its schema is missing), or when
// the wait ends first: the failure says where each unfinished message is
// and why it may be waiting.
func Work[TTx any](ctx context.Context, t TB, ib *inbox.Inbox[TTx], msgs ...*inbox.Message) []Result {
	t.Helper()
	if ib == nil {
		t.Fatalf("durabletest: Work: nil inbox")
		return nil
	}
	if len(msgs) == 0 {
		t.Fatalf("durabletest: Work: no message to deliver")
		return nil
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()

	results := make([]Result, len(msgs))
	var sources []string
	batches := map[string]*transport.Batch{}
	index := map[string][]int{} // per source: the positions in msgs of its batch
	for i, m := range msgs {
		if m == nil {
			t.Fatalf("durabletest: Work: message %d is nil", i)
			return nil
		}
		src, id := m.Source, m.ID
		if src == "" {
			src = DefaultSource
		}
		if id == "" {
			id = "durabletest-" + rand.Text()
		}
		results[i] = Result{Source: src, ID: id, Topic: m.Topic}
		b := batches[src]
		if b == nil {
			b = &transport.Batch{Source: src}
			batches[src] = b
			sources = append(sources, src)
		}
		e := m.Envelope
		e.ID = id
		if e.SendAttempt == 0 {
			e.SendAttempt = 1
		}
		b.Envelopes = append(b.Envelopes, e)
		index[src] = append(index[src], i)
	}
	for _, src := range sources {
		b := batches[src]
		res, err := ib.Deliver(ctx, b)
		if err != nil {
			t.Fatalf("durabletest: Work: Deliver the batch of %s: %v", src, err)
			return nil
		}
		for j := range b.Envelopes {
			i := index[src][j]
			switch o := res.Outcome(j); o.Status {
			case transport.Duplicate:
				results[i].Duplicate = true
			case transport.Rejected:
				t.Fatalf("durabletest: Work: Deliver rejected message %d (source %q, id %q): %s", i, src, results[i].ID, o.Reason)
				return nil
			}
		}
	}

	runCtx, stop := context.WithCancel(ctx)
	runDone := make(chan struct{})
	var runErr error
	go func() {
		defer close(runDone)
		runErr = ib.Run(runCtx)
	}()
	// Also when t.Fatalf ends this goroutine: Run returns once its
	// handlers in flight finished.
	defer func() {
		stop()
		<-runDone
	}()

	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	running := runDone   // nil once Run answered that ib runs elsewhere
	var pending []string // as last read
	for {
		p, err := settle(ctx, ib, results)
		switch {
		case err != nil && ctx.Err() == nil:
			t.Fatalf("durabletest: Work: cannot read the inbox: %v", err)
			return nil
		case err == nil && len(p) == 0:
			return results
		case err == nil:
			pending = p
		}
		select {
		case <-running:
			running = nil
			if errors.Is(runErr, inbox.ErrRunning) {
				continue // ib runs elsewhere: its workers handle them
			}
			if runErr != nil {
				t.Fatalf("durabletest: Work: the inbox cannot run: %v", runErr)
				return nil
			}
			// Run returned nil: ctx ended, which the next turn sees.
		case <-ctx.Done():
			t.Fatalf("durabletest: Work: %v while waiting; not yet handled or dead-lettered:%s%s", ctx.Err(), strings.Join(pending, ""), hint(pending))
			return nil
		case <-tick.C:
		}
	}
}

// hint explains the usual reason of a wait that lasted.
func hint(pending []string) string {
	for _, p := range pending {
		if strings.Contains(p, "next attempt") {
			return "\n(a failed message waits inbox.Config.Backoff before its next attempt, 2 s doubling by default: in tests give the inbox a short Backoff and a small MaxAttempts, or give Work a ctx with a later deadline)"
		}
	}
	return ""
}

// settle fills in the results of the messages that are handled or
// dead-lettered, and describes the others, one line each.
func settle[TTx any](ctx context.Context, ib *inbox.Inbox[TTx], results []Result) ([]string, error) {
	insp, ok := ib.Dialect().(dialects.Inspector)
	if !ok {
		return nil, fmt.Errorf("the inbox's dialect (%T) cannot list the inbox: it does not implement dialects.Inspector", ib.Dialect())
	}
	bySource := map[string][]int{}
	var sources []string
	for i := range results {
		if results[i].State != "" {
			continue
		}
		src := results[i].Source
		if _, ok := bySource[src]; !ok {
			sources = append(sources, src)
		}
		bySource[src] = append(bySource[src], i)
	}
	var pending []string
	for _, src := range sources {
		idx := bySource[src]
		ids := make([]string, len(idx))
		for j, i := range idx {
			ids[j] = results[i].ID
		}
		rows, err := insp.ListInbox(ctx, dialects.InboxQuery{Source: src, IDs: ids})
		if err != nil {
			return nil, err
		}
		stored := make(map[string]*dialects.InboxRow, len(rows))
		for k := range rows {
			stored[rows[k].ID] = &rows[k]
		}
		var gone []string // neither handled nor pending in the inbox
		for _, i := range idx {
			r := &results[i]
			row, ok := stored[r.ID]
			switch {
			case !ok:
				gone = append(gone, r.ID)
			case row.State == dialects.InboxStateHandled:
				r.State, r.Attempts, r.LastError = Handled, row.Attempts, row.LastError
				r.Errors = attemptErrors(row.Errors)
			default:
				pending = append(pending, "\n  "+waiting(r, row))
			}
		}
		if len(gone) == 0 {
			continue
		}
		dead, err := ib.DeadLetters(ctx, inbox.DeadLetterFilter{Source: src, IDs: gone, IncludeReplayed: true})
		if err != nil {
			return nil, err
		}
		byID := make(map[string]*deadletter.DeadLetter, len(dead))
		for k := range dead {
			byID[dead[k].ID] = &dead[k]
		}
		for _, i := range idx {
			r := &results[i]
			if r.State != "" {
				continue
			}
			if _, ok := stored[r.ID]; ok {
				continue
			}
			dl, ok := byID[r.ID]
			if !ok {
				pending = append(pending, fmt.Sprintf("\n  %s/%s (topic %q): neither in the inbox nor in its dead letters (deleted by a cleanup?)", r.Source, r.ID, r.Topic))
				continue
			}
			r.State, r.Attempts, r.Reason, r.LastError, r.Errors = DeadLettered, dl.Attempts, dl.Reason, dl.LastError, dl.Errors
		}
	}
	return pending, nil
}

// waiting describes a message still pending in the inbox.
func waiting(r *Result, row *dialects.InboxRow) string {
	s := fmt.Sprintf("%s/%s (topic %q): %s", r.Source, r.ID, r.Topic, row.State)
	switch {
	case row.State == dialects.InboxStateRunning:
		s += fmt.Sprintf(", attempt %d running (lease until %s)", row.Attempts, row.LockedUntil.Format(time.RFC3339Nano))
	case row.Attempts > 0 && row.LastError != "":
		s += fmt.Sprintf(", attempt %d failed: %s; next attempt at %s", row.Attempts, firstLine(row.LastError), row.RunAt.Format(time.RFC3339Nano))
	case row.RunAt.After(time.Now()):
		s += ", due at " + row.RunAt.Format(time.RFC3339Nano)
	default:
		s += ", not claimed by a worker yet"
	}
	return s
}

// firstLine returns the first line of s (a panic's error holds its stack).
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

// attemptErrors is es, nil when empty.
func attemptErrors(es []dialects.AttemptError) []deadletter.AttemptError {
	if len(es) == 0 {
		return nil
	}
	return es
}
