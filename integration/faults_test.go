package integration

import (
	"context"
	"math/rand/v2"
	"sync"
	"syscall"
	"time"

	"github.com/durable-go/durable/integration/internal/faultproxy"
	"github.com/durable-go/durable/integration/internal/pgserver"
	"github.com/durable-go/durable/integration/internal/proc"
)

// fault is one kind of trouble. run applies it, holds it for a random time
// and heals it; it returns early (healed) when ctx ends.
type fault struct {
	name   string
	weight int
	ok     func(c *cluster) bool // applicable to this scenario; nil: always
	run    func(ctx context.Context, c *cluster, rng *rand.Rand)
}

// between returns a random duration in [lo, hi).
func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)))
}

// pause sleeps d or until ctx ends; it reports whether the whole d passed.
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// networkFaults break the connections between the relays and the receivers,
// through the proxy.
var networkFaults = []fault{
	{name: "cut", weight: 3, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		n := c.proxy.Cut()
		c.logf("fault: cut %d connections", n)
	}},
	{name: "cut-mid-stream", weight: 4, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		// A budget of a few bytes to a few frames cuts inside a frame
		// (HELLO, BATCH or ACK) most of the time.
		dir := []faultproxy.Direction{faultproxy.Both, faultproxy.ToTarget, faultproxy.ToClient}[rng.IntN(3)]
		n := rng.Int64N(6000)
		c.proxy.CutAfter(dir, n)
		c.logf("fault: cut %s after %d bytes", dir, n)
		deadline := time.Now().Add(3 * time.Second)
		for c.proxy.Armed() && time.Now().Before(deadline) && pause(ctx, 20*time.Millisecond) {
		}
		c.proxy.CutAfter(dir, -1)
	}},
	{name: "cut-at-ack", weight: 2, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		// The next bytes from a receiver are most likely an ACK: the
		// batch is committed in the inbox and the relay never hears of it
		// (from the sender's side, the receiver died between insert and
		// ACK).
		c.proxy.CutAfter(faultproxy.ToClient, 0)
		c.logf("fault: cut at the next byte to a sender")
		deadline := time.Now().Add(3 * time.Second)
		for c.proxy.Armed() && time.Now().Before(deadline) && pause(ctx, 10*time.Millisecond) {
		}
		c.proxy.CutAfter(faultproxy.ToClient, -1)
	}},
	{name: "stall", weight: 2, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		// Up to twice the client's read and ack timeouts: short stalls
		// only delay, long ones make the relay give up on batches whose
		// bytes then still arrive when the stall ends.
		d := between(rng, 200*time.Millisecond, 4500*time.Millisecond)
		c.proxy.Stall(true)
		c.logf("fault: stall for %v", d.Round(time.Millisecond))
		pause(ctx, d)
		c.proxy.Stall(false)
	}},
	{name: "latency", weight: 2, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		l := between(rng, 5*time.Millisecond, 150*time.Millisecond)
		d := between(rng, 500*time.Millisecond, 4*time.Second)
		c.proxy.Latency(l)
		c.logf("fault: latency %v for %v", l.Round(time.Millisecond), d.Round(time.Millisecond))
		pause(ctx, d)
		c.proxy.Latency(0)
	}},
	{name: "bandwidth", weight: 2, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		bw := 2<<10 + rng.Int64N(62<<10)
		d := between(rng, 500*time.Millisecond, 4*time.Second)
		c.proxy.Bandwidth(bw)
		c.logf("fault: bandwidth %d B/s for %v", bw, d.Round(time.Millisecond))
		pause(ctx, d)
		c.proxy.Bandwidth(0)
	}},
	{name: "refuse", weight: 1, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		d := between(rng, 200*time.Millisecond, 2*time.Second)
		c.proxy.Refuse(true)
		n := c.proxy.Cut()
		c.logf("fault: cut %d connections and reset new ones for %v", n, d.Round(time.Millisecond))
		pause(ctx, d)
		c.proxy.Refuse(false)
	}},
	{name: "unlisten", weight: 1, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		d := between(rng, 200*time.Millisecond, 2*time.Second)
		c.proxy.Unlisten()
		n := 0
		if rng.IntN(2) == 0 {
			n = c.proxy.Cut()
		}
		c.logf("fault: refuse connections for %v (cut %d)", d.Round(time.Millisecond), n)
		pause(ctx, d)
		if err := c.proxy.Relisten(); err != nil {
			c.t.Errorf("relisten: %v", err)
		}
	}},
	{name: "switch-receiver", weight: 1, ok: func(c *cluster) bool { return len(c.receivers) > 1 },
		run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
			if r := c.retarget(rng, true); r != nil {
				n := c.proxy.Cut()
				c.logf("fault: switch to %s, cut %d connections", r.name, n)
			}
		}},
}

