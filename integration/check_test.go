package integration

import (
	"context"
	"database/sql"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/durable-go/durable/integration/internal/faultproxy"
	"github.com/durable-go/durable/integration/internal/history"
)

// drainTimeout bounds the wait for the last message once the faults stopped.
const drainTimeout = 2 * time.Minute

// stopTimeout bounds a graceful stop (SIGTERM) of a service: a bound on a
// hang, not on speed. A node stops within seconds (its ShutdownTimeout is
// 3s, a stuck handler's timeout 5s); on a loaded machine that can take
// longer, and a stop that hangs still fails the test.
const stopTimeout = time.Minute

// drain heals every fault, brings every service and database back, lets the
// senders relay without enqueuing more, and waits until the outbox is empty
// and every inbox message is handled; then it stops the services gracefully.
// It reports whether everything drained.
func (c *cluster) drain() bool {
	t := c.t
	t.Helper()
	for _, p := range c.proxies {
		p.Stall(false)
		p.Latency(0)
		p.Bandwidth(0)
		p.Refuse(false)
		p.CutAfter(faultproxy.Both, -1)
		if err := p.Relisten(); err != nil {
			t.Fatal(err)
		}
	}
	for _, sd := range []*side{c.orders, c.billing} {
		if sd.pg != nil && !sd.pg.Running() {
			if err := sd.pg.Start(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, r := range c.receivers {
		if !r.running() {
			c.startAgain(r)
		}
	}
	c.retarget(nil, false)
	// Senders stop enqueuing: a graceful stop, then a start that only
	// relays.
	for _, s := range c.senders {
		if err := s.stop(stopTimeout); err != nil {
			t.Error(err)
		}
		s.mu.Lock()
		s.extra = []string{"-rate", "0"}
		s.mu.Unlock()
		c.startAgain(s)
	}
	c.logf("drain: faults healed, services running, senders only relay")

	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	var outboxLeft, inboxLeft int
	next := time.Now()
	for {
		var err error
		outboxLeft, err = queryInt(ctx, c.orders.db, `SELECT count(*) FROM durable_outbox WHERE sent_at IS NULL`)
		if err == nil {
			inboxLeft, err = queryInt(ctx, c.billing.db, `SELECT count(*) FROM durable_inbox WHERE state <> 'handled'`)
		}
		if err == nil && outboxLeft == 0 && inboxLeft == 0 {
			break
		}
		if time.Now().After(next) {
			c.logf("drain: %d messages in the outbox, %d unhandled in the inbox (%v)", outboxLeft, inboxLeft, err)
			next = time.Now().Add(5 * time.Second)
		}
		if !pause(ctx, 100*time.Millisecond) {
			t.Errorf("not drained %v after the faults stopped: %d messages left in the outbox, %d unhandled in the inbox", drainTimeout, outboxLeft, inboxLeft)
			c.dumpStuck()
			break
		}
	}
	drained := outboxLeft == 0 && inboxLeft == 0
	if drained {
		c.logf("drain: outbox empty, inbox handled")
	}
	for _, s := range append(append([]*service(nil), c.senders...), c.receivers...) {
		if err := s.stop(stopTimeout); err != nil {
			t.Error(err)
		}
	}
	return drained
}

// dumpStuck logs what is left in the outbox and the inbox.
func (c *cluster) dumpStuck() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, q := range []struct {
		sd    *side
		query string
	}{
		{c.orders, `SELECT id, attempts, COALESCE(locked_by, ''), COALESCE(CAST(locked_until AS TEXT), ''), COALESCE(last_error, '') FROM durable_outbox WHERE sent_at IS NULL ORDER BY seq LIMIT 10`},
		{c.billing, `SELECT id, state, attempts, COALESCE(CAST(locked_until AS TEXT), ''), COALESCE(last_error, '') FROM durable_inbox WHERE state <> 'handled' ORDER BY seq LIMIT 10`},
	} {
		rows, err := q.sd.db.QueryContext(ctx, q.query)
		if err != nil {
			c.t.Logf("%s: %v", q.sd.name, err)
			continue
		}
		for rows.Next() {
			var a, b, c2, d, e string
			if err := rows.Scan(&a, &b, &c2, &d, &e); err == nil {
				c.t.Logf("%s left: %s | %s | %s | %s | %s", q.sd.name, a, b, c2, d, e)
			}
		}
		rows.Close()
	}
}

func queryInt(ctx context.Context, db *sql.DB, q string, args ...any) (int, error) {
	var n int
	err := db.QueryRowContext(ctx, q, args...).Scan(&n)
	return n, err
}

// check compares the sender's committed business rows with the receiver's
// effects and dead letters: every committed message has exactly one outcome
// (an effect, or a dead letter for a poison message), nothing else has any.
func (c *cluster) check() {
	t := c.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The truth: a message exists iff its business row committed.
	kinds := make(map[string]string)
	rows, err := c.orders.db.QueryContext(ctx, `SELECT id, kind FROM orders`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, kind string
		if err := rows.Scan(&id, &kind); err != nil {
			t.Fatal(err)
		}
		kinds[id] = kind
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	effects, err := history.CountEffectsSQL(ctx, c.billing.db, "effects", "message_id")
	if err != nil {
		t.Fatal(err)
	}
	dead := make(map[string]int)
	deadReason := make(map[string]string)
	rows, err = c.billing.db.QueryContext(ctx, `SELECT id, side, source, reason FROM durable_dead_letters`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, sideName, source, reason string
		if err := rows.Scan(&id, &sideName, &source, &reason); err != nil {
			t.Fatal(err)
		}
		if sideName != "inbox" || source != "orders" {
			t.Errorf("unexpected dead letter at billing: id %s side %s source %s reason %s", id, sideName, source, reason)
			continue
		}
		dead[id]++
		deadReason[id] = reason
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()

	h := history.New()
	for id := range kinds {
		h.Committed(history.Message{ID: id, Source: "orders", Destination: "billing"})
	}
	h.AddEffects("billing", effects)
	h.AddEffects("billing", dead) // a dead letter is the outcome of a poison message
	report := h.Report()
	if err := report.Err(); err != nil {
		t.Error(err)
	}

	// Poison messages end in the dead letters, the others in an effect.
	var misfiled []string
	poison := 0
	for id, kind := range kinds {
		switch {
		case kind == "poison":
			poison++
			if effects[id] != 0 || dead[id] != 1 || deadReason[id] != "permanent" {
				misfiled = append(misfiled, fmt.Sprintf("poison %s: %d effects, %d dead letters (%s)", id, effects[id], dead[id], deadReason[id]))
			}
		case dead[id] != 0:
			misfiled = append(misfiled, fmt.Sprintf("normal %s: dead-lettered (%s)", id, deadReason[id]))
		}
	}
	if len(misfiled) > 0 {
		slices.Sort(misfiled)
		t.Errorf("%d messages with the wrong outcome:\n\t%s", len(misfiled), strings.Join(first(misfiled, 25), "\n\t"))
	}

	// The sender gave up on nothing.
	if n, err := queryInt(ctx, c.orders.db, `SELECT count(*) FROM durable_dead_letters`); err != nil || n != 0 {
		t.Errorf("the sender dead-lettered %d messages (%v)", n, err)
	}

	// What the sender saw of its own commits agrees with its database.
	c.mu.Lock()
	printed := maps.Clone(c.printed)
	runErrors := slices.Clone(c.runErrors)
	unexpected := slices.Clone(c.unexpected)
	faults := maps.Clone(c.faults)
	caught := c.caught
	died := maps.Clone(c.died)
	points := pointCounts{
		armed:   maps.Clone(c.points.armed),
		fired:   maps.Clone(c.points.fired),
		missed:  maps.Clone(c.points.missed),
		skipped: maps.Clone(c.points.skipped),
	}
	c.mu.Unlock()
	var vanished, resurrected []string
	var nCommitted, nRolledBack, nUnknown, unknownCommitted int
	for id, st := range printed {
		_, ok := kinds[id]
		switch st {
		case 'C':
			nCommitted++
			if !ok {
				vanished = append(vanished, id)
			}
		case 'R':
			nRolledBack++
			if ok {
				resurrected = append(resurrected, id)
			}
		case 'U':
			nUnknown++
			if ok {
				unknownCommitted++
			}
		}
	}
	if len(vanished) > 0 {
		t.Errorf("%d transactions whose commit succeeded have no business row: %v", len(vanished), first(vanished, 25))
	}
	if len(resurrected) > 0 {
		t.Errorf("%d rolled back transactions have a business row: %v", len(resurrected), first(resurrected, 25))
	}

	// Per-key order, as the handler observed it.
	rows, err = c.billing.db.QueryContext(ctx, `SELECT message_id, key, seq, last_seq FROM order_violations`)
	if err != nil {
		t.Fatal(err)
	}
	var violations []string
	for rows.Next() {
		var id, key string
		var seq, last int64
		if err := rows.Scan(&id, &key, &seq, &last); err != nil {
			t.Fatal(err)
		}
		violations = append(violations, fmt.Sprintf("key %s: seq %d (%s) handled after seq %d", key, seq, id, last))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if len(violations) > 0 {
		t.Errorf("%d messages handled out of their key's order:\n\t%s", len(violations), strings.Join(first(violations, 25), "\n\t"))
	}

	if len(unexpected) > 0 {
		t.Errorf("services exited without being told to:\n\t%s", strings.Join(unexpected, "\n\t"))
	}
	for _, l := range first(runErrors, 10) {
		t.Logf("Node.Run failed and was started again: %s", l)
	}
	if least := 50; len(kinds) < least {
		t.Errorf("only %d messages committed, want at least %d: the scenario did not exercise anything", len(kinds), least)
	}

	var ps faultproxy.Stats
	for _, p := range c.proxies {
		st := p.Stats()
		ps.Accepted += st.Accepted
		ps.Cuts += st.Cuts
		ps.Refused += st.Refused
		ps.BytesToTarget += st.BytesToTarget
		ps.BytesToClient += st.BytesToClient
	}
	starts := 0
	for _, s := range append(append([]*service(nil), c.senders...), c.receivers...) {
		starts += s.starts
	}
	t.Logf("seed %d: %s", c.sc.seed, report.Summary())
	t.Logf("messages: %d committed (%d poison), %d effects, %d dead letters; sender printed %d commits, %d rollbacks, %d unknown outcomes (%d of them committed)",
		len(kinds), poison, sumValues(effects), sumValues(dead), nCommitted, nRolledBack, nUnknown, unknownCommitted)
	t.Logf("faults: %v; %d service starts; %d Node.Run restarts; proxy: %d connections, %d cut, %d refused, %d B to receivers, %d B to senders",
		faults, starts, len(runErrors), ps.Accepted, ps.Cuts, ps.Refused, ps.BytesToTarget, ps.BytesToClient)
	c.checkShares(ctx)
	t.Logf("kills: %v; services killed at their exact crash point: %v", caught, died)
	hits := windowHits(points.fired, died)
	t.Logf("library crash points, reached/armed: %s; exact hits by window: %v", pointSummary(points), hits)
	if missing := crashWindows(hits); len(missing) > 0 {
		if c.sc.windows {
			t.Errorf("windows never hit exactly in this scenario: %s", strings.Join(missing, ", "))
		} else {
			t.Logf("windows never hit exactly (not required of a shortened scenario): %s", strings.Join(missing, ", "))
		}
	}
}

// checkShares logs how much each receiver instance handled (the effects it
// wrote, by handled_by) and, with a proxy per receiver, took in through its
// proxy; there, each must have handled some, and the partitions are
// summed up.
func (c *cluster) checkShares(ctx context.Context) {
	t := c.t
	t.Helper()
	rows, err := c.billing.db.QueryContext(ctx, `SELECT handled_by, count(*) FROM effects GROUP BY handled_by`)
	if err != nil {
		t.Fatal(err)
	}
	handled := make(map[string]int)
	for rows.Next() {
		var by string
		var n int
		if err := rows.Scan(&by, &n); err != nil {
			t.Fatal(err)
		}
		handled[by] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	total := sumValues(handled)
	var shares []string
	for _, r := range c.receivers {
		share := fmt.Sprintf("%s %d effects (%.0f%%)", r.name, handled[r.name], 100*float64(handled[r.name])/float64(max(total, 1)))
		if r.proxy != nil {
			st := r.proxy.Stats()
			share += fmt.Sprintf(", %d connections and %d B through its proxy", st.Accepted, st.BytesToTarget)
			if handled[r.name] == 0 {
				t.Errorf("receiver %s handled no message: the senders' balancers did not spread the load", r.name)
			}
		}
		shares = append(shares, share)
		delete(handled, r.name)
	}
	if len(handled) > 0 {
		t.Errorf("effects written by no receiver of the scenario: %v", handled)
	}
	t.Logf("per receiver: %s", strings.Join(shares, "; "))
	if c.proxy == nil {
		c.mu.Lock()
		pc := c.partitions
		c.mu.Unlock()
		t.Logf("partitions: %d receivers partitioned, the others took traffic meanwhile in %d of them", pc.n, pc.othersDelivered)
	}
}

func sumValues(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func first[T any](s []T, n int) []T {
	if len(s) > n {
		return s[:n]
	}
	return s
}
