package outbox_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
	"github.com/durable-go/durable/transport/tcp"
)

// pgxWide is the pgx target with a pool large enough for 16 writers, open
// transactions and the relay at once.
var pgxWide = target[pgxTx]{name: "postgres", open: func(t *testing.T, migrated bool) dialects.Dialect[pgxTx] {
	u, _ := testdb.PostgresSchema(t)
	return pgDialect(t, testdb.OpenPostgres(t, u+"&pool_max_conns=24", migrated))
}}

// runRelayTargets runs a relay test on Postgres (pgx) and SQLite.
func runRelayTargets(t *testing.T, pg func(*testing.T, target[pgxTx]), sq func(*testing.T, target[sqlTx])) {
	t.Run("postgres", func(t *testing.T) { pg(t, pgxWide) })
	t.Run("sqlite", func(t *testing.T) { sq(t, sqliteTarget) })
}

// notifyConfig enables NOTIFY where the dialect has it.
func notifyConfig[TTx any](d dialects.Dialect[TTx]) *outbox.Config {
	_, ok := d.(dialects.Notifier[TTx])
	return &outbox.Config{Notify: ok}
}

func unsent[TTx any](t *testing.T, d dialects.Dialect[TTx]) int64 {
	t.Helper()
	st, err := d.OutboxStats(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, s := range st {
		n += s.Unsent
	}
	return n
}

// TestRelayDeliversAll: 20,000 messages enqueued by 16 goroutines, in
// transactions of 1 to 10 messages, while the relay runs, reach a Handler
// behind a real tcp.Server exactly once each, and leave the outbox empty.
// The two dialects run in parallel: Postgres works in its own process.
func TestRelayDeliversAll(t *testing.T) {
	t.Run("postgres", func(t *testing.T) { t.Parallel(); testDeliversAll(t, pgxWide) })
	t.Run("sqlite", func(t *testing.T) { t.Parallel(); testDeliversAll(t, sqliteTarget) })
}

func testDeliversAll[TTx any](t *testing.T, tg target[TTx]) {
	const writers, total = 16, 20_000
	d := tg.open(t, true)
	rcv := newReceiver()
	srv := startServer(t, rcv)
	// The relay runs in this process: Enqueue wakes it directly. (NOTIFY
	// would wake it too, at the price of serialising the commits of the
	// 16 writers on Postgres's notification queue.)
	ob := newOutbox(t, d, nil)
	cfg := fastRelay(nil)
	cfg.Outbox = ob
	// Nothing fails here, so every id must arrive exactly once: give sends
	// and leases room enough that a slow, loaded CI machine (the race
	// detector, modernc's checkptr) never turns a slow ACK into a resend.
	cfg.SendTimeout = 30 * time.Second
	cfg.Lease = 2 * time.Minute
	relay := newRelay(t, d, map[string]transport.Sender{"billing": newClient(t, srv.addr)}, cfg)
	stop := start(t, relay)

	began := time.Now()
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		errs = make(chan error, writers)
	)
	for range writers {
		wg.Go(func() {
			for tx := 0; ; tx++ {
				size := int64(1 + tx%10)
				last := next.Add(size)
				first := last - size + 1
				if first > total {
					return
				}
				var msgs []*outbox.Message
				for i := first; i <= min(last, total); i++ {
					msgs = append(msgs, relayMsg("billing", int(i)))
				}
				if err := enqueueTx(t, ob, true, msgs...); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("enqueue: %v", err)
	}
	enqueued := time.Since(began)
	rcv.waitDistinct(t, total, 60*time.Second)
	delivered := time.Since(began)
	waitUntil(t, "an empty outbox", 30*time.Second, func() bool { return unsent(t, d) == 0 })
	stop()

	got, counts := rcv.snapshot()
	if len(got) != total || len(counts) != total {
		t.Fatalf("handler got %d envelopes with %d distinct ids, want %d and %d", len(got), len(counts), total, total)
	}
	for i := 1; i <= total; i++ {
		if id := relayMsg("billing", i).ID; counts[id] != 1 {
			t.Fatalf("%s delivered %d times, want once", id, counts[id])
		}
	}
	for _, g := range got[:10] {
		if g.env.SendAttempt != 1 || g.env.Topic != "test.relay" || !strings.HasPrefix(string(g.env.Payload), "payload ") || g.env.CreatedAt.IsZero() {
			t.Fatalf("envelope %+v", g.env)
		}
	}
	if n := len(rowsOf(t, d)); n != 0 {
		t.Fatalf("%d rows left in the outbox", n)
	}
	if dl := deadLettersOf(t, d); len(dl) != 0 {
		t.Fatalf("%d dead letters", len(dl))
	}
	st, err := relay.Stats(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent != total || st.Retried != 0 || st.DeadLettered != 0 || st.Unsent != 0 {
		t.Fatalf("stats %+v, want %d sent and nothing else", st, total)
	}
	t.Logf("%d messages: enqueued in %v, all delivered after %v", total, enqueued.Round(time.Millisecond), delivered.Round(time.Millisecond))
}

// TestRelayCommitOrderGap: rows whose transactions commit in the reverse
// order of their enqueue (seq) order are all delivered, the rolled-back one
// never. A relay reading by an id cursor would skip the late commits.
// Postgres only: SQLite has one writer, so its transactions cannot overlap.
func TestRelayCommitOrderGap(t *testing.T) {
	t.Run("pgx", func(t *testing.T) { testCommitOrderGap(t, pgxWide) })
	t.Run("database-sql", func(t *testing.T) { testCommitOrderGap(t, pgSQLTarget) })
}

func testCommitOrderGap[TTx any](t *testing.T, tg target[TTx]) {
	d := tg.open(t, true)
	rcv := newReceiver()
	srv := startServer(t, rcv)
	ob := newOutbox(t, d, &outbox.Config{Notify: true})
	cfg := fastRelay(nil)
	cfg.Outbox = ob
	relay := newRelay(t, d, map[string]transport.Sender{"billing": newClient(t, srv.addr)}, cfg)
	start(t, relay)

	ctx := ctxT(t)
	txs := make([]TTx, 5)
	for i := range txs {
		tx, err := d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// A test that fails before the commit must not leave tx holding a
		// connection: closing the pool at cleanup would wait for it forever.
		t.Cleanup(func() { _ = d.Rollback(context.Background(), tx) })
		txs[i] = tx
		if err := ob.Enqueue(ctx, tx, relayMsg("billing", i+1)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // the relay polls and finds nothing committed
	if n := rcv.distinct(); n != 0 {
		t.Fatalf("%d messages delivered before any commit", n)
	}
	for i := 3; i >= 0; i-- {
		if err := d.Commit(ctx, txs[i]); err != nil {
			t.Fatal(err)
		}
		rcv.waitDistinct(t, 4-i, 30*time.Second)
	}
	if err := d.Rollback(ctx, txs[4]); err != nil {
		t.Fatal(err)
	}
	// The last delivery's ack is recorded after the peer got it: wait for
	// it, then for several more polls that must send nothing.
	waitUntil(t, "an empty outbox", 30*time.Second, func() bool { return len(rowsOf(t, d)) == 0 })
	time.Sleep(300 * time.Millisecond)
	got, counts := rcv.snapshot()
	var order []string
	for _, g := range got {
		order = append(order, g.env.ID)
	}
	want := []string{relayMsg("billing", 4).ID, relayMsg("billing", 3).ID, relayMsg("billing", 2).ID, relayMsg("billing", 1).ID}
	if !slices.Equal(order, want) || len(counts) != 4 {
		t.Fatalf("delivered %v, want %v (commit order, each once, never the rolled-back fifth)", order, want)
	}
	if n := len(rowsOf(t, d)); n != 0 {
		t.Fatalf("%d rows left in the outbox", n)
	}
}

// TestRelayPeerDownThenUp: while one destination's peer is down, its rows
// stay in the outbox and another destination keeps flowing at full speed;
// once the peer is up, everything arrives, once.
func TestRelayPeerDownThenUp(t *testing.T) {
	runRelayTargets(t, testPeerDown[pgxTx], testPeerDown[sqlTx])
}

func testPeerDown[TTx any](t *testing.T, tg target[TTx]) {
	const n = 200
	d := tg.open(t, true)
	up := newReceiver()
	upSrv := startServer(t, up)
	// The down peer's address: reserved, then closed, so dialing it is
	// refused until the server starts there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downAddr := ln.Addr().String()
	ln.Close()

	ob := newOutbox(t, d, notifyConfig(d))
	cfg := fastRelay(nil)
	cfg.Outbox = ob
	// shipping backs off for 5 to 10s at each failure: were billing held
	// back by it, its messages would wait seconds for the backoff to end,
	// the median latency far above the bound checked below, which leaves a
	// loaded CI machine plenty of room (a delivery takes milliseconds to
	// tens of them).
	cfg.RetryMin, cfg.RetryMax = 10*time.Second, 10*time.Second
	relay := newRelay(t, d, map[string]transport.Sender{
		"billing":  newClient(t, upSrv.addr),
		"shipping": newClient(t, downAddr),
	}, cfg)
	start(t, relay)

	for i := range n / 10 {
		var msgs []*outbox.Message
		for j := range 10 {
			msgs = append(msgs, relayMsg("shipping", i*10+j), relayMsg("billing", i*10+j))
		}
		mustEnqueue(t, ob, msgs...)
	}
	up.waitDistinct(t, n, 60*time.Second)
	// Measure only once shipping is surely failing and backing off.
	shipping := func() outbox.DestinationStats {
		st, err := relay.Stats(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		return st.Destinations["shipping"]
	}
	waitUntil(t, "shipping's first failed send", 30*time.Second, func() bool { return shipping().Retried > 0 })
	// Full speed: one message at a time, enqueue to delivery.
	var lat []time.Duration
	for i := range 20 {
		began := time.Now()
		mustEnqueue(t, ob, relayMsg("billing", n+i))
		up.waitDistinct(t, n+i+1, 30*time.Second)
		lat = append(lat, time.Since(began))
	}
	slices.Sort(lat)
	ship := shipping()
	if ship.Unsent != n || ship.Sent != 0 || ship.Retried == 0 {
		t.Fatalf("shipping while its peer is down: %+v, want %d unsent, 0 sent, some retried", ship, n)
	}
	if med := lat[len(lat)/2]; med > 3*time.Second {
		t.Fatalf("billing's median latency while shipping is down: %v (all: %v)", med, lat)
	}
	t.Logf("billing latency while shipping is down: median %v, max %v; shipping retried %d rows", lat[len(lat)/2], lat[len(lat)-1], ship.Retried)

	down := newReceiver()
	ln, err = net.Listen("tcp", downAddr)
	if err != nil {
		// A skip here would hide the recovery this test exists to prove.
		t.Fatalf("cannot listen on %s again: %v", downAddr, err)
	}
	serveOn(t, ln, down)
	// Within shipping's backoff (at most 10s) and a retry.
	down.waitDistinct(t, n, 60*time.Second)
	waitUntil(t, "an empty outbox", 30*time.Second, func() bool { return unsent(t, d) == 0 })
	for _, r := range []*receiver{up, down} {
		_, counts := r.snapshot()
		for id, c := range counts {
			if c != 1 {
				t.Fatalf("%s delivered %d times", id, c)
			}
		}
	}
	if _, counts := down.snapshot(); len(counts) != n {
		t.Fatalf("shipping got %d messages, want %d", len(counts), n)
	}
}

// TestRelayTwoRelays: two relays with their own pools on one Postgres
// database share the work, and no id is sent twice while leases are valid.
func TestRelayTwoRelays(t *testing.T) {
	const writers, total = 8, 5000
	u, _ := testdb.PostgresSchema(t)
	pool1 := testdb.OpenPostgres(t, u+"&pool_max_conns=12", true)
	pool2 := testdb.OpenPostgres(t, u+"&pool_max_conns=4", false)
	d1, d2 := pgDialect(t, pool1), pgDialect(t, pool2)
	rcv := newReceiver()
	srv := startServer(t, rcv)
	ob := newOutbox(t, d1, &outbox.Config{Notify: true})
	var (
		relays []*outbox.Relay
		stops  []func()
	)
	for i, d := range []*postgres.Dialect{d1, d2} {
		cfg := fastRelay(nil)
		cfg.ID = fmt.Sprintf("relay-%d", i+1)
		cfg.BatchSize = 50
		if i == 0 {
			cfg.Outbox = ob
		}
		r := newRelay(t, dialects.Dialect[pgxTx](d), map[string]transport.Sender{"billing": newClient(t, srv.addr)}, cfg)
		stops = append(stops, start(t, r))
		relays = append(relays, r)
	}
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range writers {
		wg.Go(func() {
			for i := next.Add(10) - 10; i < total; i = next.Add(10) - 10 {
				var msgs []*outbox.Message
				for j := range 10 {
					msgs = append(msgs, relayMsg("billing", int(i)+j))
				}
				mustEnqueue(t, ob, msgs...)
			}
		})
	}
	wg.Wait()
	rcv.waitDistinct(t, total, 60*time.Second)
	waitUntil(t, "an empty outbox", 30*time.Second, func() bool { return unsent(t, d1) == 0 })
	got, counts := rcv.snapshot()
	if len(got) != total || len(counts) != total {
		t.Fatalf("%d sends of %d distinct ids, want %d of %d", len(got), len(counts), total, total)
	}
	for id, c := range counts {
		if c != 1 {
			t.Fatalf("%s sent %d times", id, c)
		}
	}
	// A relay counts a row sent once its ack statement returned, after the
	// row left the outbox: stopped, they have counted every one.
	for _, stop := range stops {
		stop()
	}
	var sent []int64
	for _, r := range relays {
		st, err := r.Stats(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, st.Sent)
	}
	if sent[0]+sent[1] != total || sent[0] == 0 || sent[1] == 0 {
		t.Fatalf("relays sent %v, want both some, %d together", sent, total)
	}
	t.Logf("relays sent %v", sent)
}

// TestRelayKeyOrder: 1,000 messages on 10 keys arrive in enqueue order per
// key while the peer NACKs batches at random.
func TestRelayKeyOrder(t *testing.T) {
	t.Run("postgres", func(t *testing.T) { t.Parallel(); testKeyOrder(t, pgxWide) })
	t.Run("sqlite", func(t *testing.T) { t.Parallel(); testKeyOrder(t, sqliteTarget) })
}

func testKeyOrder[TTx any](t *testing.T, tg target[TTx]) {
	const total, keys = 1000, 10
	d := tg.open(t, true)
	rcv := newReceiver()
	var (
		mu    sync.Mutex
		rng   = rand.New(rand.NewPCG(1, 2))
		nacks atomic.Int64
	)
	rcv.decide = func(b *transport.Batch) (transport.Result, error) {
		mu.Lock()
		nack := rng.IntN(4) == 0
		mu.Unlock()
		if nack {
			nacks.Add(1)
			return transport.Result{}, errNack
		}
		return transport.Result{}, nil
	}
	srv := startServer(t, rcv)
	ob := newOutbox(t, d, notifyConfig(d))
	cfg := fastRelay(nil)
	cfg.Outbox = ob
	cfg.RetryMin, cfg.RetryMax = time.Millisecond, 10*time.Millisecond
	relay := newRelay(t, d, map[string]transport.Sender{"billing": newClient(t, srv.addr)}, cfg)
	stop := start(t, relay)

	for i := 0; i < total; i += 50 {
		var msgs []*outbox.Message
		for j := i; j < i+50; j++ {
			m := relayMsg("billing", j)
			m.Key = fmt.Sprintf("key-%d", j%keys)
			msgs = append(msgs, m)
		}
		mustEnqueue(t, ob, msgs...)
	}
	rcv.waitDistinct(t, total, 60*time.Second)
	waitUntil(t, "an empty outbox", 30*time.Second, func() bool { return unsent(t, d) == 0 })
	// A relay counts a row sent once its ack statement returned, after the
	// row left the outbox: stopped, it has counted every one.
	stop()
	got, counts := rcv.snapshot()
	if len(got) != total {
		t.Fatalf("%d deliveries of %d ids, want each of %d once", len(got), len(counts), total)
	}
	last := map[string]int{}
	for _, g := range got {
		var i int
		if _, err := fmt.Sscanf(g.env.ID, "billing-%d", &i); err != nil {
			t.Fatal(err)
		}
		if prev, ok := last[g.env.Key]; ok && i <= prev {
			t.Fatalf("key %s: message %d arrived after %d", g.env.Key, i, prev)
		}
		if g.env.Key != fmt.Sprintf("key-%d", i%keys) {
			t.Fatalf("message %d has key %q", i, g.env.Key)
		}
		last[g.env.Key] = i
	}
	st, err := relay.Stats(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if nacks.Load() == 0 || st.Retried == 0 || st.Sent != total {
		t.Fatalf("%d NACKs, stats %+v: want some NACKs and retries, %d sent", nacks.Load(), st, total)
	}
	if n := len(rowsOf(t, d)); n != 0 {
		t.Fatalf("%d rows left", n)
	}
	t.Logf("%d NACKs, %d rows retried", nacks.Load(), st.Retried)
}

// TestRelayExpiredAndScheduled: an expired message goes to the dead letters
// (reason expired) and is never sent; a scheduled one is passed over until
// its DeliverAt, then leaves within the poll interval.
func TestRelayExpiredAndScheduled(t *testing.T) {
	runRelayTargets(t, testExpiredScheduled[pgxTx], testExpiredScheduled[sqlTx])
}

func testExpiredScheduled[TTx any](t *testing.T, tg target[TTx]) {
	d := tg.open(t, true)
	rcv := newReceiver()
	srv := startServer(t, rcv)
	ob := newOutbox(t, d, nil)
	cfg := fastRelay(nil)
	cfg.PollInterval = 100 * time.Millisecond

	// The relay's first claim meets an expired row, a row scheduled far
	// ahead (an hour: however slow the machine, it is not due during the
	// test) and a plain one.
	exp := relayMsg("billing", 1)
	exp.ExpiresAt = time.Now().Add(100 * time.Millisecond)
	far := relayMsg("billing", 2)
	far.DeliverAt = time.Now().Add(time.Hour).Truncate(time.Millisecond)
	far.ExpiresAt = far.DeliverAt.Add(time.Hour)
	plain := relayMsg("billing", 3)
	mustEnqueue(t, ob, exp, far, plain)
	time.Sleep(250 * time.Millisecond) // exp expires before any relay runs

	relay := newRelay(t, d, map[string]transport.Sender{"billing": newClient(t, srv.addr)}, cfg)
	stop := start(t, relay)
	rcv.waitDistinct(t, 1, 30*time.Second)
	if _, counts := rcv.snapshot(); counts[plain.ID] != 1 {
		t.Fatalf("first delivery: %v, want %s", counts, plain.ID)
	}
	waitUntil(t, "the plain message's ack and the expired one's dead letter", 30*time.Second, func() bool { return unsent(t, d) == 1 })
	rows := rowsOf(t, d)
	if len(rows) != 1 || rows[0].ID != far.ID || rows[0].SendAttempt != 0 {
		t.Fatalf("outbox before DeliverAt: %+v, want only the scheduled row, never attempted", rows)
	}
	dl := deadLettersOf(t, d)
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	l := dl[0]
	if l.ID != exp.ID || l.Side != dialects.SideOutbox || l.Reason != dialects.ReasonExpired || l.Destination != "billing" ||
		l.Attempts != 0 || !bytes.Equal(l.Payload, exp.Payload) || l.Topic != exp.Topic || !strings.Contains(l.LastError, "expired") {
		t.Fatalf("dead letter %+v", l)
	}

	// A message due in a second, enqueued while the relay polls: it stays
	// untouched until its DeliverAt, then leaves.
	sched := relayMsg("billing", 4)
	sched.DeliverAt = time.Now().Add(time.Second).Truncate(time.Millisecond)
	sched.ExpiresAt = sched.DeliverAt.Add(time.Hour)
	mustEnqueue(t, ob, sched)
	for looked := 0; ; looked++ {
		rows := rowsOf(t, d)
		if !time.Now().Before(sched.DeliverAt) {
			// Read (partly) after DeliverAt: the relay may have taken it.
			// A slow machine may look fewer times before DeliverAt, or
			// never: it can miss an early claim, not fail spuriously;
			// the arrival time below is checked anyway.
			t.Logf("looked %d times before DeliverAt", looked)
			break
		}
		var got *dialects.OutboxRow
		for i := range rows {
			if rows[i].ID == sched.ID {
				got = &rows[i]
			}
		}
		if got == nil || got.SendAttempt != 0 || got.LeaseToken != "" {
			t.Fatalf("scheduled row before its DeliverAt: %+v, want it in the outbox, never attempted nor leased", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rcv.waitDistinct(t, 2, 30*time.Second)
	waitUntil(t, "the scheduled message's ack", 30*time.Second, func() bool { return unsent(t, d) == 1 })
	stop()
	got, counts := rcv.snapshot()
	if len(got) != 2 || counts[sched.ID] != 1 || counts[exp.ID] != 0 || counts[far.ID] != 0 {
		t.Fatalf("deliveries %v, want the plain and the due scheduled message once, never the expired one nor the one due in an hour", counts)
	}
	s := got[1]
	if s.at.Before(sched.DeliverAt) {
		t.Fatalf("scheduled message arrived at %v, before its DeliverAt %v", s.at, sched.DeliverAt)
	}
	// Within the poll interval on a quiet machine; the bound leaves a
	// loaded one room, and still catches a relay that finds due rows only
	// on some slower schedule (housekeeping, a lease).
	if late := s.at.Sub(sched.DeliverAt); late > cfg.PollInterval+10*time.Second {
		t.Fatalf("scheduled message arrived %v after DeliverAt, want within the poll interval (%v)", late, cfg.PollInterval)
	}
	if !s.env.DeliverAt.Equal(sched.DeliverAt) || !s.env.ExpiresAt.Equal(sched.ExpiresAt) {
		t.Fatalf("envelope DeliverAt %v ExpiresAt %v, want %v %v", s.env.DeliverAt, s.env.ExpiresAt, sched.DeliverAt, sched.ExpiresAt)
	}
	if rows := rowsOf(t, d); len(rows) != 1 || rows[0].ID != far.ID || rows[0].SendAttempt != 0 {
		t.Fatalf("rows left: %+v, want only the one due in an hour, never attempted", rows)
	}
	st, err := relay.Stats(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent != 2 || st.Expired != 1 || st.DeadLettered != 1 {
		t.Fatalf("stats %+v, want 2 sent, 1 expired", st)
	}
}

// TestRelayRejections: an envelope the peer rejects, a batch the peer
// refuses for good, and a message too large for the transport each end in
// the dead letters with the reason; everything else is delivered.
func TestRelayRejections(t *testing.T) {
	runRelayTargets(t, testRejections[pgxTx], testRejections[sqlTx])
}

func testRejections[TTx any](t *testing.T, tg target[TTx]) {
	d := tg.open(t, true)
	rcv := newReceiver()
	rcv.decide = func(b *transport.Batch) (transport.Result, error) {
		res := transport.Result{Outcomes: make([]transport.Outcome, len(b.Envelopes))}
		for i, e := range b.Envelopes {
			switch {
			case strings.HasPrefix(e.ID, "poison"):
				return transport.Result{}, transport.Permanent(errors.New("poison batch"))
			case e.ID == relayMsg("reject", 2).ID:
				res.Outcomes[i] = transport.Outcome{Status: transport.Rejected, Reason: "schema mismatch"}
			}
		}
		return res, nil
	}
	srv := startServer(t, rcv)
	small, err := tcp.NewClient(srv.addr, &tcp.ClientConfig{NodeID: "sender", Logger: quiet, MaxFrameSize: tcp.MinMaxFrameSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = small.Close(context.Background()) })
	ob := newOutbox(t, d, nil)
	var msgs []*outbox.Message
	for i := range 5 {
		msgs = append(msgs, relayMsg("reject", i))
	}
	for i := range 3 {
		m := relayMsg("poison", i)
		msgs = append(msgs, m)
	}
	for i := range 7 {
		m := relayMsg("big", i)
		if i == 4 {
			m.Payload = bytes.Repeat([]byte("x"), 2*tcp.MinMaxFrameSize)
		}
		msgs = append(msgs, m)
	}
	mustEnqueue(t, ob, msgs...)
	relay := newRelay(t, d, map[string]transport.Sender{
		"reject": newClient(t, srv.addr),
		"poison": newClient(t, srv.addr),
		"big":    small,
	}, fastRelay(nil))
	stop := start(t, relay)
	waitUntil(t, "an empty outbox", 30*time.Second, func() bool { return unsent(t, d) == 0 })
	stop()

	_, counts := rcv.snapshot()
	var want []string
	for _, i := range []int{0, 1, 3, 4} {
		want = append(want, relayMsg("reject", i).ID)
	}
	for _, i := range []int{0, 1, 2, 3, 5, 6} {
		want = append(want, relayMsg("big", i).ID)
	}
	var gotIDs []string
	for id, c := range counts {
		if c != 1 {
			t.Fatalf("%s delivered %d times", id, c)
		}
		gotIDs = append(gotIDs, id)
	}
	slices.Sort(gotIDs)
	slices.Sort(want)
	if !slices.Equal(gotIDs, want) {
		t.Fatalf("delivered %v, want %v", gotIDs, want)
	}
	dl := deadLettersOf(t, d)
	byID := map[string]dialects.DeadLetterRow{}
	for _, l := range dl {
		byID[l.ID] = l
		if l.Reason != dialects.ReasonRejected || l.Side != dialects.SideOutbox || l.Attempts != 1 {
			t.Fatalf("dead letter %s: reason %q side %q attempts %d", l.ID, l.Reason, l.Side, l.Attempts)
		}
	}
	if len(dl) != 5 {
		t.Fatalf("%d dead letters, want 5 (1 rejected, 3 poison, 1 too large)", len(dl))
	}
	if l := byID[relayMsg("reject", 2).ID]; l.LastError != "schema mismatch" || l.Destination != "reject" {
		t.Fatalf("rejected envelope's dead letter: %+v", l)
	}
	for i := range 3 {
		if l := byID[relayMsg("poison", i).ID]; !strings.Contains(l.LastError, "poison batch") {
			t.Fatalf("poison dead letter %d: %q", i, l.LastError)
		}
	}
	if l := byID[relayMsg("big", 4).ID]; !strings.Contains(l.LastError, "too large") || len(l.Payload) != 2*tcp.MinMaxFrameSize {
		t.Fatalf("too-large dead letter: error %q, payload %d bytes", l.LastError, len(l.Payload))
	}
	st, err := relay.Stats(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent != 10 || st.DeadLettered != 5 || st.Retried != 0 || st.DeadLetters != 5 {
		t.Fatalf("stats %+v", st)
	}
	if r, p, b := st.Destinations["reject"], st.Destinations["poison"], st.Destinations["big"]; r.DeadLetters != 1 || p.DeadLetters != 3 || b.DeadLetters != 1 || r.Unsent != 0 {
		t.Fatalf("dead letters per destination: reject %+v, poison %+v, big %+v", r, p, b)
	}
}

// TestRelayUnknownDestination: rows for a destination without a Sender are
// kept, reported in Stats and logged once; those that expired are moved to
// the dead letters all the same.
func TestRelayUnknownDestination(t *testing.T) {
	d := sqliteTarget.open(t, true)
	rcv := newReceiver()
	srv := startServer(t, rcv)
	ob := newOutbox(t, d, nil)
	short := relayMsg("nowhere", 3)
	short.ExpiresAt = time.Now().Add(100 * time.Millisecond)
	mustEnqueue(t, ob, relayMsg("nowhere", 1), relayMsg("billing", 1), relayMsg("nowhere", 2), short)
	time.Sleep(200 * time.Millisecond) // short expires before the relay starts
	log, sink := newLog()
	relay := newRelay(t, d, map[string]transport.Sender{"billing": newClient(t, srv.addr)}, fastRelay(log))
	stop := start(t, relay)
	rcv.waitDistinct(t, 1, 30*time.Second)
	// The housekeeping at start warns about the rows kept, then moves the
	// expired one; the billing row leaves once its ack is recorded.
	waitUntil(t, "the warning about the expired row moved", 30*time.Second, func() bool {
		return sink.count("without a Sender moved to the dead letters", "nowhere") > 0
	})
	waitUntil(t, "billing's ack (2 unsent rows left)", 30*time.Second, func() bool { return unsent(t, d) == 2 })
	st, err := relay.Stats(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if n := sink.count("without a Sender are kept", "nowhere"); n != 1 {
		t.Fatalf("warned %d times, want once:\n%s", n, sink.dump())
	}
	if n := sink.count("without a Sender moved to the dead letters", "nowhere", "count=1"); n != 1 {
		t.Fatalf("%d warnings of expired messages moved, want one:\n%s", n, sink.dump())
	}
	dl := deadLettersOf(t, d)
	if len(dl) != 1 || dl[0].ID != short.ID || dl[0].Reason != dialects.ReasonExpired || dl[0].Attempts != 0 ||
		!strings.Contains(dl[0].LastError, "expired at") || !strings.Contains(dl[0].LastError, "no Sender") {
		t.Fatalf("dead letters %+v; want %s expired, no attempt", dl, short.ID)
	}
	nw := st.Destinations["nowhere"]
	if nw.HasSender || nw.Unsent != 2 || nw.InFlight != 0 || st.Unsent != 2 || !st.Destinations["billing"].HasSender {
		t.Fatalf("stats %+v", st)
	}
	rows := rowsOf(t, d)
	if len(rows) != 2 || rows[0].Destination != "nowhere" || rows[0].SendAttempt != 0 {
		t.Fatalf("outbox %+v, want the two rows for nowhere, untouched", rows)
	}
	if n := rcv.distinct(); n != 1 {
		t.Fatalf("%d messages delivered, want 1", n)
	}
}

// TestRelayDrain: cancelling Run lets a batch in flight finish and record
// its acknowledgement; with a batch that never finishes, Run gives up after
// DrainTimeout and releases its rows for the next relay.
func TestRelayDrain(t *testing.T) {
	d := sqliteTarget.open(t, true)
	var (
		entered = make(chan struct{}, 10)
		release = make(chan struct{})
		once    sync.Once
	)
	rcv := newReceiver()
	rcv.decide = func(b *transport.Batch) (transport.Result, error) {
		entered <- struct{}{}
		<-release
		return transport.Result{}, nil
	}
	srv := startServer(t, rcv)
	ob := newOutbox(t, d, nil)
	mustEnqueue(t, ob, relayMsg("billing", 1))
	relay := newRelay(t, d, map[string]transport.Sender{"billing": newClient(t, srv.addr)}, fastRelay(nil))
	stop := start(t, relay)
	// Registered after the server and the relay, so run before they stop,
	// should the test fail while the handler is blocked.
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	within(t, entered, "the first batch to reach the peer")
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("Run returned with a batch in flight")
	case <-time.After(300 * time.Millisecond):
	}
	once.Do(func() { close(release) })
	within(t, stopped, "Run to return once the batch was answered")
	if n := len(rowsOf(t, d)); n != 0 {
		t.Fatalf("%d rows left after a drained batch; its ack was not recorded", n)
	}

	// A batch that does not finish within DrainTimeout.
	mustEnqueue(t, ob, relayMsg("billing", 2))
	block := make(chan struct{})
	var blockOnce sync.Once
	rcv.decide = nil
	rcv2 := newReceiver()
	rcv2.decide = func(b *transport.Batch) (transport.Result, error) {
		entered <- struct{}{}
		<-block
		return transport.Result{}, errNack
	}
	srv2 := startServer(t, rcv2)
	cfg := fastRelay(nil)
	cfg.DrainTimeout = 200 * time.Millisecond
	// Were DrainTimeout ignored, Run would wait for the send's timeout, a
	// minute: far above the bound below, which leaves a loaded machine
	// plenty of room.
	cfg.SendTimeout = time.Minute
	relay2 := newRelay(t, d, map[string]transport.Sender{"billing": newClient(t, srv2.addr)}, cfg)
	stop2 := start(t, relay2)
	t.Cleanup(func() { blockOnce.Do(func() { close(block) }) })
	within(t, entered, "the second batch to reach the peer")
	began := time.Now()
	stop2()
	if took := time.Since(began); took > 20*time.Second {
		t.Fatalf("Run took %v to give up on the batch, DrainTimeout is 200ms, SendTimeout a minute", took)
	}
	blockOnce.Do(func() { close(block) })
	rows := rowsOf(t, d)
	if len(rows) != 1 || rows[0].LeaseToken != "" || !rows[0].LockedUntil.IsZero() || rows[0].SendAttempt != 1 {
		t.Fatalf("row after an abandoned batch: %+v, want released at once with its attempt counted", rows)
	}
	// The next relay sends it at once.
	relay3 := newRelay(t, d, map[string]transport.Sender{"billing": newClient(t, srv.addr)}, fastRelay(nil))
	start(t, relay3)
	waitUntil(t, "the released row to be delivered", 30*time.Second, func() bool { return len(rowsOf(t, d)) == 0 })
	if _, counts := rcv.snapshot(); counts[relayMsg("billing", 2).ID] != 1 {
		t.Fatalf("released row delivered %d times", counts[relayMsg("billing", 2).ID])
	}
}

// TestRelayWakeups: with a poll interval of a minute, a message arrives
// well within it when the relay is woken by Enqueue in the process (SQLite)
// or by NOTIFY from another (Postgres); without wake-ups it waits.
func TestRelayWakeups(t *testing.T) {
	wakeTest := func(t *testing.T, d dialects.Dialect[sqlTx], obCfg *outbox.Config, attach, want bool) {
		rcv := newReceiver()
		srv := startServer(t, rcv)
		ob := newOutbox(t, d, obCfg)
		// A message enqueued before the relay starts leaves with its first
		// claim (the relay subscribed to ob before it); once it is
		// acknowledged, the relay claims once more, finds nothing, and
		// sleeps until a wake-up or the next poll, a minute away.
		mustEnqueue(t, ob, relayMsg("warm-up", 0))
		cfg := fastRelay(nil)
		cfg.PollInterval = time.Minute
		if attach {
			cfg.Outbox = ob
		}
		counted, claims := countClaims(d)
		warm := newRelay(t, counted, map[string]transport.Sender{"billing": newClient(t, srv.addr), "warm-up": newClient(t, srv.addr)}, cfg)
		start(t, warm)
		rcv.waitDistinct(t, 1, 30*time.Second)
		waitUntil(t, "the warm-up ack", 30*time.Second, func() bool { return unsent(t, d) == 0 })
		// Each lane claims at start; warm-up's lane claims once more after
		// its batch was answered. Those claims returned: the relay is idle,
		// and a message enqueued now is not found by a claim already under
		// way, whatever the machine's speed. (With NOTIFY, the listener's
		// first LISTEN adds a claim of every lane: that one is a wake-up.)
		waitUntil(t, "the relay's claims at start and after the warm-up's ack", 30*time.Second, func() bool { return claims.Load() >= 3 })
		for i := range 5 {
			began := time.Now()
			mustEnqueue(t, ob, relayMsg("billing", i))
			if !want {
				// Nothing may arrive before the poll; a slow machine
				// can only make this window miss a delivery.
				time.Sleep(500 * time.Millisecond)
				if n := rcv.distinct(); n != 1 {
					t.Fatal("delivered without a wake-up: the test cannot tell wake-ups from polls")
				}
				return
			}
			// Well within the minute-long poll: only a wake-up delivers
			// it this soon. The bound is not on the machine's speed.
			rcv.waitDistinct(t, i+2, 30*time.Second)
			t.Logf("woken delivery %d: %v", i, time.Since(began))
		}
	}
	t.Run("sqlite-in-process", func(t *testing.T) { wakeTest(t, sqliteTarget.open(t, true), nil, true, true) })
	t.Run("sqlite-none", func(t *testing.T) { wakeTest(t, sqliteTarget.open(t, true), nil, false, false) })
	t.Run("postgres-notify", func(t *testing.T) {
		wakeTest(t, pgSQLTarget.open(t, true), &outbox.Config{Notify: true}, false, true)
	})
}

// TestRelayRetention: with Retention, acknowledged rows stay, stamped
// sent_at, and are never sent again.
func TestRelayRetention(t *testing.T) {
	d := sqliteTarget.open(t, true)
	rcv := newReceiver()
	srv := startServer(t, rcv)
	ob := newOutbox(t, d, nil)
	mustEnqueue(t, ob, relayMsg("billing", 1), relayMsg("billing", 2))
	cfg := fastRelay(nil)
	cfg.Retention = time.Hour
	relay := newRelay(t, d, map[string]transport.Sender{"billing": newClient(t, srv.addr)}, cfg)
	stop := start(t, relay)
	rcv.waitDistinct(t, 2, 30*time.Second)
	waitUntil(t, "acks", 30*time.Second, func() bool { return unsent(t, d) == 0 })
	time.Sleep(200 * time.Millisecond) // polls that must not resend
	stop()
	rows := rowsOf(t, d)
	if len(rows) != 2 || rows[0].SentAt.IsZero() || rows[1].SentAt.IsZero() {
		t.Fatalf("retained rows: %+v", rows)
	}
	if got, _ := rcv.snapshot(); len(got) != 2 {
		t.Fatalf("%d deliveries, want 2", len(got))
	}
}

// nopSender accepts everything.
type nopSender struct{}

func (nopSender) Send(context.Context, *transport.Batch) (transport.Result, error) {
	return transport.Result{}, nil
}

func TestNewRelayErrors(t *testing.T) {
	d := sqliteTarget.open(t, true)
	ok := map[string]transport.Sender{"billing": nopSender{}}
	for _, c := range []struct {
		name    string
		d       dialects.Dialect[sqlTx]
		senders map[string]transport.Sender
		cfg     *outbox.RelayConfig
		want    string
	}{
		{"nil dialect", nil, ok, nil, "needs a dialect"},
		{"no senders", d, nil, nil, "at least one"},
		{"nil sender", d, map[string]transport.Sender{"billing": nil}, nil, "nil Sender"},
		{"bad destination", d, map[string]transport.Sender{"": nopSender{}}, nil, "invalid destination"},
		{"negative", d, ok, &outbox.RelayConfig{BatchSize: -1}, "BatchSize is negative"},
		{"negative duration", d, ok, &outbox.RelayConfig{PollInterval: -time.Second}, "PollInterval is negative"},
		{"send outlives lease", d, ok, &outbox.RelayConfig{Lease: time.Second, SendTimeout: 2 * time.Second}, "shorter than Lease"},
		{"retry bounds", d, ok, &outbox.RelayConfig{RetryMin: time.Minute, RetryMax: time.Second}, "below RetryMin"},
	} {
		if _, err := outbox.NewRelay(c.d, c.senders, c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: NewRelay = %v, want an error containing %q", c.name, err, c.want)
		}
	}
	// Defaults, and Run refusing an unmigrated database.
	r, err := outbox.NewRelay(sqliteTarget.open(t, false), ok, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(ctxT(t)); !errors.Is(err, outbox.ErrSchema) {
		t.Fatalf("Run on an unmigrated database = %v, want ErrSchema", err)
	}
	// Run while running is refused.
	sent := make(chan struct{}, 100)
	mustEnqueue(t, newOutbox(t, d, nil), relayMsg("billing", 1))
	running, err := outbox.NewRelay(d, map[string]transport.Sender{"billing": signalSender(sent)}, fastRelay(nil))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan error, 1)
	go func() { done <- running.Run(ctx) }()
	within(t, sent, "the running relay's first send")
	if err := running.Run(ctx); err == nil || !strings.Contains(err.Error(), "running") {
		t.Errorf("second Run = %v, want an error saying the relay is running", err)
	}
	cancel()
	if err := within(t, done, "Run to return after cancel"); err != nil {
		t.Fatalf("Run = %v", err)
	}
}

// signalSender accepts everything and signals each Send.
type signalSender chan struct{}

func (s signalSender) Send(context.Context, *transport.Batch) (transport.Result, error) {
	s <- struct{}{}
	return transport.Result{}, nil
}

// TestRelayWaitsForDatabase: Run on a database that does not answer
// (connection refused) waits for it instead of failing, and sends nothing;
// a context that ends meanwhile is a graceful stop.
func TestRelayWaitsForDatabase(t *testing.T) {
	pool, _ := testdb.UnreachablePostgres(t)
	sent := make(chan struct{}, 1)
	r := newRelay(t, pgDialect(t, pool), map[string]transport.Sender{"billing": signalSender(sent)}, fastRelay(nil))
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := r.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil: it waits for the database until its context ends", err)
	}
	if d := time.Since(start); d < 350*time.Millisecond {
		t.Fatalf("Run returned after %v, before its context ended", d)
	}
	if len(sent) != 0 {
		t.Fatal("the relay sent something without a database")
	}
}
