package tcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/durable-go/durable/internal/telemetry"
	"github.com/durable-go/durable/transport"
)

// Defaults of the BalancerConfig fields left zero.
const (
	// DefaultResolveInterval is how often a Balancer looks its host names up again.
	DefaultResolveInterval = 30 * time.Second
	// DefaultSlowAfter is how long an instance may leave a batch unanswered before the
	// Balancer prefers the other instances.
	DefaultSlowAfter = 2 * time.Second
)

// resolveRetry is the longest wait before a resolution that failed (a lookup error, or no
// address) is tried again; ResolveInterval when that is shorter.
const resolveRetry = time.Second

// BalancerConfig configures a [Balancer]. The zero value of every field is a documented default,
// and a nil *BalancerConfig means the zero value.
type BalancerConfig struct {
	// Name names the peer in logs ("peer") and metrics (durable.peer). Optional.
	Name string
	// Logger receives the Balancer's events: instances added, removed, failing and back, and
	// failed lookups. Each instance's Client logs with an "instance" attribute. Default:
	// ClientConfig.Logger, else slog.Default().
	Logger *slog.Logger
	// ResolveInterval is how often the host names among the addresses are looked up again;
	// every address a name resolves to is an instance. A resolution that failed is tried
	// again after at most a second. Default DefaultResolveInterval (30s).
	ResolveInterval time.Duration
	// Lookup resolves a host name to its addresses. Default: net.DefaultResolver.LookupNetIP
	// with network "ip".
	Lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	// SlowAfter is how long an instance may keep a batch unanswered before new batches avoid
	// it while another instance is not slow. Default DefaultSlowAfter (2s).
	SlowAfter time.Duration
	// MeterProvider receives the Balancer's metrics (see [Balancer]); nil: none.
	MeterProvider metric.MeterProvider
}

// Balancer is a transport.Sender over several instances of one peer: receivers that share one
// inbox database. It keeps a [Client] (one connection) per instance and sends each batch to a
// healthy instance with the fewest batches in flight, ties taken in turn. One dead or slow
// instance therefore never stalls the others:
//
//   - A send that fails for a reason of the connection or the instance (it cannot be reached,
//     the connection is lost, no ACK in time, its circuit is open, it is shutting down) is sent
//     again to another instance at once, each instance at most once per Send; the peer's inbox
//     recognises a resend as a duplicate. The failing instance is marked unhealthy, new
//     batches go to the others, and a background probe PINGs it with backoff until it answers,
//     which makes it healthy again. When every instance failed, Send returns the last error.
//   - An instance whose oldest unanswered batch is older than SlowAfter is slow: new batches
//     go to instances that are not, while there are some.
//   - A NACK is returned as it is, without trying another instance: the instance answered,
//     and its inbox failed (or refused the batch for good) on the database that every
//     instance shares, so another instance would most likely fail the same way. The relay
//     backs off instead of doubling the load on a struggling database.
//   - Any other error that is not retryable (transport.ErrTooLarge, ErrInvalid) is returned at
//     once.
//
// Addresses are host:port. An IP address is one instance; a host name stands for every
// address it resolves to (A and AAAA records), looked up when the first Send needs the
// instances and again every ResolveInterval, so that instances join and leave with the DNS.
// A lookup that fails or finds no address keeps the instances the name had, and is tried
// again after at most a second. An instance that leaves is closed as [Client.Close] does:
// its batches already written still get their answers, the others go to other instances.
// With TLS, an instance found through a name is verified against that name (unless
// ClientConfig.TLS sets ServerName).
//
// The Balancer keeps no order between batches: the relay sends batches whose ordering keys
// are all different and claims a key's next message only after the previous one's ACK, so
// per-key order holds whichever instance takes a batch.
//
// Log records about an instance carry its address as "instance". With
// BalancerConfig.MeterProvider the Balancer reports (scope
// "github.com/durable-go/durable/transport/tcp"):
//
//	durable.transport.instance.sends      counter {batch} durable.peer, durable.instance, durable.outcome (ok|nacked|failed)
//	    batches sent to an instance, every attempt counted; nacked: it answered with a NACK
//	durable.transport.instance.in_flight  gauge   {batch} durable.peer, durable.instance
//	    batches sent to the instance and not yet answered
//	durable.transport.instance.healthy    gauge   1       durable.peer, durable.instance
//	    1 while the instance is healthy, 0 while it is known to fail
//
// Its methods are safe for concurrent use.
type Balancer struct {
	cfg    BalancerConfig
	client ClientConfig
	addrs  []string
	log    *slog.Logger
	met    *balancerMetrics
	turn   atomic.Uint64 // round-robin start among equals

	ctx    context.Context // canceled by Close: stops the resolver, lookups and probes
	cancel context.CancelFunc
	// retireCtx bounds the Close of instances that left; canceled when Balancer.Close's
	// context ends.
	retireCtx    context.Context
	retireCancel context.CancelFunc
	wg           sync.WaitGroup // resolver, probes, closes of instances that left

	mu      sync.Mutex
	closed  bool
	insts   []*instance     // current instances, in a stable order
	ready   chan struct{}   // closed after the first resolution; nil until the first Send
	kick    chan struct{}   // asks the resolver for a resolution now
	lookups map[string]bool // host names whose last lookup failed
}

