package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// The windows between two steps whose order matters for delivery, which a
// scenario of full length must each hit exactly at least once
// (crashWindows).
const (
	winCommitSend        = "commit→send"        // the message committed, not yet sent
	winSendDelete        = "send→delete"        // acknowledged by the peer, not yet deleted
	winInsertAck         = "insert→ACK"         // committed in the inbox, not yet acknowledged
	winHandlerCompletion = "handler→completion" // the effect written, the message not yet completed
)

// crashPoint is a point of the library where a helper kills itself when it
// is armed there (see internal/crashpoint; the helper is built with them).
type crashPoint struct {
	name string
	role string // the service that runs it: "sender" or "receiver"
	// path is the inbox path that runs it: "inline" (a receiver that
	// handles inline), "workers" (one that does not, so that its workers
	// get every message), or "" (either).
	path   string
	window string // the window it hits, or "" for none of them
}

// crashPoints are armed round robin in this order: the windows first, so
// that a point not reached at its first turn has time for more.
var crashPoints = []crashPoint{
	{name: "relay.after-ack", role: "sender", window: winSendDelete},
	{name: "inbox.after-insert-commit", role: "receiver", window: winInsertAck},
	{name: "relay.after-claim", role: "sender", window: winCommitSend},
	{name: "inbox.after-handlers", role: "receiver", path: "workers", window: winHandlerCompletion},
	{name: "tcp.before-ack-write", role: "receiver", window: winInsertAck},
	{name: "relay.after-delete", role: "sender"},
	{name: "inbox.after-claim", role: "receiver", path: "workers"},
	{name: "inbox.inline.after-handlers", role: "receiver", path: "inline", window: winHandlerCompletion},
	{name: "inbox.after-finish", role: "receiver", path: "workers"},
}

// armWait bounds the wait for an armed service to reach its point.
const armWait = 5 * time.Second

// pointCounts is what became of the library's crash points, by name.
type pointCounts struct {
	armed   map[string]int // processes started with the point armed
	fired   map[string]int // CRASHPOINT lines: processes that died there
	missed  map[string]int // armed processes that did not get there within armWait
	skipped map[string]int // turns passed over: no receiver could reach the point
}

func newPointCounts() pointCounts {
	return pointCounts{
		armed:   make(map[string]int),
		fired:   make(map[string]int),
		missed:  make(map[string]int),
		skipped: make(map[string]int),
	}
}

// windowHits counts the exact hits of each window: the library's crash
// points reached (fired) and the application's (died, the DIE lines of the
// node helper: after-commit, in-handler). The caller holds c.mu or passes
// copies.
func windowHits(fired, died map[string]int) map[string]int {
	hits := map[string]int{
		winCommitSend:        died["after-commit"],
		winSendDelete:        0,
		winInsertAck:         0,
		winHandlerCompletion: died["in-handler"],
	}
	for _, p := range crashPoints {
		if p.window != "" {
			hits[p.window] += fired[p.name]
		}
	}
	return hits
}

// crashWindows returns the windows of hits not hit once, in a stable order.
func crashWindows(hits map[string]int) []string {
	var missing []string
	for _, w := range []string{winCommitSend, winSendDelete, winInsertAck, winHandlerCompletion} {
		if hits[w] == 0 {
			missing = append(missing, w)
		}
	}
	return missing
}

// windowsGrace bounds how long the crash-point loop goes on after the fault
// phase, for the windows a scenario of full length must hit and has not hit
// yet: a loaded machine gets fewer turns in the fault phase, which must
// cost time, not fail the test.
const windowsGrace = 2 * time.Minute

// crashPointLoop arms the library's crash points one after the other, in
// the order of crashPoints, with random gaps, until ctx ends (see
// armCrashPoint). A point not reached in time is armed again at the next
// turn, up to twice in a row, while its window has not been hit in this
// scenario. It holds c.serial while it acts, so that it and the crash loop
// take turns, and arms nothing once ctx ended, unless the scenario must hit
// every window (sc.windows) and some is not hit yet: then it goes on alone
// for up to windowsGrace, arming only the points of those windows.
func (c *cluster) crashPointLoop(ctx context.Context, rng *rand.Rand, gapLo, gapHi time.Duration) {
	grace, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		if !c.sc.windows {
			cancel()
			return
		}
		time.AfterFunc(windowsGrace, cancel)
	})
	defer stop()
	next, again := 0, 0
	for pause(grace, between(rng, gapLo, gapHi)) {
		if ctx.Err() != nil { // the fault phase is over
			c.mu.Lock()
			missing := crashWindows(windowHits(c.points.fired, c.died))
			c.mu.Unlock()
			if len(missing) == 0 {
				return
			}
			for k := range len(crashPoints) { // the next point of a missing window
				if i := (next + k) % len(crashPoints); slices.Contains(missing, crashPoints[i].window) {
					next = i
					break
				}
			}
			c.logf("fault phase over, windows not hit yet: %s; arming %s", strings.Join(missing, ", "), crashPoints[next].name)
		}
		c.serial.Lock()
		if grace.Err() != nil {
			c.serial.Unlock()
			return
		}
		c.countFault("arm-crash-point")
		i, reached := c.armNext(grace, rng, next)
		c.serial.Unlock()
		next = (i + 1) % len(crashPoints)
		if w := crashPoints[i].window; !reached && w != "" && again < 2 {
			c.mu.Lock()
			hit := windowHits(c.points.fired, c.died)[w] > 0
			c.mu.Unlock()
			if !hit {
				next = i
				again++
				continue
			}
		}
		again = 0
	}
}

