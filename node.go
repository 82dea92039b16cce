package durable

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/internal/dbwait"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
	"github.com/durable-go/durable/transport/tcp"
)

// Config configures a Node. Name is required; everything else has a
// documented default. The parts' own configurations (Outbox, Relay, Inbox,
// Server, Client) are used as given, except for the fields the Node sets to
// tie the parts together, listed on each.
type Config[TTx any] struct {
	// Name identifies this service. Peers see it as the Source of the
	// messages it sends (inbox rows are keyed by source and id), so it must
	// be stable across restarts and unique among the services that send to
	// the same peer. Required.
	Name string

	// Listen is the TCP address the inbox accepts peers on, such as
	// ":7400". Empty (and no Listener): the node does not receive, and Run
	// starts the inbox (its workers and its housekeeping) only when it has
	// a Handler: such a node handles the messages that other nodes on its
	// database receive. A node that neither listens nor has a Handler only
	// sends: it runs no inbox workers, claims nothing from the inbox, and
	// leaves the inbox's housekeeping (rescue of expired leases, deletion
	// of handled messages and of old dead letters) to the nodes of its
	// database that run an inbox; messages left in its inbox wait for one.
	// Inbox() still serves dead letters and Stats.
	Listen string
	// Listener, when set, is used instead of Listen; the Node closes it.
	Listener net.Listener
	// Handler handles the received messages, usually an *inbox.Mux that
	// routes them by topic (it may still get handlers while the node
	// runs). Nil: no handler for any topic; a node that listens then
	// retries every message it receives for Inbox.NoHandlerGrace and
	// dead-letters it (reason no_handler), as with an empty Mux.
	Handler inbox.Handler[TTx]

	// Peers maps each destination name used in outbox.Message.Destination to
	// the peer that receives it.
	Peers map[string]Peer
	// AllowUnknownDestinations makes Enqueue accept destinations that are not
	// in Peers (they wait in the outbox until a node knows them). By default
	// a destination outside Peers is refused with outbox.ErrUnknownDestination,
	// which catches typos at the call site.
	AllowUnknownDestinations bool

	// Secret is the shared secret peers authenticate with (HMAC over a
	// server nonce and a timestamp; see transport/tcp/PROTOCOL.md). It is
	// the server's secret and the default of every Peer.
	Secret []byte
	// AcceptSecrets are further secrets the server accepts besides Secret,
	// to rotate the secret in rolling restarts without a moment in which
	// nodes refuse each other: (1) every node adds the new secret here;
	// (2) every node makes it its Secret and keeps the old one here; (3)
	// every node empties AcceptSecrets. See tcp.ServerConfig.AcceptSecrets.
	AcceptSecrets [][]byte
	// TLS, when set, makes the server speak TLS 1.3 only; set ClientAuth to
	// tls.RequireAndVerifyClientCert for mutual TLS.
	TLS *tls.Config
	// Insecure lets the server accept peers with no credential at all (no
	// Secret, no mutual TLS, no Verify in Server). Only for tests and demos
	// on a trusted network.
	Insecure bool

	// Outbox configures Enqueue. The Node sets Destinations to the names in
	// Peers, unless it is already set or AllowUnknownDestinations is true.
	Outbox outbox.Config
	// Relay configures the relay. The Node sets Outbox (in-process wake-ups)
	// and Logger when they are unset, and Incarnation (see Heartbeat).
	Relay outbox.RelayConfig
	// Inbox configures the workers. The Node sets Name and Logger when they
	// are unset, turns Inline on unless DisableInline is set, and sets
	// Incarnation (see Heartbeat).
	Inbox inbox.Config
	// DisableInline keeps the inbox from handling delivered messages in the
	// delivery's own transaction (inbox.Config.Inline, which a Node turns on
	// by default): every message then waits for a worker. Inline handling
	// costs one write per message instead of four and no wait for a worker;
	// its handlers' time adds to the sender's wait for the ACK (bounded by
	// Inbox.InlineTimeout, default 1s). Topics with slow handlers are better
	// given a Queue (never handled inline) than inline handling turned off.
	DisableInline bool
	// Server configures the TCP server. The Node sets NodeID, Secret,
	// AcceptSecrets, TLS, Insecure and Logger from the fields above when
	// they are unset.
	Server tcp.ServerConfig
	// Client is the base configuration of every peer's TCP client. The Node
	// sets NodeID, Logger, and Secret and TLS from the Peer or the fields
	// above, when they are unset.
	Client tcp.ClientConfig
	// Balancer configures the spreading over the instances of a peer given
	// by Peer.Addrs (see tcp.Balancer). The Node sets Name, Logger and
	// MeterProvider when they are unset.
	Balancer tcp.BalancerConfig

	// ShutdownTimeout bounds the graceful stop once Run's context ends:
	// the server drains the batches it is storing and the relay the batches
	// it is sending (it is the relay's DrainTimeout, unless Relay sets
	// one). Default 10s.
	ShutdownTimeout time.Duration
	// StartTimeout bounds how long Run waits at start for a database that
	// does not answer (connection refused, reset or timed out; the server
	// starting up or shutting down): Run checks again with a backoff up to
	// 5s and logs each failure, and returns the last error once
	// StartTimeout has passed. Zero: no limit; Run waits until its context
	// ends (Ready reports the database check failing meanwhile). An answer
	// that is an error — the schema missing or older, a failed
	// authentication, an unknown database — ends Run at once.
	StartTimeout time.Duration

	// Heartbeat is how often the node records in durable_nodes that it
	// runs. Every run of a Node (an incarnation) has a row there, and its
	// ID in every lease token its relay and inbox workers take, so that
	// when a process is gone its claims are released at once instead of
	// when their leases run out: at the start of the next Node on the same
	// host (which sees that the process no longer runs), by any Node of
	// the database within a Heartbeat of that (same host), or after
	// NodeTimeout of silence (other hosts, where a process cannot be
	// checked). Default DefaultHeartbeat (1s).
	//
	// Several processes may run under one Name (replicas of a service):
	// each claims under its own incarnation, and a Node that starts while
	// another process of its name runs on the same host logs a warning.
	// The leases stay the bound for a process that runs but is stuck.
	Heartbeat time.Duration
	// NodeTimeout is how long an incarnation may go without a heartbeat
	// before the other nodes release its claims. It must be at least twice
	// Heartbeat. A process that was only paused for longer (a stop signal,
	// a VM migration) then finds its claims gone: what it sends is
	// deduplicated by the peer's inbox, and its workers can no longer
	// settle the messages they held. Default DefaultNodeTimeout (5s).
	NodeTimeout time.Duration

	// Logger receives every part's logs, with a "node" attribute. Nil:
	// slog.Default().
	Logger *slog.Logger

	// MeterProvider receives the metrics of the outbox, the relay and the
	// inbox (it becomes their MeterProvider when theirs is unset); see the
	// packages' metrics.go. Nil: no metrics.
	MeterProvider metric.MeterProvider
	// TracerProvider records the spans of Enqueue and of each handler call
	// (it becomes the outbox's and the inbox's TracerProvider when theirs
	// is unset). Nil: no spans; the trace context of Enqueue's ctx still
	// travels to the handler's ctx.
	TracerProvider trace.TracerProvider
	// Propagator writes and reads the trace context in message headers
	// (the outbox's and the inbox's Propagator when unset). Nil: W3C Trace
	// Context.
	Propagator propagation.TextMapPropagator
}

