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

// BalancerConfig configures a [Balancer]. The zero value of every field is a documented default,
// and a nil *BalancerConfig means the zero value.
type BalancerConfig struct {
	// Name names the peer in logs. Optional.
	Name string
	// Logger receives the Balancer's events: instances added, removed, failing and back. Each
	// instance's Client logs with an "instance" attribute. Default: ClientConfig.Logger, else
	// slog.Default().
	Logger *slog.Logger
	// ResolveInterval is how often the host names among the addresses are looked up again;
	// every address a name resolves to is an instance. Default DefaultResolveInterval (30s).
	ResolveInterval time.Duration
	// Lookup resolves a host name to its addresses. Default: net.DefaultResolver.LookupNetIP
	// with network "ip".
	Lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	// SlowAfter is how long an instance may keep a batch unanswered before new batches avoid
	// it while another instance is not slow. Default DefaultSlowAfter (2s).
	SlowAfter time.Duration
}

// Balancer is a transport.Sender over several instances of one peer: receivers that share one
// inbox database. It keeps a [Client] (one connection) per instance and sends each batch to a
// healthy instance with the fewest batches in flight; a batch whose send fails with a
// retryable error is sent again to another instance at once, since the peer's inbox recognises
// the resend as a duplicate. One dead or slow instance therefore never stalls the others.
//
// Addresses are host:port. An IP address is one instance; a host name stands for every
// address it resolves to (A and AAAA records), looked up again every ResolveInterval, so that
// instances join and leave with the DNS. With TLS, an instance found through a name is
// verified against that name.
//
// The Balancer keeps no order between batches: the relay sends batches whose ordering keys
// are all different and claims a key's next message only after the previous one's ACK, so
// per-key order holds whichever instance takes a batch. Its methods are safe for concurrent
// use.
type Balancer struct {
	cfg    BalancerConfig
	client ClientConfig
	addrs  []string
	log    *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	insts     []*instance // current instances, in a stable order
	resolved  time.Time   // last successful resolution
	resolving chan struct{}
	next      uint64 // round-robin start among equals
}

var _ transport.Sender = (*Balancer)(nil)

// instance is one receiver instance: its address and its Client.
type instance struct {
	addr   string // dialed address, ip:port (or host:port when looked up by the Client)
	from   string // the entry of the address list it came from
	client *Client

	inflight atomic.Int64
	oldest   atomic.Int64 // unix nanoseconds when the oldest unanswered send started; 0: none
	failing  atomic.Bool  // the last send failed with a connection-level error

	mu    sync.Mutex
	sends map[uint64]time.Time // unanswered sends by ticket
	seq   uint64
}

// NewBalancer returns a Balancer over the instances at addrs, each "host:port", configured by
// client (each instance's Client; nil: every default) and cfg (nil: every default). It checks
// the addresses and the configurations, but neither looks names up nor connects: the first
// Send does.
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
	b.ctx, b.cancel = context.WithCancel(context.Background())
	return b, nil
}

// InstanceState is a snapshot of one instance of a Balancer.
type InstanceState struct {
	Addr     string // the address dialed
	From     string // the entry of the Balancer's address list it came from
	InFlight int    // batches sent and not yet answered
	Healthy  bool   // connected or not known to fail, and its circuit closed
}

// Instances returns the current instances, in a stable order. Before the first Send, and
// when no name resolved, it may be empty.
func (b *Balancer) Instances() []InstanceState {
	b.mu.Lock()
	insts := slices.Clone(b.insts)
	b.mu.Unlock()
	out := make([]InstanceState, 0, len(insts))
	for _, in := range insts {
		out = append(out, InstanceState{Addr: in.addr, From: in.from, InFlight: int(in.inflight.Load()), Healthy: in.healthy()})
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

// Send sends batch to one instance, and on a retryable failure to the next, each instance at
// most once; see [Balancer]. It returns the first instance's ACK, or the last error.
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
	for len(tried) < len(insts) {
		in := b.pick(insts, tried)
		tried[in] = true
		res, err := in.send(ctx, batch)
		if err == nil {
			if in.failing.Swap(false) {
				b.log.Info("tcp: balancer: instance answers again", "instance", in.addr)
			}
			return res, nil
		}
		last = err
		if !transport.IsRetryable(err) || ctx.Err() != nil {
			return res, err
		}
		if errors.Is(err, transport.ErrNack) {
			// The instance answered: its inbox failed, which the other
			// instances share. Let the relay back off.
			return res, err
		}
		if !in.failing.Swap(true) {
			b.log.Warn("tcp: balancer: instance failing; sending to the others", "instance", in.addr, "err", err)
		}
	}
	return transport.Result{}, last
}

// pick returns the instance for the next batch among those not yet tried: healthy before
// failing, not slow before slow, then the fewest batches in flight, ties taken in turn.
func (b *Balancer) pick(insts []*instance, tried map[*instance]bool) *instance {
	now := time.Now()
	b.mu.Lock()
	start := b.next
	b.next++
	b.mu.Unlock()
	var best *instance
	var bestScore [3]int64
	for i := range insts {
		in := insts[(int(start)+i)%len(insts)]
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

func (in *instance) send(ctx context.Context, batch *transport.Batch) (transport.Result, error) {
	in.inflight.Add(1)
	in.mu.Lock()
	in.seq++
	t := in.seq
	in.sends[t] = time.Now()
	in.setOldestLocked()
	in.mu.Unlock()
	defer func() {
		in.mu.Lock()
		delete(in.sends, t)
		in.setOldestLocked()
		in.mu.Unlock()
		in.inflight.Add(-1)
	}()
	return in.client.Send(ctx, batch)
}

func (in *instance) setOldestLocked() {
	var o int64
	for _, s := range in.sends {
		if n := s.UnixNano(); o == 0 || n < o {
			o = n
		}
	}
	in.oldest.Store(o)
}

// instances returns the current instances, resolving the names first when that is due.
func (b *Balancer) instances(ctx context.Context) ([]*instance, error) {
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, errClosed
		}
		due := b.resolved.IsZero() || time.Since(b.resolved) >= b.cfg.ResolveInterval
		if !due || (b.resolving != nil && len(b.insts) > 0) {
			insts := b.insts
			b.mu.Unlock()
			return insts, nil
		}
		if w := b.resolving; w != nil {
			b.mu.Unlock()
			select {
			case <-w:
				continue
			case <-ctx.Done():
				return nil, ctxErr(ctx)
			}
		}
		w := make(chan struct{})
		b.resolving = w
		have := len(b.insts) > 0
		b.mu.Unlock()
		if have {
			// Resolve in the background; send with the instances known.
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				b.resolve(b.ctx, w)
			}()
			continue
		}
		b.resolve(ctx, w)
		b.mu.Lock()
		insts := b.insts
		b.mu.Unlock()
		if len(insts) == 0 {
			return nil, &transport.SendError{Kind: transport.ErrUnavailable, Err: errors.New("tcp: balancer: no instance address resolved"), Retry: true}
		}
		return insts, nil
	}
}

