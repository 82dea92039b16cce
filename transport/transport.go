package transport

import (
	"context"
	"strconv"
	"time"
)

// Envelope is one message as it travels: the one shape every stage of durable carries, from
// the outbox's row to the handler. dialects.OutboxRow and dialects.InboxRow embed it, and so
// does the handler's inbox.Message; each adds only what belongs to its stage (the destination,
// the source, leases, the handler's attempts).
//
// Times travel with nanosecond precision and arrive in UTC without a monotonic clock reading;
// compare them with [time.Time.Equal]. A nil and an empty Headers map, and a nil and an empty
// Payload, are not distinguished on the wire.
//
// [Envelope.Validate] states what durable stores; the wire itself carries any bytes (see the
// tcp package's PROTOCOL.md), so a receiver checks what it is sent.
type Envelope struct {
	ID        string            // message id (UUIDv7 text by default, or caller-chosen), unique per source
	Topic     string            // routes the message to a handler at the receiver
	Key       string            // ordering key, "" for none
	Headers   map[string]string // may be nil
	Payload   []byte            // opaque body
	CreatedAt time.Time         // enqueue time at the sender
	DeliverAt time.Time         // the sender's schedule: not sent before this time; zero = immediately
	ExpiresAt time.Time         // zero = never

	// SendAttempt is the sender's attempt number: 1 for the first send, counting every send of
	// the message (0 = unknown). The receiver's own count of handler attempts is a different
	// number (inbox.Message.Attempt). On the wire it is the envelope's "attempt" field.
	SendAttempt int
}

// Batch is what a Sender sends and a Handler receives.
//
// A Handler owns the Batch it is given, including the Payload slices of its envelopes: they are
// never reused by the transport and stay valid after Deliver returns.
type Batch struct {
	// Source is the sending node's id. The receiving transport sets it from the peer's
	// authenticated handshake; senders leave it empty (a Sender ignores it).
	Source    string
	Envelopes []Envelope
}

// Status is the receiver's verdict on one envelope of a batch.
type Status uint8

const (
	// Accepted means the envelope was stored durably. It is the zero value.
	Accepted Status = iota
	// Duplicate means an envelope with the same id was stored before; the sender treats it as
	// delivered.
	Duplicate
	// Rejected means the receiver will never accept this envelope (see [Outcome.Reason]); a
	// resend is pointless, so the sender should dead-letter it.
	Rejected
)

// String returns "accepted", "duplicate", "rejected" or "status(N)".
func (s Status) String() string {
	switch s {
	case Accepted:
		return "accepted"
	case Duplicate:
		return "duplicate"
	case Rejected:
		return "rejected"
	}
	return "status(" + strconv.Itoa(int(s)) + ")"
}

// Outcome is the receiver's verdict on one envelope.
type Outcome struct {
	Status Status
	Reason string // why the envelope was Rejected; empty otherwise
}

// Result is the receiver's answer to a batch it acknowledged.
type Result struct {
	// Outcomes holds one Outcome per envelope, in the order of Batch.Envelopes. A nil or empty
	// slice means every envelope was accepted.
	Outcomes []Outcome
}

// Outcome returns the verdict on the i-th envelope of the batch: Outcomes[i] when Outcomes is
// set, otherwise Accepted.
func (r Result) Outcome(i int) Outcome {
	if i < len(r.Outcomes) {
		return r.Outcomes[i]
	}
	return Outcome{Status: Accepted}
}

// Sender moves batches to one peer.
type Sender interface {
	// Send transmits b and returns only after the peer durably accepted it (an acknowledgement)
	// or with an error. A nil error means the peer stored the batch; the Result then carries the
	// per-envelope outcomes. A non-nil error means the batch may or may not have reached the
	// peer; [IsRetryable] tells whether sending it again may succeed. Send may be called from
	// several goroutines at once; it neither modifies b nor retains it after returning.
	Send(ctx context.Context, b *Batch) (Result, error)
}

// Handler stores batches on the receiving side.
//
// Deliver must store the batch durably before returning nil: the transport acknowledges the
// batch to the sender as soon as Deliver returns nil, and the sender then forgets it. A
// non-nil error is reported to the sender as a negative acknowledgement that is retryable,
// unless the error is wrapped with [Permanent]. Deliver may be called concurrently, also for
// batches from the same sender.
type Handler interface {
	Deliver(ctx context.Context, b *Batch) (Result, error)
}

// HandlerFunc adapts an ordinary function to the [Handler] interface.
type HandlerFunc func(ctx context.Context, b *Batch) (Result, error)

// Deliver calls f(ctx, b).
func (f HandlerFunc) Deliver(ctx context.Context, b *Batch) (Result, error) { return f(ctx, b) }