var _ transport.Sender = (*Balancer)(nil)

// instance is one receiver instance: its address and its Client.
type instance struct {
	addr   string // dialed address, ip:port (or host:port when looked up by the Client)
	from   string // the entry of the address list it came from
	client *Client
	ctx    context.Context // canceled when the instance leaves or the Balancer closes
	cancel context.CancelFunc
	attrs  metric.MeasurementOption // durable.peer and durable.instance; nil without metrics

	inflight atomic.Int64
	oldest   atomic.Int64 // unix nanoseconds when the oldest unanswered send started; 0: none
	failing  atomic.Bool  // the last send failed for a reason of the connection; probed

	mu    sync.Mutex
	sends map[uint64]int64 // start (unix nanoseconds) of the unanswered sends, by ticket
	seq   uint64
}

// NewBalancer returns a Balancer over the instances at addrs, each "host:port", configured by
// client (each instance's Client; nil: every default) and cfg (nil: every default). It checks
// the addresses (host and port both set, none given twice) and the configurations, but
// neither looks names up nor connects: the first Send does.
func NewBalancer(addrs []string, client *ClientConfig, cfg *BalancerConfig) (*Balancer, error) {
	if client == nil {
		client = new(ClientConfig)
	}
	if cfg == nil {
		cfg = new(BalancerConfig)
	}
	b := &Balancer{cfg: *cfg, client: *client}
	if len(addrs) == 0 {
		return nil, errors.New("tcp: NewBalancer: no addresses")
	}
	seen := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("tcp: NewBalancer: address %q: %w", a, err)
		}
		if host == "" || port == "" {
			return nil, fmt.Errorf("tcp: NewBalancer: address %q: want host:port", a)
		}
		if seen[a] {
			return nil, fmt.Errorf("tcp: NewBalancer: address %q given twice", a)
		}
		seen[a] = true
		b.addrs = append(b.addrs, a)
	}
	// Validate the client configuration once, as NewClient would.
	if _, err := buildClient(addrs[0], b.client); err != nil {
		return nil, err
	}
	if b.cfg.ResolveInterval < 0 || b.cfg.SlowAfter < 0 {
		return nil, errors.New("tcp: NewBalancer: negative ResolveInterval or SlowAfter")
	}
	b.cfg.ResolveInterval = orDefault(b.cfg.ResolveInterval, DefaultResolveInterval)
	b.cfg.SlowAfter = orDefault(b.cfg.SlowAfter, DefaultSlowAfter)
	if b.cfg.Lookup == nil {
		b.cfg.Lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	b.log = b.cfg.Logger
	if b.log == nil {
		b.log = orDefault(b.client.Logger, slog.Default())
	}
	if b.cfg.Name != "" {
		b.log = b.log.With("peer", b.cfg.Name)
	}
	var err error
	if b.met, err = newBalancerMetrics(b); err != nil {
		return nil, err
	}
	b.kick = make(chan struct{}, 1)
	b.lookups = make(map[string]bool)
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.retireCtx, b.retireCancel = context.WithCancel(context.Background())
	return b, nil
}