// armNext arms the first point from crashPoints[next] on that a service can
// reach, at its N-th hit with N random in 1..3. It returns the point's index
// and whether the service got there.
func (c *cluster) armNext(ctx context.Context, rng *rand.Rand, next int) (int, bool) {
	for k := range len(crashPoints) {
		i := (next + k) % len(crashPoints)
		p := crashPoints[i]
		s := c.pickFor(rng, p)
		if s == nil {
			c.mu.Lock()
			c.points.skipped[p.name]++
			c.mu.Unlock()
			c.logf("fault: crash point %s skipped: no receiver handles inline at its next start", p.name)
			continue
		}
		return i, c.armCrashPoint(ctx, rng, s, p, 1+rng.IntN(3))
	}
	return next, false // every point skipped: cannot happen with a sender point in the list
}

// pickFor returns a service to arm p in, or nil if none can reach it: a
// random sender, or a random receiver, preferring those whose next start
// runs the inbox path p needs; the inline path only runs in a receiver that
// handles inline.
func (c *cluster) pickFor(rng *rand.Rand, p crashPoint) *service {
	if p.role == "sender" {
		return c.senders[rng.IntN(len(c.senders))]
	}
	var fit []*service
	for _, r := range c.receivers {
		if p.path == "" || r.inlineNext() == (p.path == "inline") {
			fit = append(fit, r)
		}
	}
	if len(fit) == 0 {
		if p.path == "inline" {
			return nil
		}
		fit = c.receivers
	}
	return fit[rng.IntN(len(fit))]
}

// inlineNext reports whether the receiver handles deliveries inline at its
// next start: the node helper does when its -seed is even, and start n gets
// the seed sc.seed+n (startArmed).
func (s *service) inlineNext() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return (s.c.sc.seed+uint64(s.starts+1))%2 == 0
}

// armCrashPoint kills s (SIGKILL), starts it again with p armed at its n-th
// hit, waits until it kills itself there (or kills it after armWait), and
// starts it again unarmed after a random delay. An armed receiver becomes
// the proxy's target, so that deliveries reach it (with a proxy per
// receiver, the senders' balancers reach it anyway). An armed process that
// exits any other way is a finding, as any service that exits on its own.
// armCrashPoint reports whether s reached the point.
func (c *cluster) armCrashPoint(ctx context.Context, rng *rand.Rand, s *service, p crashPoint, n int) bool {
	s.kill()
	arm := fmt.Sprintf("%s:%d", p.name, n)
	c.mu.Lock()
	before := c.points.fired[p.name]
	c.points.armed[p.name]++
	c.mu.Unlock()
	if err := s.startArmed(arm); err != nil {
		c.t.Errorf("restart armed at %s: %v", arm, err)
		return false
	}
	pr := s.process()
	if s.role == "receiver" {
		c.aim(s)
	}
	start := time.Now()
	select {
	case <-pr.Done():
	case <-time.After(armWait):
		pr.Kill()
	}
	c.mu.Lock()
	reached := c.points.fired[p.name] > before
	if !reached {
		c.points.missed[p.name]++
	}
	c.mu.Unlock()
	var how string
	switch {
	case reached:
		how = fmt.Sprintf("armed at %s died there after %v", arm, time.Since(start).Round(time.Millisecond))
	case pr.Killed():
		how = fmt.Sprintf("armed at %s did not get there within %v; SIGKILL", arm, armWait)
	default:
		how = fmt.Sprintf("armed at %s exited before it got there", arm)
		c.mu.Lock()
		c.unexpected = append(c.unexpected, fmt.Sprintf("%s (armed at %s) exited by itself: %v", pr.Name(), arm, pr.Wait()))
		c.mu.Unlock()
	}
	c.afterKill(s, pr.Pid())
	d := between(rng, 0, 500*time.Millisecond)
	c.logf("fault: %s %s, restart in %v", s.name, how, d.Round(time.Millisecond))
	if s.role == "receiver" {
		c.retarget(rng, false)
	}
	pause(ctx, d)
	c.startAgain(s)
	return reached
}

// aim points the proxy at receiver r and, if it was pointing elsewhere,
// cuts the live connections, so that the senders reconnect to r. With a
// proxy per receiver it does nothing: the senders' balancers reach every
// running receiver.
func (c *cluster) aim(r *service) {
	if c.proxy == nil {
		return
	}
	c.mu.Lock()
	moved := c.target != r
	c.target = r
	c.mu.Unlock()
	c.proxy.SetTarget(r.address())
	if moved {
		c.proxy.Cut()
	}
}

// pointSummary is one log line of the crash points: per point, how often it
// was armed, reached, missed and skipped.
func pointSummary(pc pointCounts) string {
	var b strings.Builder
	for i, p := range crashPoints {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d/%d", p.name, pc.fired[p.name], pc.armed[p.name])
		if n := pc.missed[p.name]; n > 0 {
			fmt.Fprintf(&b, " (%d missed)", n)
		}
		if n := pc.skipped[p.name]; n > 0 {
			fmt.Fprintf(&b, " (%d skipped)", n)
		}
	}
	return b.String()
}
