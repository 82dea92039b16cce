package tcp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/durable-go/durable/transport"
)

// gatedServer is a server whose Handler records the ids it received and, while hold is set,
// reports each batch on arrived and blocks it until release gets a value (or the server
// closes).
type gatedServer struct {
	*testServer
	idx     int
	hold    atomic.Bool
	arrived chan<- arrival
	release chan struct{}

	mu  sync.Mutex
	ids []string
}

type arrival struct {
	srv int
	id  string
}

func (g *gatedServer) handler() transport.Handler {
	return transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		if g.hold.Load() {
			g.arrived <- arrival{g.idx, b.Envelopes[0].ID}
			select {
			case <-g.release:
			case <-ctx.Done():
				return transport.Result{}, context.Cause(ctx)
			}
		}
		g.mu.Lock()
		for _, e := range b.Envelopes {
			g.ids = append(g.ids, e.ID)
		}
		g.mu.Unlock()
		return transport.Result{}, nil
	})
}

func (g *gatedServer) got() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.ids)
}

// startGated starts n gated servers on 127.0.0.1; they report on the returned channel.
func startGated(t *testing.T, n int) ([]*gatedServer, <-chan arrival, []string) {
	t.Helper()
	arrived := make(chan arrival, 64)
	var srvs []*gatedServer
	var addrs []string
	for i := range n {
		g := &gatedServer{idx: i, arrived: arrived, release: make(chan struct{})}
		g.testServer = startServer(t, g.handler(), ServerConfig{})
		srvs = append(srvs, g)
		addrs = append(addrs, g.addr)
	}
	return srvs, arrived, addrs
}

// newTestBalancer returns a Balancer over addrs, closed when the test ends, with the test
// secret and short reconnection backoffs unless cc sets them.
func newTestBalancer(t *testing.T, addrs []string, cc ClientConfig, bc BalancerConfig) *Balancer {
	t.Helper()
	if cc.Logger == nil {
		cc.Logger, _ = newLog(t)
	}
	if len(cc.Secret) == 0 && len(cc.Token) == 0 {
		cc.Secret = testSecret
	}
	cc.DialTimeout = orDefault(cc.DialTimeout, 30*time.Second)
	cc.HandshakeTimeout = orDefault(cc.HandshakeTimeout, 30*time.Second)
	cc.WriteTimeout = orDefault(cc.WriteTimeout, time.Minute)
	cc.BackoffMin = orDefault(cc.BackoffMin, time.Millisecond)
	cc.BackoffMax = orDefault(cc.BackoffMax, 20*time.Millisecond)
	b, err := NewBalancer(addrs, &cc, &bc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// sendAsync sends one batch of id in a goroutine; the error arrives on the channel.
func sendAsync(t *testing.T, b *Balancer, id string) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := b.Send(testCtx(t), oneBatch(id))
		done <- err
	}()
	return done
}

func instanceState(t *testing.T, b *Balancer, addr string) InstanceState {
	t.Helper()
	for _, s := range b.Instances() {
		if s.Addr == addr {
			return s
		}
	}
	t.Fatalf("no instance %s in %+v", addr, b.Instances())
	return InstanceState{}
}

