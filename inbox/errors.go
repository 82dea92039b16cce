package inbox

import (
	"errors"
	"fmt"
	"time"

	"github.com/durable-go/durable/deadletter"
)

var (
	// ErrNoHandler is matched by the error of a message whose topic has no
	// handler. Such a message goes to the dead letters at once, with reason
	// no_handler; replay it once a handler is deployed.
	ErrNoHandler = errors.New("durable/inbox: no handler for topic")
	// ErrRunning is returned by Run while the Inbox is running already.
	ErrRunning = errors.New("durable/inbox: already running")
	// ErrNotFound is returned by DeadLetter for a message that is not in the
	// dead letters. It is deadletter.ErrNotFound.
	ErrNotFound = deadletter.ErrNotFound
)

// DecodeError marks a payload the handler cannot decode. Returned (or
// wrapped) by a handler, it sends the message to the dead letters at once,
// with reason decode_error: retrying would not help.
type DecodeError struct{ Err error }

// Error describes the decoding failure.
func (e *DecodeError) Error() string { return "durable/inbox: cannot decode payload: " + e.Err.Error() }

// Unwrap returns the decoding error.
func (e *DecodeError) Unwrap() error { return e.Err }

// Permanent wraps err so that the message goes to the dead letters at once,
// with reason permanent, instead of being retried. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Retry returns an error that snoozes the message: its writes are rolled
// back and it is tried again after the given delay (at once when it is not
// positive). A snooze is not a failure: it neither counts against
// MaxAttempts nor enters the error history. A snoozed message with an
// ordering key still holds back the later messages of its key.
func Retry(after time.Duration) error { return &retryError{after: max(after, 0)} }

type retryError struct{ after time.Duration }

func (e *retryError) Error() string { return fmt.Sprintf("durable/inbox: retry after %v", e.after) }

// PanicError is the error of a handler that panicked: the panic value and
// the goroutine's stack. The message is retried like after any error.
type PanicError struct {
	Value any    // what the handler panicked with
	Stack []byte // the handler goroutine's stack at the panic
}

// Error returns the panic value and the stack.
func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v\n\n%s", e.Value, e.Stack) }
