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
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/durable-go/durable/internal/crashpoint"
	"github.com/durable-go/durable/transport"
)

// ErrServerClosed is returned by [Server.Serve] and [Server.ListenAndServe] after
// [Server.Shutdown] or [Server.Close].
var ErrServerClosed = errors.New("tcp: server closed")

// errPeerGone is the cause (see context.Cause) with which a connection's context ends when the
// client closed the connection or it broke: the batches the client had in flight can no longer
// be answered. Deliver calls of those batches see it through their context.
var errPeerGone = errors.New("tcp: the client went away")

// errConnClosed is the cause with which a connection's context ends when the server closed the
// connection (a protocol violation, the idle timeout, a failed write).
var errConnClosed = errors.New("tcp: connection closed")

// errNoClientCAs refuses a TLS configuration that verifies client certificates against the
// system's root CAs.
var errNoClientCAs = errors.New("TLS.ClientAuth verifies client certificates but TLS.ClientCAs is nil, " +
	"so a certificate from any CA the system trusts would be accepted: set ClientCAs to the CAs of your clients' certificates")

// drainLinger is how long a draining connection with nothing left in flight waits for the
// client to close it before the server does.
const drainLinger = time.Second

// ServerConfig configures a [Server]. The zero value of every field is a documented default,
// except that some authentication must be chosen: Secret, Verify, mutual TLS, or Insecure.
type ServerConfig struct {
	// NodeID names this server in WELCOME. Default: the host name.
	NodeID string
	// Secret is the shared secret of HMAC authentication. When set, every client must prove it
	// in HELLO (see PROTOCOL.md); a HELLO that answers another connection's challenge (a
	// replay) or whose timestamp is off by more than MaxClockSkew is refused.
	Secret []byte
	// AcceptSecrets are further secrets the server accepts besides Secret, so that the shared
	// secret can be rotated without a moment in which peers refuse each other: first every
	// server accepts the new secret, then every client sends it, then the old one is dropped
	// (see "Rotating the secret" in the package documentation). A client is answered with the
	// proof of the secret it used, and the connection is logged at Info when that is not
	// Secret, so the logs tell which peers still use an old one. Requires Secret.
	AcceptSecrets [][]byte
	// Verify, when set, is called for every HELLO (after the HMAC check, if Secret is set) and
	// decides whether the peer may connect.
	Verify Verifier
	// Insecure admits peers that present no credential at all. Without Secret, Verify, or TLS
	// with tls.RequireAndVerifyClientCert, NewServer fails unless Insecure is set.
	Insecure bool
	// TLS, when set, makes every connection TLS 1.3 (older versions are refused). Set
	// ClientAuth to tls.RequireAndVerifyClientCert and ClientCAs for mutual TLS. NewServer
	// refuses a ClientAuth that verifies client certificates without ClientCAs (unless
	// GetConfigForClient supplies the configuration): crypto/tls would then accept a
	// certificate from any CA the system trusts.
	TLS *tls.Config
	// Logger receives connection events. Default: slog.Default().
	Logger *slog.Logger

	// AuthTimeout bounds the TLS handshake plus CHALLENGE/HELLO/WELCOME; a peer that has not
	// authenticated by then is closed. Default DefaultAuthTimeout (5s).
	AuthTimeout time.Duration
	// IdleTimeout is the longest silence tolerated from an authenticated client (clients ping
	// while idle). Default DefaultIdleTimeout (2m).
	IdleTimeout time.Duration
	// WriteTimeout bounds each frame written. Default DefaultWriteTimeout (10s).
	WriteTimeout time.Duration
	// HandlerTimeout bounds each Deliver call through its context. Default: none.
	HandlerTimeout time.Duration
	// MaxClockSkew is the largest difference accepted between a HELLO's timestamp and the
	// server's clock. Default DefaultMaxClockSkew (2m).
	MaxClockSkew time.Duration

	// MaxConns bounds the authenticated connections. A client that authenticates while
	// MaxConns of them are open is answered with ERROR busy instead of WELCOME (the Client
	// reports transport.ErrUnavailable and retries after a backoff). Connections that have not
	// authenticated yet count against MaxHandshakes instead. Default DefaultMaxConns
	// (1024).
	MaxConns int
	// MaxHandshakes bounds the connections that have not authenticated yet (TLS handshake plus
	// CHALLENGE/HELLO), from all addresses together. A connection that arrives when the bound is
	// reached is not refused: the server makes room by closing the oldest handshake of the
	// address that holds the most of them, with ERROR busy. A client that answers CHALLENGE
	// promptly is therefore closed only if MaxHandshakes newer connections arrive during its
	// handshake, and a flood of connections that never authenticate, redialled as fast as they
	// are closed, cannot lock real clients out. Evictions are logged at most once a second,
	// with their count. Default DefaultMaxHandshakes (1024).
	MaxHandshakes int
	// MaxHandshakesPerAddr bounds the connections that have not authenticated yet from one
	// remote IP address (any port). A connection from an address at the bound makes room by
	// closing that address's oldest handshake, with ERROR busy. The eviction order of
	// MaxHandshakes already keeps one flooding address from pushing out the handshakes of
	// others (it closes the busiest address's first); a bound below MaxHandshakes also keeps
	// such an address from occupying the whole budget, at a price: a real client that shares
	// the flooding address (behind the same NAT) is then protected only by that many newer
	// connections instead of MaxHandshakes (with 256, about 12ms under a local flood on a
	// 2-core machine, which a loaded scheduler can exceed). Default: MaxHandshakes.
	MaxHandshakesPerAddr int
	// MaxBatchMemory bounds the memory that one connection's batches hold from the moment
	// their frame is read until Deliver returns: the frame body plus the decoded envelopes
	// (their structs, a copy of every string, and the header maps, estimated from their
	// sizes). Before reading a BATCH body the server reserves its length, first from the
	// connection's budget and then from the server's (MaxServerBatchMemory), and while it waits
	// for the bytes to be released it reads nothing more from the connection, so TCP flow
	// control stops the client; the decoded size is added after decoding, before the batch is
	// handed to Deliver. Memory a Handler keeps after Deliver returned is not counted. A batch
	// larger than the budget is charged the whole budget, so it proceeds alone. Default
	// DefaultMaxBatchMemory (64 MiB).
	MaxBatchMemory int
	// MaxServerBatchMemory bounds the memory that the batches of all connections together hold,
	// counted as for MaxBatchMemory. Default
	// DefaultMaxServerBatchMemory (256 MiB).
	MaxServerBatchMemory int
	// MaxInFlight bounds the batches one connection may have unacknowledged; it is announced
	// in WELCOME and a client exceeding it is disconnected. Default DefaultServerMaxInFlight (64), at most
	// 65535.
	MaxInFlight int
	// MaxFrameSize is the largest frame accepted (value of the length field); longer frames
	// are refused before any allocation. Default DefaultMaxFrameSize (16 MiB).
	MaxFrameSize int
}

