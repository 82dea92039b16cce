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

// netTargets returns the proxies a network fault acts on, and how to name
// them in the log: the one proxy; or, with a proxy per receiver, one
// receiver's chosen at random, or (one time in three) every receiver's.
func (c *cluster) netTargets(rng *rand.Rand) ([]*faultproxy.Proxy, string) {
	if c.proxy != nil {
		return []*faultproxy.Proxy{c.proxy}, ""
	}
	if len(c.receivers) > 1 && rng.IntN(3) == 0 {
		return c.proxies, " (every receiver)"
	}
	r := c.receivers[rng.IntN(len(c.receivers))]
	return []*faultproxy.Proxy{r.proxy}, " (" + r.name + ")"
}

// cutAll cuts the live connections of every proxy in ps and returns how many.
func cutAll(ps []*faultproxy.Proxy) int {
	n := 0
	for _, p := range ps {
		n += p.Cut()
	}
	return n
}

// waitDisarmed waits until no proxy of ps has a cut budget armed, for at
// most d, then disarms them all.
func waitDisarmed(ctx context.Context, ps []*faultproxy.Proxy, dir faultproxy.Direction, d, poll time.Duration) {
	deadline := time.Now().Add(d)
	armed := func() bool {
		for _, p := range ps {
			if p.Armed() {
				return true
			}
		}
		return false
	}
	for armed() && time.Now().Before(deadline) && pause(ctx, poll) {
	}
	for _, p := range ps {
		p.CutAfter(dir, -1)
	}
}

// bytesToClient is what every proxy forwarded to the senders so far.
func (c *cluster) bytesToClient() int64 {
	var n int64
	for _, p := range c.proxies {
		n += p.Stats().BytesToClient
	}
	return n
}

// partitionCounts count the partition-receiver faults: how many, and in how
// many of them the other receivers took traffic meanwhile.
type partitionCounts struct {
	n, othersDelivered int
}

