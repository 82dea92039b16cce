package inbox

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// Message is a received message as a handler sees it: the envelope the
// sender sent (transport.Envelope, embedded: ID, Topic, Key, Headers,
// Payload, CreatedAt, ExpiresAt) and what the inbox adds.
//
// ID is unique per Source. Messages of one Source with the same Key are
// handled one at a time, in the order they arrived. Headers is never nil.
// CreatedAt is when the sender enqueued the message (its clock). An
// expired message (ExpiresAt passed) goes to the dead letters unhandled.
//
// Two envelope fields are the sender's and are not kept by the inbox, so a
// handler sees them zero: DeliverAt (the inbox schedules by its own run
// time, which starts at the sender's DeliverAt) and SendAttempt (Attempt
// counts the handler's attempts instead).
type Message struct {
	transport.Envelope
	// Source is the sending node.
	Source string
	// ReceivedAt is when the inbox stored the message.
	ReceivedAt time.Time
	// Attempt is the number of this handler attempt, from 1. A retry after
	// a failure counts; a snooze (Retry) does not.
	Attempt int
	// LastError is the error of the previous attempt, if any.
	LastError string
	// ReplayedAt is when the message was replayed from the dead letters;
	// zero if it never was.
	ReplayedAt time.Time
}

// message returns the Message a handler gets for r: the one place the
// inbox builds it.
func message(r *dialects.InboxRow) *Message {
	m := &Message{
		Envelope: r.Envelope, Source: r.Source, ReceivedAt: r.ReceivedAt,
		Attempt: r.Attempts, LastError: r.LastError, ReplayedAt: r.ReplayedAt,
	}
	m.DeliverAt, m.SendAttempt = time.Time{}, 0 // the sender's, not kept
	if m.Headers == nil {
		m.Headers = map[string]string{}
	}
	return m
}

