package tcp_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/durable-go/durable/transport"
	"github.com/durable-go/durable/transport/tcp"
)

// A server that stores batches, and a client that sends one over 127.0.0.1.
func Example() {
	secret := []byte("shared secret of the two services")
	quiet := slog.New(slog.DiscardHandler)

	inbox := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		// Store b.Envelopes durably here; return nil only once they are safe.
		for _, e := range b.Envelopes {
			fmt.Printf("stored %s %s from %s: %s\n", e.Topic, e.ID, b.Source, e.Payload)
		}
		return transport.Result{}, nil
	})
	srv, err := tcp.NewServer(inbox, &tcp.ServerConfig{Secret: secret, Logger: quiet})
	if err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	c, err := tcp.NewClient(ln.Addr().String(), &tcp.ClientConfig{Secret: secret, NodeID: "orders-1", Logger: quiet})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	res, err := c.Send(ctx, &transport.Batch{Envelopes: []transport.Envelope{
		{ID: "0190a3c4-0001", Topic: "order.placed", Payload: []byte(`{"order":1}`), SendAttempt: 1},
	}})
	fmt.Println("acknowledged:", err == nil, res.Outcome(0).Status)

	c.Close(ctx)
	srv.Shutdown(ctx)
	fmt.Println(<-served)
	// Output:
	// stored order.placed 0190a3c4-0001 from orders-1: {"order":1}
	// acknowledged: true accepted
	// tcp: server closed
}

// Handler errors become NACKs: retryable by default, permanent when wrapped with
// transport.Permanent.
func ExampleClient_Send_nack() {
	quiet := slog.New(slog.DiscardHandler)
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		if b.Envelopes[0].Topic == "unknown" {
			return transport.Result{}, transport.Permanent(errors.New("no handler for topic"))
		}
		return transport.Result{}, errors.New("database unavailable")
	})
	srv, _ := tcp.NewServer(h, &tcp.ServerConfig{Insecure: true, Logger: quiet})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Close()

	c, _ := tcp.NewClient(ln.Addr().String(), &tcp.ClientConfig{Logger: quiet})
	defer c.Close(context.Background())
	for _, topic := range []string{"order.placed", "unknown"} {
		_, err := c.Send(context.Background(), &transport.Batch{Envelopes: []transport.Envelope{{ID: "1", Topic: topic}}})
		fmt.Printf("%s: retryable=%v rejected=%v\n", topic, transport.IsRetryable(err), errors.Is(err, transport.ErrRejected))
	}
	// Output:
	// order.placed: retryable=true rejected=false
	// unknown: retryable=false rejected=true
}

// A Balancer over three instances of one peer: batches sent in turn while every instance is
// idle, and the others take over when one instance stops.
func ExampleNewBalancer() {
	secret := []byte("shared secret of the two services")
	quiet := slog.New(slog.DiscardHandler)
	ctx := context.Background()

	// Three instances of "billing", sharing one inbox (here: a map of stored ids).
	var mu sync.Mutex
	stored := map[string]int{}
	var addrs []string
	var servers []*tcp.Server
	for range 3 {
		srv, err := tcp.NewServer(transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
			mu.Lock()
			defer mu.Unlock()
			for _, e := range b.Envelopes {
				stored[e.ID]++
			}
			return transport.Result{}, nil
		}), &tcp.ServerConfig{Secret: secret, Logger: quiet})
		if err != nil {
			panic(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		go srv.Serve(ln)
		defer srv.Close()
		addrs = append(addrs, ln.Addr().String())
		servers = append(servers, srv)
	}

	// In production the addresses are usually one name ("billing.internal:7400") whose
	// A/AAAA records are the instances.
	b, err := tcp.NewBalancer(addrs, &tcp.ClientConfig{Secret: secret, NodeID: "orders-1", Logger: quiet},
		&tcp.BalancerConfig{Name: "billing", Logger: quiet})
	if err != nil {
		panic(err)
	}
	defer b.Close(ctx)

	send := func(id string) {
		if _, err := b.Send(ctx, &transport.Batch{Envelopes: []transport.Envelope{{ID: id, Topic: "invoice.due", SendAttempt: 1}}}); err != nil {
			fmt.Println(id, err)
		}
	}
	for i := range 3 {
		send(fmt.Sprint("a", i))
	}
	for _, in := range b.Instances() {
		fmt.Println("healthy:", in.Healthy, "in flight:", in.InFlight)
	}

	servers[1].Close() // one instance stops
	for i := range 6 {
		send(fmt.Sprint("b", i))
	}
	healthy := 0
	for _, in := range b.Instances() {
		if in.Healthy {
			healthy++
		}
	}
	mu.Lock()
	fmt.Println("stored:", len(stored), "healthy instances:", healthy)
	mu.Unlock()
	// Output:
	// healthy: true in flight: 0
	// healthy: true in flight: 0
	// healthy: true in flight: 0
	// stored: 9 healthy instances: 2
}