// InstanceState is a snapshot of one instance of a Balancer.
type InstanceState struct {
	Addr     string // the address dialed
	From     string // the entry of the Balancer's address list it came from
	InFlight int    // batches sent and not yet answered
	Healthy  bool   // not known to fail: its last send did not fail for a reason of the connection (or a probe answered since), and its circuit is closed
	Slow     bool   // its oldest unanswered batch is older than SlowAfter
}

// Instances returns the current instances, in a stable order: the order of the address list,
// and the addresses of one name in ascending order. Before the first Send, after Close, and
// while no address is known, it is empty.
func (b *Balancer) Instances() []InstanceState {
	b.mu.Lock()
	insts := slices.Clone(b.insts)
	b.mu.Unlock()
	now := time.Now()
	out := make([]InstanceState, 0, len(insts))
	for _, in := range insts {
		out = append(out, InstanceState{Addr: in.addr, From: in.from, InFlight: int(in.inflight.Load()),
			Healthy: in.healthy(), Slow: in.slow(now, b.cfg.SlowAfter)})
	}
	return out
}

func (in *instance) healthy() bool {
	return !in.failing.Load() && !in.client.circuitOpen()
}

// slow reports whether the oldest unanswered send started longer than d ago.
func (in *instance) slow(now time.Time, d time.Duration) bool {
	o := in.oldest.Load()
	return o != 0 && now.Sub(time.Unix(0, o)) > d
}

// Send sends batch to one instance and, after a failure of the connection or the instance, to
// another, each instance at most once; see [Balancer]. It returns the first ACK, a NACK or
// an error that is not retryable at once, or else the last error. After Close it fails with
// transport.ErrClosed.
func (b *Balancer) Send(ctx context.Context, batch *transport.Batch) (transport.Result, error) {
	if len(batch.Envelopes) == 0 {
		return transport.Result{}, nil
	}
	insts, err := b.instances(ctx)
	if err != nil {
		return transport.Result{}, err
	}
	tried := make(map[*instance]bool, len(insts))
	var last error
	for {
		in := b.pick(insts, tried)
		if in == nil {
			// Every instance was tried. Instances that joined meanwhile get their turn.
			if insts = b.current(); b.pick(insts, tried) != nil {
				continue
			}
			b.resolveSoon()
			return transport.Result{}, last
		}
		tried[in] = true
		res, err := b.sendTo(ctx, in, batch)
		if err == nil {
			if in.failing.Swap(false) {
				b.log.Info("tcp: balancer: instance answers again", "instance", in.addr)
			}
			return res, nil
		}
		last = err
		switch {
		case ctx.Err() != nil, !transport.IsRetryable(err), errors.Is(err, transport.ErrNack):
			return res, err
		case errors.Is(err, transport.ErrClosed):
			if b.isClosed() {
				return transport.Result{}, errClosed
			}
			// The instance left while the batch waited to be written: try another.
			continue
		}
		b.markFailing(in, err)
	}
}

// sendTo sends batch to in, counting it in flight and in the metrics.
func (b *Balancer) sendTo(ctx context.Context, in *instance, batch *transport.Batch) (transport.Result, error) {
	in.inflight.Add(1)
	in.mu.Lock()
	in.seq++
	t := in.seq
	in.sends[t] = time.Now().UnixNano()
	if in.oldest.Load() == 0 {
		in.oldest.Store(in.sends[t])
	}
	in.mu.Unlock()
	res, err := in.client.Send(ctx, batch)
	in.mu.Lock()
	delete(in.sends, t)
	var o int64
	for _, s := range in.sends {
		if o == 0 || s < o {
			o = s
		}
	}
	in.oldest.Store(o)
	in.mu.Unlock()
	in.inflight.Add(-1)
	b.met.sent(ctx, in, err)
	return res, err
}

