package tcp

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/transport"
)

// TestRoundTrip100k sends 100,000 envelopes in batches of varied size from 8 goroutines
// through one Client and one connection, and checks every field of every envelope, that ACKs
// are matched to their batches, and that several batches were in flight at once.
func TestRoundTrip100k(t *testing.T) {
	const total = 100_000
	var (
		mu       sync.Mutex
		received = make(map[string]transport.Envelope, total)
		sources  = map[string]int{}
		inside   atomic.Int32
		maxIn    atomic.Int32
		gate     = make(chan struct{})
		gateOnce sync.Once
	)
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		n := inside.Add(1)
		defer inside.Add(-1)
		for {
			m := maxIn.Load()
			if n <= m || maxIn.CompareAndSwap(m, n) {
				break
			}
		}
		// Hold the first batches until four are in the Handler together: proof that batches
		// are pipelined on the connection rather than sent one at a time.
		if n >= 4 {
			gateOnce.Do(func() { close(gate) })
		}
		select {
		case <-gate:
		case <-time.After(time.Minute): // bounds a hang only: 4 batches must come eventually
			return transport.Result{}, errors.New("batches were not pipelined")
		}
		res := transport.Result{Outcomes: make([]transport.Outcome, len(b.Envelopes))}
		mu.Lock()
		sources[b.Source]++
		for i, e := range b.Envelopes {
			if _, dup := received[e.ID]; dup {
				res.Outcomes[i] = transport.Outcome{Status: transport.Duplicate, Reason: e.ID}
				continue
			}
			received[e.ID] = e
			// The reason echoes the id so that the sender can check the ACK is for its batch.
			res.Outcomes[i] = transport.Outcome{Status: transport.Accepted, Reason: e.ID}
		}
		mu.Unlock()
		return res, nil
	})
	srv := startServer(t, h, ServerConfig{})
	c := newClient(t, srv.addr, ClientConfig{NodeID: "node-a", MaxInFlight: 8})

	r := rand.New(rand.NewPCG(7, 7))
	var batches [][]transport.Envelope
	for n := 0; n < total; {
		size := min(1+r.IntN(400), total-n)
		b := make([]transport.Envelope, size)
		for i := range b {
			b[i] = genEnvelope(r, n+i)
		}
		n += size
		batches = append(batches, b)
	}
	sent := make(map[string]*transport.Envelope, total)
	for _, b := range batches {
		for i := range b {
			sent[b[i].ID] = &b[i]
		}
	}
	if len(sent) != total {
		t.Fatalf("generator made %d distinct ids", len(sent))
	}

	// 100,000 envelopes under the race detector on a busy 2-core machine can
	// take well over testCtx's 20 s; the bound only guards against a hang.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	work := make(chan []transport.Envelope)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Go(func() {
			for b := range work {
				res, err := c.Send(ctx, &transport.Batch{Envelopes: b})
				if err != nil {
					errs <- err
					return
				}
				if len(res.Outcomes) != len(b) {
					errs <- errors.New("ACK carries the wrong number of outcomes")
					return
				}
				for i, o := range res.Outcomes {
					if o.Status != transport.Accepted || o.Reason != b[i].ID {
						errs <- errors.New("ACK not matched to its batch: outcome " + o.Reason + " for " + b[i].ID)
						return
					}
				}
			}
		})
	}
	for _, b := range batches {
		select {
		case work <- b:
		case err := <-errs:
			t.Fatal(err)
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}

	mu.Lock()
	defer mu.Unlock()
	if len(received) != total {
		t.Fatalf("handler received %d envelopes, want %d", len(received), total)
	}
	for id, want := range sent {
		got := received[id]
		if err := sameEnvelope(want, &got); err != nil {
			t.Fatal(err)
		}
	}
	if len(sources) != 1 || sources["node-a"] != len(batches) {
		t.Fatalf("sources %v, want node-a × %d", sources, len(batches))
	}
	if m := maxIn.Load(); m < 4 {
		t.Fatalf("at most %d batches in the handler at once", m)
	}
	if n := srv.ln.count(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
}
