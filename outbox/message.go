package outbox

import (
	"errors"
	"fmt"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// Message is one message to send to one destination: what an application
// gives Enqueue. Enqueue turns it into the transport.Envelope that is stored,
// sent and handed to the receiver's handler (adding CreatedAt and, per send,
// SendAttempt), next to the Destination, which does not travel.
//
// Message is a struct of its own rather than an embedded transport.Envelope
// so that a call site names only what the application sets, in one flat
// literal, and does not show fields Enqueue would ignore.
type Message struct {
	// ID identifies the message. Empty: Enqueue assigns a UUIDv7 (time
	// ordered) and writes it back into the Message. A caller-chosen ID makes
	// enqueue idempotent: a second Enqueue of the same ID to the same
	// destination fails with ErrDuplicateID while the first is still in the
	// outbox.
	ID string
	// Destination names the peer to send to. Required.
	Destination string
	// Topic routes the message to a handler at the destination. Required.
	Topic string
	// Key is an optional ordering key: messages with the same key and
	// destination are delivered and processed one at a time, in enqueue
	// order.
	Key string
	// Headers are carried with the message (trace context, content type, ...).
	Headers map[string]string
	// Payload is the message body, opaque to durable. It may be empty.
	Payload []byte
	// DeliverAt schedules the message: it is not sent before this time.
	// Zero: as soon as possible.
	DeliverAt time.Time
	// ExpiresAt is the time after which the message is no longer worth
	// sending; an expired message goes to the dead letters with reason
	// "expired" instead. Zero: never expires.
	ExpiresAt time.Time
}

// Default limits; Config overrides the size limits.
const (
	// DefaultMaxPayloadBytes bounds Message.Payload.
	DefaultMaxPayloadBytes = 1 << 20 // 1 MiB
	// DefaultMaxHeaderBytes bounds the sum of the lengths of all header
	// names and values of one message.
	DefaultMaxHeaderBytes = 16 << 10 // 16 KiB
	// MaxNameBytes bounds ID, Destination, Topic, Key and each header name
	// (transport.MaxNameBytes).
	MaxNameBytes = transport.MaxNameBytes
)

var (
	// ErrInvalidMessage is matched (errors.Is) by every *ValidationError.
	ErrInvalidMessage = errors.New("durable: invalid message")
	// ErrTooLarge is matched by a *ValidationError for a payload, headers or
	// name over its limit.
	ErrTooLarge = errors.New("durable: message too large")
	// ErrUnknownDestination is matched by a *ValidationError for a
	// destination not in Config.Destinations.
	ErrUnknownDestination = errors.New("durable: unknown destination")
	// ErrDuplicateID is matched by the error of an Enqueue whose message ID
	// is already in the outbox for the same destination (a
	// *dialects.DuplicateError).
	ErrDuplicateID = dialects.ErrDuplicateID
	// ErrSchema is matched by the error of an Enqueue or CheckSchema against
	// a database where durable's migrations have not run (a
	// *dialects.SchemaError naming the missing migration).
	ErrSchema = dialects.ErrSchema
)

// ValidationError reports a message Enqueue refused. Nothing of the Enqueue
// call that returned it was written.
type ValidationError struct {
	Index  int    // position of the message in the Enqueue call
	ID     string // the message's ID, if it had one
	Field  string // "Message" (nil), "Destination", or a field of the envelope: "ID", "Topic", "Key", "Headers", "Payload", "DeliverAt", "ExpiresAt"
	Reason string
	kind   error // ErrTooLarge, ErrUnknownDestination or nil
}

func (e *ValidationError) Error() string {
	id := ""
	if e.ID != "" {
		id = fmt.Sprintf(" (id %q)", e.ID)
	}
	return fmt.Sprintf("durable: invalid message %d%s: %s %s", e.Index, id, e.Field, e.Reason)
}

// Is reports whether target is ErrInvalidMessage or the error's kind
// (ErrTooLarge, ErrUnknownDestination).
func (e *ValidationError) Is(target error) bool {
	return target == ErrInvalidMessage || (e.kind != nil && target == e.kind)
}

// limits are the effective validation limits of an Outbox.
type limits struct {
	maxPayload   int
	maxHeaders   int
	destinations map[string]bool // nil: any destination
}

// check checks what Enqueue needs of m before it can assign an ID: that m
// is there and has a valid destination and a topic. i is m's index in the
// Enqueue call.
func (l *limits) check(i int, m *Message) error {
	if m == nil {
		return &ValidationError{Index: i, Field: "Message", Reason: "is nil"}
	}
	bad := func(field, reason string, kind error) error {
		return &ValidationError{Index: i, ID: m.ID, Field: field, Reason: reason, kind: kind}
	}
	if m.Destination == "" {
		return bad("Destination", "is empty", nil)
	}
	if r := transport.CheckName(m.Destination); r != "" {
		var kind error
		if len(m.Destination) > MaxNameBytes {
			kind = ErrTooLarge
		}
		return bad("Destination", r, kind)
	}
	if l.destinations != nil && !l.destinations[m.Destination] {
		return bad("Destination", fmt.Sprintf("%q is not one of the configured destinations", m.Destination), ErrUnknownDestination)
	}
	if m.Topic == "" {
		return bad("Topic", "is empty", nil)
	}
	return nil
}

// validate checks the envelope e made of m (transport.Envelope.Validate)
// and its sizes against l; i is m's index in the Enqueue call.
func (l *limits) validate(i int, m *Message, e *transport.Envelope) error {
	bad := func(field, reason string, kind error) error {
		return &ValidationError{Index: i, ID: m.ID, Field: field, Reason: reason, kind: kind}
	}
	if err := e.Validate(); err != nil {
		var ee *transport.EnvelopeError
		if !errors.As(err, &ee) {
			return err
		}
		var kind error
		if errors.Is(ee, transport.ErrTooLarge) {
			kind = ErrTooLarge
		}
		return bad(ee.Field, ee.Reason, kind)
	}
	size := 0
	for k, v := range e.Headers {
		size += len(k) + len(v)
	}
	if size > l.maxHeaders {
		return bad("Headers", fmt.Sprintf("total %d bytes, over the limit of %d", size, l.maxHeaders), ErrTooLarge)
	}
	if len(e.Payload) > l.maxPayload {
		return bad("Payload", fmt.Sprintf("is %d bytes, over the limit of %d", len(e.Payload), l.maxPayload), ErrTooLarge)
	}
	return nil
}

// envelope returns the envelope of m under id: the one copy of an
// application's fields into the shape that is stored, sent and handled.
func (m *Message) envelope(id string) transport.Envelope {
	return transport.Envelope{
		ID: id, Topic: m.Topic, Key: m.Key, Headers: m.Headers, Payload: m.Payload,
		DeliverAt: m.DeliverAt, ExpiresAt: m.ExpiresAt,
	}
}
