package transport

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestErrors(t *testing.T) {
	cause := errors.New("db down")
	nack := &SendError{Kind: ErrNack, Err: cause, Retry: true}
	rej := &SendError{Kind: ErrRejected, Err: cause}
	wrapped := fmt.Errorf("relay: %w", rej)
	cases := []struct {
		err       error
		retryable bool
		is        []error
		isNot     []error
	}{
		{nack, true, []error{ErrNack, cause}, []error{ErrRejected}},
		{rej, false, []error{ErrRejected, ErrNack, cause}, []error{ErrAckTimeout}},
		{wrapped, false, []error{ErrRejected, ErrNack}, nil},
		{Permanent(cause), false, []error{cause}, nil},
		{fmt.Errorf("x: %w", Permanent(cause)), false, nil, nil},
		{cause, true, nil, nil},
		{context.DeadlineExceeded, true, nil, nil},
		{&SendError{Kind: ErrClosed, Retry: true}, true, []error{ErrClosed}, nil},
	}
	for _, c := range cases {
		if got := IsRetryable(c.err); got != c.retryable {
			t.Errorf("IsRetryable(%v) = %v", c.err, got)
		}
		if IsPermanent(c.err) == c.retryable {
			t.Errorf("IsPermanent(%v) disagrees", c.err)
		}
		for _, target := range c.is {
			if !errors.Is(c.err, target) {
				t.Errorf("%v should match %v", c.err, target)
			}
		}
		for _, target := range c.isNot {
			if errors.Is(c.err, target) {
				t.Errorf("%v should not match %v", c.err, target)
			}
		}
	}
	if IsRetryable(nil) || IsPermanent(nil) || Permanent(nil) != nil {
		t.Error("nil handling")
	}
	var se *SendError
	if !errors.As(wrapped, &se) || se.Kind != ErrRejected {
		t.Error("errors.As")
	}
	if got := (&SendError{}).Error(); got == "" {
		t.Error("empty SendError message")
	}
}

func TestStatusAndResult(t *testing.T) {
	if Accepted.String() != "accepted" || Duplicate.String() != "duplicate" || Rejected.String() != "rejected" || Status(9).String() != "status(9)" {
		t.Error("Status.String")
	}
	var r Result
	if r.Outcome(5).Status != Accepted {
		t.Error("empty Result must mean all accepted")
	}
	r.Outcomes = []Outcome{{Status: Rejected, Reason: "x"}}
	if r.Outcome(0).Reason != "x" {
		t.Error("Outcome(0)")
	}
}
