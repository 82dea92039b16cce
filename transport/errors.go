package transport

import "errors"

// Sentinel errors. Errors returned by a Sender wrap one of them where it applies, so callers can
// test with [errors.Is]; [IsRetryable] says whether a retry can help.
var (
	// ErrClosed: the Sender or server was closed. Retryable: the batch was not acknowledged and
	// can be sent again through another Sender.
	ErrClosed = errors.New("transport: closed")
	// ErrCircuitOpen: the Sender failed repeatedly and stopped trying until a probe succeeds.
	// Retryable.
	ErrCircuitOpen = errors.New("transport: circuit open")
	// ErrNack: the peer answered with a negative acknowledgement (its Handler failed). Whether
	// a retry can help depends on the peer; see [ErrRejected] and [IsRetryable].
	ErrNack = errors.New("transport: batch not acknowledged")
	// ErrRejected: the peer refused the batch permanently (a Handler error wrapped with
	// [Permanent]). Not retryable. Such errors also match [ErrNack].
	ErrRejected = errors.New("transport: batch rejected")
	// ErrAckTimeout: no acknowledgement arrived in time. Retryable; the peer may have stored
	// the batch, so the resend may be a duplicate.
	ErrAckTimeout = errors.New("transport: ack timeout")
	// ErrUnavailable: no connection to the peer could be made (dial or handshake failed for a
	// reason other than authentication). Retryable.
	ErrUnavailable = errors.New("transport: peer unavailable")
	// ErrDisconnected: the connection was lost before the acknowledgement arrived. Retryable.
	ErrDisconnected = errors.New("transport: connection lost")
	// ErrAuth: the peers could not authenticate each other (TLS or credentials). Retryable in
	// the sense of this package: the batch itself is fine and may be sent once the
	// configuration is fixed.
	ErrAuth = errors.New("transport: authentication failed")
	// ErrVersion: the peers speak no common protocol version. Retryable like [ErrAuth].
	ErrVersion = errors.New("transport: unsupported protocol version")
	// ErrProtocol: the peer violated the wire protocol. Retryable.
	ErrProtocol = errors.New("transport: protocol error")
	// ErrTooLarge: the batch or one of its fields exceeds a protocol or peer limit. Not
	// retryable as is; split the batch or shrink the message.
	ErrTooLarge = errors.New("transport: too large")
	// ErrInvalid: an envelope cannot be encoded (for example a time outside years 1-9999 or a
	// negative SendAttempt), or is not one durable stores (an [EnvelopeError] from
	// [Envelope.Validate]). Not retryable.
	ErrInvalid = errors.New("transport: invalid envelope")
)

// SendError is the error type returned by Senders of this module. It carries the kind of
// failure (one of the sentinel errors), the underlying cause and whether a retry can help.
type SendError struct {
	Kind  error // a sentinel such as ErrNack or ErrAckTimeout; may be nil
	Err   error // the underlying cause; may be nil
	Retry bool  // whether sending the same batch again may succeed
}

// Error returns the kind and the cause, separated by a colon.
func (e *SendError) Error() string {
	switch {
	case e.Kind == nil && e.Err == nil:
		return "transport: send failed"
	case e.Kind == nil:
		return e.Err.Error()
	case e.Err == nil:
		return e.Kind.Error()
	}
	return e.Kind.Error() + ": " + e.Err.Error()
}

// Unwrap returns the kind and the cause, so that errors.Is and errors.As see both.
func (e *SendError) Unwrap() []error {
	errs := make([]error, 0, 2)
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// Retryable reports whether sending the same batch again may succeed.
func (e *SendError) Retryable() bool { return e.Retry }

// Is makes a permanent NACK (Kind ErrRejected) match ErrNack as well.
func (e *SendError) Is(target error) bool {
	return target == ErrNack && e.Kind == ErrRejected
}

// permanentError marks an error as not retryable.
type permanentError struct{ err error }

func (p *permanentError) Error() string   { return p.err.Error() }
func (p *permanentError) Unwrap() error   { return p.err }
func (p *permanentError) Retryable() bool { return false }

// Permanent wraps err so that [IsRetryable] reports false for it. A Handler returns
// Permanent(err) to answer a batch with a non-retryable NACK: the sender gets an error matching
// [ErrRejected] and should dead-letter the batch instead of resending it. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsRetryable reports whether the operation that returned err may succeed if tried again.
//
// The first error in err's tree that has a Retryable() bool method decides. An error without
// such a method is treated as retryable, because for guaranteed delivery the safe default is to
// try again rather than to give a message up; only errors explicitly marked (by [Permanent] or a
// [SendError] with Retry false) are permanent. IsRetryable(nil) is false.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	var r interface{ Retryable() bool }
	if errors.As(err, &r) {
		return r.Retryable()
	}
	return true
}

// IsPermanent reports whether err is marked as not retryable: err != nil && !IsRetryable(err).
func IsPermanent(err error) bool { return err != nil && !IsRetryable(err) }
