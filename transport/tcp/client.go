package tcp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/durable-go/durable/transport"
)

// ClientConfig configures a [Client]. The zero value of every field is a documented default,
// and a nil *ClientConfig means the zero value.
type ClientConfig struct {
	// NodeID names this node in HELLO; the server hands it to its Handler as Batch.Source.
	// Default: the host name.
	NodeID string
	// Secret is the shared secret for HMAC authentication; it must equal the server's. The
	// client also checks that the server proves the same secret in WELCOME.
	Secret []byte
	// Token is an opaque credential sent in HELLO for a server-side Verifier. Send it only
	// over TLS. Secret and Token are mutually exclusive.
	Token []byte
	// TLS, when set, makes the connection TLS 1.3 (older versions are refused). Set
	// Certificates for mutual TLS and RootCAs to trust the server's CA. An empty ServerName is
	// taken from the address.
	TLS *tls.Config
	// Logger receives connection and circuit events. Default: slog.Default().
	Logger *slog.Logger
	// Dial opens the TCP connection. Default: a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// DialTimeout bounds the TCP connect. Default DefaultDialTimeout (5s).
	DialTimeout time.Duration
	// HandshakeTimeout bounds the TLS handshake plus CHALLENGE/HELLO/WELCOME. Default
	// DefaultHandshakeTimeout (10s).
	HandshakeTimeout time.Duration
	// WriteTimeout bounds each frame written. Default DefaultWriteTimeout (10s).
	WriteTimeout time.Duration
	// ReadTimeout is the longest silence tolerated from the server on an open connection
	// before it is considered dead; keep it above PingInterval. Default
	// DefaultReadTimeout (45s).
	ReadTimeout time.Duration
	// PingInterval is how often an open connection sends PING to keep it alive and detect a
	// dead peer. Default DefaultPingInterval (15s); negative disables pings, in which case the
	// server closes a connection that stays silent for its IdleTimeout, even with a batch in
	// flight.
	PingInterval time.Duration
	// AckTimeout bounds the wait for the ACK of one batch. Default DefaultAckTimeout (30s).
	AckTimeout time.Duration

	// MaxInFlight bounds the batches sent but not yet acknowledged on the connection; the
	// server's limit from WELCOME applies too. Further Sends wait. Default
	// DefaultClientMaxInFlight (16).
	MaxInFlight int
	// MaxFrameSize is the largest frame this client sends or accepts; the server's limit from
	// WELCOME applies too. Default DefaultMaxFrameSize (16 MiB).
	MaxFrameSize int

	// BackoffMin and BackoffMax bound the exponential backoff, with jitter, between
	// reconnection attempts and circuit probes. Defaults DefaultBackoffMin (100ms) and
	// DefaultBackoffMax (10s).
	BackoffMin, BackoffMax time.Duration
	// BreakerThreshold is the number of consecutive failures (failed connects, connections lost
	// with batches in flight, ack timeouts) after which the circuit opens: Send then fails at
	// once with transport.ErrCircuitOpen while a background probe reconnects and PINGs with
	// backoff; the first successful PING closes the circuit. Default DefaultBreakerThreshold (5);
	// negative disables it.
	BreakerThreshold int
}

// Client is a transport.Sender over one persistent TCP connection to a Server. It connects
// lazily on first use, reconnects after failures, and lets several batches be in flight at
// once. Its methods are safe for concurrent use.
type Client struct {
	addr string
	cfg  ClientConfig
	tls  *tls.Config
	log  *slog.Logger

	ctx    context.Context // canceled by Close: stops dials, probes and pingers
	cancel context.CancelFunc
	wg     sync.WaitGroup // dial, probe, reader and pinger goroutines

	unhealthy atomic.Bool // failures > 0 or circuit open: ACKs take the slow path

	mu           sync.Mutex
	closed       bool
	active       int           // Send and Ping calls in progress
	idle         chan struct{} // closed when active reaches 0 after Close began
	cur          *clientConn   // connection for new batches
	conns        map[*clientConn]struct{}
	dial         *dialCall
	dialFailures int
	nextDial     time.Time
	failures     int   // consecutive failures, for the circuit
	lastErr      error // most recent failure
	open         bool  // circuit open
	probing      bool
}

var _ transport.Sender = (*Client)(nil)

type dialCall struct {
	done chan struct{}
	err  error
}

// Dial returns a Client for the server at addr after connecting to it once, so that an
// unreachable server or a refused handshake is reported at once. cfg is as for [NewClient].
func Dial(ctx context.Context, addr string, cfg *ClientConfig) (*Client, error) {
	c, err := NewClient(addr, cfg)
	if err != nil {
		return nil, err
	}
	if err := c.Ping(ctx); err != nil {
		c.Close(context.Background())
		return nil, err
	}
	return c, nil
}