// Server serves a transport.Handler to clients over TCP: it authenticates each connection,
// decodes BATCH frames, hands them to the Handler and answers ACK or NACK. Create it with
// [NewServer]; its methods are safe for concurrent use.
type Server struct {
	h   transport.Handler
	cfg ServerConfig
	tls *tls.Config
	log *slog.Logger

	baseCtx context.Context
	cancel  context.CancelCauseFunc // cause ErrServerClosed

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{} // authenticated or not
	closing   bool
	noConns   chan struct{} // closed once closing and no connection remains
	hs        handshakeSet  // connections not yet authenticated, against MaxHandshakes
	hsSeq     uint64        // accept order, for handshakeSet
	authed    int           // authenticated connections, against MaxConns
	evictLog  evictLog

	evictions atomic.Int64 // handshakes evicted since the server started
	batchMem  *memBudget   // MaxServerBatchMemory

	secrets [][]byte // Secret, then AcceptSecrets; nil without HMAC
}

// evictLog aggregates evictions into at most one log line a second.
type evictLog struct {
	pending  int        // evictions not yet logged
	lastAddr netip.Addr // address of the latest one
	timer    *time.Timer
}

// Defaults of the ServerConfig fields left zero (WriteTimeout's is DefaultWriteTimeout, and
// MaxFrameSize's DefaultMaxFrameSize).
const (
	DefaultAuthTimeout          = 5 * time.Second // ServerConfig.AuthTimeout
	DefaultIdleTimeout          = 2 * time.Minute // ServerConfig.IdleTimeout
	DefaultMaxClockSkew         = 2 * time.Minute // ServerConfig.MaxClockSkew
	DefaultMaxConns             = 1024            // ServerConfig.MaxConns
	DefaultMaxHandshakes        = 1024            // ServerConfig.MaxHandshakes
	DefaultMaxBatchMemory       = 64 << 20        // ServerConfig.MaxBatchMemory: 64 MiB
	DefaultMaxServerBatchMemory = 256 << 20       // ServerConfig.MaxServerBatchMemory: 256 MiB
	DefaultServerMaxInFlight    = 64              // ServerConfig.MaxInFlight
)

// NewServer returns a Server that delivers batches to h, configured by cfg (nil: every
// default, which NewServer refuses since some authentication must be chosen). It validates
// cfg and returns an error for an invalid one; it does not keep or change *cfg.
func NewServer(h transport.Handler, cfg *ServerConfig) (*Server, error) {
	if cfg == nil {
		cfg = new(ServerConfig)
	}
	return newServer(h, *cfg)
}

