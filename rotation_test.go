package durable_test

import (
	"context"
	"database/sql"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/internal/testport"
	"github.com/durable-go/durable/outbox"
)

// authLog counts the log records that report a refused authentication.
type authLog struct {
	mu      sync.Mutex
	refused []string
}

func (l *authLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *authLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *authLog) WithGroup(string) slog.Handler            { return l }
func (l *authLog) Handle(_ context.Context, r slog.Record) error {
	line := r.Message
	r.Attrs(func(a slog.Attr) bool {
		line += " " + a.String()
		return true
	})
	if strings.Contains(line, "authentication failed") || strings.Contains(line, "did not prove") {
		l.mu.Lock()
		l.refused = append(l.refused, line)
		l.mu.Unlock()
	}
	return nil
}

// TestNodeSecretRotation rotates the shared secret of two nodes in the three rolling steps of
// Config.AcceptSecrets, restarting one node at a time, and sends a message after every restart:
// each one must arrive, and no node may refuse the other at any moment.
func TestNodeSecretRotation(t *testing.T) {
	ordersDB, ordersD := openSQLite(t)
	_, billingD := openSQLite(t)
	// Billing's port stays reserved between its restarts, so that no other socket can take it
	// while billing is down.
	port := testport.Reserve(t)
	addr := port.Addr()
	log := &authLog{}
	handled := make(chan string, 16)

	type node struct {
		*durable.Node[*sql.Tx]
		stop func()
	}
	start := func(name string, secret []byte, accept ...[]byte) node {
		t.Helper()
		var cfg durable.Config[*sql.Tx]
		cfg.Name = name
		cfg.Logger = slog.New(log)
		cfg = *fastConfig(cfg)
		cfg.Secret, cfg.AcceptSecrets = secret, accept
		cfg.Client.BreakerThreshold = -1
		d := ordersD
		if name == "billing" {
			d = billingD
			ln, err := port.Listen() // the previous billing node's Run closed its listener
			if err != nil {
				t.Fatal(err)
			}
			cfg.Listener = ln
			mux := inbox.NewMux[*sql.Tx]()
			mux.HandleFunc("rotation", func(_ context.Context, _ *sql.Tx, m *inbox.Message) error {
				handled <- string(m.Payload)
				return nil
			})
			cfg.Handler = mux
		} else {
			cfg.Peers = map[string]durable.Peer{"billing": {Addr: addr}}
		}
		n, err := durable.NewNode(d, &cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- n.Run(ctx) }()
		return node{Node: n, stop: func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: Run: %v", name, err)
			}
		}}
	}
	old, new := []byte("old secret"), []byte("new secret")
	billing := start("billing", old)
	orders := start("orders", old)
	steps := []struct {
		name   string
		secret []byte
		accept [][]byte
	}{
		{"1: accept the new secret", old, [][]byte{new}},
		{"2: send the new secret", new, [][]byte{old}},
		{"3: drop the old secret", new, nil},
	}
	var sent []string
	enqueue := func(what string) {
		t.Helper()
		tx, err := ordersDB.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if err := orders.Enqueue(context.Background(), tx, &outbox.Message{Destination: "billing", Topic: "rotation", Payload: []byte(what)}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, what)
		select {
		case got := <-handled:
			if got != what {
				t.Fatalf("handled %q, want %q", got, what)
			}
		case <-time.After(time.Minute):
			log.mu.Lock()
			defer log.mu.Unlock()
			t.Fatalf("%q was not handled within 1m; %d refused authentications, the first: %q", what, len(log.refused), log.refused[:min(2, len(log.refused))])
		}
	}
	enqueue("before")
	for _, st := range steps {
		// Restart one node at a time, and send with the two nodes at different steps.
		billing.stop()
		billing = start("billing", st.secret, st.accept...)
		enqueue(st.name + ", billing restarted")
		orders.stop()
		orders = start("orders", st.secret, st.accept...)
		enqueue(st.name + ", orders restarted")
	}
	billing.stop()
	orders.stop()
	log.mu.Lock()
	defer log.mu.Unlock()
	if len(log.refused) != 0 {
		t.Fatalf("%d refused authentications during the rotation: %q", len(log.refused), log.refused)
	}
	if len(sent) != 1+2*len(steps) {
		t.Fatalf("sent %d", len(sent))
	}
}