// crashFaults kill and stop the services. A SIGKILL lands wherever the
// service happens to be: between commit and send, send and delete, inbox
// insert and ACK, handler and completion. The die-* faults and the
// crash-point loop (crashpoints_test.go) aim at those windows on purpose.
var crashFaults = []fault{
	{name: "kill-sender", weight: 3, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		s := c.senders[rng.IntN(len(c.senders))]
		c.restart(ctx, rng, s, false)
	}},
	{name: "kill-receiver", weight: 3, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		r := c.receivers[rng.IntN(len(c.receivers))]
		c.restart(ctx, rng, r, false)
	}},
	{name: "die-after-commit", weight: 2, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		c.dieAt(ctx, rng, c.senders[rng.IntN(len(c.senders))])
	}},
	{name: "die-in-handler", weight: 2, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		c.dieAt(ctx, rng, c.receivers[rng.IntN(len(c.receivers))])
	}},
	{name: "kill-senders-at-ack", weight: 2, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		// SIGKILL every sender the moment the proxy forwards bytes to
		// them, most likely an ACK: the relay that gets it is then
		// between the acknowledgement and the deletion of its rows.
		before := c.proxy.Stats().BytesToClient
		deadline := time.Now().Add(3 * time.Second)
		for c.proxy.Stats().BytesToClient == before && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(100 * time.Microsecond)
		}
		killed := make(map[*service]*proc.Process)
		for _, s := range c.senders {
			if p := s.tell(); p != nil && !p.Exited() {
				_ = p.Signal(syscall.SIGKILL)
				killed[s] = p
			}
		}
		for s, p := range killed {
			p.Kill() // waits for the exit
			c.afterKill(s, p.Pid())
		}
		d := between(rng, 0, time.Second)
		c.logf("fault: SIGKILL every sender as bytes reached them, restart in %v", d.Round(time.Millisecond))
		pause(ctx, d)
		for _, s := range c.senders {
			c.startAgain(s)
		}
	}},
	{name: "stop-sender", weight: 1, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		s := c.senders[rng.IntN(len(c.senders))]
		c.restart(ctx, rng, s, true)
	}},
	{name: "stop-receiver", weight: 1, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		r := c.receivers[rng.IntN(len(c.receivers))]
		c.restart(ctx, rng, r, true)
	}},
	{name: "kill-all", weight: 1, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		all := append(append([]*service(nil), c.senders...), c.receivers...)
		for _, s := range all {
			s.kill()
		}
		d := between(rng, 0, time.Second)
		c.logf("fault: killed every service, restart in %v", d.Round(time.Millisecond))
		pause(ctx, d)
		for _, s := range c.receivers {
			c.startAgain(s)
		}
		for _, s := range c.senders {
			c.startAgain(s)
		}
	}},
}