// Defaults of the ClientConfig fields left zero.
const (
	DefaultDialTimeout       = 5 * time.Second        // ClientConfig.DialTimeout
	DefaultHandshakeTimeout  = 10 * time.Second       // ClientConfig.HandshakeTimeout
	DefaultReadTimeout       = 45 * time.Second       // ClientConfig.ReadTimeout
	DefaultPingInterval      = 15 * time.Second       // ClientConfig.PingInterval
	DefaultAckTimeout        = 30 * time.Second       // ClientConfig.AckTimeout
	DefaultClientMaxInFlight = 16                     // ClientConfig.MaxInFlight
	DefaultBackoffMin        = 100 * time.Millisecond // ClientConfig.BackoffMin
	DefaultBackoffMax        = 10 * time.Second       // ClientConfig.BackoffMax
	DefaultBreakerThreshold  = 5                      // ClientConfig.BreakerThreshold
)

// DefaultWriteTimeout is the default of ClientConfig.WriteTimeout and ServerConfig.WriteTimeout.
const DefaultWriteTimeout = 10 * time.Second

// NewClient returns a Client for the server at addr ("host:port"), configured by cfg (nil:
// every default). It validates cfg and returns an error for an invalid one; it does not keep
// or change *cfg. It does not connect; the first Send or Ping does.
func NewClient(addr string, cfg *ClientConfig) (*Client, error) {
	if cfg == nil {
		cfg = new(ClientConfig)
	}
	return buildClient(addr, *cfg)
}

func buildClient(addr string, cfg ClientConfig) (*Client, error) {
	cfg.NodeID = orDefault(cfg.NodeID, hostname())
	cfg.Logger = orDefault(cfg.Logger, slog.Default())
	cfg.DialTimeout = orDefault(cfg.DialTimeout, DefaultDialTimeout)
	cfg.HandshakeTimeout = orDefault(cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	cfg.WriteTimeout = orDefault(cfg.WriteTimeout, DefaultWriteTimeout)
	cfg.ReadTimeout = orDefault(cfg.ReadTimeout, DefaultReadTimeout)
	cfg.PingInterval = orDefault(cfg.PingInterval, DefaultPingInterval)
	cfg.AckTimeout = orDefault(cfg.AckTimeout, DefaultAckTimeout)
	cfg.MaxInFlight = orDefault(cfg.MaxInFlight, DefaultClientMaxInFlight)
	cfg.MaxFrameSize = orDefault(cfg.MaxFrameSize, DefaultMaxFrameSize)
	cfg.BackoffMin = orDefault(cfg.BackoffMin, DefaultBackoffMin)
	cfg.BackoffMax = orDefault(cfg.BackoffMax, DefaultBackoffMax)
	cfg.BreakerThreshold = orDefault(cfg.BreakerThreshold, DefaultBreakerThreshold)
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	switch {
	case addr == "":
		return nil, errors.New("tcp: NewClient: empty address")
	case len(cfg.NodeID) > maxNodeIDLen:
		return nil, fmt.Errorf("tcp: NewClient: NodeID longer than %d bytes", maxNodeIDLen)
	case len(cfg.Secret) > 0 && len(cfg.Token) > 0:
		return nil, errors.New("tcp: NewClient: Secret and Token are mutually exclusive")
	case len(cfg.Token) > maxCredLen:
		return nil, fmt.Errorf("tcp: NewClient: Token longer than %d bytes", maxCredLen)
	case cfg.MaxInFlight < 1:
		return nil, fmt.Errorf("tcp: NewClient: MaxInFlight %d < 1", cfg.MaxInFlight)
	case cfg.MaxFrameSize < MinMaxFrameSize || uint64(cfg.MaxFrameSize) > math.MaxUint32:
		return nil, fmt.Errorf("tcp: NewClient: MaxFrameSize %d outside %d..%d", cfg.MaxFrameSize, MinMaxFrameSize, uint32(math.MaxUint32))
	case cfg.BackoffMin < 0 || cfg.BackoffMax < cfg.BackoffMin:
		return nil, errors.New("tcp: NewClient: need 0 <= BackoffMin <= BackoffMax")
	}
	c := &Client{
		addr:  addr,
		cfg:   cfg,
		log:   cfg.Logger,
		conns: make(map[*clientConn]struct{}),
	}
	if cfg.TLS != nil {
		c.tls = tls13(cfg.TLS)
		if c.tls.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, fmt.Errorf("tcp: NewClient: %w", err)
			}
			c.tls.ServerName = host
		}
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// Addr returns the server address the client sends to.
func (c *Client) Addr() string { return c.addr }

var bufPool = sync.Pool{New: func() any { return new([]byte) }}

// Send encodes b, sends it and waits for the server's answer. It returns nil only after an
// ACK; the Result then holds the per-envelope outcomes. Errors are *transport.SendError values
// that match the transport sentinels (ErrNack, ErrRejected, ErrAckTimeout, ErrDisconnected,
// ErrCircuitOpen, ErrClosed, ...); transport.IsRetryable tells whether sending again may help.
// An empty batch is not sent. b.Source is ignored.
func (c *Client) Send(ctx context.Context, b *transport.Batch) (transport.Result, error) {
	if len(b.Envelopes) == 0 {
		return transport.Result{}, nil
	}
	if ctx.Err() != nil {
		// Put nothing on the wire for a caller that already gave up: the
		// selects below would pick between a ready slot and ctx.Done at
		// random.
		return transport.Result{}, ctxErr(ctx)
	}
	if !c.enter() {
		return transport.Result{}, errClosed
	}
	defer c.leave()
	bp := bufPool.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 1<<20 {
			bufPool.Put(bp)
		}
	}()
	frame, err := appendBatch((*bp)[:0], 0, b.Envelopes, c.cfg.MaxFrameSize)
	*bp = frame
	if err != nil {
		return transport.Result{}, err
	}
	for {
		cc, err := c.conn(ctx, false)
		if err != nil {
			return transport.Result{}, err
		}
		if len(frame)-4 > cc.maxFrame {
			return transport.Result{}, tooLarge("batch encodes to %d bytes, more than the server's frame maximum of %d", len(frame)-4, cc.maxFrame)
		}
		res, retry, err := cc.send(ctx, frame, len(b.Envelopes))
		if retry {
			continue // the connection was already dead before anything was written
		}
		return res, err
	}
}