func newServer(h transport.Handler, cfg ServerConfig) (*Server, error) {
	if h == nil {
		return nil, errors.New("tcp: NewServer: nil Handler")
	}
	cfg.NodeID = orDefault(cfg.NodeID, hostname())
	cfg.Logger = orDefault(cfg.Logger, slog.Default())
	cfg.AuthTimeout = orDefault(cfg.AuthTimeout, DefaultAuthTimeout)
	cfg.IdleTimeout = orDefault(cfg.IdleTimeout, DefaultIdleTimeout)
	cfg.WriteTimeout = orDefault(cfg.WriteTimeout, DefaultWriteTimeout)
	cfg.MaxClockSkew = orDefault(cfg.MaxClockSkew, DefaultMaxClockSkew)
	cfg.MaxConns = orDefault(cfg.MaxConns, DefaultMaxConns)
	cfg.MaxHandshakes = orDefault(cfg.MaxHandshakes, DefaultMaxHandshakes)
	cfg.MaxHandshakesPerAddr = orDefault(cfg.MaxHandshakesPerAddr, cfg.MaxHandshakes)
	cfg.MaxBatchMemory = orDefault(cfg.MaxBatchMemory, DefaultMaxBatchMemory)
	cfg.MaxServerBatchMemory = orDefault(cfg.MaxServerBatchMemory, DefaultMaxServerBatchMemory)
	cfg.MaxInFlight = orDefault(cfg.MaxInFlight, DefaultServerMaxInFlight)
	cfg.MaxFrameSize = orDefault(cfg.MaxFrameSize, DefaultMaxFrameSize)
	switch {
	case len(cfg.NodeID) > maxNodeIDLen:
		return nil, fmt.Errorf("tcp: NewServer: NodeID longer than %d bytes", maxNodeIDLen)
	case cfg.MaxInFlight < 1 || cfg.MaxInFlight > math.MaxUint16:
		return nil, fmt.Errorf("tcp: NewServer: MaxInFlight %d outside 1..65535", cfg.MaxInFlight)
	case cfg.MaxFrameSize < MinMaxFrameSize || uint64(cfg.MaxFrameSize) > math.MaxUint32:
		return nil, fmt.Errorf("tcp: NewServer: MaxFrameSize %d outside %d..%d", cfg.MaxFrameSize, MinMaxFrameSize, uint32(math.MaxUint32))
	case cfg.MaxConns < 1:
		return nil, fmt.Errorf("tcp: NewServer: MaxConns %d < 1", cfg.MaxConns)
	case cfg.MaxHandshakes < 1:
		return nil, fmt.Errorf("tcp: NewServer: MaxHandshakes %d < 1", cfg.MaxHandshakes)
	case cfg.MaxHandshakesPerAddr < 1:
		return nil, fmt.Errorf("tcp: NewServer: MaxHandshakesPerAddr %d < 1", cfg.MaxHandshakesPerAddr)
	case cfg.MaxBatchMemory < 1:
		return nil, fmt.Errorf("tcp: NewServer: MaxBatchMemory %d < 1", cfg.MaxBatchMemory)
	case cfg.MaxServerBatchMemory < 1:
		return nil, fmt.Errorf("tcp: NewServer: MaxServerBatchMemory %d < 1", cfg.MaxServerBatchMemory)
	}
	if len(cfg.AcceptSecrets) > 0 && len(cfg.Secret) == 0 {
		return nil, errors.New("tcp: NewServer: AcceptSecrets requires Secret")
	}
	for i, sec := range cfg.AcceptSecrets {
		if len(sec) == 0 {
			return nil, fmt.Errorf("tcp: NewServer: AcceptSecrets[%d] is empty", i)
		}
	}
	if t := cfg.TLS; t != nil && t.ClientCAs == nil && t.GetConfigForClient == nil &&
		(t.ClientAuth == tls.RequireAndVerifyClientCert || t.ClientAuth == tls.VerifyClientCertIfGiven) {
		return nil, fmt.Errorf("tcp: NewServer: %w", errNoClientCAs)
	}
	mtls := cfg.TLS != nil && cfg.TLS.ClientAuth == tls.RequireAndVerifyClientCert
	if len(cfg.Secret) == 0 && cfg.Verify == nil && !mtls && !cfg.Insecure {
		return nil, errors.New("tcp: NewServer: no authentication configured (set Secret, Verify, mutual TLS, or Insecure)")
	}
	s := &Server{
		h:         h,
		cfg:       cfg,
		tls:       tls13(cfg.TLS),
		log:       cfg.Logger,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*serverConn]struct{}),
		batchMem:  newMemBudget(int64(cfg.MaxServerBatchMemory)),
	}
	if len(cfg.Secret) > 0 {
		s.secrets = append([][]byte{cfg.Secret}, cfg.AcceptSecrets...)
	}
	s.baseCtx, s.cancel = context.WithCancelCause(context.Background())
	return s, nil
}

// ListenAndServe listens on the TCP address addr and calls [Server.Serve].
func (s *Server) ListenAndServe(addr string) error {
	if s.isClosing() {
		return ErrServerClosed
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Serve accepts connections on ln and serves each in its own goroutines until ln fails or the
// server is shut down; it then returns ErrServerClosed (after Shutdown or Close) or the
// listener's error. Serve closes ln when it returns. When Config.TLS is set, Serve performs the
// TLS handshake itself, so ln must be a plain TCP listener.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			if isTemporaryAccept(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("tcp: accept failed; retrying", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		sc := s.newConn(nc)
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		victim := s.admitLocked(sc)
		s.conns[sc] = struct{}{}
		s.mu.Unlock()
		if victim != nil {
			victim.evict()
		}
		go sc.serve()
	}
}

// admitLocked counts a new connection against the handshake budgets. When one is full it
// returns the handshake to evict to make room (already no longer counted): the oldest of the
// newcomer's address if that address is at MaxHandshakesPerAddr, else the oldest of the
// address holding the most handshakes. The newcomer is never refused, so a flood that redials
// as fast as it is closed cannot win every race against a real client.
func (s *Server) admitLocked(sc *serverConn) *serverConn {
	victim := s.hs.victim(sc.ip, s.cfg.MaxHandshakes, s.cfg.MaxHandshakesPerAddr)
	if victim != nil {
		s.hs.remove(victim)
		victim.evicted.Store(true)
		s.evictions.Add(1)
		s.noteEvictionLocked(victim.ip)
	}
	s.hsSeq++
	sc.hsSeq = s.hsSeq
	s.hs.add(sc)
	return victim
}

// noteEvictionLocked counts an eviction for the log, which reports them at most once a second
// so that a flood does not flood the log too.
func (s *Server) noteEvictionLocked(addr netip.Addr) {
	l := &s.evictLog
	l.pending++
	l.lastAddr = addr
	if l.timer == nil {
		// The first eviction after a quiet second is reported at once, later ones each second.
		l.timer = time.AfterFunc(0, s.reportEvictions)
	}
}

// reportEvictions logs the evictions counted since the last report, and stays armed while
// evictions keep coming.
func (s *Server) reportEvictions() {
	s.mu.Lock()
	l := &s.evictLog
	n, addr, open := l.pending, l.lastAddr, s.hs.n
	l.pending = 0
	if n == 0 || s.closing {
		l.timer = nil
		s.mu.Unlock()
		return
	}
	l.timer.Reset(evictLogInterval)
	s.mu.Unlock()
	s.log.Warn("tcp: too many connections are authenticating: closed the oldest with ERROR busy to make room",
		"evicted", n, "last_addr", addr.String(), "handshakes", open,
		"max_handshakes", s.cfg.MaxHandshakes, "max_handshakes_per_addr", s.cfg.MaxHandshakesPerAddr)
}

// evictLogInterval is the shortest interval between two log lines about evictions.
const evictLogInterval = time.Second

func isTemporaryAccept(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) ||
		errors.Is(err, syscall.ENOMEM) || errors.Is(err, syscall.EINTR)
}

