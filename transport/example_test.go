package transport_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/durable-go/durable/transport"
)

// A Handler stores each batch and reports per-envelope outcomes: a duplicate id is
// acknowledged as Duplicate, an envelope it can never accept as Rejected.
func ExampleHandlerFunc() {
	seen := map[string]bool{"m-1": true}
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		res := transport.Result{Outcomes: make([]transport.Outcome, len(b.Envelopes))}
		for i, e := range b.Envelopes {
			switch {
			case seen[e.ID]:
				res.Outcomes[i].Status = transport.Duplicate
			case e.Topic == "":
				res.Outcomes[i] = transport.Outcome{Status: transport.Rejected, Reason: "no topic"}
			default:
				seen[e.ID] = true // stored
			}
		}
		return res, nil
	})
	res, _ := h.Deliver(context.Background(), &transport.Batch{Source: "orders-1", Envelopes: []transport.Envelope{
		{ID: "m-1", Topic: "order.placed"},
		{ID: "m-2", Topic: "order.placed"},
		{ID: "m-3"},
	}})
	for i := range 3 {
		fmt.Printf("%v %q\n", res.Outcome(i).Status, res.Outcome(i).Reason)
	}
	// Output:
	// duplicate ""
	// accepted ""
	// rejected "no topic"
}

// IsRetryable tells a sender whether to try a batch again or to give it up.
func ExampleIsRetryable() {
	errs := []error{
		&transport.SendError{Kind: transport.ErrAckTimeout, Retry: true},
		&transport.SendError{Kind: transport.ErrRejected, Err: errors.New("payload cannot be decoded")},
		transport.Permanent(errors.New("bad message")),
		errors.New("unclassified"),
	}
	for _, err := range errs {
		fmt.Printf("%v: retryable=%v\n", err, transport.IsRetryable(err))
	}
	// Output:
	// transport: ack timeout: retryable=true
	// transport: batch rejected: payload cannot be decoded: retryable=false
	// bad message: retryable=false
	// unclassified: retryable=true
}