// Ping checks that the server answers: it connects if needed, sends PING and waits for PONG.
// Ping ignores an open circuit, and a successful Ping closes it.
func (c *Client) Ping(ctx context.Context) error {
	if !c.enter() {
		return errClosed
	}
	defer c.leave()
	return c.ping(ctx)
}

// ping is Ping without the accounting that Close waits for, for the circuit probe.
func (c *Client) ping(ctx context.Context) error {
	for {
		cc, err := c.conn(ctx, true)
		if err != nil {
			return err
		}
		retry, err := cc.ping(ctx)
		if retry {
			continue
		}
		return err
	}
}

// Close stops the client. New Sends, and Sends that have not yet written their batch, fail with
// transport.ErrClosed (retryable); Close waits until the batches already written got their
// answers, or until ctx ends, in which case they fail with ErrClosed too (their batches were not
// acknowledged). It then closes the connection and returns after every goroutine of the client
// has ended. Close is idempotent.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.idle = make(chan struct{})
	if c.active == 0 {
		close(c.idle)
	}
	idle := c.idle
	c.mu.Unlock()
	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		err = ctx.Err()
	}
	c.cancel()
	c.mu.Lock()
	conns := make([]*clientConn, 0, len(c.conns))
	for cc := range c.conns {
		conns = append(conns, cc)
	}
	c.mu.Unlock()
	for _, cc := range conns {
		cc.fail(errClosed)
	}
	c.wg.Wait()
	return err
}

var errClosed = &transport.SendError{Kind: transport.ErrClosed, Retry: true}

func (c *Client) enter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.active++
	return true
}

func (c *Client) leave() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.active--
	if c.closed && c.active == 0 {
		select {
		case <-c.idle:
		default:
			close(c.idle)
		}
	}
}

// conn returns the connection for new batches, connecting if needed. probe lets Ping through
// an open circuit and skips the reconnection backoff.
func (c *Client) conn(ctx context.Context, probe bool) (*clientConn, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, errClosed
		}
		if c.open && !probe {
			err := &transport.SendError{Kind: transport.ErrCircuitOpen, Err: c.lastErr, Retry: true}
			c.mu.Unlock()
			return nil, err
		}
		if cc := c.cur; cc != nil {
			c.mu.Unlock()
			return cc, nil
		}
		d := c.dial
		if d == nil {
			d = &dialCall{done: make(chan struct{})}
			c.dial = d
			var wait time.Duration
			if !probe {
				wait = time.Until(c.nextDial)
			}
			c.wg.Add(1)
			go c.runDial(d, wait)
		}
		c.mu.Unlock()
		select {
		case <-d.done:
			if d.err != nil {
				return nil, d.err
			}
		case <-ctx.Done():
			return nil, &transport.SendError{Kind: transport.ErrUnavailable, Err: fmt.Errorf("waiting for a connection to %s: %w", c.addr, ctx.Err()), Retry: true}
		}
	}
}

