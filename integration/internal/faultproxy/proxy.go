// Package faultproxy is a TCP proxy for the fault suite: it sits on 127.0.0.1
// between a relay's tcp.Client and an inbox's tcp.Server and breaks the
// connection on command, so the tests can prove that nothing is lost and
// nothing is applied twice when the network misbehaves.
//
// Every control may be called at any moment from any goroutine:
//
//	p, err := faultproxy.New(serverAddr) // listens on 127.0.0.1:<free port>
//	defer p.Close()
//	client := tcp.NewClient(p.Addr(), ...)
//
//	p.Cut()                              // reset every live connection now
//	p.Refuse(true)                       // accept and reset new connections
//	p.Unlisten(); p.Relisten()           // connection refused, then back
//	p.Stall(true)                        // forward nothing, close nothing
//	p.Latency(20 * time.Millisecond)     // delay every byte, each direction
//	p.Bandwidth(64 << 10)                // bytes per second, each direction
//	p.CutAfterBytes(37)                  // forward 37 more bytes, then reset
//	p.SetTarget(newServerAddr)           // a restarted server on a new port
//
// Cuts are abrupt: the proxy sets SO_LINGER to 0 before closing, so both
// peers see a TCP reset rather than an orderly end of stream. An orderly half
// close (EOF) from one side is passed on as a half close to the other. The
// proxy keeps counts of connections and forwarded bytes (Stats) so a test can
// tell that traffic really went through it.
package faultproxy

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Direction names one way through the proxy.
type Direction int

const (
	// Both means either direction.
	Both Direction = iota
	// ToTarget is client → target (the relay's batches).
	ToTarget
	// ToClient is target → client (the server's acknowledgements).
	ToClient
)

func (d Direction) String() string {
	switch d {
	case Both:
		return "both"
	case ToTarget:
		return "to-target"
	case ToClient:
		return "to-client"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// Stats are the proxy's counters since New.
type Stats struct {
	Accepted      int64 // connections accepted, including refused ones
	Refused       int64 // connections reset at once because of Refuse
	DialFailed    int64 // connections reset because the target could not be reached
	Active        int   // connections being forwarded now
	Cuts          int64 // connections reset by Cut or CutAfterBytes
	BytesToTarget int64 // bytes delivered to the target
	BytesToClient int64 // bytes delivered to clients
}

// chunkSize is the most the proxy reads at once.
const chunkSize = 32 << 10

// relistenPatience is how long Relisten tries to get its port back.
const relistenPatience = 5 * time.Second

// lowPortMin and lowPortMax bound where listenLow picks its ports: above the well-known and
// common service ports, below the ephemeral range of Linux (32768–60999 by
// default) and of most other systems (49152 and up).
const lowPortMin, lowPortMax = 20000, 32000

// listenLow listens on a free port of 127.0.0.1 between lowPortMin and
// lowPortMax, chosen at random, or on any free port if 100 tries found
// none.
func listenLow() (net.Listener, error) {
	for range 100 {
		port := lowPortMin + rand.IntN(lowPortMax-lowPortMin)
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			return ln, nil
		}
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

// dialTimeout bounds the dial to the target.
const dialTimeout = 5 * time.Second

// Proxy forwards TCP connections from Addr to a target, with faults injected
// on demand. Create it with New; the zero value is not usable.
type Proxy struct {
	addr string

	mu        sync.Mutex
	ln        net.Listener // nil while unlistened or closed
	target    string
	refuse    bool
	gate      chan struct{} // closed while bytes may flow; open while stalled
	latency   time.Duration
	bandwidth int64
	budget    cutBudget
	links     map[*link]struct{}
	closed    bool

	wg sync.WaitGroup

	accepted, refused, dialFailed, cuts atomic.Int64
	toTarget, toClient                  atomic.Int64
}

type cutBudget struct {
	armed     bool
	dir       Direction
	remaining int64
}

// New starts a proxy listening on a free port of 127.0.0.1 that forwards
// every connection to target (host:port).
//
// The port is taken below the kernel's ephemeral range (see listenLow), so
// that while the proxy is unlistened no outgoing connection and no other
// listener on port 0, of this process or another, is given it: Relisten
// gets it back, and clients of this proxy never reach someone else's.
func New(target string) (*Proxy, error) {
	ln, err := listenLow()
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	open := make(chan struct{})
	close(open)
	p := &Proxy{
		addr:   ln.Addr().String(),
		ln:     ln,
		target: target,
		gate:   open,
		links:  make(map[*link]struct{}),
	}
	p.wg.Add(1)
	go p.serve(ln)
	return p, nil
}

// Addr is the address clients dial (127.0.0.1:port). It does not change
// across Unlisten and Relisten.
func (p *Proxy) Addr() string { return p.addr }

// Target is the address new connections are forwarded to.
func (p *Proxy) Target() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.target
}

// SetTarget changes where new connections go; live connections keep their
// target. Use it when the server behind the proxy restarts on another port.
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// Cut resets every live connection (both sides see a TCP reset) and returns
// how many it cut. New connections are accepted as usual.
func (p *Proxy) Cut() int {
	p.mu.Lock()
	ls := make([]*link, 0, len(p.links))
	for l := range p.links {
		ls = append(ls, l)
	}
	p.mu.Unlock()
	n := 0
	for _, l := range ls {
		if l.end(true) {
			n++
		}
	}
	p.cuts.Add(int64(n))
	return n
}

// Refuse, when on, makes the proxy accept each new connection and reset it at
// once, so the client's dial succeeds but its first read or write fails. Live
// connections are not touched (combine with Cut). For a real "connection
// refused" at dial time, use Unlisten.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// Unlisten closes the listening socket, so new dials fail with "connection
// refused"; live connections are not touched. Relisten opens it again on the
// same address.
func (p *Proxy) Unlisten() {
	p.mu.Lock()
	ln := p.ln
	p.ln = nil
	p.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
}

// Relisten listens again on Addr after Unlisten. It fails if the proxy is
// closed or if another socket holds the port for longer than
// relistenPatience (a socket of this proxy's own clients in TIME_WAIT does
// not: listeners reuse the address).
func (p *Proxy) Relisten() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("faultproxy: closed")
	}
	if p.ln != nil {
		return nil
	}
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(relistenPatience); ; {
		if ln, err = net.Listen("tcp", p.addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("faultproxy: relisten on %s: %w", p.addr, err)
	}
	p.ln = ln
	p.wg.Add(1)
	go p.serve(ln)
	return nil
}

// Stall, when on, stops forwarding bytes in both directions on every
// connection, live and new, without closing anything: the peers' writes
// eventually block and their read deadlines fire. Bytes held back are
// delivered in order when the stall ends.
func (p *Proxy) Stall(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate: // flowing
		if on {
			p.gate = make(chan struct{})
		}
	default: // stalled
		if !on {
			close(p.gate)
		}
	}
}