// Shutdown stops the server gracefully: it closes the listeners, closes connections that have
// not finished their handshake, sends GOAWAY on every other connection, answers batches that
// arrive after the GOAWAY with a retryable NACK, and waits until the batches already in flight
// were handled and acknowledged and the connections closed. If ctx ends first, Shutdown closes
// everything as [Server.Close] does and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	conns, done := s.beginClose()
	for _, sc := range conns {
		sc.shutdown()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// Close closes the listeners and every connection at once and cancels the contexts of running
// Deliver calls (context.Cause reports ErrServerClosed); their batches are not acknowledged, so
// clients send them again. Close does not wait for Deliver calls to return.
func (s *Server) Close() error {
	conns, _ := s.beginClose()
	s.cancel(ErrServerClosed)
	s.mu.Lock()
	if t := s.evictLog.timer; t != nil && t.Stop() {
		s.evictLog.timer = nil
	}
	s.mu.Unlock()
	for _, sc := range conns {
		sc.closeConn()
	}
	return nil
}

func (s *Server) beginClose() ([]*serverConn, chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closing {
		s.closing = true
		s.noConns = make(chan struct{})
		if len(s.conns) == 0 {
			close(s.noConns)
		}
	}
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	return conns, s.noConns
}

func (s *Server) removeConn(sc *serverConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, sc)
	s.hs.remove(sc) // unless it authenticated or was evicted
	if sc.authed {
		s.authed--
	}
	if s.closing && len(s.conns) == 0 {
		select {
		case <-s.noConns:
		default:
			close(s.noConns)
		}
	}
}

// Connection states.
const (
	stHandshake = iota
	stOpen
	stDraining
	stClosed
)

// A serverConn is allocated for every accepted connection, so a flood of connections that never
// authenticate costs one each: what only an authenticated connection needs (its context, its
// 64 KiB read buffer, its memory budget) is allocated after HELLO or WELCOME.
type serverConn struct {
	s      *Server
	raw    net.Conn
	nc     net.Conn // raw, or the TLS connection over it
	dr     deadlineReader
	br     *bufio.Reader // nil until the WELCOME: the handshake is read unbuffered
	mem    *memBudget    // MaxBatchMemory; nil until the WELCOME
	remote string
	ip     netip.Addr // the remote IP address, for MaxHandshakesPerAddr
	source string     // authenticated node id
	secret int        // index in Server.secrets of the secret the peer proved
	nonce  [nonceLen]byte
	hdr    [frameHeaderLen]byte
	rbuf   [256]byte // scratch for small frames

	// Guarded by Server.mu.
	hsList         *addrHandshakes // the list this handshake is in; nil once authenticated or evicted
	hsPrev, hsNext *serverConn
	hsSeq          uint64 // accept order
	authed         bool   // counted against MaxConns

	// evicted is set (under Server.mu) when the handshake was closed to make room for newer
	// ones; the handshake then ends with ERROR busy.
	evicted atomic.Bool

	wmu  sync.Mutex
	wbuf []byte

	mu sync.Mutex
	// ctx ends with the connection; its cause says why (the first cause wins). Both are set by
	// initCtx, under mu, once HELLO arrived, and nil before; the connection's goroutine and the
	// Deliver goroutines it starts read ctx without the lock.
	ctx      context.Context
	cancel   context.CancelCauseFunc
	state    int
	inflight int // batches counted against MaxInFlight (released before the ACK is written)
	active   int // Deliver calls whose answer is not yet written
	linger   *time.Timer
	handlers sync.WaitGroup
}

func (s *Server) newConn(nc net.Conn) *serverConn {
	ra := nc.RemoteAddr()
	return &serverConn{s: s, raw: nc, nc: nc, remote: ra.String(), ip: remoteIP(ra)}
}

// initCtx creates the connection's context, once the handshake needs it (for a Verifier).
func (sc *serverConn) initCtx() {
	ctx, cancel := context.WithCancelCause(sc.s.baseCtx)
	sc.mu.Lock()
	sc.ctx, sc.cancel = ctx, cancel
	closed := sc.state == stClosed
	sc.mu.Unlock()
	switch {
	case closed:
		cancel(errConnClosed)
	case sc.evicted.Load():
		cancel(errEvicted)
	}
}

// end cancels the connection's context, if it has one, with cause (unless it ended already).
func (sc *serverConn) end(cause error) {
	sc.mu.Lock()
	cancel := sc.cancel
	sc.mu.Unlock()
	if cancel != nil {
		cancel(cause)
	}
}

// errEvicted ends a handshake that was closed to make room for newer ones.
var errEvicted = errors.New("tcp: handshake evicted: too many connections are authenticating")

// errTooManyConns refuses a client that authenticated while MaxConns connections were open.
var errTooManyConns = errors.New("tcp: connection limit reached")

// msgEvicted is the message of the ERROR busy frame sent to an evicted handshake.
const msgEvicted = "server busy: too many connections are authenticating; retry later"

// evictWriteTimeout bounds the write of ERROR busy to an evicted handshake. The frame follows at
// most a CHALLENGE on the connection, so it fits in the socket's buffer unless the peer shrank
// its window to nothing.
const evictWriteTimeout = 100 * time.Millisecond

// evict ends a handshake that admitLocked chose to make room: the deadline in the past
// interrupts whatever it is blocked in (TLS handshake, CHALLENGE write, HELLO read), and the
// canceled context a Verifier. Its own goroutine then sends ERROR busy and closes, so the
// accept loop never waits for a slow peer.
func (sc *serverConn) evict() {
	sc.raw.SetDeadline(time.Unix(1, 0))
	sc.end(errEvicted)
}