// databaseFaults restart and kill the Postgres servers, while the other
// loops go on.
var databaseFaults = []fault{
	{name: "pg-restart-fast", weight: 1, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		sd := c.pickSide(rng)
		c.logf("fault: restart %s database (fast)", sd.name)
		if err := sd.pg.Restart(pgserver.Fast); err != nil {
			c.t.Errorf("restart %s: %v", sd.name, err)
		}
	}},
	{name: "pg-restart-immediate", weight: 1, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		sd := c.pickSide(rng)
		c.logf("fault: restart %s database (immediate: crash recovery)", sd.name)
		if err := sd.pg.Restart(pgserver.Immediate); err != nil {
			c.t.Errorf("restart %s: %v", sd.name, err)
		}
	}},
	{name: "pg-kill", weight: 2, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		sd := c.pickSide(rng)
		d := between(rng, 0, 3*time.Second)
		c.logf("fault: SIGKILL %s database, down for %v", sd.name, d.Round(time.Millisecond))
		if err := sd.pg.Kill(); err != nil {
			c.t.Errorf("kill %s: %v", sd.name, err)
		}
		pause(ctx, d)
		if err := sd.pg.Start(); err != nil {
			c.t.Errorf("start %s: %v", sd.name, err)
		}
	}},
}

func (c *cluster) pickSide(rng *rand.Rand) *side {
	if rng.IntN(2) == 0 {
		return c.orders
	}
	return c.billing
}

// restart kills (or stops gracefully) s and starts it again after a random
// delay.
func (c *cluster) restart(ctx context.Context, rng *rand.Rand, s *service, graceful bool) {
	d := between(rng, 0, 1500*time.Millisecond)
	if graceful {
		start := time.Now()
		if err := s.stop(stopTimeout); err != nil {
			c.t.Errorf("%v", err)
		}
		c.logf("fault: stopped %s (SIGTERM, took %v), restart in %v", s.name, time.Since(start).Round(time.Millisecond), d.Round(time.Millisecond))
	} else {
		s.kill()
		c.logf("fault: SIGKILL %s, restart in %v", s.name, d.Round(time.Millisecond))
	}
	if s.role == "receiver" {
		c.retarget(rng, false)
	}
	pause(ctx, d)
	c.startAgain(s)
}

// dieAt makes s kill itself at its exact crash point (see the node helper:
// a sender right after a COMMIT, a receiver inside a handler) and starts it
// again after a random delay. A service that does not get there within
// seconds (no traffic) is killed instead.
func (c *cluster) dieAt(ctx context.Context, rng *rand.Rand, s *service) {
	p := s.tell()
	if p == nil || p.Exited() {
		return
	}
	if err := p.Signal(syscall.SIGUSR1); err != nil {
		c.t.Errorf("%v", err)
	}
	how := "died at its crash point"
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		how = "did not reach its crash point within 5s; SIGKILL"
		p.Kill()
	}
	c.afterKill(s, p.Pid())
	d := between(rng, 0, time.Second)
	c.logf("fault: %s %s, restart in %v", s.name, how, d.Round(time.Millisecond))
	if s.role == "receiver" {
		c.retarget(rng, false)
	}
	pause(ctx, d)
	c.startAgain(s)
}

// startAgain starts a stopped service; a failure to start fails the test.
func (c *cluster) startAgain(s *service) {
	if err := s.startService(); err != nil {
		c.t.Errorf("restart: %v", err)
		return
	}
	if s.role == "receiver" {
		c.retarget(nil, false)
	}
}

// faultLoop applies faults from menu, one at a time with random gaps, until
// ctx ends. lock, if not nil, is held while a fault runs (not in the gaps);
// a fault whose turn comes only after ctx ended is not applied.
func (c *cluster) faultLoop(ctx context.Context, rng *rand.Rand, menu []fault, gapLo, gapHi time.Duration, lock sync.Locker) {
	var usable []fault
	total := 0
	for _, f := range menu {
		if f.ok == nil || f.ok(c) {
			usable = append(usable, f)
			total += f.weight
		}
	}
	for pause(ctx, between(rng, gapLo, gapHi)) {
		pick := rng.IntN(total)
		for _, f := range usable {
			if pick < f.weight {
				if lock != nil {
					lock.Lock()
				}
				if ctx.Err() == nil {
					c.countFault(f.name)
					f.run(ctx, c, rng)
				}
				if lock != nil {
					lock.Unlock()
				}
				break
			}
			pick -= f.weight
		}
	}
}
