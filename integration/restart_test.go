package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// restartCycles is how often each side is killed holding claims and
// started again.
const restartCycles = 12

// restartDrainBound bounds the drain after the last restart. The target is
// 2s, and a quiet machine drains in a fraction of that (the figures are in
// the log); the bound leaves room for a loaded CI machine and is still far
// below what the default leases made it before a restarted node took back
// its previous run's claims: the relay's 30s, and the inbox's 60s plus a
// rescue every 30s.
const restartDrainBound = 15 * time.Second

// TestRestartsPostgres and TestRestartsSQLite: one sender and one receiver
// with the library's default timings (-defaults: leases, polling, timeouts,
// backoff). Each side is killed restartCycles times at the moment it holds
// claims (the receiver's workers right after a claim, the relay right after
// its claim, both crash points of the library) and started again. The
// backlog left after the last restart drains within restartDrainBound, and
// every committed message has exactly one effect.
func TestRestartsPostgres(t *testing.T) {
	t.Parallel()
	restartTest(t, "postgres", 5)
}

func TestRestartsSQLite(t *testing.T) {
	t.Parallel()
	restartTest(t, "sqlite", 6)
}

func restartTest(t *testing.T, dialect string, seed uint64) {
	if testing.Short() {
		t.Skip("starts and kills processes for about a minute; runs without -short")
	}
	sc := scenario{dialect: dialect, seed: seed, senders: 1, receivers: 1, rate: 40, writers: 1, args: []string{"-defaults"}}
	c := newCluster(t, sc)
	// Handlers that never fail: a retry would wait for the default backoff
	// and blur what the drain measures. Workers only, so that every
	// message is claimed.
	c.receivers[0].extra = []string{"-inline", "off", "-fail", "0", "-swallow", "0", "-panic", "0", "-slow", "0"}
	c.run()
	c.logf("running: 1 sender at %v tx/s, 1 receiver, %s, default timings, seed %d", sc.rate, dialect, seed)

	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 5))
	recv, send := c.receivers[0], c.senders[0]
	for i := range restartCycles {
		if i == restartCycles-1 {
			// The last start of the sender only relays, so that the
			// backlog has an end.
			send.mu.Lock()
			send.extra = []string{"-rate", "0"}
			send.mu.Unlock()
		}
		c.armCrashPoint(ctx, rng, recv, crashPoint{name: "inbox.after-claim", role: "receiver", path: "workers"}, 1+rng.IntN(3))
		c.armCrashPoint(ctx, rng, send, crashPoint{name: "relay.after-claim", role: "sender", window: winCommitSend}, 1+rng.IntN(3))
	}
	if t.Failed() {
		return
	}

	// Both run again, the sender's last run started last.
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, drainTimeout)
	defer cancel()
	var outboxLeft, inboxLeft int
	for {
		var err error
		outboxLeft, err = queryInt(dctx, c.orders.db, `SELECT count(*) FROM durable_outbox WHERE sent_at IS NULL`)
		if err == nil {
			inboxLeft, err = queryInt(dctx, c.billing.db, `SELECT count(*) FROM durable_inbox WHERE state <> 'handled'`)
		}
		if err == nil && outboxLeft == 0 && inboxLeft == 0 {
			break
		}
		if !pause(dctx, 10*time.Millisecond) {
			t.Errorf("not drained %v after the last restart: %d messages left in the outbox, %d unhandled in the inbox", drainTimeout, outboxLeft, inboxLeft)
			c.dumpStuck()
			break
		}
	}
	took := time.Since(start)
	c.logf("drained %v after the last restart", took.Round(time.Millisecond))
	if took > restartDrainBound {
		t.Errorf("the backlog drained %v after the last restart, more than %v: the claims of the killed processes waited for their leases", took.Round(time.Millisecond), restartDrainBound)
	}

	c.mu.Lock()
	k := c.caught
	c.mu.Unlock()
	// Unless kills found claims held, this test shows nothing.
	if k.outboxRowsInFlight == 0 || k.inboxRowsMidBatch == 0 {
		t.Errorf("the kills left no claims to take back: %v", k)
	}
	for _, s := range []*service{send, recv} {
		if err := s.stop(stopTimeout); err != nil {
			t.Error(err)
		}
	}
	c.check()
}

