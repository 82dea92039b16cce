// Package transport defines the contract between the sending and the receiving side of durable:
// the wire form of a message ([Envelope]), a [Batch] of them, the [Sender] that moves a batch to
// a peer and the [Handler] that stores it there, plus the errors both sides use to say whether a
// retry can help.
//
// The package imports only the standard library. The TCP implementation lives in the tcp
// subpackage; tests and alternative transports can implement [Sender] and [Handler] directly.
//
// # Delivery contract
//
// A Sender returns a nil error only after the peer acknowledged the batch, and a peer
// acknowledges only after its Handler returned nil, that is after the batch was stored durably.
// Any other outcome is an error, and [IsRetryable] tells whether sending the same batch again
// may succeed. Because an acknowledgement can be lost after the batch was stored, a batch may be
// delivered more than once; receivers deduplicate by [Envelope.ID] and answer such envelopes
// with [Duplicate].
//
//	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
//		if err := store(ctx, b.Source, b.Envelopes); err != nil {
//			return transport.Result{}, err // retryable NACK: the sender tries again later
//		}
//		return transport.Result{}, nil // ACK: every envelope accepted
//	})
package transport
