package durabletest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/dialects"
)

// CleanupTB is the part of testing.TB that NewPair uses: TB, and Cleanup to
// stop the nodes when the test ends.
type CleanupTB interface {
	TB
	Cleanup(func())
}

// PairConfig configures the two nodes of a Pair. Zero fields have the
// defaults below; every other field of the two durable.Configs is used as
// given.
type PairConfig[STx, RTx any] struct {
	// Sender configures the sending node. Name defaults to "sender".
	// NewPair sets Peers to the receiver under Destination.
	Sender durable.Config[STx]
	// Receiver configures the receiving node. Name defaults to "receiver".
	// NewPair sets Listener to a new one on 127.0.0.1.
	Receiver durable.Config[RTx]
	// Destination is the receiver's name in the sender's Peers, the
	// outbox.Message.Destination of what the sender sends it. Default: the
	// receiver's Name.
	Destination string
}

// Pair is a sending and a receiving durable.Node connected over TCP on
// 127.0.0.1, each on its own database, for integration tests of a flow
// between two services: what the sender's code enqueues reaches the
// receiver's handlers through the real relay, transport and inbox. Build it
// with NewPair, the receiver's handler in PairConfig.Receiver.Handler (and
// the sender's in Sender.Handler, if it receives too), then Start it; it
// stops when the test ends. WaitSettled waits until what was enqueued has arrived.
type Pair[STx, RTx any] struct {
	Sender   *durable.Node[STx]
	Receiver *durable.Node[RTx]

	t           CleanupTB
	sd          dialects.Dialect[STx]
	rd          dialects.Dialect[RTx]
	source      string // the sender's name, the source of its messages at the receiver
	destination string
	started     bool
}

// NewPair builds the two nodes on their dialects without starting them; it
// fails t when a node cannot be built. Unless the configurations choose
// their authentication, the two share a random secret.
func NewPair[STx, RTx any](t CleanupTB, sender dialects.Dialect[STx], receiver dialects.Dialect[RTx], cfg *PairConfig[STx, RTx]) *Pair[STx, RTx] {
	t.Helper()
	var c PairConfig[STx, RTx]
	if cfg != nil {
		c = *cfg
	}
	if c.Sender.Name == "" {
		c.Sender.Name = "sender"
	}
	if c.Receiver.Name == "" {
		c.Receiver.Name = "receiver"
	}
	if c.Destination == "" {
		c.Destination = c.Receiver.Name
	}
	if c.Sender.Secret == nil && c.Receiver.Secret == nil && !c.Receiver.Insecure && c.Receiver.TLS == nil {
		secret := []byte(rand.Text())
		c.Sender.Secret, c.Receiver.Secret = secret, secret
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("durabletest: NewPair: listen: %v", err)
		return nil
	}
	c.Receiver.Listener = ln
	c.Sender.Peers = map[string]durable.Peer{c.Destination: {Addr: ln.Addr().String()}}
	p := &Pair[STx, RTx]{t: t, sd: sender, rd: receiver, source: c.Sender.Name, destination: c.Destination}
	if p.Receiver, err = durable.NewNode(receiver, &c.Receiver); err != nil {
		ln.Close()
		t.Fatalf("durabletest: NewPair: receiver: %v", err)
		return nil
	}
	if p.Sender, err = durable.NewNode(sender, &c.Sender); err != nil {
		ln.Close()
		t.Fatalf("durabletest: NewPair: sender: %v", err)
		return nil
	}
	return p
}