// stopEvicted ends an evicted handshake: ERROR busy (when a frame can still be written in
// sequence), then close. It logs nothing; reportEvictions counts the evictions.
func (sc *serverConn) stopEvicted(canWrite bool) error {
	if canWrite {
		sc.sendError(codeBusy, msgEvicted, evictWriteTimeout)
	}
	sc.closeConn()
	return errEvicted
}

func (sc *serverConn) serve() {
	log := sc.s.log
	defer func() {
		sc.end(errConnClosed) // unless readFailed found that the client went away
		sc.handlers.Wait()
		sc.closeConn()
		sc.mu.Lock()
		if sc.linger != nil {
			sc.linger.Stop()
		}
		sc.mu.Unlock()
		sc.s.removeConn(sc)
	}()
	if err := sc.handshake(); err != nil {
		return
	}
	if sc.s.isClosing() {
		sc.shutdown()
	}
	log.Debug("tcp: client connected", "remote", sc.remote, "peer", sc.source)
	sc.loop()
}

// closeConn closes the network connection (idempotent); the reader then fails and exits. It
// closes the underlying TCP connection, which is safe while a TLS handshake is running.
func (sc *serverConn) closeConn() {
	sc.mu.Lock()
	already := sc.state == stClosed
	sc.state = stClosed
	cancel := sc.cancel
	sc.mu.Unlock()
	if !already {
		// Ends a reader waiting for batch memory too.
		if cancel != nil {
			cancel(errConnClosed)
		}
		sc.raw.Close()
	}
}

func (sc *serverConn) isClosed() bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.state == stClosed
}

// shutdown starts a graceful close: GOAWAY, then drain.
func (sc *serverConn) shutdown() {
	sc.mu.Lock()
	switch sc.state {
	case stHandshake:
		sc.mu.Unlock()
		sc.closeConn()
		return
	case stOpen:
		sc.state = stDraining
		if sc.active == 0 {
			sc.startLingerLocked()
		}
	default:
		sc.mu.Unlock()
		return
	}
	sc.mu.Unlock()
	sc.write(func(b []byte) []byte { return appendGoAway(b, "server shutting down") })
}

func (sc *serverConn) startLingerLocked() {
	if sc.linger == nil {
		sc.linger = time.AfterFunc(drainLinger, sc.closeConn)
	}
}

// write builds a frame in the connection's write buffer and sends it. A failed write closes the
// connection.
func (sc *serverConn) write(build func([]byte) []byte) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	return sc.writeLocked(build)
}

// writeLocked is write with sc.wmu held. A write that times out means the client stopped
// reading; that is logged, other failures (the connection broke or was closed) are not.
func (sc *serverConn) writeLocked(build func([]byte) []byte) error {
	sc.wbuf = build(sc.wbuf[:0])
	sc.nc.SetWriteDeadline(time.Now().Add(sc.s.cfg.WriteTimeout))
	_, err := sc.nc.Write(sc.wbuf)
	if cap(sc.wbuf) > 64<<10 {
		sc.wbuf = nil
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && !sc.evicted.Load() && !sc.isClosed() {
			sc.s.log.Warn(fmt.Sprintf("tcp: closing connection: the client stopped reading (write timed out after %v)", sc.s.cfg.WriteTimeout),
				"remote", sc.remote, "peer", sc.source)
		}
		sc.closeConn()
	}
	return err
}

// refuse logs why the connection is being closed, tells the peer with an ERROR frame (best
// effort, short deadline) and closes it.
func (sc *serverConn) refuse(code uint16, reason string, attrs ...any) {
	if sc.isClosed() {
		return
	}
	sc.s.log.Warn("tcp: closing connection: "+reason, append([]any{"remote", sc.remote, "peer", sc.source, "code", codeName(code)}, attrs...)...)
	sc.sendError(code, reason, time.Second)
	sc.closeConn()
}

// sendError writes an ERROR frame, best effort, within timeout (unless the connection is closed
// already). The caller closes the connection.
func (sc *serverConn) sendError(code uint16, reason string, timeout time.Duration) {
	if sc.isClosed() {
		return
	}
	sc.wmu.Lock()
	sc.wbuf = appendError(sc.wbuf[:0], code, reason)
	sc.nc.SetWriteDeadline(time.Now().Add(timeout))
	sc.nc.Write(sc.wbuf)
	sc.wmu.Unlock()
}

