package durable

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/durable-go/durable/dialects"
)

// Defaults of the incarnation registry (see Config.Heartbeat).
const (
	// DefaultHeartbeat is the default of Config.Heartbeat.
	DefaultHeartbeat = time.Second
	// DefaultNodeTimeout is the default of Config.NodeTimeout.
	DefaultNodeTimeout = 5 * time.Second
)

// liveIncarnations holds the incarnations of the Nodes running in this
// process, so that a Node can tell one of them from a run of an earlier
// process that had the same pid (a container restarted, its process pid 1
// again).
var liveIncarnations sync.Map // id → struct{}

// incarnation is a Node's run: its row in durable_nodes, and what it knows
// of the others.
type incarnation struct {
	self    dialects.Incarnation
	beat    time.Duration // Config.Heartbeat
	timeout time.Duration // Config.NodeTimeout
}

func newIncarnation(name string, beat, timeout time.Duration) *incarnation {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return &incarnation{
		self:    dialects.Incarnation{ID: rand.Text(), Name: name, Host: host, PID: os.Getpid()},
		beat:    beat,
		timeout: timeout,
	}
}

// gone reports whether o is known to have stopped without waiting for its
// silence: a process of this host whose pid no longer runs (or, with this
// process's pid, that is not one of this process's Nodes).
func (inc *incarnation) gone(o dialects.Incarnation) bool {
	if o.Host != inc.self.Host {
		return false
	}
	if o.PID == inc.self.PID {
		_, live := liveIncarnations.Load(o.ID)
		return !live
	}
	return processGone(o.PID)
}

// runsHere reports whether o is a Node running in this process. Its silence
// means only that the database was slow for its heartbeat (a busy SQLite
// file, a starved machine), not that it stopped: it is never released for
// it. Its leases still bound a Node of this process that is stuck.
func (inc *incarnation) runsHere(o dialects.Incarnation) bool {
	if o.Host != inc.self.Host || o.PID != inc.self.PID {
		return false
	}
	_, live := liveIncarnations.Load(o.ID)
	return live
}

// register inserts the node's row, releases the claims of the incarnations
// known to be gone, and reports the live ones of the same name.
func (n *Node[TTx]) register(ctx context.Context) error {
	inc := n.inc
	// Live before its row exists: another Node of this process that
	// registers or heartbeats meanwhile must not take the row for one of
	// an earlier process with this pid, and release it.
	_, was := liveIncarnations.LoadOrStore(inc.self.ID, struct{}{})
	others, err := n.d.RegisterIncarnation(ctx, inc.self)
	if err != nil {
		if !was {
			liveIncarnations.Delete(inc.self.ID)
		}
		return fmt.Errorf("durable: register in durable_nodes: %w", err)
	}
	earlier := n.registeredBefore(ctx, others)
	for _, o := range others {
		switch {
		case inc.gone(o):
			n.release(ctx, o, "its process no longer runs")
		case o.Name != inc.self.Name, !earlier(o):
		case o.Host == inc.self.Host:
			n.log.Warn("durable: another process runs under this node's name on this host; each claims under its own incarnation",
				"other_pid", o.PID, "other_incarnation", o.ID, "other_heartbeat_age", o.Silence.Round(time.Millisecond),
				"incarnation", inc.self.ID)
		default:
			n.log.Info("durable: another process runs under this node's name (a replica, or a stopped process whose claims are released once it has been silent for NodeTimeout)",
				"other_host", o.Host, "other_pid", o.PID, "other_incarnation", o.ID,
				"other_heartbeat_age", o.Silence.Round(time.Millisecond), "node_timeout", inc.timeout, "incarnation", inc.self.ID)
		}
	}
	return nil
}

// registeredBefore returns whether an incarnation of others registered
// before this node's, by their order in ListIncarnations (registration
// order), so that of two processes of one name starting together only the
// second reports the first, though each may see the other. It reads the
// table only when another incarnation shares the name; when that read
// fails, every one counts as earlier (both may report).
func (n *Node[TTx]) registeredBefore(ctx context.Context, others []dialects.Incarnation) func(dialects.Incarnation) bool {
	all := func(dialects.Incarnation) bool { return true }
	if !slices.ContainsFunc(others, func(o dialects.Incarnation) bool { return o.Name == n.inc.self.Name }) {
		return all
	}
	list, err := n.d.ListIncarnations(ctx)
	if err != nil {
		return all
	}
	self := slices.IndexFunc(list, func(o dialects.Incarnation) bool { return o.ID == n.inc.self.ID })
	if self < 0 {
		return all
	}
	return func(o dialects.Incarnation) bool {
		return slices.IndexFunc(list[:self], func(e dialects.Incarnation) bool { return e.ID == o.ID }) >= 0
	}
}