// Latency delays every byte read from now on by d before it is forwarded,
// in each direction (a round trip gains 2d). Throughput is not reduced.
// Zero removes the delay.
func (p *Proxy) Latency(d time.Duration) {
	p.mu.Lock()
	p.latency = max(d, 0)
	p.mu.Unlock()
}

// Bandwidth limits each direction of each connection to about bytesPerSec;
// zero or less removes the limit.
func (p *Proxy) Bandwidth(bytesPerSec int64) {
	p.mu.Lock()
	p.bandwidth = max(bytesPerSec, 0)
	p.mu.Unlock()
}

// CutAfterBytes arms a one-shot cut: the proxy forwards n more bytes (in
// either direction, counted over all connections) and then resets the
// connection that carried the n-th byte, typically in the middle of a frame.
// n = 0 cuts the next connection that has a byte to forward, forwarding
// nothing. A negative n disarms.
func (p *Proxy) CutAfterBytes(n int64) { p.CutAfter(Both, n) }

// CutAfter is CutAfterBytes counting only the bytes going in dir.
func (p *Proxy) CutAfter(dir Direction, n int64) {
	p.mu.Lock()
	if n < 0 {
		p.budget = cutBudget{}
	} else {
		p.budget = cutBudget{armed: true, dir: dir, remaining: n}
	}
	p.mu.Unlock()
}

// Armed reports whether a CutAfterBytes is still waiting for its bytes.
func (p *Proxy) Armed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.budget.armed
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	active := len(p.links)
	p.mu.Unlock()
	return Stats{
		Accepted:      p.accepted.Load(),
		Refused:       p.refused.Load(),
		DialFailed:    p.dialFailed.Load(),
		Active:        active,
		Cuts:          p.cuts.Load(),
		BytesToTarget: p.toTarget.Load(),
		BytesToClient: p.toClient.Load(),
	}
}

// Close stops listening, resets every live connection and waits for the
// proxy's goroutines to end. It is safe to call more than once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	ln := p.ln
	p.ln = nil
	ls := make([]*link, 0, len(p.links))
	for l := range p.links {
		ls = append(ls, l)
	}
	p.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	for _, l := range ls {
		l.end(true)
	}
	p.wg.Wait()
	return nil
}

func (p *Proxy) serve(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(5 * time.Millisecond) // e.g. out of file descriptors
			continue
		}
		p.accepted.Add(1)
		tc := c.(*net.TCPConn)
		p.mu.Lock()
		if p.closed || p.refuse {
			p.mu.Unlock()
			p.refused.Add(1)
			reset(tc)
			continue
		}
		l := &link{p: p, client: tc, done: make(chan struct{})}
		p.links[l] = struct{}{}
		target := p.target
		p.wg.Add(1)
		p.mu.Unlock()
		go l.run(target)
	}
}

// waitGate blocks while the proxy is stalled; false means the link ended.
func (p *Proxy) waitGate(done <-chan struct{}) bool {
	p.mu.Lock()
	g := p.gate
	p.mu.Unlock()
	select {
	case <-g:
		return true
	case <-done:
		return false
	}
}