func (c *Client) runDial(d *dialCall, wait time.Duration) {
	defer c.wg.Done()
	var cc *clientConn
	var err error
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
		}
	}
	if c.ctx.Err() != nil {
		err = errClosed
	} else {
		cc, err = c.connect(c.ctx)
	}
	c.mu.Lock()
	c.dial = nil
	switch {
	case err == nil && c.closed:
		err = errClosed
	case err == nil:
		c.dialFailures = 0
		c.cur = cc
		c.conns[cc] = struct{}{}
		c.wg.Add(1)
		go cc.readLoop()
		if c.cfg.PingInterval > 0 {
			c.wg.Add(1)
			go cc.pingLoop()
		}
	case err != errClosed:
		c.dialFailures++
		c.nextDial = time.Now().Add(c.backoff(c.dialFailures))
		c.failLocked(err)
	}
	d.err = err
	c.mu.Unlock()
	if err != nil && cc != nil {
		cc.nc.Close()
	}
	close(d.done)
}

// backoff returns the delay before attempt n (1-based): exponential from BackoffMin up to
// BackoffMax, with "equal jitter" (half fixed, half random) so that many clients do not
// reconnect in step.
func (c *Client) backoff(n int) time.Duration {
	d := c.cfg.BackoffMax
	if n < 32 {
		if e := c.cfg.BackoffMin << (n - 1); e > 0 && e < d {
			d = e
		}
	}
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// failLocked records a failure for the circuit breaker.
func (c *Client) failLocked(err error) {
	c.failures++
	c.lastErr = err
	c.unhealthy.Store(true)
	if c.cfg.BreakerThreshold > 0 && c.failures >= c.cfg.BreakerThreshold && !c.open && !c.closed {
		c.open = true
		c.log.Warn("tcp: circuit open: sends fail fast until a PING succeeds", "addr", c.addr, "failures", c.failures, "err", err)
		if !c.probing {
			c.probing = true
			c.wg.Add(1)
			go c.probe()
		}
	}
}

// succeeded records that the server answered; it closes an open circuit.
func (c *Client) succeeded() {
	if !c.unhealthy.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failures = 0
	c.lastErr = nil
	c.unhealthy.Store(false)
	if c.open {
		c.open = false
		c.log.Info("tcp: circuit closed: server answered", "addr", c.addr)
	}
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failLocked(err)
}

// probe PINGs the server with backoff while the circuit is open. It ends
// only under c.mu, having seen the circuit closed (or the client closing),
// and clears c.probing there: a failure that reopens the circuit after a
// successful PING either finds the probe still running, which then goes on,
// or starts a new one; the circuit never stays open with no probe.
func (c *Client) probe() {
	defer c.wg.Done()
	done := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.open && !c.closed && c.ctx.Err() == nil {
			return false
		}
		c.probing = false
		return true
	}
	for attempt := 1; ; attempt++ {
		t := time.NewTimer(c.backoff(attempt))
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
		}
		if done() {
			return
		}
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.DialTimeout+c.cfg.HandshakeTimeout+c.cfg.ReadTimeout)
		err := c.ping(ctx)
		cancel()
		if err == nil {
			if done() {
				return
			}
			attempt = 0 // the circuit reopened after the PING: probe again, from the shortest delay
			continue
		}
		c.log.Debug("tcp: circuit probe failed", "addr", c.addr, "attempt", attempt, "err", err)
	}
}

// connect dials, runs the TLS handshake and the CHALLENGE/HELLO/WELCOME exchange.
func (c *Client) connect(ctx context.Context) (*clientConn, error) {
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	raw, err := c.cfg.Dial(dctx, "tcp", c.addr)
	cancel()
	if err != nil {
		return nil, &transport.SendError{Kind: transport.ErrUnavailable, Err: fmt.Errorf("dial %s: %w", c.addr, err), Retry: true}
	}
	cc, err := c.handshake(ctx, raw)
	if err != nil {
		raw.Close()
		c.log.Warn("tcp: handshake failed", "addr", c.addr, "err", err)
		return nil, err
	}
	c.log.Debug("tcp: connected", "addr", c.addr, "server", cc.serverID)
	return cc, nil
}