// TestTwoProcessesOneName: two receiver processes run under one name on one
// database (replicas of a service), with default timings. The second to
// register warns that another process of its name runs on this host; neither takes the
// other for dead while both run. When one is killed holding claims, the
// other releases them within a heartbeat, long before their leases (60s)
// run out, and nothing is lost or handled twice.
func TestTwoProcessesOneName(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes; runs without -short")
	}
	t.Parallel()
	sc := scenario{dialect: "postgres", seed: 7, senders: 1, receivers: 2, rate: 40, writers: 1, args: []string{"-defaults"}}
	c := newCluster(t, sc)
	for _, r := range c.receivers {
		r.extra = []string{"-inline", "off", "-fail", "0", "-swallow", "0", "-panic", "0", "-slow", "0"}
	}
	var mu sync.Mutex
	killed := make(map[int]bool)   // pids the test killed
	released := make(map[int]bool) // pids whose claims a node released
	var warnedBy []string
	var wrongRelease []string
	c.hook = func(s *service, stream, line string) {
		if stream != "stderr" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if strings.Contains(line, "another process runs under this node's name on this host") {
			warnedBy = append(warnedBy, s.name)
		}
		if _, rest, ok := strings.Cut(line, `msg="durable: released the claims of a stopped node"`); ok {
			_, pid, _ := strings.Cut(rest, " other_pid=")
			pid, _, _ = strings.Cut(pid, " ")
			n, err := strconv.Atoi(pid)
			if err != nil {
				wrongRelease = append(wrongRelease, s.name+": "+line)
			}
			released[n] = true
		}
	}
	c.run()

	// Both run and claim, and the second started warned; messages flow
	// for a while (the history check wants at least 50).
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		n, err := queryInt(ctx, c.billing.db, `SELECT count(DISTINCT pid) FROM durable_nodes WHERE name = 'billing'`)
		if err != nil {
			t.Fatal(err)
		}
		m, err := queryInt(ctx, c.orders.db, `SELECT count(*) FROM orders`)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		warned := len(warnedBy)
		mu.Unlock()
		if n == 2 && m >= 100 && warned > 0 {
			break
		}
		if !pause(ctx, 20*time.Millisecond) {
			t.Fatalf("after a minute: %d receivers registered, %d messages committed, %d warnings about the shared name", n, m, warned)
		}
	}
	// The helper prints READY before its Node registers, so either may
	// have registered second.
	mu.Lock()
	if len(warnedBy) != 1 {
		t.Errorf("warnings about the shared name came from %v, want one, from the receiver that registered second", warnedBy)
	}
	mu.Unlock()

	// The second receiver dies holding claims, and is not started again:
	// only the first can release them.
	second := c.receivers[1]
	mu.Lock()
	killed[second.process().Pid()] = true
	mu.Unlock()
	second.kill()
	c.mu.Lock()
	c.points.armed["inbox.after-claim"]++
	c.mu.Unlock()
	if err := second.startArmed("inbox.after-claim:1"); err != nil {
		t.Fatal(err)
	}
	p := second.process()
	mu.Lock()
	killed[p.Pid()] = true
	mu.Unlock()
	// Deliveries wake the receiving process's workers: send to the armed
	// one, so that its workers claim (the other's only poll).
	c.aim(second)
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the armed receiver did not reach its crash point within 30s")
	}
	died := time.Now()
	c.afterKill(second, p.Pid())
	for {
		mu.Lock()
		done := released[p.Pid()]
		mu.Unlock()
		if done {
			break
		}
		if !pause(ctx, 10*time.Millisecond) {
			t.Fatalf("the first receiver did not release the claims of the killed one (pid %d)", p.Pid())
		}
	}
	c.logf("the live receiver released the killed one's claims %v after its death", time.Since(died).Round(time.Millisecond))
	c.mu.Lock()
	k := c.caught
	c.mu.Unlock()
	if k.inboxRowsMidBatch == 0 {
		t.Errorf("the killed receiver held no claims: %v", k)
	}
	mu.Lock()
	for pid := range released {
		if !killed[pid] {
			wrongRelease = append(wrongRelease, fmt.Sprintf("pid %d, which was running", pid))
		}
	}
	if len(wrongRelease) > 0 {
		t.Errorf("claims of processes that were not killed were released:\n\t%s", strings.Join(wrongRelease, "\n\t"))
	}
	mu.Unlock()
	if c.drain() {
		c.check()
	}
}