// Handler handles messages.
//
// HandleMessage runs in tx, the transaction that also marks the message
// done: its writes in tx and the completion commit together, so they happen
// exactly once. Writes elsewhere (HTTP calls, other databases) happen at least once:
// a handler may run again after a failure or a crash, and within the same
// attempt after another handler of its batch failed and the batch's writes
// were rolled back.
//
// A nil error marks the message handled. Any other error rolls back the
// handler's writes (the rest of the batch commits) and
// retries the message with backoff, until MaxAttempts; Permanent, Retry and
// DecodeError change that. HandleMessage must honour ctx, which ends at the
// handler timeout, and must not commit, roll back or keep tx, nor use the
// database outside tx (on SQLite that waits forever for the only
// connection). It may call outbox.Enqueue with tx to send onward messages.
//
// The method is HandleMessage, not Handle, so that a *Mux, whose Handle
// registers a handler, is itself a Handler, as an http.ServeMux is an
// http.Handler through ServeHTTP.
type Handler[TTx any] interface {
	HandleMessage(ctx context.Context, tx TTx, msg *Message) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc[TTx any] func(ctx context.Context, tx TTx, msg *Message) error

// HandleMessage calls f(ctx, tx, msg).
func (f HandlerFunc[TTx]) HandleMessage(ctx context.Context, tx TTx, msg *Message) error {
	return f(ctx, tx, msg)
}

// Middleware wraps a Handler, for logging, tracing, metrics or recovery
// around every message.
type Middleware[TTx any] func(next Handler[TTx]) Handler[TTx]

// Mux routes messages to handlers by topic, like http.ServeMux by path. A
// message whose topic has no handler fails with ErrNoHandler: the inbox
// retries it for Config.NoHandlerGrace, then it goes to the dead letters
// with reason no_handler, from where it can be replayed once a handler
// exists. A Mux is safe for concurrent use; handlers may be added
// while workers run.
//
// HandleUnmatched registers a handler for the topics that have none, as the
// pattern "/" of an http.ServeMux takes the paths nothing else matches: a
// service that learns its topics at run time, or forwards what it does not
// know, takes every message with it.
//
// A *Mux is itself a Handler: give it to inbox.New (or durable.Config's
// Handler), wrap it, or mount it under a topic of another Mux.
type Mux[TTx any] struct {
	mu      sync.RWMutex
	raw     map[string]Handler[TTx] // as registered
	wrapped map[string]Handler[TTx] // with the middleware applied
	mw      []Middleware[TTx]
	// unmatched and its wrapped form: the handler of topics without one.
	unmatched, unmatchedWrapped Handler[TTx]
}

// NewMux returns an empty Mux.
func NewMux[TTx any]() *Mux[TTx] {
	return &Mux[TTx]{raw: make(map[string]Handler[TTx]), wrapped: make(map[string]Handler[TTx])}
}

// Handle registers h for topic. It panics if topic is empty, h is nil, or
// topic already has a handler.
func (m *Mux[TTx]) Handle(topic string, h Handler[TTx]) {
	if topic == "" {
		panic("durable/inbox: Mux.Handle: empty topic")
	}
	if h == nil {
		panic("durable/inbox: Mux.Handle: nil handler for topic " + topic)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.raw == nil {
		m.raw, m.wrapped = make(map[string]Handler[TTx]), make(map[string]Handler[TTx])
	}
	if _, dup := m.raw[topic]; dup {
		panic("durable/inbox: Mux.Handle: multiple registrations for topic " + topic)
	}
	m.raw[topic] = h
	m.wrapped[topic] = m.wrap(h)
}

// HandleFunc registers f for topic; see Handle.
func (m *Mux[TTx]) HandleFunc(topic string, f func(ctx context.Context, tx TTx, msg *Message) error) {
	if f == nil {
		panic("durable/inbox: Mux.HandleFunc: nil function for topic " + topic)
	}
	m.Handle(topic, HandlerFunc[TTx](f))
}

// HandleUnmatched registers h for the messages whose topic has no handler
// of its own (Handle), with the middleware of Use around it as around the
// others. Without it such a message fails with ErrNoHandler (and is retried
// for Config.NoHandlerGrace, then dead-lettered). It panics if h is nil or
// an unmatched handler is registered already.
func (m *Mux[TTx]) HandleUnmatched(h Handler[TTx]) {
	if h == nil {
		panic("durable/inbox: Mux.HandleUnmatched: nil handler")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.unmatched != nil {
		panic("durable/inbox: Mux.HandleUnmatched: multiple registrations")
	}
	m.unmatched, m.unmatchedWrapped = h, m.wrap(h)
}

// HandleUnmatchedFunc registers f for the topics without a handler; see
// HandleUnmatched.
func (m *Mux[TTx]) HandleUnmatchedFunc(f func(ctx context.Context, tx TTx, msg *Message) error) {
	if f == nil {
		panic("durable/inbox: Mux.HandleUnmatchedFunc: nil function")
	}
	m.HandleUnmatched(HandlerFunc[TTx](f))
}

// HandlesUnmatched reports whether m has a handler for the topics without
// one (HandleUnmatched).
func (m *Mux[TTx]) HandlesUnmatched() bool {
	if m == nil {
		return false
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.unmatched != nil
}

// Use adds middleware around every handler of m, those registered before
// and after. The first middleware added is the outermost.
func (m *Mux[TTx]) Use(mw ...Middleware[TTx]) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range mw {
		if w == nil {
			panic("durable/inbox: Mux.Use: nil middleware")
		}
	}
	m.mw = append(m.mw, mw...)
	for topic, h := range m.raw {
		m.wrapped[topic] = m.wrap(h)
	}
	if m.unmatched != nil {
		m.unmatchedWrapped = m.wrap(m.unmatched)
	}
}

func (m *Mux[TTx]) wrap(h Handler[TTx]) Handler[TTx] {
	for i := len(m.mw) - 1; i >= 0; i-- {
		h = m.mw[i](h)
	}
	return h
}

// Handler returns the handler for topic (its own, or else the unmatched
// handler), with the middleware applied, and whether there is one.
func (m *Mux[TTx]) Handler(topic string) (h Handler[TTx], ok bool) {
	if m == nil {
		return nil, false
	}
	m.mu.RLock()
	h, ok = m.wrapped[topic]
	if !ok && m.unmatchedWrapped != nil {
		h, ok = m.unmatchedWrapped, true
	}
	m.mu.RUnlock()
	return h, ok
}

// Topics returns the topics registered with Handle, in order (not the
// unmatched handler's).
func (m *Mux[TTx]) Topics() []string {
	if m == nil {
		return nil
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]string, 0, len(m.raw))
	for t := range m.raw {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// HandleMessage hands msg to the handler of its topic (or else to the
// unmatched handler), with the middleware applied, or returns an error
// matching ErrNoHandler when there is none.
func (m *Mux[TTx]) HandleMessage(ctx context.Context, tx TTx, msg *Message) error {
	h, ok := m.Handler(msg.Topic)
	if !ok {
		return fmt.Errorf("%w %q", ErrNoHandler, msg.Topic)
	}
	return h.HandleMessage(ctx, tx, msg)
}

var _ Handler[any] = (*Mux[any])(nil)

// JSON returns a handler that decodes the payload as JSON into a T and
// calls fn with it. A payload that does not decode fails with a
// *DecodeError, so the message goes to the dead letters at once with reason
// decode_error instead of being retried.
//
//	mux.Handle("order.placed", inbox.JSON(func(ctx context.Context, tx pgx.Tx, m *inbox.Message, o Order) error {
//		_, err := tx.Exec(ctx, `INSERT INTO invoices (order_id) VALUES ($1)`, o.ID)
//		return err
//	}))
func JSON[TTx, T any](fn func(ctx context.Context, tx TTx, msg *Message, v T) error) HandlerFunc[TTx] {
	return func(ctx context.Context, tx TTx, msg *Message) error {
		var v T
		if err := json.Unmarshal(msg.Payload, &v); err != nil {
			return &DecodeError{Err: err}
		}
		return fn(ctx, tx, msg, v)
	}
}