func (c *Client) handshake(ctx context.Context, raw net.Conn) (*clientConn, error) {
	deadline := time.Now().Add(c.cfg.HandshakeTimeout)
	raw.SetDeadline(deadline)
	cc := &clientConn{c: c, raw: raw, nc: raw}
	if c.tls != nil {
		tc := tls.Client(raw, c.tls)
		hctx, cancel := context.WithDeadline(ctx, deadline)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			return nil, c.handshakeErr("TLS handshake", err)
		}
		cc.nc = tc
	}
	cc.dr.c = cc.nc
	cc.br = bufio.NewReaderSize(&cc.dr, readBufferSize)
	var hdr [frameHeaderLen]byte
	var scratch [256]byte

	// CHALLENGE
	t, body, err := readSmallFrame(cc.br, &hdr, scratch[:])
	if err != nil {
		return nil, c.handshakeErr("reading CHALLENGE", err)
	}
	if t == frameError {
		return nil, refusedErr(body)
	}
	if t != frameChallenge {
		return nil, &transport.SendError{Kind: transport.ErrProtocol, Err: fmt.Errorf("%s: expected CHALLENGE, got %v", c.addr, t), Retry: true}
	}
	ch, err := decodeChallenge(body)
	if err != nil {
		return nil, &transport.SendError{Kind: transport.ErrProtocol, Err: fmt.Errorf("%s: %w", c.addr, err), Retry: true}
	}
	version := min(uint8(maxVersion), ch.maxVersion)
	if version < max(uint8(minVersion), ch.minVersion) || ch.minVersion > ch.maxVersion {
		msg := fmt.Sprintf("no common protocol version: server speaks %d..%d, this client %d..%d", ch.minVersion, ch.maxVersion, minVersion, maxVersion)
		raw.SetWriteDeadline(time.Now().Add(time.Second))
		cc.nc.Write(appendError(nil, codeVersion, msg))
		return nil, &transport.SendError{Kind: transport.ErrVersion, Err: fmt.Errorf("%s: %s", c.addr, msg), Retry: true}
	}

	// HELLO
	h := helloMsg{
		version:     version,
		timeMillis:  time.Now().UnixMilli(),
		serverNonce: ch.nonce,
		clientNonce: newNonce(),
		nodeID:      c.cfg.NodeID,
	}
	switch {
	case len(c.cfg.Secret) > 0:
		h.auth = authHMAC
		h.credential = helloMAC(c.cfg.Secret, h.version, h.timeMillis, &h.serverNonce, &h.clientNonce, h.nodeID)
	case len(c.cfg.Token) > 0:
		h.auth = authToken
		h.credential = c.cfg.Token
	}
	frame, err := appendHello(scratch[:0], &h)
	if err != nil {
		return nil, &transport.SendError{Kind: transport.ErrInvalid, Err: err}
	}
	if _, err := cc.nc.Write(frame); err != nil {
		return nil, c.handshakeErr("writing HELLO", err)
	}

	// WELCOME or ERROR
	t, body, err = readSmallFrame(cc.br, &hdr, scratch[:])
	if err != nil {
		return nil, c.handshakeErr("reading WELCOME", err)
	}
	if t == frameError {
		return nil, refusedErr(body)
	}
	if t != frameWelcome {
		return nil, &transport.SendError{Kind: transport.ErrProtocol, Err: fmt.Errorf("%s: expected WELCOME, got %v", c.addr, t), Retry: true}
	}
	w, err := decodeWelcome(body)
	if err != nil {
		return nil, &transport.SendError{Kind: transport.ErrProtocol, Err: fmt.Errorf("%s: %w", c.addr, err), Retry: true}
	}
	if w.version != version {
		return nil, &transport.SendError{Kind: transport.ErrVersion, Err: fmt.Errorf("%s: server chose version %d, the client asked for %d", c.addr, w.version, version), Retry: true}
	}
	if len(c.cfg.Secret) > 0 && !equalMAC(w.proof, welcomeProof(c.cfg.Secret, version, &h.serverNonce, &h.clientNonce, w.nodeID)) {
		return nil, &transport.SendError{Kind: transport.ErrAuth, Err: fmt.Errorf("%s: server did not prove the shared secret", c.addr), Retry: true}
	}
	raw.SetDeadline(time.Time{})
	cc.dr.d = c.cfg.ReadTimeout
	cc.serverID = w.nodeID
	cc.maxFrame = min(c.cfg.MaxFrameSize, int(w.maxFrame))
	cc.sem = make(chan struct{}, min(c.cfg.MaxInFlight, int(w.maxInFlight)))
	cc.pending = make(map[uint64]*call)
	cc.dead = make(chan struct{})
	return cc, nil
}

// readSmallFrame reads one handshake frame into scratch.
func readSmallFrame(br *bufio.Reader, hdr *[frameHeaderLen]byte, scratch []byte) (frameType, []byte, error) {
	t, n, err := readHeader(br, hdr, preAuthMaxFrame)
	if err != nil {
		return 0, nil, err
	}
	body, err := readBody(br, n, scratch)
	return t, body, err
}

