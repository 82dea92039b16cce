package outbox_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
)

// deadlineSender passes each batch on to next and reports, per Send, how
// long its context had left when the Send began (zero: no deadline).
type deadlineSender struct {
	next transport.Sender
	left chan time.Duration
}

func (s deadlineSender) Send(ctx context.Context, b *transport.Batch) (transport.Result, error) {
	var left time.Duration
	if d, ok := ctx.Deadline(); ok {
		left = time.Until(d)
	}
	select {
	case s.left <- left:
	default:
	}
	return s.next.Send(ctx, b)
}

// TestRelayLeaseAloneDerivesSendTimeout: a relay given only a Lease below
// DefaultSendTimeout starts, sends through a real TCP peer, and bounds each
// Send by half the Lease (not by DefaultSendTimeout, nor only by the lease's
// own end, 0.9 Lease after the claim).
func TestRelayLeaseAloneDerivesSendTimeout(t *testing.T) {
	const lease = 5 * time.Second
	d := sqliteTarget.open(t, true)
	rcv := newReceiver()
	srv := startServer(t, rcv)
	sender := deadlineSender{next: newClient(t, srv.addr), left: make(chan time.Duration, 16)}
	r, err := outbox.NewRelay(d, map[string]transport.Sender{"billing": sender}, &outbox.RelayConfig{
		Logger: quiet, PollInterval: 50 * time.Millisecond, Lease: lease,
	})
	if err != nil {
		t.Fatalf("NewRelay with Lease %v and no SendTimeout = %v, want it to start", lease, err)
	}
	mustEnqueue(t, newOutbox(t, d, nil), relayMsg("billing", 1))
	start(t, r)

	left := within(t, sender.left, "the first Send")
	// The context's deadline is set before Send is called, so what is left
	// when it begins can only be less than the timeout: an exact bound.
	if left <= 0 || left > lease/2 {
		t.Errorf("the Send's context had %v left, want at most Lease/2 = %v (the derived SendTimeout)", left, lease/2)
	}
	rcv.waitDistinct(t, 1, 30*time.Second)
	waitUntil(t, "the outbox to empty", 30*time.Second, func() bool { return unsent(t, d) == 0 })
}

// TestNewRelaySendTimeoutAgainstLease: SendTimeout's default follows a short
// Lease; an explicit SendTimeout that is not shorter than the Lease still
// makes NewRelay fail, saying so.
func TestNewRelaySendTimeoutAgainstLease(t *testing.T) {
	d := sqliteTarget.open(t, true)
	senders := map[string]transport.Sender{"billing": nopSender{}}
	for _, c := range []struct {
		name string
		cfg  outbox.RelayConfig
		want string // "" for success
	}{
		{"short lease alone", outbox.RelayConfig{Lease: 5 * time.Second}, ""},
		{"lease below the default send timeout", outbox.RelayConfig{Lease: outbox.DefaultSendTimeout}, ""},
		{"long lease alone", outbox.RelayConfig{Lease: time.Hour}, ""},
		{"send timeout alone, below the default lease", outbox.RelayConfig{SendTimeout: 20 * time.Second}, ""},
		{"both, consistent", outbox.RelayConfig{Lease: 5 * time.Second, SendTimeout: 4 * time.Second}, ""},
		{"explicit send timeout equal to the lease", outbox.RelayConfig{Lease: 5 * time.Second, SendTimeout: 5 * time.Second},
			"SendTimeout (5s) must be shorter than Lease (5s)"},
		{"explicit send timeout above the lease", outbox.RelayConfig{Lease: 5 * time.Second, SendTimeout: 10 * time.Second},
			"SendTimeout (10s) must be shorter than Lease (5s)"},
		{"explicit send timeout above the default lease", outbox.RelayConfig{SendTimeout: time.Minute},
			"SendTimeout (1m0s) must be shorter than Lease (30s)"},
		{"lease too short to derive a send timeout", outbox.RelayConfig{Lease: time.Nanosecond}, "Lease (1ns) is too short"},
	} {
		cfg := c.cfg
		cfg.Logger = quiet
		_, err := outbox.NewRelay(d, senders, &cfg)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: NewRelay = %v, want it to succeed", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: NewRelay = %v, want an error containing %q", c.name, err, c.want)
		}
	}
}