// pick returns the instance for the next batch among those not yet tried, nil when none is
// left: healthy before failing, not slow before slow, then the fewest batches in flight, ties
// taken in turn.
func (b *Balancer) pick(insts []*instance, tried map[*instance]bool) *instance {
	if len(insts) == 0 {
		return nil
	}
	now := time.Now()
	start := b.turn.Add(1)
	var best *instance
	var bestScore [3]int64
	for i := range insts {
		in := insts[(int(start%uint64(len(insts)))+i)%len(insts)]
		if tried[in] {
			continue
		}
		score := [3]int64{0, 0, in.inflight.Load()}
		if !in.healthy() {
			score[0] = 1
		}
		if in.slow(now, b.cfg.SlowAfter) {
			score[1] = 1
		}
		if best == nil || slices.Compare(score[:], bestScore[:]) < 0 {
			best, bestScore = in, score
		}
	}
	return best
}

// markFailing marks in unhealthy after a failed send and starts its probe.
func (b *Balancer) markFailing(in *instance, err error) {
	if in.failing.Swap(true) {
		return
	}
	b.log.Warn("tcp: balancer: instance failing; sending to the others until it answers", "instance", in.addr, "err", err)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || in.ctx.Err() != nil {
		return
	}
	b.wg.Add(1)
	go b.probe(in)
}

// probe PINGs a failing instance with backoff until it answers, it leaves, a send to it
// succeeds, or the Balancer closes.
func (b *Balancer) probe(in *instance) {
	defer b.wg.Done()
	c := in.client
	for attempt := 1; in.failing.Load(); attempt++ {
		t := time.NewTimer(c.backoff(attempt))
		select {
		case <-t.C:
		case <-in.ctx.Done():
			t.Stop()
			return
		}
		if !in.failing.Load() {
			return
		}
		ctx, cancel := context.WithTimeout(in.ctx, c.cfg.DialTimeout+c.cfg.HandshakeTimeout+c.cfg.ReadTimeout)
		err := c.Ping(ctx)
		cancel()
		if err == nil {
			if in.failing.Swap(false) {
				b.log.Info("tcp: balancer: instance answers again", "instance", in.addr)
			}
			return
		}
		b.log.Debug("tcp: balancer: probe failed", "instance", in.addr, "attempt", attempt, "err", err)
	}
}

func (b *Balancer) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// current returns the current instances.
func (b *Balancer) current() []*instance {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.insts
}

// instances returns the current instances, waiting for the first resolution, which the first
// call starts.
func (b *Balancer) instances(ctx context.Context) ([]*instance, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, errClosed
	}
	if b.ready == nil {
		b.ready = make(chan struct{})
		b.wg.Add(1)
		go b.resolver(b.ready)
	}
	ready := b.ready
	b.mu.Unlock()
	select {
	case <-ready:
	case <-ctx.Done():
		return nil, &transport.SendError{Kind: transport.ErrUnavailable, Err: fmt.Errorf("tcp: balancer: waiting for the instances: %w", context.Cause(ctx)), Retry: true}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errClosed
	}
	if len(b.insts) == 0 {
		return nil, &transport.SendError{Kind: transport.ErrUnavailable, Err: fmt.Errorf("tcp: balancer: no address of %v resolved", b.addrs), Retry: true}
	}
	return b.insts, nil
}

// resolveSoon asks the resolver for a resolution now, for instances that may have replaced
// the ones that all failed.
func (b *Balancer) resolveSoon() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// resolver resolves the addresses, closes ready, and then resolves them again every
// ResolveInterval (after at most resolveRetry when a lookup failed, no sooner than that when
// asked by resolveSoon) until the Balancer closes. Without host names it stops after the
// first resolution.
func (b *Balancer) resolver(ready chan struct{}) {
	defer b.wg.Done()
	ok, names := b.resolve()
	close(ready)
	if !names {
		return
	}
	retry := min(b.cfg.ResolveInterval, resolveRetry)
	for {
		wait := b.cfg.ResolveInterval
		if !ok {
			wait = retry
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-b.kick:
			t.Stop()
			// At most one resolution per retry interval on request.
			t = time.NewTimer(retry)
			select {
			case <-t.C:
			case <-b.ctx.Done():
				t.Stop()
				return
			}
		case <-b.ctx.Done():
			t.Stop()
			return
		}
		ok, _ = b.resolve()
	}
}

// target is one instance address found by a resolution: the address to dial, the entry
// of the address list it came from, and the host name it was looked up by ("" for an IP).
type target struct{ addr, from, host string }