// TestBalancerSpread: batches go to the instance with the fewest in flight (checked exactly
// with Handlers held by hand), idle instances take batches in turn, and concurrent Sends reach
// every instance.
func TestBalancerSpread(t *testing.T) {
	t.Parallel()
	srvs, arrived, addrs := startGated(t, 3)
	b := newTestBalancer(t, addrs, ClientConfig{}, BalancerConfig{SlowAfter: time.Hour})
	ctx := testCtx(t)

	// Idle instances take sequential batches in turn: exactly 2 each.
	for i := range 6 {
		if _, err := b.Send(ctx, oneBatch("seq-"+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i, g := range srvs {
		if n := len(g.got()); n != 2 {
			t.Fatalf("server %d got %d of 6 sequential batches, want 2", i, n)
		}
	}

	// Three held batches land on three different instances: each pick takes one with none in
	// flight.
	for _, g := range srvs {
		g.hold.Store(true)
	}
	var held [3]<-chan error
	seen := map[int]bool{}
	where := map[string]int{}
	for i := range 3 {
		id := "held-" + strconv.Itoa(i)
		held[i] = sendAsync(t, b, id)
		a := recv(t, arrived, "a held batch")
		if seen[a.srv] || a.id != id {
			t.Fatalf("held batch %s arrived at server %d (%s); already loaded: %v", id, a.srv, a.id, seen)
		}
		seen[a.srv] = true
		where[id] = a.srv
	}
	for _, s := range b.Instances() {
		if s.InFlight != 1 {
			t.Fatalf("instances %+v, want 1 in flight each", b.Instances())
		}
	}
	// Release the batch of one server: the next batch must go there, the only instance with
	// nothing in flight.
	free := where["held-1"]
	srvs[free].release <- struct{}{}
	if err := recv(t, held[1], "the released batch's ACK"); err != nil {
		t.Fatal(err)
	}
	next := sendAsync(t, b, "next")
	if a := recv(t, arrived, "the next batch"); a.srv != free {
		t.Fatalf("next batch went to server %d with 1 in flight, not to server %d with none", a.srv, free)
	}
	srvs[free].release <- struct{}{}
	if err := recv(t, next, "the next batch's ACK"); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 2} {
		srvs[where["held-"+strconv.Itoa(i)]].release <- struct{}{}
		if err := recv(t, held[i], "a held batch's ACK"); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range srvs {
		g.hold.Store(false)
	}

	// Many concurrent Sends: every one acknowledged, every instance took some.
	const n = 60
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := b.Send(ctx, oneBatch("con-"+strconv.Itoa(i)))
			errs <- err
		}()
	}
	for range n {
		if err := recv(t, errs, "a concurrent Send"); err != nil {
			t.Fatal(err)
		}
	}
	total := 0
	for i, g := range srvs {
		k := 0
		for _, id := range g.got() {
			if len(id) > 4 && id[:4] == "con-" {
				k++
			}
		}
		if k == 0 {
			t.Fatalf("server %d got none of %d concurrent batches", i, n)
		}
		total += k
	}
	if total != n {
		t.Fatalf("servers got %d concurrent batches, want %d", total, n)
	}
	for _, s := range b.Instances() {
		if s.InFlight != 0 || !s.Healthy || s.Slow {
			t.Fatalf("instances after the run: %+v", b.Instances())
		}
	}
}

// TestBalancerDeadInstance: with one instance's server closed, every batch is acknowledged by
// the others, the dead instance is marked unhealthy (in Instances, the metrics and the log), and
// it takes batches again once a server listens on its address again.
func TestBalancerDeadInstance(t *testing.T) {
	t.Parallel()
	srvs, _, addrs := startGated(t, 3)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	log, sink := newLog(t)
	b := newTestBalancer(t, addrs, ClientConfig{}, BalancerConfig{Name: "billing", Logger: log, MeterProvider: mp})
	ctx := testCtx(t)
	for i := range 3 {
		if _, err := b.Send(ctx, oneBatch("warm-"+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}

	dead := srvs[2]
	dead.Close()
	dead.done <- <-dead.done // Serve returned; the cleanup waits for it too
	const n = 12
	for i := range n {
		if _, err := b.Send(ctx, oneBatch("b-"+strconv.Itoa(i))); err != nil {
			t.Fatalf("Send %d with one instance dead: %v", i, err)
		}
	}
	got := map[string]int{}
	for _, g := range srvs[:2] {
		for _, id := range g.got() {
			got[id]++
		}
	}
	for i := range n {
		if id := "b-" + strconv.Itoa(i); got[id] != 1 {
			t.Fatalf("%s received %d times by the live instances, want 1", id, got[id])
		}
	}
	if s := instanceState(t, b, dead.addr); s.Healthy {
		t.Fatalf("dead instance still healthy: %+v", s)
	}
	for _, a := range addrs[:2] {
		if s := instanceState(t, b, a); !s.Healthy {
			t.Fatalf("live instance unhealthy: %+v", s)
		}
	}
	sink.waitFor(t, "instance failing", "instance="+dead.addr, "peer=billing")
	ms := collect(t, reader)
	if v := sumPoint(ms, "durable.transport.instance.sends", "durable.peer", "billing", "durable.instance", dead.addr, "durable.outcome", "failed"); v < 1 {
		t.Fatalf("failed sends of the dead instance: %d", v)
	}
	var ok int64
	for _, a := range addrs[:2] {
		ok += sumPoint(ms, "durable.transport.instance.sends", "durable.instance", a, "durable.outcome", "ok")
	}
	if ok != 2+n {
		t.Fatalf("ok sends of the live instances: %d, want %d", ok, 2+n)
	}
	if v, found := gaugePoint(ms, "durable.transport.instance.healthy", "durable.instance", dead.addr); !found || v != 0 {
		t.Fatalf("healthy gauge of the dead instance: %d (found %v), want 0", v, found)
	}
	if v, found := gaugePoint(ms, "durable.transport.instance.healthy", "durable.instance", addrs[0]); !found || v != 1 {
		t.Fatalf("healthy gauge of a live instance: %d (found %v), want 1", v, found)
	}

	// The server comes back on the same port: the probe finds it, and it takes its turn again.
	ln, err := net.Listen("tcp", dead.addr)
	if err != nil {
		t.Fatal(err)
	}
	back := &gatedServer{idx: 2}
	back.testServer = serveOn(t, ln, back.handler(), ServerConfig{})
	waitUntil(t, "the restarted instance to be healthy", func() bool { return instanceState(t, b, dead.addr).Healthy })
	sink.waitFor(t, "instance answers again", "instance="+dead.addr)
	for i := range 3 {
		if _, err := b.Send(ctx, oneBatch("again-"+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if got := back.got(); len(got) != 1 {
		t.Fatalf("restarted instance got %v of 3 batches sent in turn, want 1", got)
	}
}

// TestBalancerSlowInstance: while one instance's Handler hangs, the batches sent meanwhile are
// acknowledged by the others, and an instance slow for SlowAfter is avoided even when it has
// the fewest batches in flight.
func TestBalancerSlowInstance(t *testing.T) {
	t.Parallel()
	srvs, arrived, addrs := startGated(t, 3)
	b := newTestBalancer(t, addrs, ClientConfig{}, BalancerConfig{SlowAfter: time.Millisecond})
	ctx := testCtx(t)
	slow := srvs[0]
	slow.hold.Store(true)
	// Send in turn until a batch hangs on the slow instance (at most 3 sends).
	var hung <-chan error
	for i := 0; hung == nil; i++ {
		if i == 3 {
			t.Fatal("3 batches sent in turn, none to the slow instance")
		}
		done := sendAsync(t, b, "probe-"+strconv.Itoa(i))
		select {
		case a := <-arrived:
			if a.srv != 0 {
				t.Fatalf("arrival at server %d, which does not hold", a.srv)
			}
			hung = done
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	waitUntil(t, "the instance to be slow", func() bool { return instanceState(t, b, slow.addr).Slow })

	// Make the others look busier than the slow one: least in flight alone would pick it.
	insts := b.current()
	for _, in := range insts[1:] {
		in.inflight.Add(5)
	}
	const n = 10
	for i := range n {
		if _, err := b.Send(ctx, oneBatch("b-"+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	for _, in := range insts[1:] {
		in.inflight.Add(-5)
	}
	if k := len(srvs[1].got()) + len(srvs[2].got()); k < n {
		t.Fatalf("the other instances acknowledged %d batches, want at least %d", k, n)
	}
	select {
	case err := <-hung:
		t.Fatalf("the hung batch returned (%v) before its Handler was released", err)
	case a := <-arrived:
		t.Fatalf("a batch (%s) went to the slow instance", a.id)
	default:
	}
	if s := instanceState(t, b, slow.addr); !s.Healthy || s.InFlight != 1 {
		t.Fatalf("slow instance %+v, want healthy with 1 in flight", s)
	}
	slow.release <- struct{}{}
	if err := recv(t, hung, "the hung batch's ACK"); err != nil {
		t.Fatal(err)
	}
	if s := instanceState(t, b, slow.addr); s.Slow || s.InFlight != 0 {
		t.Fatalf("instance after its batch was answered: %+v", s)
	}
}

// listenSamePort listens on the same free port of each of ips.
func listenSamePort(t *testing.T, ips ...string) (int, []net.Listener) {
	t.Helper()
	for range 20 {
		first, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
		if err != nil {
			t.Skipf("cannot listen on %s: %v", ips[0], err)
		}
		port := first.Addr().(*net.TCPAddr).Port
		lns := []net.Listener{first}
		for _, ip := range ips[1:] {
			ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		if len(lns) == len(ips) {
			return port, lns
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	t.Fatal("no port free on every address")
	return 0, nil
}

// fakeDNS is a Lookup whose answer the test sets.
type fakeDNS struct {
	mu    sync.Mutex
	ips   []netip.Addr
	err   error
	calls int
}

func (d *fakeDNS) set(err error, ips ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.err = err
	d.ips = nil
	for _, s := range ips {
		d.ips = append(d.ips, netip.MustParseAddr(s))
	}
}

func (d *fakeDNS) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls++
	if host != "billing.test" {
		return nil, fmt.Errorf("lookup %s: no such host", host)
	}
	return slices.Clone(d.ips), d.err
}

func (d *fakeDNS) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls
}

func addrsOf(b *Balancer) []string {
	var out []string
	for _, s := range b.Instances() {
		out = append(out, s.Addr)
	}
	return out
}

// TestBalancerDNS: a name's instances follow its lookups (2, then 3, then 1 addresses); an
// instance that leaves has its Client closed after its batch in flight got its ACK; a failed
// or empty lookup keeps the instances.
func TestBalancerDNS(t *testing.T) {
	t.Parallel()
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	port, lns := listenSamePort(t, ips...)
	arrived := make(chan arrival, 16)
	srvs := make([]*gatedServer, len(ips))
	addr := func(i int) string { return net.JoinHostPort(ips[i], strconv.Itoa(port)) }
	for i, ln := range lns {
		srvs[i] = &gatedServer{idx: i, arrived: arrived, release: make(chan struct{})}
		srvs[i].testServer = serveOn(t, ln, srvs[i].handler(), ServerConfig{})
	}
	dns := &fakeDNS{}
	dns.set(nil, ips[1], ips[0]) // unsorted on purpose
	log, sink := newLog(t)
	b := newTestBalancer(t, []string{"billing.test:" + strconv.Itoa(port)}, ClientConfig{},
		BalancerConfig{Lookup: dns.lookup, ResolveInterval: 5 * time.Millisecond, Logger: log})
	if got := b.Instances(); len(got) != 0 {
		t.Fatalf("instances before the first Send: %+v", got)
	}
	ctx := testCtx(t)
	sendN := func(prefix string, n int) {
		t.Helper()
		for i := range n {
			if _, err := b.Send(ctx, oneBatch(prefix+strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	sendN("two-", 2)
	if got, want := addrsOf(b), []string{addr(0), addr(1)}; !slices.Equal(got, want) {
		t.Fatalf("instances %v, want %v", got, want)
	}
	if s := b.Instances()[0]; s.From != "billing.test:"+strconv.Itoa(port) {
		t.Fatalf("From %q", s.From)
	}

	dns.set(nil, ips...)
	waitUntil(t, "3 instances", func() bool { return len(b.Instances()) == 3 })
	sendN("three-", 3)
	for i, g := range srvs {
		if len(g.got()) == 0 {
			t.Fatalf("server %d got nothing", i)
		}
	}

	// Hold a batch on the instance that is about to leave.
	srvs[2].hold.Store(true)
	var held <-chan error
	for i := 0; held == nil; i++ {
		if i == 3 {
			t.Fatal("3 batches sent in turn, none held")
		}
		done := sendAsync(t, b, "hold-"+strconv.Itoa(i))
		select {
		case <-arrived:
			held = done
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	leaving := map[string]*instance{}
	for _, in := range b.current() {
		leaving[in.addr] = in
	}
	dns.set(nil, ips[0])
	waitUntil(t, "1 instance", func() bool { return slices.Equal(addrsOf(b), []string{addr(0)}) })
	sink.waitFor(t, "instance removed", "instance="+addr(2))
	srvs[2].release <- struct{}{}
	if err := recv(t, held, "the ACK of the batch held by the instance that left"); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 2} {
		c := leaving[addr(i)].client
		waitUntil(t, "the client of a removed instance to close", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.closed && len(c.conns) == 0
		})
	}
	before := len(srvs[0].got())
	sendN("one-", 3)
	if got := len(srvs[0].got()) - before; got != 3 {
		t.Fatalf("the remaining instance got %d of 3 batches", got)
	}

	// A failed lookup, then an empty answer: the instance stays.
	dns.set(errors.New("SERVFAIL"))
	calls := dns.count()
	waitUntil(t, "2 more lookups", func() bool { return dns.count() >= calls+2 })
	sink.waitFor(t, "lookup failed", "SERVFAIL")
	dns.set(nil)
	calls = dns.count()
	waitUntil(t, "2 more lookups", func() bool { return dns.count() >= calls+2 })
	if got := addrsOf(b); !slices.Equal(got, []string{addr(0)}) {
		t.Fatalf("instances after failed lookups: %v", got)
	}
	sendN("kept-", 2)
	dns.set(nil, ips[1])
	waitUntil(t, "the instance of the new answer", func() bool { return slices.Equal(addrsOf(b), []string{addr(1)}) })
	sink.waitFor(t, "lookup succeeds again")
	sendN("new-", 2)
}

// TestBalancerNoAddress: a name that never resolves makes Send fail with a retryable
// ErrUnavailable; once it resolves, Sends go through.
func TestBalancerNoAddress(t *testing.T) {
	t.Parallel()
	srv := startServer(t, acceptAll(), ServerConfig{})
	host, port, _ := net.SplitHostPort(srv.addr)
	dns := &fakeDNS{}
	dns.set(errors.New("NXDOMAIN"))
	b := newTestBalancer(t, []string{"billing.test:" + port}, ClientConfig{},
		BalancerConfig{Lookup: dns.lookup, ResolveInterval: 5 * time.Millisecond})
	_, err := b.Send(testCtx(t), oneBatch("a"))
	if !errors.Is(err, transport.ErrUnavailable) || !transport.IsRetryable(err) {
		t.Fatalf("Send with no address: %v", err)
	}
	dns.set(nil, host)
	waitUntil(t, "the instance", func() bool { return len(b.Instances()) == 1 })
	if _, err := b.Send(testCtx(t), oneBatch("b")); err != nil {
		t.Fatal(err)
	}
}

// TestBalancerTLSName: an instance found through a name is verified against that name.
func TestBalancerTLSName(t *testing.T) {
	t.Parallel()
	ca := newCA(t, "durable test CA")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		Subject:      pkix.Name{CommonName: "billing"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"billing.test"}, // no IP address
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, acceptAll(), ServerConfig{Secret: testSecret,
		TLS: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}})
	host, port, _ := net.SplitHostPort(srv.addr)
	dns := &fakeDNS{}
	dns.set(nil, host)
	cc := ClientConfig{TLS: &tls.Config{RootCAs: ca.pool}}
	byName := newTestBalancer(t, []string{"billing.test:" + port}, cc, BalancerConfig{Lookup: dns.lookup})
	if _, err := byName.Send(testCtx(t), oneBatch("a")); err != nil {
		t.Fatalf("Send through the name: %v", err)
	}
	if cc.TLS.ServerName != "" {
		t.Fatal("the caller's tls.Config was changed")
	}
	// The same server by its IP address: the certificate does not name it.
	cc.BreakerThreshold = -1
	byIP := newTestBalancer(t, []string{srv.addr}, cc, BalancerConfig{})
	if _, err := byIP.Send(testCtx(t), oneBatch("b")); !errors.Is(err, transport.ErrAuth) {
		t.Fatalf("Send by IP address: %v, want ErrAuth", err)
	}
}

// TestBalancerNoFailover: a permanent NACK and a retryable NACK are returned from the first
// instance, without trying another, and leave it healthy.
func TestBalancerNoFailover(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		calls.Add(1)
		if b.Envelopes[0].Topic == "bad" {
			return transport.Result{}, transport.Permanent(errors.New("no handler for topic"))
		}
		return transport.Result{}, errors.New("database unavailable")
	})
	var addrs []string
	for range 3 {
		addrs = append(addrs, startServer(t, h, ServerConfig{}).addr)
	}
	b := newTestBalancer(t, addrs, ClientConfig{}, BalancerConfig{})
	_, err := b.Send(testCtx(t), &transport.Batch{Envelopes: []transport.Envelope{{ID: "1", Topic: "bad"}}})
	if !errors.Is(err, transport.ErrRejected) || transport.IsRetryable(err) {
		t.Fatalf("permanent NACK: %v", err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler called %d times for a permanent NACK, want 1", n)
	}
	_, err = b.Send(testCtx(t), &transport.Batch{Envelopes: []transport.Envelope{{ID: "2", Topic: "t"}}})
	if !errors.Is(err, transport.ErrNack) || errors.Is(err, transport.ErrRejected) || !transport.IsRetryable(err) {
		t.Fatalf("retryable NACK: %v", err)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("handler called %d times for two NACKed batches, want 2", n)
	}
	for _, s := range b.Instances() {
		if !s.Healthy {
			t.Fatalf("instance unhealthy after a NACK: %+v", s)
		}
	}
}

// TestNewBalancerErrors: the address list is checked.
func TestNewBalancerErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		addrs []string
		cc    *ClientConfig
		bc    *BalancerConfig
	}{
		{"no addresses", nil, nil, nil},
		{"missing port", []string{"127.0.0.1:1", "billing"}, nil, nil},
		{"empty host", []string{":7400"}, nil, nil},
		{"empty port", []string{"billing:"}, nil, nil},
		{"duplicate", []string{"a:1", "b:1", "a:1"}, nil, nil},
		{"bad client config", []string{"a:1"}, &ClientConfig{MaxInFlight: -1}, nil},
		{"negative interval", []string{"a:1"}, nil, &BalancerConfig{ResolveInterval: -time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if b, err := NewBalancer(tc.addrs, tc.cc, tc.bc); err == nil {
				b.Close(context.Background())
				t.Fatal("NewBalancer succeeded")
			}
		})
	}
}

// TestBalancerClose: Close waits for the answer of a batch in flight, is idempotent, and
// makes later Sends fail with ErrClosed.
func TestBalancerClose(t *testing.T) {
	t.Parallel()
	srvs, arrived, addrs := startGated(t, 2)
	b := newTestBalancer(t, addrs, ClientConfig{}, BalancerConfig{})
	for _, g := range srvs {
		g.hold.Store(true)
	}
	held := sendAsync(t, b, "held")
	a := recv(t, arrived, "the held batch")
	closed := make(chan error, 1)
	go func() { closed <- b.Close(testCtx(t)) }()
	waitUntil(t, "Close to begin", b.isClosed)
	if _, err := b.Send(testCtx(t), oneBatch("late")); !errors.Is(err, transport.ErrClosed) || !transport.IsRetryable(err) {
		t.Fatalf("Send during Close: %v", err)
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) before the batch in flight was answered", err)
	default:
	}
	srvs[a.srv].release <- struct{}{}
	if err := recv(t, held, "the held batch's ACK"); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, closed, "Close"); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Send(testCtx(t), oneBatch("after")); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
	if got := b.Instances(); len(got) != 0 {
		t.Fatalf("instances after Close: %+v", got)
	}
}

// collect returns reader's metrics by name.
func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

// hasAttrs reports whether set has every pair of attrs (k1, v1, k2, v2, ...).
func hasAttrs(set attribute.Set, attrs []string) bool {
	for i := 0; i+1 < len(attrs); i += 2 {
		v, ok := set.Value(attribute.Key(attrs[i]))
		if !ok || v.AsString() != attrs[i+1] {
			return false
		}
	}
	return true
}

// sumPoint returns the total of counter name over the points with attrs.
func sumPoint(ms map[string]metricdata.Aggregation, name string, attrs ...string) int64 {
	s, _ := ms[name].(metricdata.Sum[int64])
	var total int64
	for _, dp := range s.DataPoints {
		if hasAttrs(dp.Attributes, attrs) {
			total += dp.Value
		}
	}
	return total
}

// gaugePoint returns the value of gauge name at the point with attrs.
func gaugePoint(ms map[string]metricdata.Aggregation, name string, attrs ...string) (int64, bool) {
	g, _ := ms[name].(metricdata.Gauge[int64])
	for _, dp := range g.DataPoints {
		if hasAttrs(dp.Attributes, attrs) {
			return dp.Value, true
		}
	}
	return 0, false
}