// networkFaults break the connections between the relays and the receivers,
// through the proxies (see netTargets).
var networkFaults = []fault{
	{name: "cut", weight: 3, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		ps, which := c.netTargets(rng)
		n := cutAll(ps)
		c.logf("fault: cut %d connections%s", n, which)
	}},
	{name: "cut-mid-stream", weight: 4, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		// A budget of a few bytes to a few frames cuts inside a frame
		// (HELLO, BATCH or ACK) most of the time.
		ps, which := c.netTargets(rng)
		dir := []faultproxy.Direction{faultproxy.Both, faultproxy.ToTarget, faultproxy.ToClient}[rng.IntN(3)]
		n := rng.Int64N(6000)
		for _, p := range ps {
			p.CutAfter(dir, n)
		}
		c.logf("fault: cut %s after %d bytes%s", dir, n, which)
		waitDisarmed(ctx, ps, dir, 3*time.Second, 20*time.Millisecond)
	}},
	{name: "cut-at-ack", weight: 2, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		// The next bytes from a receiver are most likely an ACK: the
		// batch is committed in the inbox and the relay never hears of it
		// (from the sender's side, the receiver died between insert and
		// ACK).
		ps, which := c.netTargets(rng)
		for _, p := range ps {
			p.CutAfter(faultproxy.ToClient, 0)
		}
		c.logf("fault: cut at the next byte to a sender%s", which)
		waitDisarmed(ctx, ps, faultproxy.ToClient, 3*time.Second, 10*time.Millisecond)
	}},
	{name: "stall", weight: 2, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		// Up to twice the client's read and ack timeouts: short stalls
		// only delay, long ones make the relay give up on batches whose
		// bytes then still arrive when the stall ends.
		ps, which := c.netTargets(rng)
		d := between(rng, 200*time.Millisecond, 4500*time.Millisecond)
		for _, p := range ps {
			p.Stall(true)
		}
		c.logf("fault: stall for %v%s", d.Round(time.Millisecond), which)
		pause(ctx, d)
		for _, p := range ps {
			p.Stall(false)
		}
	}},
	{name: "latency", weight: 2, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		ps, which := c.netTargets(rng)
		l := between(rng, 5*time.Millisecond, 150*time.Millisecond)
		d := between(rng, 500*time.Millisecond, 4*time.Second)
		for _, p := range ps {
			p.Latency(l)
		}
		c.logf("fault: latency %v for %v%s", l.Round(time.Millisecond), d.Round(time.Millisecond), which)
		pause(ctx, d)
		for _, p := range ps {
			p.Latency(0)
		}
	}},
	{name: "bandwidth", weight: 2, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		ps, which := c.netTargets(rng)
		bw := 2<<10 + rng.Int64N(62<<10)
		d := between(rng, 500*time.Millisecond, 4*time.Second)
		for _, p := range ps {
			p.Bandwidth(bw)
		}
		c.logf("fault: bandwidth %d B/s for %v%s", bw, d.Round(time.Millisecond), which)
		pause(ctx, d)
		for _, p := range ps {
			p.Bandwidth(0)
		}
	}},
	{name: "refuse", weight: 1, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		ps, which := c.netTargets(rng)
		d := between(rng, 200*time.Millisecond, 2*time.Second)
		for _, p := range ps {
			p.Refuse(true)
		}
		n := cutAll(ps)
		c.logf("fault: cut %d connections and reset new ones for %v%s", n, d.Round(time.Millisecond), which)
		pause(ctx, d)
		for _, p := range ps {
			p.Refuse(false)
		}
	}},
	{name: "unlisten", weight: 1, run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
		ps, which := c.netTargets(rng)
		d := between(rng, 200*time.Millisecond, 2*time.Second)
		for _, p := range ps {
			p.Unlisten()
		}
		n := 0
		if rng.IntN(2) == 0 {
			n = cutAll(ps)
		}
		c.logf("fault: refuse connections for %v (cut %d)%s", d.Round(time.Millisecond), n, which)
		pause(ctx, d)
		for _, p := range ps {
			if err := p.Relisten(); err != nil {
				c.t.Errorf("relisten: %v", err)
			}
		}
	}},
	{name: "switch-receiver", weight: 1, ok: func(c *cluster) bool { return c.proxy != nil && len(c.receivers) > 1 },
		run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
			if r := c.retarget(rng, true); r != nil {
				n := c.proxy.Cut()
				c.logf("fault: switch to %s, cut %d connections", r.name, n)
			}
		}},
	{name: "partition-receiver", weight: 3, ok: func(c *cluster) bool { return c.proxy == nil && len(c.receivers) > 1 },
		run: func(ctx context.Context, c *cluster, rng *rand.Rand) {
			// One receiver instance cut off from every sender, at dial
			// time or just after, while the others must take its share.
			i := rng.IntN(len(c.receivers))
			r := c.receivers[i]
			d := between(rng, time.Second, 4*time.Second)
			others := func() int64 {
				var n int64
				for j, p := range c.proxies {
					if j != i {
						n += p.Stats().BytesToTarget
					}
				}
				return n
			}
			before := others()
			how := "reset new connections"
			if rng.IntN(2) == 0 {
				how = "refuse connections"
				r.proxy.Unlisten()
			} else {
				r.proxy.Refuse(true)
			}
			n := r.proxy.Cut()
			pause(ctx, d)
			r.proxy.Refuse(false)
			if err := r.proxy.Relisten(); err != nil {
				c.t.Errorf("relisten: %v", err)
			}
			delivered := others() - before
			c.mu.Lock()
			c.partitions.n++
			if delivered > 0 {
				c.partitions.othersDelivered++
			}
			c.mu.Unlock()
			c.logf("fault: partition %s for %v (cut %d, %s); the other receivers took %d B meanwhile",
				r.name, d.Round(time.Millisecond), n, how, delivered)
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
		before := c.bytesToClient()
		deadline := time.Now().Add(3 * time.Second)
		for c.bytesToClient() == before && time.Now().Before(deadline) && ctx.Err() == nil {
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
