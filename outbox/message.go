package outbox

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/durable-go/durable/dialects"
)

// Message is one message to send to one destination.
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
	// MaxNameBytes bounds ID, Destination, Topic, Key and each header name.
	MaxNameBytes = 255
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
	Field  string // "ID", "Destination", "Topic", "Key", "Headers", "Payload", "ExpiresAt"
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

// validate checks m against l; i is its index in the Enqueue call.
func (l *limits) validate(i int, m *Message) error {
	bad := func(field, reason string, kind error) error {
		return &ValidationError{Index: i, ID: m.ID, Field: field, Reason: reason, kind: kind}
	}
	if m == nil {
		return &ValidationError{Index: i, Field: "Message", Reason: "is nil"}
	}
	if m.ID != "" {
		if err := checkName(m.ID); err != "" {
			return bad("ID", err, kindOf(err))
		}
	}
	if m.Destination == "" {
		return bad("Destination", "is empty", nil)
	}
	if err := checkName(m.Destination); err != "" {
		return bad("Destination", err, kindOf(err))
	}
	if l.destinations != nil && !l.destinations[m.Destination] {
		return bad("Destination", fmt.Sprintf("%q is not one of the configured destinations", m.Destination), ErrUnknownDestination)
	}
	if m.Topic == "" {
		return bad("Topic", "is empty", nil)
	}
	if err := checkName(m.Topic); err != "" {
		return bad("Topic", err, kindOf(err))
	}
	if m.Key != "" {
		if err := checkName(m.Key); err != "" {
			return bad("Key", err, kindOf(err))
		}
	}
	size := 0
	for k, v := range m.Headers {
		if k == "" {
			return bad("Headers", "has an empty name", nil)
		}
		if err := checkName(k); err != "" {
			return bad("Headers", fmt.Sprintf("name %q %s", truncate(k), err), kindOf(err))
		}
		if err := checkText(v); err != "" {
			return bad("Headers", fmt.Sprintf("value of %q %s", k, err), nil)
		}
		size += len(k) + len(v)
	}
	if size > l.maxHeaders {
		return bad("Headers", fmt.Sprintf("total %d bytes, over the limit of %d", size, l.maxHeaders), ErrTooLarge)
	}
	if len(m.Payload) > l.maxPayload {
		return bad("Payload", fmt.Sprintf("is %d bytes, over the limit of %d", len(m.Payload), l.maxPayload), ErrTooLarge)
	}
	if !m.ExpiresAt.IsZero() && !m.DeliverAt.IsZero() && !m.ExpiresAt.After(m.DeliverAt) {
		return bad("ExpiresAt", fmt.Sprintf("%s is not after DeliverAt %s", m.ExpiresAt.Format(time.RFC3339Nano), m.DeliverAt.Format(time.RFC3339Nano)), nil)
	}
	return nil
}

const tooLong = "is longer than 255 bytes"

func kindOf(reason string) error {
	if reason == tooLong {
		return ErrTooLarge
	}
	return nil
}

// checkName validates an identifier-like string: at most MaxNameBytes,
// valid UTF-8, no NUL (which Postgres text cannot store).
func checkName(s string) string {
	if len(s) > MaxNameBytes {
		return tooLong
	}
	return checkText(s)
}

func checkText(s string) string {
	if !utf8.ValidString(s) {
		return "is not valid UTF-8"
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return "contains a NUL byte"
		}
	}
	return ""
}

func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}