// resolve looks the names up and updates the instances. It reports whether every lookup found
// an address, and whether there were names to look up.
func (b *Balancer) resolve() (ok, names bool) {
	var targets []target
	seen := make(map[string]bool)
	failed := make(map[string]bool) // entries whose lookup failed
	for _, a := range b.addrs {
		host, port, _ := net.SplitHostPort(a)
		if _, err := netip.ParseAddr(host); err == nil {
			if !seen[a] {
				seen[a] = true
				targets = append(targets, target{a, a, ""})
			}
			continue
		}
		names = true
		lctx, cancel := context.WithTimeout(b.ctx, b.lookupTimeout())
		ips, err := b.cfg.Lookup(lctx, host)
		cancel()
		if err == nil && len(ips) == 0 {
			err = errors.New("no address")
		}
		b.noteLookup(a, err)
		if err != nil {
			failed[a] = true
			continue
		}
		for i := range ips {
			ips[i] = ips[i].Unmap()
		}
		slices.SortFunc(ips, func(x, y netip.Addr) int { return x.Compare(y) })
		for _, ip := range slices.Compact(ips) {
			addr := net.JoinHostPort(ip.String(), port)
			if !seen[addr] {
				seen[addr] = true
				targets = append(targets, target{addr, a, host})
			}
		}
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return len(failed) == 0, names
	}
	old := make(map[string]*instance, len(b.insts))
	for _, in := range b.insts {
		old[in.addr] = in
	}
	first := b.insts == nil
	var next []*instance
	for _, tg := range targets {
		if in, ok := old[tg.addr]; ok {
			next = append(next, in)
			delete(old, tg.addr)
			continue
		}
		in, err := b.newInstance(tg)
		if err != nil {
			b.log.Warn("tcp: balancer: instance skipped", "instance", tg.addr, "from", tg.from, "err", err)
			continue
		}
		next = append(next, in)
		if first {
			b.log.Debug("tcp: balancer: instance added", "instance", tg.addr, "from", tg.from)
		} else {
			b.log.Info("tcp: balancer: instance added", "instance", tg.addr, "from", tg.from)
		}
	}
	for _, in := range b.insts {
		if _, gone := old[in.addr]; !gone {
			continue
		}
		if failed[in.from] {
			// Its name did not resolve this time: keep what it had.
			next = append(next, in)
			continue
		}
		b.log.Info("tcp: balancer: instance removed", "instance", in.addr, "from", in.from, "in_flight", in.inflight.Load())
		in.cancel()
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			ctx, cancel := context.WithTimeout(b.retireCtx, in.client.cfg.AckTimeout)
			defer cancel()
			_ = in.client.Close(ctx)
		}()
	}
	if next == nil {
		next = []*instance{}
	}
	b.insts = next
	return len(failed) == 0, names
}

// lookupTimeout bounds one lookup: the dial timeout of the instances.
func (b *Balancer) lookupTimeout() time.Duration {
	return orDefault(b.client.DialTimeout, DefaultDialTimeout)
}

// noteLookup logs a lookup that fails where it succeeded before, or succeeds again.
func (b *Balancer) noteLookup(entry string, err error) {
	b.mu.Lock()
	was := b.lookups[entry]
	b.lookups[entry] = err != nil
	b.mu.Unlock()
	switch {
	case err != nil && !was:
		b.log.Warn("tcp: balancer: lookup failed; keeping the instances the name had", "name", entry, "err", err)
	case err != nil:
		b.log.Debug("tcp: balancer: lookup failed again", "name", entry, "err", err)
	case was:
		b.log.Info("tcp: balancer: lookup succeeds again", "name", entry)
	}
}

// newInstance returns the instance of tg with its Client; b.mu is held.
func (b *Balancer) newInstance(tg target) (*instance, error) {
	cc := b.client
	cc.Logger = b.log.With("instance", tg.addr)
	if cc.TLS != nil && cc.TLS.ServerName == "" && tg.host != "" {
		cc.TLS = cc.TLS.Clone()
		cc.TLS.ServerName = tg.host
	}
	c, err := buildClient(tg.addr, cc)
	if err != nil {
		return nil, err
	}
	in := &instance{addr: tg.addr, from: tg.from, client: c, sends: make(map[uint64]int64)}
	in.ctx, in.cancel = context.WithCancel(b.ctx)
	in.attrs = b.met.attrs(tg.addr)
	return in, nil
}