// Peer is a remote service this node sends to.
type Peer struct {
	// Addr is the peer's address, host:port, such as "billing:7400" or
	// "10.0.0.7:7400" (an IPv6 host in brackets: "[fd00::7]:7400").
	// Required; NewNode refuses an Addr without a port or without a host
	// (":7400" is a listen address, not where to reach a peer). The host
	// is looked up when the node connects, not by NewNode. The node keeps
	// one connection to Addr and dials it again on reconnect, so a load
	// balancer or a DNS name in front of several instances spreads the
	// load per connection. Set Addrs instead to spread it per batch.
	Addr string
	// Addrs lists the peer's instances, each host:port: receivers that
	// share one inbox database. A host name stands for every address it
	// resolves to (A and AAAA records), looked up again every
	// Config.Balancer.ResolveInterval. The node keeps a connection to each
	// instance and sends each batch to a healthy one with the fewest
	// batches in flight; a batch whose instance fails is sent to another at
	// once (see tcp.Balancer). Set Addr or Addrs, not both.
	Addrs []string
	// Secret overrides Config.Secret for this peer.
	Secret []byte
	// TLS, when set, makes the connection TLS 1.3: RootCAs to trust the
	// peer's certificate authority, Certificates for mutual TLS.
	TLS *tls.Config
}

// DefaultShutdownTimeout is the default of Config.ShutdownTimeout.
const DefaultShutdownTimeout = 10 * time.Second