// refusedErr turns the ERROR frame a server sent during the handshake into an error.
func refusedErr(body []byte) error {
	m, err := decodeError(body)
	if err != nil {
		return &transport.SendError{Kind: transport.ErrProtocol, Err: fmt.Errorf("malformed ERROR frame: %w", err), Retry: true}
	}
	return serverErr("server refused the connection", m)
}

func serverErr(what string, m errorMsg) error {
	kind := transport.ErrProtocol
	switch m.code {
	case codeAuth:
		kind = transport.ErrAuth
	case codeVersion:
		kind = transport.ErrVersion
	case codeTooLarge:
		kind = transport.ErrTooLarge
	case codeBusy, codeShutdown, codeTimeout, codeInternal:
		kind = transport.ErrUnavailable
	}
	return &transport.SendError{Kind: kind, Err: fmt.Errorf("%s (%s): %s", what, codeName(m.code), m.msg), Retry: true}
}

// handshakeErr classifies a failure before the connection was established.
func (c *Client) handshakeErr(stage string, err error) error {
	var cve *tls.CertificateVerificationError
	var ope *net.OpError
	var rhe tls.RecordHeaderError
	kind := transport.ErrUnavailable
	switch {
	case errors.As(err, &cve):
		kind = transport.ErrAuth
	case errors.As(err, &ope) && ope.Op == "remote error":
		// A TLS alert from the server, typically refusing our certificate.
		kind = transport.ErrAuth
	case errors.As(err, &rhe):
		kind = transport.ErrProtocol
		if t, ok := plainFrameHeader(rhe.RecordHeader); ok {
			err = fmt.Errorf("the server does not speak TLS: it sent a plaintext %v frame (it is configured without TLS)", t)
		}
	case errors.Is(err, io.EOF):
		err = errors.New("server closed the connection")
	default:
		if we, ok := isWire(err); ok {
			kind = transport.ErrProtocol
			err = we
		}
	}
	return &transport.SendError{Kind: kind, Err: fmt.Errorf("%s: %s: %w", c.addr, stage, err), Retry: true}
}

// clientConn is one established connection.
type clientConn struct {
	c        *Client
	raw      net.Conn
	nc       net.Conn // raw, or TLS over it
	dr       deadlineReader
	br       *bufio.Reader
	serverID string
	maxFrame int
	sem      chan struct{} // one slot per batch in flight

	wmu  sync.Mutex
	wbuf [16]byte // PING/PONG frames

	mu       sync.Mutex
	nextID   uint64
	pending  map[uint64]*call // batches and pings awaiting an answer
	draining bool             // GOAWAY received
	err      error            // why the connection ended; set once
	dead     chan struct{}    // closed when the connection ended
}

type call struct {
	done chan struct{}
	ping bool
	// abandoned: the caller stopped waiting; the batch keeps its in-flight slot until the
	// server answers it or the connection ends, since the server still counts it.
	abandoned bool
	n         int // envelopes in the batch
	res       transport.Result
	err       error
}

// send writes a BATCH frame and waits for its answer. retry reports that nothing was written
// because the connection was already dead, so another connection may be tried.
func (cc *clientConn) send(ctx context.Context, frame []byte, n int) (transport.Result, bool, error) {
	select {
	case cc.sem <- struct{}{}:
	case <-cc.dead:
		cc.c.dropConn(cc)
		return transport.Result{}, true, nil
	case <-ctx.Done():
		return transport.Result{}, false, ctxErr(ctx)
	}
	cl := &call{done: make(chan struct{}), n: n}
	id, ok := cc.register(cl)
	if !ok {
		<-cc.sem
		cc.c.dropConn(cc)
		return transport.Result{}, true, nil
	}
	setBatchID(frame, id)
	if err := cc.write(frame); err != nil {
		cc.fail(&transport.SendError{Kind: transport.ErrDisconnected, Err: fmt.Errorf("writing BATCH: %w", err), Retry: true})
	}
	res, err := cc.wait(ctx, id, cl, cc.c.cfg.AckTimeout)
	return res, false, err
}

func (cc *clientConn) ping(ctx context.Context) (bool, error) {
	cl := &call{done: make(chan struct{}), ping: true}
	id, ok := cc.register(cl)
	if !ok {
		cc.c.dropConn(cc)
		return true, nil
	}
	if err := cc.writePing(framePing, id); err != nil {
		cc.fail(&transport.SendError{Kind: transport.ErrDisconnected, Err: fmt.Errorf("writing PING: %w", err), Retry: true})
	}
	_, err := cc.wait(ctx, id, cl, cc.c.cfg.ReadTimeout)
	return false, err
}

