package transport

import (
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxNameBytes bounds an Envelope's ID, Topic, Key and each of its header names.
const MaxNameBytes = 255

// EnvelopeError reports why an envelope is invalid; [Envelope.Validate] returns it. It matches
// [ErrInvalid] with [errors.Is], and also [ErrTooLarge] when a name is longer than
// [MaxNameBytes].
type EnvelopeError struct {
	// Field is the Envelope field at fault: "ID", "Topic", "Key", "Headers", "CreatedAt",
	// "DeliverAt", "ExpiresAt" or "SendAttempt".
	Field string
	// Reason says what is wrong with it, for example "is not valid UTF-8" or
	// `name "x" contains a NUL byte`.
	Reason string
}

// Error returns "transport: invalid envelope: " followed by the field and the reason.
func (e *EnvelopeError) Error() string {
	return "transport: invalid envelope: " + e.Field + " " + e.Reason
}

// Is reports whether target is ErrInvalid, or ErrTooLarge for a name over MaxNameBytes.
func (e *EnvelopeError) Is(target error) bool {
	return target == ErrInvalid || target == ErrTooLarge && strings.HasSuffix(e.Reason, tooLong)
}

// Retryable reports false: the same envelope is invalid every time ([IsRetryable]).
func (e *EnvelopeError) Retryable() bool { return false }

const tooLong = "is longer than 255 bytes"

// Validate reports whether e is a message durable can store and send, returning nil or an
// *EnvelopeError for the first fault found:
//
//   - ID is not empty;
//   - ID, Topic, Key and every header name are at most MaxNameBytes long, header names not
//     empty;
//   - every string (ID, Topic, Key, header names and values) is valid UTF-8 without a NUL byte,
//     which Postgres text cannot store;
//   - the times lie in years 1 through 9999 (the zero time stands for "none"), and ExpiresAt,
//     when set, is after DeliverAt, when set;
//   - SendAttempt is between 0 and 4294967295.
//
// The outbox checks every message with it before storing it, and the inbox every envelope it is
// delivered before storing it (answering [Rejected] with the reason). An empty Topic is valid
// here (the receiver routes it to its handler for unmatched topics); the outbox requires one.
// The sizes of Payload and Headers are bounded by the sender's and receiver's configurations,
// not here.
func (e *Envelope) Validate() error {
	bad := func(field, reason string) error { return &EnvelopeError{Field: field, Reason: reason} }
	if e.ID == "" {
		return bad("ID", "is empty")
	}
	for _, f := range [...]struct{ name, v string }{{"ID", e.ID}, {"Topic", e.Topic}, {"Key", e.Key}} {
		if r := CheckName(f.v); r != "" {
			return bad(f.name, r)
		}
	}
	for k, v := range e.Headers {
		if k == "" {
			return bad("Headers", "has an empty name")
		}
		if r := CheckName(k); r != "" {
			return bad("Headers", fmt.Sprintf("name %q %s", truncate(k), r))
		}
		if r := checkText(v); r != "" {
			return bad("Headers", fmt.Sprintf("value of %q %s", k, r))
		}
	}
	for _, f := range [...]struct {
		name string
		t    time.Time
	}{{"CreatedAt", e.CreatedAt}, {"DeliverAt", e.DeliverAt}, {"ExpiresAt", e.ExpiresAt}} {
		if y := f.t.UTC().Year(); y < 1 || y > 9999 {
			return bad(f.name, fmt.Sprintf("%s is outside years 1-9999", f.t.Format(time.RFC3339Nano)))
		}
	}
	if !e.ExpiresAt.IsZero() && !e.DeliverAt.IsZero() && !e.ExpiresAt.After(e.DeliverAt) {
		return bad("ExpiresAt", fmt.Sprintf("%s is not after DeliverAt %s", e.ExpiresAt.Format(time.RFC3339Nano), e.DeliverAt.Format(time.RFC3339Nano)))
	}
	if e.SendAttempt < 0 || uint64(e.SendAttempt) > math.MaxUint32 {
		return bad("SendAttempt", fmt.Sprintf("%d is out of range", e.SendAttempt))
	}
	return nil
}

// CheckName returns why s is not a valid name, or "" if it is one: at most MaxNameBytes long,
// valid UTF-8, without a NUL byte. It is the rule of Validate for an envelope's ID, Topic, Key
// and header names, and durable applies it also to the names around an envelope: destinations
// and sources. The empty string passes; callers that require a name check for it.
func CheckName(s string) string {
	if len(s) > MaxNameBytes {
		return tooLong
	}
	return checkText(s)
}

// checkText returns why s cannot be stored as text (Postgres refuses NUL and invalid UTF-8),
// or "".
func checkText(s string) string {
	if !utf8.ValidString(s) {
		return "is not valid UTF-8"
	}
	if strings.IndexByte(s, 0) >= 0 {
		return "contains a NUL byte"
	}
	return ""
}

func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}