func (p *Proxy) settings() (latency time.Duration, bandwidth int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.latency, p.bandwidth
}

// take grants up to n bytes in dir from the cut budget; cut reports that the
// connection must be reset after the granted bytes.
func (p *Proxy) take(dir Direction, n int) (granted int, cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := &p.budget
	if !b.armed || (b.dir != Both && b.dir != dir) {
		return n, false
	}
	if b.remaining > int64(n) {
		b.remaining -= int64(n)
		return n, false
	}
	granted = int(b.remaining)
	*b = cutBudget{}
	return granted, true
}

// reset closes c with SO_LINGER 0, so the peer gets a TCP reset.
func reset(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

// link is one client connection and its connection to the target.
type link struct {
	p      *Proxy
	client *net.TCPConn
	done   chan struct{} // closed when the link ends

	mu     sync.Mutex
	server *net.TCPConn // nil until dialed
	ended  bool
	halves int // directions that ended with EOF
}

func (l *link) run(target string) {
	defer l.p.wg.Done()
	d := net.Dialer{Timeout: dialTimeout}
	c, err := d.Dial("tcp", target)
	if err != nil {
		l.p.dialFailed.Add(1)
		l.end(true)
		return
	}
	server := c.(*net.TCPConn)
	l.mu.Lock()
	if l.ended { // cut while dialing
		l.mu.Unlock()
		reset(server)
		return
	}
	l.server = server
	l.mu.Unlock()

	l.p.wg.Add(2)
	go l.pump(ToTarget, l.client, server, &l.p.toTarget)
	go l.pump(ToClient, server, l.client, &l.p.toClient)
}

// end finishes the link once: abruptly (reset) or orderly. It reports
// whether this call ended it.
func (l *link) end(abort bool) bool {
	l.mu.Lock()
	if l.ended {
		l.mu.Unlock()
		return false
	}
	l.ended = true
	server := l.server
	close(l.done)
	l.mu.Unlock()

	if abort {
		reset(l.client)
		if server != nil {
			reset(server)
		}
	} else {
		l.client.Close()
		if server != nil {
			server.Close()
		}
	}
	l.p.mu.Lock()
	delete(l.p.links, l)
	l.p.mu.Unlock()
	return true
}

// halfDone records that one direction ended with EOF; when both have, the
// link closes in order.
func (l *link) halfDone() {
	l.mu.Lock()
	l.halves++
	both := l.halves == 2
	l.mu.Unlock()
	if both {
		l.end(false)
	}
}

type chunk struct {
	data []byte
	due  time.Time
	eof  bool
}

// pump copies src to dst through a queue: a reader goroutine stamps each
// chunk with its due time (latency), this goroutine writes it when due,
// honouring stall, bandwidth and the cut budget.
func (l *link) pump(dir Direction, src, dst *net.TCPConn, counter *atomic.Int64) {
	defer l.p.wg.Done()
	queue := make(chan chunk, 16)
	l.p.wg.Add(1)
	go l.read(src, queue)

	var timer *time.Timer
	sleep := func(d time.Duration) bool {
		if d <= 0 {
			return true
		}
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		select {
		case <-timer.C:
			return true
		case <-l.done:
			timer.Stop()
			return false
		}
	}

	for {
		var c chunk
		select {
		case c = <-queue:
		case <-l.done:
			return
		}
		if c.eof {
			_ = dst.CloseWrite()
			l.halfDone()
			return
		}
		if !sleep(time.Until(c.due)) {
			return
		}
		data := c.data
		for len(data) > 0 {
			if !l.p.waitGate(l.done) {
				return
			}
			piece := data
			_, bw := l.p.settings()
			if bw > 0 {
				// Pieces of about 20 ms worth of bandwidth keep the rate smooth.
				if most := max(bw/50, 1); int64(len(piece)) > most {
					piece = piece[:most]
				}
			}
			n, cut := l.p.take(dir, len(piece))
			piece = piece[:n]
			if n > 0 {
				if _, err := dst.Write(piece); err != nil {
					l.end(true)
					return
				}
				counter.Add(int64(n))
			}
			if cut {
				if l.end(true) {
					l.p.cuts.Add(1)
				}
				return
			}
			data = data[n:]
			if bw > 0 && !sleep(time.Duration(int64(n)*int64(time.Second)/bw)) {
				return
			}
		}
	}
}

// read feeds the pump's queue from src until EOF or an error; an error other
// than EOF (a reset from the peer) resets the whole link, so the other peer
// sees the failure too.
func (l *link) read(src *net.TCPConn, queue chan<- chunk) {
	defer l.p.wg.Done()
	for {
		if !l.p.waitGate(l.done) {
			return
		}
		buf := make([]byte, chunkSize)
		n, err := src.Read(buf)
		if n > 0 {
			latency, _ := l.p.settings()
			select {
			case queue <- chunk{data: buf[:n], due: time.Now().Add(latency)}:
			case <-l.done:
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				select {
				case queue <- chunk{eof: true}:
				case <-l.done:
				}
				return
			}
			l.end(true)
			return
		}
	}
}