func (sc *serverConn) handshake() error {
	s := sc.s
	deadline := time.Now().Add(s.cfg.AuthTimeout)
	sc.raw.SetDeadline(deadline)
	if sc.evicted.Load() {
		// Evicted before the deadline above replaced the eviction's. Nothing was sent yet.
		return sc.stopEvicted(s.tls == nil)
	}
	sc.dr.c = sc.raw
	if s.tls != nil {
		cr := &countingConn{Conn: sc.raw}
		tc := tls.Server(cr, s.tls)
		// The deadline set above bounds the handshake; closing the connection (Close, Shutdown)
		// or an eviction (a deadline in the past) ends it early. (A context deadline would close
		// the connection as it fires, and the ERROR below could not be sent; a context that can
		// be canceled costs a goroutine per handshake.)
		err := tc.Handshake()
		if err != nil {
			var ne net.Error
			switch {
			case sc.evicted.Load():
				// No ERROR: the client expects a TLS record, and would report a plaintext frame as
				// a server without TLS.
				return sc.stopEvicted(false)
			case sc.isClosed():
			case cr.n == 0 && errors.As(err, &ne) && ne.Timeout():
				// A client without TLS waits for CHALLENGE and sends nothing. Tell it in
				// plaintext, the only frame ever sent outside TLS here (PROTOCOL.md, section 1).
				sc.refuse(codeTimeout, fmt.Sprintf("this server requires TLS, and the client sent nothing within the auth deadline of %v (is the client configured without TLS?)", s.cfg.AuthTimeout))
			default:
				s.log.Warn("tcp: closing connection: TLS handshake failed", "remote", sc.remote, "err", err)
			}
			sc.closeConn()
			return err
		}
		sc.nc = tc
		sc.dr.c = tc
	}

	ch := challengeMsg{minVersion: minVersion, maxVersion: maxVersion, nonce: newNonce()}
	sc.nonce = ch.nonce
	if err := sc.write(func(b []byte) []byte { return appendChallenge(b, &ch) }); err != nil {
		if sc.evicted.Load() {
			// The write failed on the eviction's deadline before a byte went out, so in plaintext
			// ERROR can still be the first frame. Over TLS a failed write spoils the connection.
			return sc.stopEvicted(s.tls == nil)
		}
		var ne net.Error
		if !sc.isClosed() && !(errors.As(err, &ne) && ne.Timeout()) { // writeLocked logged a timeout
			s.log.Warn("tcp: closing connection: writing CHALLENGE failed", "remote", sc.remote, "err", err)
		}
		return err
	}
	// Until the WELCOME the connection is read without a buffer, exactly one frame: a flood of
	// connections that never authenticate costs no read buffer, and bytes the client sends
	// right after HELLO stay in the socket (or in the TLS connection) for the buffered reader
	// that the WELCOME brings.
	t, n, err := readHeader(&sc.dr, &sc.hdr, preAuthMaxFrame)
	var body []byte
	if err == nil {
		body, err = readBody(&sc.dr, n, sc.rbuf[:])
	}
	if err != nil {
		return sc.handshakeReadFailed(err)
	}
	switch t {
	case frameHello:
	case frameError:
		m, derr := decodeError(body)
		if derr == nil {
			s.log.Warn("tcp: client refused the handshake", "remote", sc.remote, "code", codeName(m.code), "reason", m.msg)
		}
		sc.closeConn()
		return errors.New("client refused")
	default:
		err := protoErr("expected HELLO, got %v", t)
		sc.refuse(codeProtocol, err.Error())
		return err
	}
	h, err := decodeHello(body)
	if err != nil {
		sc.refuse(codeProtocol, "malformed HELLO: "+err.Error())
		return err
	}
	if h.version < minVersion || h.version > maxVersion {
		msg := fmt.Sprintf("unsupported protocol version %d (this server speaks %d..%d)", h.version, minVersion, maxVersion)
		sc.refuse(codeVersion, msg)
		return errors.New(msg)
	}
	sc.initCtx()
	if err := sc.authenticate(&h); err != nil {
		if sc.evicted.Load() {
			return sc.stopEvicted(true) // the Verifier saw its context canceled
		}
		sc.refuse(codeAuth, "authentication failed: "+err.Error(), "claimed_node", h.nodeID)
		return err
	}
	sc.source = h.nodeID
	if err := sc.promote(); err != nil {
		return err
	}
	w := welcomeMsg{
		version:     h.version,
		maxInFlight: uint16(s.cfg.MaxInFlight),
		maxFrame:    uint32(s.cfg.MaxFrameSize),
		nodeID:      s.cfg.NodeID,
	}
	if len(s.cfg.Secret) > 0 {
		w.proof = welcomeProof(s.secrets[sc.secret], h.version, &ch.nonce, &h.clientNonce, s.cfg.NodeID)
	}
	sc.br = bufio.NewReaderSize(&sc.dr, readBufferSize)
	sc.mem = newMemBudget(int64(s.cfg.MaxBatchMemory))
	// The connection is open from the WELCOME on: the state changes under the write lock, so a
	// Shutdown that starts now finds it open and its GOAWAY follows the WELCOME on the wire. (A
	// Shutdown that saw the handshake state after the WELCOME was sent would close a connection
	// the client already uses, without a GOAWAY.)
	sc.wmu.Lock()
	sc.mu.Lock()
	open := sc.state == stHandshake
	if open {
		sc.state = stOpen
	}
	sc.mu.Unlock()
	if !open {
		sc.wmu.Unlock()
		return errors.New("connection closed during the handshake")
	}
	err = sc.writeLocked(func(b []byte) []byte { return appendWelcome(b, &w) })
	sc.wmu.Unlock()
	if err != nil {
		var ne net.Error
		if !(errors.As(err, &ne) && ne.Timeout()) { // writeLocked logged a timeout
			s.log.Warn("tcp: closing connection: writing WELCOME failed", "remote", sc.remote, "err", err)
		}
		return err
	}
	sc.raw.SetDeadline(time.Time{})
	sc.dr.d = s.cfg.IdleTimeout
	return nil
}

// promote moves an authenticated connection from the handshake budget to MaxConns. It refuses
// the connection with ERROR busy when it was evicted meanwhile, or when MaxConns connections
// are open.
func (sc *serverConn) promote() error {
	s := sc.s
	s.mu.Lock()
	if sc.evicted.Load() {
		s.mu.Unlock()
		return sc.stopEvicted(true)
	}
	s.hs.remove(sc)
	full := s.authed >= s.cfg.MaxConns
	if !full {
		s.authed++
		sc.authed = true
	}
	s.mu.Unlock()
	if full {
		sc.refuse(codeBusy, fmt.Sprintf("server busy: connection limit reached (max_conns %d); retry later", s.cfg.MaxConns),
			"max_conns", s.cfg.MaxConns)
		return errTooManyConns
	}
	return nil
}