// Node is one service's durable messaging: an outbox to enqueue into, a
// relay that sends what was committed to the peers, and an inbox with a TCP
// server that receives from peers and workers that run the handlers. Create
// it with NewNode, its Config holding the Handler, then call Run.
//
// The parts stay usable on their own (packages outbox, inbox and
// transport/tcp); a Node only wires them together the usual way.
type Node[TTx any] struct {
	cfg     Config[TTx]
	log     *slog.Logger
	d       dialects.NodeDialect[TTx]
	outbox  *outbox.Outbox[TTx]
	relay   *outbox.Relay
	inbox   *inbox.Inbox[TTx]
	server  *tcp.Server // nil when the node does not listen
	clients map[string]peerSender
	noPeers bool // no Peers and no way to name a destination: Enqueue fails
	inc     *incarnation

	mu      sync.Mutex
	addr    net.Addr
	running bool
	// runDone is Run's context's Done: closed once the node stops (ctx
	// ended, a part failed, or Run returned early); nil before Run. Ready
	// reads it (health.go).
	runDone <-chan struct{}
}

// NewNode builds a node on d, configured by cfg. It validates the
// configuration and creates every part, but does no I/O: Run checks the
// schema, listens and connects. cfg is required (its Name is): a nil cfg is
// an error. NewNode copies *cfg and never changes it; changing *cfg later
// does not affect the node.
func NewNode[TTx any](d dialects.NodeDialect[TTx], cfg *Config[TTx]) (*Node[TTx], error) {
	if d == nil {
		return nil, errors.New("durable: NewNode needs a dialect")
	}
	if cfg == nil {
		return nil, errors.New("durable: NewNode needs a *Config: its Name is required")
	}
	return newNode(d, *cfg)
}