func (cc *clientConn) register(cl *call) (uint64, bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.err != nil {
		return 0, false
	}
	cc.nextID++
	cc.pending[cc.nextID] = cl
	return cc.nextID, true
}

func (cc *clientConn) wait(ctx context.Context, id uint64, cl *call, timeout time.Duration) (transport.Result, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-cl.done:
		return cl.res, cl.err
	case <-ctx.Done():
		if cc.forget(id, cl) {
			return transport.Result{}, ctxErr(ctx)
		}
	case <-t.C:
		if cc.forget(id, cl) {
			err := &transport.SendError{Kind: transport.ErrAckTimeout, Err: fmt.Errorf("no answer from %s within %v", cc.c.addr, timeout), Retry: true}
			cc.c.fail(err)
			return transport.Result{}, err
		}
	}
	<-cl.done // the answer is being delivered right now
	return cl.res, cl.err
}

func ctxErr(ctx context.Context) error {
	return &transport.SendError{Kind: transport.ErrDisconnected, Err: fmt.Errorf("gave up waiting for the answer: %w", context.Cause(ctx)), Retry: true}
}

// forget gives up waiting for a call; false means its answer is already being delivered.
// A batch stays pending, abandoned, holding its in-flight slot until the server answers it or
// the connection ends: the server counts it in flight until then, and a client that sent
// another batch in its place would exceed the server's max_in_flight (a protocol error that
// closes the connection and fails every batch on it).
func (cc *clientConn) forget(id uint64, cl *call) bool {
	cc.mu.Lock()
	if cc.pending[id] != cl {
		cc.mu.Unlock()
		return false
	}
	if !cl.ping {
		cl.abandoned = true
		cc.mu.Unlock()
		return true
	}
	delete(cc.pending, id)
	closeNow := cc.draining && len(cc.pending) == 0
	cc.mu.Unlock()
	if closeNow {
		cc.fail(errDrained)
	}
	return true
}

// complete delivers an answer to the call waiting for id. It reports whether one was: false
// also for an abandoned batch, whose slot it frees.
func (cc *clientConn) complete(id uint64, ping bool, res transport.Result, err error) bool {
	cc.mu.Lock()
	cl := cc.pending[id]
	if cl == nil || cl.ping != ping {
		cc.mu.Unlock()
		return false
	}
	delete(cc.pending, id)
	closeNow := cc.draining && len(cc.pending) == 0
	cc.mu.Unlock()
	if !ping {
		<-cc.sem
	}
	if cl.abandoned {
		close(cl.done)
		if closeNow {
			cc.fail(errDrained)
		}
		return false
	}
	if err == nil && len(res.Outcomes) != 0 && len(res.Outcomes) != cl.n {
		res, err = transport.Result{}, &transport.SendError{Kind: transport.ErrProtocol,
			Err: fmt.Errorf("%s: ACK carries %d outcomes for a batch of %d envelopes", cc.c.addr, len(res.Outcomes), cl.n), Retry: true}
	}
	cl.res, cl.err = res, err
	close(cl.done)
	if closeNow {
		cc.fail(errDrained)
	}
	return true
}

var errDrained = &transport.SendError{Kind: transport.ErrDisconnected, Err: errors.New("connection drained after GOAWAY"), Retry: true}

// fail ends the connection: every waiting call gets err, the socket is closed and the client
// stops using it. Only the first call has an effect.
func (cc *clientConn) fail(err error) {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	cc.err = err
	calls := cc.pending
	cc.pending = nil
	batches := 0
	for _, cl := range calls {
		if !cl.ping {
			batches++
		}
	}
	close(cc.dead)
	cc.mu.Unlock()
	cc.raw.Close()
	for _, cl := range calls {
		cl.err = err
		close(cl.done)
	}
	c := cc.c
	c.mu.Lock()
	delete(c.conns, cc)
	if c.cur == cc {
		c.cur = nil
	}
	if batches > 0 && err != errClosed && err != errDrained {
		c.failLocked(err)
	}
	c.mu.Unlock()
	if err != errClosed && err != errDrained {
		c.log.Warn("tcp: connection lost", "addr", c.addr, "in_flight", batches, "err", err)
	}
}

// dropConn stops handing out a connection that is known to be dead.
func (c *Client) dropConn(cc *clientConn) {
	c.mu.Lock()
	if c.cur == cc {
		c.cur = nil
	}
	c.mu.Unlock()
}

func (cc *clientConn) write(frame []byte) error {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	cc.nc.SetWriteDeadline(time.Now().Add(cc.c.cfg.WriteTimeout))
	_, err := cc.nc.Write(frame)
	return err
}