func (sc *serverConn) handshakeReadFailed(err error) error {
	if sc.evicted.Load() {
		// The read failed on the eviction's deadline. (A timed-out read leaves a TLS connection
		// writable.)
		return sc.stopEvicted(true)
	}
	if sc.isClosed() {
		return err
	}
	var ne net.Error
	switch we, ok := isWire(err); {
	case ok && sc.s.tls == nil && we.code == codeTooLarge && isTLSHandshakeRecord(sc.hdr):
		// The "frame" is a TLS ClientHello. No ERROR: the client would not read plaintext.
		sc.s.log.Warn("tcp: closing connection: the client speaks TLS, but this server is configured without TLS",
			"remote", sc.remote)
		sc.closeConn()
	case ok:
		sc.refuse(we.code, "malformed handshake: "+we.msg)
	case errors.As(err, &ne) && ne.Timeout():
		sc.refuse(codeTimeout, fmt.Sprintf("no HELLO within the auth deadline of %v", sc.s.cfg.AuthTimeout))
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
		// The client went away before saying HELLO: a load balancer's
		// health check, a port scan, a client evicted or giving up during a
		// flood. Nothing for an operator to act on.
		sc.s.log.Debug("tcp: closing connection: the client left before HELLO", "remote", sc.remote, "err", err)
		sc.closeConn()
	default:
		sc.s.log.Warn("tcp: closing connection: reading HELLO failed", "remote", sc.remote, "err", err)
		sc.closeConn()
	}
	return err
}

// authenticate checks the HELLO's credential. Its errors are sent to the peer, so they say
// what is wrong without revealing anything secret.
func (sc *serverConn) authenticate(h *helloMsg) error {
	s := sc.s
	if h.serverNonce != sc.nonce {
		return errors.New("HELLO does not answer this connection's challenge (replayed HELLO?)")
	}
	sent := time.UnixMilli(h.timeMillis)
	if skew := time.Since(sent); skew > s.cfg.MaxClockSkew || skew < -s.cfg.MaxClockSkew {
		return fmt.Errorf("HELLO timestamp %s is off by %v, more than the allowed clock skew of %v",
			sent.UTC().Format(time.RFC3339), skew.Round(time.Millisecond), s.cfg.MaxClockSkew)
	}
	if len(s.cfg.Secret) > 0 {
		if h.auth != authHMAC {
			return errors.New("this server requires HMAC authentication with a shared secret")
		}
		sc.secret = -1
		for i, sec := range s.secrets {
			// Every secret is tried, so the time taken does not tell which one matched.
			want := helloMAC(sec, h.version, h.timeMillis, &h.serverNonce, &h.clientNonce, h.nodeID)
			if equalMAC(want, h.credential) && sc.secret < 0 {
				sc.secret = i
			}
		}
		if sc.secret < 0 {
			return errors.New("HELLO HMAC does not match (wrong shared secret?)")
		}
	}
	if s.cfg.Verify != nil {
		info := &Hello{
			NodeID:     h.nodeID,
			HMAC:       len(s.cfg.Secret) > 0,
			Secret:     sc.secret,
			Time:       sent,
			Nonce:      sc.nonce[:],
			RemoteAddr: sc.raw.RemoteAddr(),
		}
		if h.auth == authToken {
			info.Token = h.credential
		}
		if tc, ok := sc.nc.(*tls.Conn); ok {
			st := tc.ConnectionState()
			info.TLS = &st
		}
		ctx, cancel := context.WithDeadline(sc.ctx, time.Now().Add(s.cfg.AuthTimeout))
		defer cancel()
		if err := s.cfg.Verify(ctx, info); err != nil {
			return err
		}
	}
	if sc.secret > 0 {
		s.log.Info("tcp: peer authenticated with an older secret of AcceptSecrets; move it to Secret",
			"remote", sc.remote, "peer", h.nodeID, "accept_secret", sc.secret-1)
	}
	return nil
}

// loop reads frames from an authenticated client until the connection ends.
func (sc *serverConn) loop() {
	max := sc.s.cfg.MaxFrameSize
	for {
		t, n, err := readHeader(sc.br, &sc.hdr, max)
		if err == nil && t == frameBatch {
			if !sc.readBatch(n) {
				return
			}
			continue
		}
		var body []byte
		if err == nil {
			body, err = readBody(sc.br, n, sc.rbuf[:])
		}
		if err != nil {
			sc.readFailed(err)
			return
		}
		switch t {
		case framePing:
			tok, err := decodePing(body)
			if err != nil {
				sc.readFailed(err)
				return
			}
			if sc.write(func(b []byte) []byte { return appendPing(b, framePong, tok) }) != nil {
				return
			}
		case framePong:
			if _, err := decodePing(body); err != nil {
				sc.readFailed(err)
				return
			}
		case frameError:
			m, err := decodeError(body)
			if err != nil {
				sc.readFailed(err)
				return
			}
			sc.s.log.Warn("tcp: client closed the connection with an error", "remote", sc.remote, "peer", sc.source, "code", codeName(m.code), "reason", m.msg)
			sc.closeConn()
			return
		default:
			sc.refuse(codeProtocol, fmt.Sprintf("unexpected %v frame from a client", t))
			return
		}
	}
}

// readFailed handles the end of the read side: a protocol violation is logged and answered with
// ERROR; a timeout closes the idle connection; EOF or a closed connection is a normal end.
func (sc *serverConn) readFailed(err error) {
	if sc.isClosed() {
		return
	}
	var ne net.Error
	switch we, ok := isWire(err); {
	case ok:
		sc.refuse(we.code, we.msg)
	case errors.As(err, &ne) && ne.Timeout():
		sc.refuse(codeTimeout, fmt.Sprintf("no frame for %v", sc.s.cfg.IdleTimeout))
	case errors.Is(err, io.EOF):
		sc.s.log.Debug("tcp: client disconnected", "remote", sc.remote, "peer", sc.source)
		sc.cancel(errPeerGone)
		sc.closeConn()
	default:
		sc.s.log.Info("tcp: connection lost", "remote", sc.remote, "peer", sc.source, "err", err)
		sc.cancel(fmt.Errorf("%w: %w", errPeerGone, err))
		sc.closeConn()
	}
}

