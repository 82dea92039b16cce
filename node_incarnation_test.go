package durable_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
)

// deadPID returns the pid of a process that ran and was reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func hostname(t *testing.T) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// claimInbox stores n messages in d's inbox and leases them for an hour
// under token, as a worker of that incarnation would.
func claimInbox(t *testing.T, d *sqlite.Dialect, source, prefix string, n int, token string) []string {
	t.Helper()
	ctx := context.Background()
	var rows []dialects.InboxRow
	var ids []string
	for i := range n {
		id := fmt.Sprintf("%s-%d", prefix, i)
		ids = append(ids, id)
		rows = append(rows, dialects.InboxRow{Envelope: transport.Envelope{ID: id, Topic: "order.placed", Payload: []byte("1"), CreatedAt: time.Now()}, Source: source})
	}
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.InsertInbox(ctx, tx, rows); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	got, err := d.ClaimInbox(ctx, dialects.InboxClaim{Token: token, Worker: "old-worker", Limit: n, Lease: time.Hour, Topics: []string{"order.placed"}})
	if err != nil || len(got) != n {
		t.Fatalf("ClaimInbox: %d rows, %v", len(got), err)
	}
	return ids
}

func register(t *testing.T, d dialects.Registry, inc dialects.Incarnation) {
	t.Helper()
	if _, err := d.RegisterIncarnation(context.Background(), inc); err != nil {
		t.Fatal(err)
	}
}

// collect returns a handler that records the ids it handles, and a function
// that reports them sorted.
func collect() (func(context.Context, *sql.Tx, *inbox.Message) error, func() []string) {
	var mu sync.Mutex
	var seen []string
	return func(_ context.Context, _ *sql.Tx, m *inbox.Message) error {
			mu.Lock()
			seen = append(seen, m.ID)
			mu.Unlock()
			return nil
		}, func() []string {
			mu.Lock()
			defer mu.Unlock()
			s := slices.Clone(seen)
			slices.Sort(s)
			return s
		}
}