// release releases the claims of o, which is gone.
func (n *Node[TTx]) release(ctx context.Context, o dialects.Incarnation, why string) {
	reason := fmt.Sprintf("node %s (pid %d on %s, incarnation %s): %s; released by %s (pid %d on %s);%s",
		o.Name, o.PID, o.Host, o.ID, why, n.inc.self.Name, n.inc.self.PID, n.inc.self.Host, dialects.ReleasedError)
	r, err := n.d.ReleaseIncarnation(ctx, o.ID, reason)
	if err != nil {
		n.log.Warn("durable: releasing the claims of a stopped node failed; its leases will run out instead",
			"other", o.Name, "other_pid", o.PID, "other_host", o.Host, "other_incarnation", o.ID, "err", err)
		return
	}
	n.log.Info("durable: released the claims of a stopped node",
		"other", o.Name, "other_pid", o.PID, "other_host", o.Host, "other_incarnation", o.ID, "why", why,
		"outbox_rows", r.Outbox, "inbox_rows", r.Inbox)
	if r.Outbox > 0 && n.relay != nil {
		n.relay.Wake("")
	}
	if r.Inbox > 0 {
		n.inbox.Wake()
	}
}

// heartbeat refreshes the node's row every Heartbeat until ctx ends, and
// releases the claims of the incarnations that are gone: at once for a
// process of this host that no longer runs, after NodeTimeout of silence
// for any other. The silence is judged only once this node's own
// heartbeats have gone through for NodeTimeout, so that after a database
// outage, in which no node could heartbeat, nobody is taken for dead.
func (n *Node[TTx]) heartbeat(ctx context.Context) {
	inc := n.inc
	t := time.NewTicker(inc.beat)
	defer t.Stop()
	healthySince := time.Now() // the registration went through
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, err := n.d.Heartbeat(ctx, inc.self.ID)
		if err == nil && !ok {
			n.log.Warn("durable: this node's row in durable_nodes was gone (another node found it silent for NodeTimeout and released its claims); registering again",
				"incarnation", inc.self.ID, "node_timeout", inc.timeout)
			err = n.register(ctx)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failing {
				n.log.Warn("durable: heartbeat failed; retrying", "incarnation", inc.self.ID, "err", err)
			}
			failing = true
			continue
		}
		if failing {
			failing = false
			healthySince = time.Now()
			n.log.Info("durable: heartbeat recovered", "incarnation", inc.self.ID)
		}
		others, err := n.d.ListIncarnations(ctx)
		if err != nil {
			continue
		}
		judgeSilence := time.Since(healthySince) >= inc.timeout
		for _, o := range others {
			switch {
			case o.ID == inc.self.ID:
			case inc.gone(o):
				n.release(ctx, o, "its process no longer runs")
			case judgeSilence && o.Silence > inc.timeout && !inc.runsHere(o):
				n.release(ctx, o, fmt.Sprintf("no heartbeat for %v", o.Silence.Round(time.Millisecond)))
			}
		}
	}
}

// unregister releases what the node still holds and deletes its row, once
// Run is over.
func (n *Node[TTx]) unregister() {
	// Live until its row is gone, so that another Node of this process
	// does not release it meanwhile.
	defer liveIncarnations.Delete(n.inc.self.ID)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := n.d.ReleaseIncarnation(ctx, n.inc.self.ID, fmt.Sprintf("node %s (pid %d on %s);%s", n.inc.self.Name, n.inc.self.PID, n.inc.self.Host, dialects.ReleasedError))
	switch {
	case err != nil:
		n.log.Warn("durable: removing this node from durable_nodes failed; others release it once it has been silent for NodeTimeout",
			"incarnation", n.inc.self.ID, "err", err)
	case r.Outbox > 0 || r.Inbox > 0:
		n.log.Info("durable: released what this node still held at its stop", "outbox_rows", r.Outbox, "inbox_rows", r.Inbox)
	}
}