// readBatch reads, decodes and starts a BATCH frame whose n-byte body is next on the wire,
// within the connection's and the server's batch memory budgets: it reserves n bytes before
// reading the body, waiting without reading while they are not free (TCP flow control then
// stops the client), and the decoded size once it is known. It returns false when the
// connection must end, or ended while it waited.
func (sc *serverConn) readBatch(n int) bool {
	s := sc.s
	done := sc.ctx.Done()
	ch := memCharge{conn: min(int64(n), sc.mem.size), srv: min(int64(n), s.batchMem.size)}
	if !sc.mem.acquire(ch.conn, done) {
		return false
	}
	if !s.batchMem.acquire(ch.srv, done) {
		sc.mem.release(ch.conn)
		return false
	}
	body, err := readBody(sc.br, n, nil) // owned by the Handler from now on
	var id uint64
	var envs []transport.Envelope
	var extra int64
	if err == nil {
		id, envs, extra, err = decodeBatchSized(body)
	}
	if err != nil {
		sc.releaseMem(ch)
		sc.readFailed(err)
		return false
	}
	var ok bool
	if ch.conn, ok = sc.mem.grow(ch.conn, extra, done); !ok {
		s.batchMem.release(ch.srv)
		return false
	}
	if ch.srv, ok = s.batchMem.grow(ch.srv, extra, done); !ok {
		sc.mem.release(ch.conn)
		return false
	}
	return sc.startBatch(id, envs, ch)
}

// releaseMem returns a batch's bytes to the budgets.
func (sc *serverConn) releaseMem(ch memCharge) {
	sc.mem.release(ch.conn)
	sc.s.batchMem.release(ch.srv)
}

// startBatch hands a decoded batch, holding ch of the memory budgets, to the Handler in its own
// goroutine, which releases ch when Deliver returns. It returns false when the connection must
// end.
func (sc *serverConn) startBatch(id uint64, envs []transport.Envelope, ch memCharge) bool {
	if len(envs) == 0 {
		sc.releaseMem(ch)
		return sc.write(func(b []byte) []byte { return appendAck(b, id, nil) }) == nil
	}
	sc.mu.Lock()
	switch {
	case sc.state == stDraining:
		sc.mu.Unlock()
		sc.releaseMem(ch)
		return sc.write(func(b []byte) []byte { return appendNack(b, id, false, "server shutting down (GOAWAY sent)") }) == nil
	case sc.state != stOpen:
		sc.mu.Unlock()
		sc.releaseMem(ch)
		return false
	case sc.inflight >= sc.s.cfg.MaxInFlight:
		sc.mu.Unlock()
		sc.releaseMem(ch)
		sc.refuse(codeProtocol, fmt.Sprintf("more than %d batches in flight", sc.s.cfg.MaxInFlight))
		return false
	}
	sc.inflight++
	sc.active++
	sc.handlers.Add(1)
	sc.mu.Unlock()
	go sc.deliver(id, &transport.Batch{Source: sc.source, Envelopes: envs}, ch)
	return true
}

func (sc *serverConn) deliver(id uint64, b *transport.Batch, ch memCharge) {
	defer sc.handlers.Done()
	res, err := sc.callHandler(b)
	// The batch is the Handler's now; what it keeps is no longer counted.
	sc.releaseMem(ch)
	if err == nil && len(res.Outcomes) != 0 && len(res.Outcomes) != len(b.Envelopes) {
		err = fmt.Errorf("handler returned %d outcomes for %d envelopes", len(res.Outcomes), len(b.Envelopes))
		sc.s.log.Error("tcp: handler broke its contract; batch not acknowledged", "peer", sc.source, "err", err)
	}
	// The connection's context ends only with the connection (or the server): then nobody is
	// left to answer, and Deliver most likely failed because its context was canceled.
	gone := err != nil && sc.ctx.Err() != nil
	switch {
	case err == nil:
	case gone:
		cause := context.Cause(sc.ctx)
		msg := "tcp: connection closed while its batch was being stored; batch not acknowledged, no NACK sent (the client sends it again)"
		if errors.Is(cause, errPeerGone) {
			msg = "tcp: the client went away while its batch was being stored; batch not acknowledged, nobody to send a NACK to (the client sends it again)"
		}
		sc.s.log.Info(msg, "remote", sc.remote, "peer", sc.source,
			"batch", id, "envelopes", len(b.Envelopes), "cause", cause, "err", err)
	default:
		sc.s.log.Warn("tcp: Deliver failed to store the batch; sending NACK", "remote", sc.remote, "peer", sc.source,
			"batch", id, "envelopes", len(b.Envelopes), "permanent", transport.IsPermanent(err), "err", err)
	}
	// Release the in-flight slot before the answer is written: the client may send its next
	// batch as soon as it reads the answer.
	sc.mu.Lock()
	sc.inflight--
	sc.mu.Unlock()
	switch {
	case err == nil:
		crashpoint.Hit("tcp.before-ack-write")
		sc.write(func(dst []byte) []byte { return appendAck(dst, id, res.Outcomes) })
	case !gone:
		sc.write(func(dst []byte) []byte { return appendNack(dst, id, transport.IsPermanent(err), err.Error()) })
	}
	sc.mu.Lock()
	sc.active--
	if sc.state == stDraining && sc.active == 0 {
		sc.startLingerLocked()
	}
	sc.mu.Unlock()
}

// callHandler runs the Handler, turning a panic into a retryable error.
func (sc *serverConn) callHandler(b *transport.Batch) (res transport.Result, err error) {
	ctx := sc.ctx
	if d := sc.s.cfg.HandlerTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	defer func() {
		if p := recover(); p != nil {
			sc.s.log.Error("tcp: handler panicked", "peer", sc.source, "panic", p, "stack", string(debug.Stack()))
			res, err = transport.Result{}, fmt.Errorf("handler panicked: %v", p)
		}
	}()
	return sc.s.h.Deliver(ctx, b)
}