// TestNodeTakesBackClaimsOfDeadProcess: a process of this host that died
// (SIGKILL, a crash) left outbox rows claimed by its relay and inbox rows
// leased to its workers, for an hour. The next Node to start on each
// database sees that the pid no longer runs and releases them at once:
// every message is handled long before the leases would run out.
func TestNodeTakesBackClaimsOfDeadProcess(t *testing.T) {
	ctx := context.Background()
	host, pid := hostname(t), deadPID(t)
	ordersDB, orders := openSQLite(t)
	_, billing := openSQLite(t)

	// What the dead sender held: three committed messages, claimed.
	ob, err := outbox.New(orders, &outbox.Config{Destinations: []string{"billing"}})
	if err != nil {
		t.Fatal(err)
	}
	tx, err := ordersDB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 3 {
		id := fmt.Sprintf("sent-%d", i)
		want = append(want, id)
		if err := ob.Enqueue(ctx, tx, &outbox.Message{ID: id, Destination: "billing", Topic: "order.placed", Payload: []byte("1")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	register(t, orders, dialects.Incarnation{ID: "DEADORDERS", Name: "orders", Host: host, PID: pid})
	if got, err := orders.ClaimOutbox(ctx, dialects.OutboxClaim{Destination: "billing", Token: "orders-1/DEADORDERS/1", Limit: 10, Lease: time.Hour}); err != nil || len(got) != 3 {
		t.Fatalf("ClaimOutbox: %d rows, %v", len(got), err)
	}
	// What the dead receiver held: two stored messages, leased.
	register(t, billing, dialects.Incarnation{ID: "DEADBILLING", Name: "billing", Host: host, PID: pid})
	want = append(want, claimInbox(t, billing, "orders", "stored", 2, "DEADBILLING/x")...)
	slices.Sort(want)

	handler, seen := collect()
	mux := inbox.NewMux[*sql.Tx]()
	b, err := durable.NewNode(billing, fastConfig(durable.Config[*sql.Tx]{Handler: mux, Name: "billing", Listener: listener(t)}))
	if err != nil {
		t.Fatal(err)
	}
	mux.HandleFunc("order.placed", handler)
	runNode(t, b)
	waitFor(t, "billing listening", func() (bool, error) { return b.Addr() != nil, nil })
	o, err := durable.NewNode(orders, fastConfig(durable.Config[*sql.Tx]{Name: "orders", Peers: map[string]durable.Peer{"billing": {Addr: b.Addr().String()}}}))
	if err != nil {
		t.Fatal(err)
	}
	runNode(t, o)

	// The leases run for an hour: only the release makes this pass.
	waitFor(t, "every message handled", func() (bool, error) { return slices.Equal(seen(), want), nil })
	for _, d := range []dialects.Registry{orders, billing} {
		incs, err := d.ListIncarnations(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(incs) != 1 || incs[0].PID != os.Getpid() {
			t.Errorf("durable_nodes holds %+v, want only the running node", incs)
		}
	}
	rows, err := billing.ListInbox(ctx, dialects.InboxQuery{Source: "orders", IDs: []string{"stored-0"}})
	if err != nil || len(rows) != 1 {
		t.Fatalf("ListInbox: %v, %v", rows, err)
	}
	if want := fmt.Sprintf("node billing (pid %d on %s, incarnation DEADBILLING): its process no longer runs; released by billing (pid %d on %s); it stopped before it finished", pid, host, os.Getpid(), host); len(rows[0].Errors) != 1 || rows[0].Errors[0].Error != want {
		t.Errorf("released message's errors = %+v, want one: %q", rows[0].Errors, want)
	}
}

// TestNodeReleasesSilentIncarnation: an incarnation on another host, whose
// process cannot be checked, is released once it has been silent for
// NodeTimeout; one that heartbeats keeps its claims.
func TestNodeReleasesSilentIncarnation(t *testing.T) {
	ctx := context.Background()
	_, billing := openSQLite(t)
	register(t, billing, dialects.Incarnation{ID: "SILENT", Name: "billing", Host: "elsewhere", PID: 1})
	silent := claimInbox(t, billing, "orders", "silent", 2, "SILENT/x")
	register(t, billing, dialects.Incarnation{ID: "LIVE", Name: "billing", Host: "elsewhere", PID: 2})
	live := claimInbox(t, billing, "orders", "live", 1, "LIVE/x")

	// LIVE's process: it heartbeats ten times per NodeTimeout.
	beat, stopBeat := context.WithCancel(ctx)
	var beats sync.WaitGroup
	beats.Go(func() {
		for {
			if ok, err := billing.Heartbeat(beat, "LIVE"); err == nil && !ok {
				t.Error("LIVE's row is gone: it was released while it heartbeat")
			}
			select {
			case <-beat.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	})
	defer beats.Wait()
	defer stopBeat()

	handler, seen := collect()
	cfg := fastConfig(durable.Config[*sql.Tx]{Name: "billing", Heartbeat: 100 * time.Millisecond, NodeTimeout: 2 * time.Second})
	mux := inbox.NewMux[*sql.Tx]()
	cfg.Handler = mux
	n, err := durable.NewNode(billing, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux.HandleFunc("order.placed", handler)
	start := time.Now()
	runNode(t, n)
	waitFor(t, "the silent incarnation's messages handled", func() (bool, error) { return slices.Equal(seen(), silent), nil })
	if d := time.Since(start); d < cfg.NodeTimeout {
		t.Errorf("released after %v, before NodeTimeout (%v): a node must heartbeat for NodeTimeout before it judges silence", d, cfg.NodeTimeout)
	}
	// Ten more sweeps: LIVE keeps its lease.
	time.Sleep(10 * cfg.Heartbeat)
	rows, err := billing.ListInbox(ctx, dialects.InboxQuery{Source: "orders", IDs: live})
	if err != nil || len(rows) != 1 {
		t.Fatalf("ListInbox: %v, %v", rows, err)
	}
	if rows[0].State != dialects.InboxStateRunning || rows[0].LeaseToken != "LIVE/x" {
		t.Errorf("LIVE's message: state %q, token %q; want still running under LIVE/x", rows[0].State, rows[0].LeaseToken)
	}
	if got := seen(); !slices.Equal(got, silent) {
		t.Errorf("handled %v, want only %v", got, silent)
	}
}

// TestNodeSameNameTwice: two Nodes of one name run at once (here in one
// process; the integration suite runs two processes). The second warns;
// neither takes the other for dead; each claims under its own incarnation;
// each removes its row when it stops.
func TestNodeSameNameTwice(t *testing.T) {
	ctx := context.Background()
	db, billing := openSQLite(t)
	warned := &countLog{sub: "another process runs under this node's name on this host"}
	handler, seen := collect()
	var want []string
	stops := make([]func() error, 2)
	for i := range 2 {
		cfg := fastConfig(durable.Config[*sql.Tx]{Name: "billing", Heartbeat: 50 * time.Millisecond, NodeTimeout: time.Second})
		cfg.Logger = slog.New(warned)
		mux := inbox.NewMux[*sql.Tx]()
		cfg.Handler = mux
		n, err := durable.NewNode(billing, cfg)
		if err != nil {
			t.Fatal(err)
		}
		mux.HandleFunc("order.placed", handler)
		stops[i] = startRun(n)
		waitFor(t, "the node registered", func() (bool, error) {
			incs, err := billing.ListIncarnations(ctx)
			return len(incs) == i+1, err
		})
	}
	// The second node warns once its registration has returned, a moment
	// after its row became visible.
	waitFor(t, "the second node's warning", func() (bool, error) { return warned.count() > 0, nil })
	if got := warned.count(); got != 1 {
		t.Errorf("%d warnings about the shared name, want 1 (from the second node)", got)
	}
	incs, err := billing.ListIncarnations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(incs) != 2 || incs[0].Name != "billing" || incs[1].Name != "billing" || incs[0].ID == incs[1].ID {
		t.Fatalf("durable_nodes = %+v, want two incarnations of billing", incs)
	}
	// Both work: messages stored now are handled by one or the other.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var rows []dialects.InboxRow
	for i := range 20 {
		id := fmt.Sprintf("m-%02d", i)
		want = append(want, id)
		rows = append(rows, dialects.InboxRow{Envelope: transport.Envelope{ID: id, Topic: "order.placed", Payload: []byte("1"), CreatedAt: time.Now()}, Source: "orders"})
	}
	if _, err := billing.InsertInbox(ctx, tx, rows); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(want)
	waitFor(t, "every message handled once", func() (bool, error) { return slices.Equal(seen(), want), nil })
	// Twenty heartbeats later (two NodeTimeouts), neither was released.
	time.Sleep(20 * 50 * time.Millisecond)
	if incs, err := billing.ListIncarnations(ctx); err != nil || len(incs) != 2 {
		t.Fatalf("durable_nodes while both run = %+v, %v", incs, err)
	}
	for _, stop := range stops {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}
	if incs, err := billing.ListIncarnations(ctx); err != nil || len(incs) != 0 {
		t.Errorf("durable_nodes after both stopped = %+v, %v; want empty", incs, err)
	}
}