// Close closes every instance's Client (see [Client.Close]: the batches already written get
// their answers, or fail with transport.ErrClosed when ctx ends first) and waits for the
// Balancer's goroutines. Sends after Close fail with transport.ErrClosed. Close is
// idempotent.
func (b *Balancer) Close(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	insts := b.insts
	b.insts = nil
	b.mu.Unlock()
	b.cancel()
	errs := make([]error, len(insts))
	var wg sync.WaitGroup
	for i, in := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = in.client.Close(ctx)
		}()
	}
	wg.Wait()
	stop := context.AfterFunc(ctx, b.retireCancel)
	b.wg.Wait()
	stop()
	b.retireCancel()
	errs = append(errs, b.met.close())
	return errors.Join(errs...)
}

// Metric attribute keys of the Balancer.
const (
	keyPeer     = attribute.Key("durable.peer")
	keyInstance = attribute.Key("durable.instance")
)

// balancerMetrics are the instruments of a Balancer; a nil *balancerMetrics records nothing.
type balancerMetrics struct {
	sends metric.Int64Counter
	reg   metric.Registration
	peer  string
	names telemetry.Names
	sets  telemetry.Sets
}

func newBalancerMetrics(b *Balancer) (*balancerMetrics, error) {
	meter := telemetry.Meter(b.cfg.MeterProvider, "transport/tcp")
	if meter == nil {
		return nil, nil
	}
	m := &balancerMetrics{peer: b.cfg.Name}
	var errs []error
	var err error
	m.sends, err = meter.Int64Counter("durable.transport.instance.sends", metric.WithUnit("{batch}"),
		metric.WithDescription("Batches sent to an instance of a peer, every attempt counted, by outcome."))
	errs = append(errs, err)
	inflight, err := meter.Int64ObservableGauge("durable.transport.instance.in_flight", metric.WithUnit("{batch}"),
		metric.WithDescription("Batches sent to an instance of a peer and not yet answered."))
	errs = append(errs, err)
	healthy, err := meter.Int64ObservableGauge("durable.transport.instance.healthy", metric.WithUnit("1"),
		metric.WithDescription("1 while an instance of a peer is healthy, 0 while it is known to fail."))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("tcp: NewBalancer: metrics: %w", err)
	}
	m.reg, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, in := range b.current() {
			o.ObserveInt64(inflight, in.inflight.Load(), in.attrs)
			h := int64(0)
			if in.healthy() {
				h = 1
			}
			o.ObserveInt64(healthy, h, in.attrs)
		}
		return nil
	}, inflight, healthy)
	if err != nil {
		return nil, fmt.Errorf("tcp: NewBalancer: metrics: %w", err)
	}
	return m, nil
}

// attrs returns the measurement option naming the instance addr.
func (m *balancerMetrics) attrs(addr string) metric.MeasurementOption {
	if m == nil {
		return nil
	}
	addr = m.names.Bound(addr)
	return m.sets.Get(telemetry.Key{A: addr}, func() []attribute.KeyValue {
		return []attribute.KeyValue{keyPeer.String(m.peer), keyInstance.String(addr)}
	})
}

// sent counts one send to in that ended with err.
func (m *balancerMetrics) sent(ctx context.Context, in *instance, err error) {
	if m == nil {
		return
	}
	outcome := "ok"
	switch {
	case errors.Is(err, transport.ErrNack):
		outcome = "nacked"
	case err != nil:
		outcome = "failed"
	}
	addr := m.names.Bound(in.addr)
	m.sends.Add(context.WithoutCancel(ctx), 1, m.sets.Get(telemetry.Key{A: addr, B: outcome}, func() []attribute.KeyValue {
		return []attribute.KeyValue{keyPeer.String(m.peer), keyInstance.String(addr), telemetry.KeyOutcome.String(outcome)}
	}))
}

func (m *balancerMetrics) close() error {
	if m == nil {
		return nil
	}
	return m.reg.Unregister()
}