func (cc *clientConn) writePing(t frameType, token uint64) error {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	cc.nc.SetWriteDeadline(time.Now().Add(cc.c.cfg.WriteTimeout))
	_, err := cc.nc.Write(appendPing(cc.wbuf[:0], t, token))
	return err
}

// pingLoop sends a PING every PingInterval so that the server's idle timeout does not fire and
// a dead server is noticed through ReadTimeout.
func (cc *clientConn) pingLoop() {
	defer cc.c.wg.Done()
	t := time.NewTicker(cc.c.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := cc.writePing(framePing, 0); err != nil {
				cc.fail(&transport.SendError{Kind: transport.ErrDisconnected, Err: fmt.Errorf("writing PING: %w", err), Retry: true})
				return
			}
		case <-cc.dead:
			return
		}
	}
}

// readLoop reads the server's frames until the connection ends.
func (cc *clientConn) readLoop() {
	defer cc.c.wg.Done()
	var hdr [frameHeaderLen]byte
	var scratch []byte
	for {
		t, n, err := readHeader(cc.br, &hdr, cc.maxFrame)
		var body []byte
		if err == nil {
			body, err = readBody(cc.br, n, scratch)
			if err == nil && cap(body) > cap(scratch) && cap(body) <= 1<<20 {
				scratch = body[:0]
			}
		}
		if err == nil {
			err = cc.handle(t, body)
		}
		if err != nil {
			cc.readFailed(err)
			return
		}
	}
}

func (cc *clientConn) handle(t frameType, body []byte) error {
	c := cc.c
	switch t {
	case frameAck:
		id, outcomes, err := decodeAck(body)
		if err != nil {
			return err
		}
		c.succeeded()
		if !cc.complete(id, false, transport.Result{Outcomes: outcomes}, nil) {
			c.log.Debug("tcp: ACK for a batch no longer awaited", "addr", c.addr, "batch", id)
		}
	case frameNack:
		m, err := decodeNack(body)
		if err != nil {
			return err
		}
		c.succeeded()
		kind := transport.ErrNack
		if m.permanent {
			kind = transport.ErrRejected
		}
		nerr := &transport.SendError{Kind: kind, Err: fmt.Errorf("%s: %s", c.addr, m.reason), Retry: !m.permanent}
		if !cc.complete(m.id, false, transport.Result{}, nerr) {
			c.log.Debug("tcp: NACK for a batch no longer awaited", "addr", c.addr, "batch", m.id)
		}
	case framePong:
		tok, err := decodePing(body)
		if err != nil {
			return err
		}
		c.succeeded()
		if tok != 0 {
			cc.complete(tok, true, transport.Result{}, nil)
		}
	case framePing:
		tok, err := decodePing(body)
		if err != nil {
			return err
		}
		return cc.writePing(framePong, tok)
	case frameGoAway:
		reason, err := decodeGoAway(body)
		if err != nil {
			return err
		}
		c.log.Info("tcp: server is going away; reconnecting for new batches", "addr", c.addr, "reason", reason)
		c.dropConn(cc)
		cc.mu.Lock()
		cc.draining = true
		empty := len(cc.pending) == 0
		cc.mu.Unlock()
		if empty {
			cc.fail(errDrained)
		}
	case frameError:
		m, err := decodeError(body)
		if err != nil {
			return err
		}
		return serverErr("server closed the connection", m)
	default:
		return protoErr("unexpected %v frame from the server", t)
	}
	return nil
}

func (cc *clientConn) readFailed(err error) {
	if we, ok := isWire(err); ok {
		cc.wmu.Lock()
		cc.nc.SetWriteDeadline(time.Now().Add(time.Second))
		cc.nc.Write(appendError(nil, we.code, we.msg))
		cc.wmu.Unlock()
		cc.c.log.Warn("tcp: closing connection: protocol violation by the server", "addr", cc.c.addr, "reason", we.msg)
		err = &transport.SendError{Kind: transport.ErrProtocol, Err: fmt.Errorf("%s: %w", cc.c.addr, we), Retry: true}
	} else if _, ok := err.(*transport.SendError); !ok {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			err = fmt.Errorf("no frame from the server for %v: %w", cc.c.cfg.ReadTimeout, err)
		}
		err = &transport.SendError{Kind: transport.ErrDisconnected, Err: fmt.Errorf("%s: %w", cc.c.addr, err), Retry: true}
	}
	cc.fail(err)
}

// circuitOpen reports whether the client's circuit is open: Sends fail fast until a probe
// succeeds.
func (c *Client) circuitOpen() bool {
	if !c.unhealthy.Load() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open
}