// Start runs both nodes until the test ends: t.Cleanup stops them, waits
// for them (at most a minute) and fails the test if either Run failed.
// Register the handlers on the Mux of PairConfig before Start. It fails t
// if a node stops by itself (a schema check that fails, for one) while the
// test runs.
func (p *Pair[STx, RTx]) Start() {
	p.t.Helper()
	if p.started {
		p.t.Fatalf("durabletest: Pair.Start called twice")
		return
	}
	p.started = true
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make([]error, 2)
	run := func(i int, name string, r func(context.Context) error) {
		wg.Go(func() {
			if err := r(ctx); err != nil {
				errs[i] = fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	run(0, "receiver", p.Receiver.Run)
	run(1, "sender", p.Sender.Run)
	p.t.Cleanup(func() {
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			p.t.Fatalf("durabletest: the pair's nodes did not stop within a minute")
			return
		}
		if err := errors.Join(errs...); err != nil {
			p.t.Fatalf("durabletest: the pair's nodes failed: %v", err)
		}
	})
}

// WaitSettled waits until every message that the sender's outbox holds
// unsent for the receiver when it is called has been settled: handled by
// the receiver, or dead-lettered on either side (expired or refused before
// it was sent; failed for good, or without a handler past its grace,
// after). Messages enqueued after the call are not waited for. ctx bounds
// the wait (without a deadline: a minute); when it ends first, t fails with
// where each unsettled message is (in the sender's outbox, with its attempts
// and last error; in the receiver's inbox, with its state; or sent and not
// received).
func (p *Pair[STx, RTx]) WaitSettled(ctx context.Context, t TB) {
	t.Helper()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Minute)
		defer cancel()
	}
	rows, err := p.sd.ListOutbox(ctx, dialects.OutboxQuery{Destination: p.destination})
	if err != nil {
		t.Fatalf("durabletest: WaitSettled: %v", err)
		return
	}
	var ids []string
	for _, r := range rows {
		if r.SentAt.IsZero() {
			ids = append(ids, r.ID)
		}
	}
	for {
		left, _, err := p.unsettled(ctx, ids)
		if err == nil && len(left) == 0 {
			return
		}
		if err == nil {
			ids = left
		}
		select {
		case <-ctx.Done():
			// The last look may have been cut short by the deadline: look
			// once more for the report.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultTimeout)
			left, where, err := p.unsettled(rctx, ids)
			cancel()
			if err != nil {
				t.Fatalf("durabletest: WaitSettled: %v", err)
				return
			}
			if len(left) == 0 {
				return
			}
			t.Fatalf("durabletest: WaitSettled: %d of the messages enqueued for %q not settled when the wait ended (%v):\n  %s",
				len(left), p.destination, ctx.Err(), strings.Join(where, "\n  "))
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// unsettled returns the ids that are not settled yet, and where each is.
func (p *Pair[STx, RTx]) unsettled(ctx context.Context, ids []string) ([]string, []string, error) {
	if len(ids) == 0 {
		return nil, nil, nil
	}
	where := make(map[string]string, len(ids))
	rows, err := p.sd.ListOutbox(ctx, dialects.OutboxQuery{Destination: p.destination, IDs: ids})
	if err != nil {
		return ids, nil, err
	}
	for _, r := range rows {
		if r.SentAt.IsZero() {
			where[r.ID] = fmt.Sprintf("%s: in the sender's outbox, unsent after %d attempts%s", r.ID, r.SendAttempt, lastErr(r.LastError))
		}
	}
	dead, err := p.sd.ListDeadLetters(ctx, dialects.DeadLetterQuery{Side: dialects.SideOutbox, Destination: p.destination, IDs: ids})
	if err != nil {
		return ids, nil, err
	}
	settled := make(map[string]bool)
	for _, d := range dead {
		settled[d.ID] = true
	}
	var sent []string
	for _, id := range ids {
		if _, ok := where[id]; !ok && !settled[id] {
			sent = append(sent, id)
		}
	}
	if len(sent) > 0 {
		in, err := p.rd.ListInbox(ctx, dialects.InboxQuery{Source: p.source, IDs: sent})
		if err != nil {
			return ids, nil, err
		}
		got := make(map[string]bool)
		for _, r := range in {
			got[r.ID] = true
			if r.State == dialects.InboxStateHandled {
				settled[r.ID] = true
			} else {
				where[r.ID] = fmt.Sprintf("%s: in the receiver's inbox, %s after %d attempts%s", r.ID, r.State, r.Attempts, lastErr(r.LastError))
			}
		}
		dead, err := p.rd.ListDeadLetters(ctx, dialects.DeadLetterQuery{Side: dialects.SideInbox, Source: p.source, IDs: sent})
		if err != nil {
			return ids, nil, err
		}
		for _, d := range dead {
			settled[d.ID] = true
			delete(where, d.ID)
		}
		for _, id := range sent {
			if !got[id] && !settled[id] {
				where[id] = id + ": sent, not in the receiver's inbox or dead letters"
			}
		}
	}
	var left, lines []string
	for _, id := range ids {
		if !settled[id] {
			left = append(left, id)
			if w, ok := where[id]; ok {
				lines = append(lines, w)
			}
		}
	}
	slices.Sort(lines)
	return left, lines, nil
}

func lastErr(s string) string {
	if s == "" {
		return ""
	}
	return ", last error: " + firstLine(s)
}