// target is one instance address found by a resolution: the address to dial, the entry
// of the address list it came from, and the host name it was looked up by ("" for an IP).
type target struct{ addr, from, host string }

// resolve looks the names up and updates the instances; it closes w when done.
func (b *Balancer) resolve(ctx context.Context, w chan struct{}) {
	lctx, cancel := context.WithTimeout(ctx, orDefault(b.client.DialTimeout, DefaultDialTimeout))
	defer cancel()
	var targets []target
	failed := false
	for _, a := range b.addrs {
		host, port, _ := net.SplitHostPort(a)
		if _, err := netip.ParseAddr(host); err == nil {
			targets = append(targets, target{a, a, ""})
			continue
		}
		ips, err := b.cfg.Lookup(lctx, host)
		if err != nil || len(ips) == 0 {
			failed = true
			b.log.Warn("tcp: balancer: lookup failed; keeping its instances", "addr", a, "err", err)
			continue
		}
		slices.SortFunc(ips, func(x, y netip.Addr) int { return x.Compare(y) })
		for _, ip := range slices.Compact(ips) {
			targets = append(targets, target{net.JoinHostPort(ip.Unmap().String(), port), a, host})
		}
	}
	b.mu.Lock()
	defer func() {
		b.resolving = nil
		close(w)
		b.mu.Unlock()
	}()
	if b.closed {
		return
	}
	old := make(map[string]*instance, len(b.insts))
	for _, in := range b.insts {
		old[in.addr] = in
	}
	var next []*instance
	for _, tg := range targets {
		if in, ok := old[tg.addr]; ok {
			next = append(next, in)
			delete(old, tg.addr)
			continue
		}
		cc := b.client
		cc.Logger = b.log.With("instance", tg.addr)
		if cc.TLS != nil && cc.TLS.ServerName == "" && tg.host != "" {
			cc.TLS = cc.TLS.Clone()
			cc.TLS.ServerName = tg.host
		}
		c, err := buildClient(tg.addr, cc)
		if err != nil {
			b.log.Warn("tcp: balancer: instance skipped", "instance", tg.addr, "err", err)
			continue
		}
		next = append(next, &instance{addr: tg.addr, from: tg.from, client: c, sends: make(map[uint64]time.Time)})
		if b.insts != nil || len(targets) > 1 {
			b.log.Debug("tcp: balancer: instance added", "instance", tg.addr, "from", tg.from)
		}
	}
	for addr, in := range old {
		if failed && b.fromFailed(in.from, targets) {
			// Its name did not resolve this time: keep what it had.
			next = append(next, in)
			continue
		}
		b.log.Info("tcp: balancer: instance removed", "instance", addr)
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), orDefault(b.client.AckTimeout, DefaultAckTimeout))
			defer cancel()
			_ = in.client.Close(ctx)
		}()
	}
	b.insts = next
	b.resolved = time.Now()
}

// fromFailed reports whether entry produced no target in this resolution.
func (b *Balancer) fromFailed(entry string, targets []target) bool {
	for _, t := range targets {
		if t.from == entry {
			return false
		}
	}
	return true
}

// Close closes every instance's Client (see [Client.Close]) and waits for the Balancer's
// goroutines. Close is idempotent.
func (b *Balancer) Close(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	insts := b.insts
	b.mu.Unlock()
	b.cancel()
	var errs []error
	for _, in := range insts {
		errs = append(errs, in.client.Close(ctx))
	}
	b.wg.Wait()
	return errors.Join(errs...)
}