func newNode[TTx any](d dialects.NodeDialect[TTx], cfg Config[TTx]) (*Node[TTx], error) {
	if cfg.Name == "" {
		return nil, errors.New("durable: Config.Name is required: it identifies this service to its peers")
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	cfg.Heartbeat = cmp.Or(cfg.Heartbeat, DefaultHeartbeat)
	cfg.NodeTimeout = cmp.Or(cfg.NodeTimeout, DefaultNodeTimeout)
	if cfg.Heartbeat < 0 || cfg.NodeTimeout < 2*cfg.Heartbeat {
		return nil, fmt.Errorf("durable: Config.NodeTimeout (%v) must be at least twice Config.Heartbeat (%v), both positive", cfg.NodeTimeout, cfg.Heartbeat)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("node", cfg.Name)
	n := &Node[TTx]{cfg: cfg, log: log, d: d, clients: make(map[string]peerSender, len(cfg.Peers)),
		inc: newIncarnation(cfg.Name, cfg.Heartbeat, cfg.NodeTimeout)}

	obCfg := cfg.Outbox
	obCfg.MeterProvider = orValue(obCfg.MeterProvider, cfg.MeterProvider)
	obCfg.TracerProvider = orValue(obCfg.TracerProvider, cfg.TracerProvider)
	obCfg.Propagator = orValue(obCfg.Propagator, cfg.Propagator)
	if len(obCfg.Destinations) == 0 && !cfg.AllowUnknownDestinations {
		obCfg.Destinations = slices.Sorted(maps.Keys(cfg.Peers))
		// A node without peers only receives: Enqueue refuses every
		// destination rather than accept all of them.
		n.noPeers = len(obCfg.Destinations) == 0
	}
	var err error
	if n.outbox, err = outbox.New(d, &obCfg); err != nil {
		return nil, err
	}

	senders := make(map[string]transport.Sender, len(cfg.Peers))
	for _, name := range slices.Sorted(maps.Keys(cfg.Peers)) {
		p := cfg.Peers[name]
		if err := checkPeerAddrs(name, p); err != nil {
			n.closeClients()
			return nil, err
		}
		cc := cfg.Client
		if cc.NodeID == "" {
			cc.NodeID = cfg.Name
		}
		if cc.Logger == nil {
			cc.Logger = log.With("peer", name)
		}
		if cc.Secret == nil && cc.Token == nil {
			cc.Secret = p.Secret
			if cc.Secret == nil {
				cc.Secret = cfg.Secret
			}
		}
		if cc.TLS == nil {
			cc.TLS = p.TLS
		}
		var c peerSender
		if len(p.Addrs) > 0 {
			bc := cfg.Balancer
			bc.Name = orValue(bc.Name, name)
			bc.Logger = orValue(bc.Logger, cc.Logger)
			bc.MeterProvider = orValue(bc.MeterProvider, cfg.MeterProvider)
			c, err = tcp.NewBalancer(p.Addrs, &cc, &bc)
		} else {
			c, err = tcp.NewClient(p.Addr, &cc)
		}
		if err != nil {
			n.closeClients()
			return nil, fmt.Errorf("durable: peer %q: %w", name, err)
		}
		n.clients[name] = c
		senders[name] = c
	}

	rc := cfg.Relay
	if rc.Outbox == nil {
		rc.Outbox = n.outbox
	}
	if rc.Logger == nil {
		rc.Logger = log
	}
	if rc.DrainTimeout == 0 {
		rc.DrainTimeout = cfg.ShutdownTimeout
	}
	rc.MeterProvider = orValue(rc.MeterProvider, cfg.MeterProvider)
	rc.Incarnation = n.inc.self.ID
	if len(senders) > 0 {
		if n.relay, err = outbox.NewRelay(d, senders, &rc); err != nil {
			n.closeClients()
			return nil, err
		}
	}

	ic := cfg.Inbox
	ic.Inline = !cfg.DisableInline
	ic.Incarnation = n.inc.self.ID
	if ic.Name == "" {
		ic.Name = cfg.Name
	}
	if ic.Logger == nil {
		ic.Logger = log
	}
	ic.MeterProvider = orValue(ic.MeterProvider, cfg.MeterProvider)
	ic.TracerProvider = orValue(ic.TracerProvider, cfg.TracerProvider)
	ic.Propagator = orValue(ic.Propagator, cfg.Propagator)
	if n.inbox, err = inbox.New(d, cfg.Handler, &ic); err != nil {
		n.closeClients()
		return nil, err
	}

	if cfg.Listen != "" || cfg.Listener != nil {
		sc := cfg.Server
		if sc.NodeID == "" {
			sc.NodeID = cfg.Name
		}
		if sc.Secret == nil {
			sc.Secret = cfg.Secret
		}
		if sc.AcceptSecrets == nil {
			sc.AcceptSecrets = cfg.AcceptSecrets
		}
		if sc.TLS == nil {
			sc.TLS = cfg.TLS
		}
		if !sc.Insecure {
			sc.Insecure = cfg.Insecure
		}
		if sc.Logger == nil {
			sc.Logger = log
		}
		if n.server, err = tcp.NewServer(n.inbox, &sc); err != nil {
			n.closeClients()
			return nil, fmt.Errorf("durable: server: %w", err)
		}
	}
	return n, nil
}

// peerSender is a peer's Sender: a tcp.Client, or a tcp.Balancer over its
// instances.
type peerSender interface {
	transport.Sender
	Close(ctx context.Context) error
}

// checkPeerAddrs returns why the addresses of the peer name are not ones to
// dial, or nil.
func checkPeerAddrs(name string, p Peer) error {
	switch {
	case p.Addr != "" && len(p.Addrs) > 0:
		return fmt.Errorf("durable: peer %q has both Addr and Addrs; set one", name)
	case len(p.Addrs) == 0:
		return checkPeerAddr(name, p.Addr)
	}
	for _, a := range p.Addrs {
		if err := checkPeerAddr(name, a); err != nil {
			return err
		}
	}
	return nil
}

// checkPeerAddr returns why addr, the Addr of the peer name, is not an
// address to dial (host:port with both parts), or nil. It does no I/O:
// the host is not looked up, and the port may be a number or a service name.
func checkPeerAddr(name, addr string) error {
	if addr == "" {
		return fmt.Errorf("durable: peer %q has no Addr (host:port)", name)
	}
	host, port, err := net.SplitHostPort(addr)
	var ae *net.AddrError
	switch {
	case errors.As(err, &ae) && ae.Err == "missing port in address", err == nil && port == "":
		return fmt.Errorf("durable: peer %q: Addr %q has no port; want host:port, such as %q", name, addr, net.JoinHostPort(strings.Trim(strings.TrimSuffix(addr, ":"), "[]"), "7400"))
	case err != nil:
		return fmt.Errorf("durable: peer %q: Addr %q is not host:port (an IPv6 host goes in brackets, such as [::1]:7400): %w", name, addr, err)
	case host == "":
		return fmt.Errorf("durable: peer %q: Addr %q has no host; want host:port, such as %q (an empty host is a listen address, not a peer's)", name, addr, net.JoinHostPort("localhost", port))
	}
	return nil
}

// orValue returns v, or def when v is nil.
func orValue[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func (n *Node[TTx]) closeClients() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, c := range n.clients {
		_ = c.Close(ctx)
	}
}

// ErrNoPeers is returned by Enqueue on a node configured without peers.
var ErrNoPeers = errors.New("durable: this node has no peers to send to (Config.Peers is empty)")

// Enqueue writes msgs to the outbox in tx, the caller's transaction; see
// outbox.Outbox.Enqueue. The relay of this node sends them once tx commits.
func (n *Node[TTx]) Enqueue(ctx context.Context, tx TTx, msgs ...*outbox.Message) error {
	if n.noPeers {
		return ErrNoPeers
	}
	return n.outbox.Enqueue(ctx, tx, msgs...)
}

// Outbox returns the node's outbox.
func (n *Node[TTx]) Outbox() *outbox.Outbox[TTx] { return n.outbox }

// Relay returns the node's relay, for Stats; nil on a node without peers.
func (n *Node[TTx]) Relay() *outbox.Relay { return n.relay }

// Inbox returns the node's inbox, for dead letters and Stats.
func (n *Node[TTx]) Inbox() *inbox.Inbox[TTx] { return n.inbox }

// Dialect returns the dialect the node works on, as NewNode took it.
func (n *Node[TTx]) Dialect() dialects.NodeDialect[TTx] { return n.d }

// Addr returns the address the inbox listens on, once Run is listening;
// nil before, and on a node that does not listen.
func (n *Node[TTx]) Addr() net.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.addr
}

// runsInbox reports whether Run starts the inbox: on a node that listens,
// or that has a Handler (see Config.Listen).
func (n *Node[TTx]) runsInbox() bool {
	return n.server != nil || n.cfg.Handler != nil
}

// Run checks the schema (waiting for a database that does not answer yet;
// see Config.StartTimeout), starts listening (when configured), and runs the
// server, the relay and the inbox workers (on a node that listens or has
// a Handler; see Config.Listen) until ctx ends or one of them fails; a node
// with none of them waits for ctx. On ctx's end it stops gracefully: the
// server refuses new batches and drains those it is storing, the relay
// finishes or releases what it is sending, the workers finish their
// batches; then the peers' connections are closed. It returns nil after a
// graceful stop, or the first error of a part. Run may be called once.
func (n *Node[TTx]) Run(ctx context.Context) error {
	n.mu.Lock()
	if n.running {
		n.mu.Unlock()
		return errors.New("durable: Node.Run called twice")
	}
	n.running = true
	runCtx, stop := context.WithCancel(ctx)
	n.runDone = runCtx.Done()
	n.mu.Unlock()
	defer n.closeClients()
	defer stop()

	err := dbwait.Wait(ctx, n.d.CheckSchema, dbwait.Options{Logger: n.log, What: "node", Timeout: n.cfg.StartTimeout})
	if err != nil {
		if n.cfg.Listener != nil {
			_ = n.cfg.Listener.Close()
		}
		if ctx.Err() != nil {
			return nil // stopped while starting: a graceful stop
		}
		return err
	}

	if err := n.register(ctx); err != nil {
		if n.cfg.Listener != nil {
			_ = n.cfg.Listener.Close()
		}
		if ctx.Err() != nil {
			// Stopped while registering: a graceful stop. The row may
			// have been written; remove it.
			n.unregister()
			return nil
		}
		return err
	}
	defer n.unregister()

	var ln net.Listener
	if n.server != nil {
		ln = n.cfg.Listener
		if ln == nil {
			var err error
			var lc net.ListenConfig
			if ln, err = lc.Listen(ctx, "tcp", n.cfg.Listen); err != nil {
				return fmt.Errorf("durable: listen: %w", err)
			}
		}
		n.mu.Lock()
		n.addr = ln.Addr()
		n.mu.Unlock()
	}

	errs := make(chan error, 3)
	var wg sync.WaitGroup
	wg.Go(func() { n.heartbeat(runCtx) })
	part := func(name string, run func() error) {
		wg.Go(func() {
			err := run()
			if err != nil {
				err = fmt.Errorf("durable: %s: %w", name, err)
			}
			errs <- err
			stop() // one part ending ends the others
		})
	}
	if n.server != nil {
		part("server", func() error {
			err := n.server.Serve(ln)
			if errors.Is(err, tcp.ErrServerClosed) {
				return nil
			}
			return err
		})
		wg.Go(func() {
			<-runCtx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), n.cfg.ShutdownTimeout)
			defer cancel()
			if err := n.server.Shutdown(sctx); err != nil {
				n.log.Warn("durable: server shutdown", "err", err)
				_ = n.server.Close()
			}
		})
	}
	if n.relay != nil {
		part("relay", func() error { return n.relay.Run(runCtx) })
	}
	switch {
	case n.runsInbox():
		part("inbox", func() error { return n.inbox.Run(runCtx) })
	case n.server == nil && n.relay == nil:
		// Nothing to run (no peers, no listener, no Handler): the node
		// still runs, and is ready, until ctx ends.
		<-runCtx.Done()
	}
	wg.Wait()
	close(errs)
	var first error
	for err := range errs {
		if err != nil && first == nil {
			first = err
		}
	}
	return first
}
