package faultproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// server is a plain TCP server on 127.0.0.1 for the tests: it echoes, or
// records what it receives.
type server struct {
	ln   net.Listener
	echo bool
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
	got   bytes.Buffer
	errs  []error
}

func startServer(t *testing.T, echo bool) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln, echo: echo}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go s.handle(c)
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

func (s *server) handle(c net.Conn) {
	defer s.wg.Done()
	defer c.Close()
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if s.echo {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			} else {
				s.mu.Lock()
				s.got.Write(buf[:n])
				s.mu.Unlock()
			}
		}
		if err != nil {
			s.mu.Lock()
			s.errs = append(s.errs, err)
			s.mu.Unlock()
			return
		}
	}
}

func (s *server) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// received returns what the recording server got and the read errors its
// connections ended with.
func (s *server) received() ([]byte, []error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.got.Bytes()), append([]error(nil), s.errs...)
}

// long bounds what must happen (a dial, an echo, a reset): a bound on a
// hang, not on speed, so that a loaded machine does not fail the tests.
const long = 30 * time.Second

func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, long)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip writes msg and reads the echo back within timeout.
func roundTrip(c net.Conn, msg []byte, timeout time.Duration) error {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return errors.New("echo differs")
	}
	return nil
}

// waitFor polls cond until it holds or long passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(long)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// resetSoon dials addr and expects the connection to be reset: the reset may
// arrive while the dial completes (then the dial fails) or at the first read.
func resetSoon(addr string) error {
	c, err := net.DialTimeout("tcp", addr, long)
	if err != nil {
		if isReset(err) {
			return nil
		}
		return fmt.Errorf("dial: %w, want a reset", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(long))
	if _, err := c.Read(make([]byte, 1)); !isReset(err) {
		return fmt.Errorf("read: %v, want a reset", err)
	}
	return nil
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func TestForwardsAndCounts(t *testing.T) {
	s := startServer(t, true)
	p := newProxy(t, s.addr())
	if !strings.HasPrefix(p.Addr(), "127.0.0.1:") {
		t.Fatalf("Addr = %q, want 127.0.0.1:port", p.Addr())
	}
	c := dial(t, p.Addr())
	msg := bytes.Repeat([]byte("durable "), 10000) // 80 kB, several chunks
	if err := roundTrip(c, msg, long); err != nil {
		t.Fatal(err)
	}
	// The proxy counts a chunk after writing it, so the echo can reach the
	// client just before the last chunk is counted.
	var st Stats
	waitFor(t, "byte counts to settle", func() bool {
		st = p.Stats()
		return st.BytesToTarget == int64(len(msg)) && st.BytesToClient == int64(len(msg))
	})
	if st.Accepted != 1 || st.Active != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestHalfCloseIsPassedOn(t *testing.T) {
	s := startServer(t, true)
	p := newProxy(t, s.addr())
	c := dial(t, p.Addr())
	if _, err := c.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(long))
	got, err := io.ReadAll(c) // the echo, then an orderly EOF
	if err != nil || string(got) != "last words" {
		t.Fatalf("ReadAll = %q, %v; want the echo and EOF", got, err)
	}
	waitFor(t, "link to close", func() bool { return p.Stats().Active == 0 })
	if st := p.Stats(); st.Cuts != 0 {
		t.Fatalf("an orderly close counted as a cut: %+v", st)
	}
}

func TestCutResetsLiveConnections(t *testing.T) {
	s := startServer(t, true)
	p := newProxy(t, s.addr())
	c1, c2 := dial(t, p.Addr()), dial(t, p.Addr())
	for _, c := range []net.Conn{c1, c2} {
		if err := roundTrip(c, []byte("ping"), long); err != nil {
			t.Fatal(err)
		}
	}
	if n := p.Cut(); n != 2 {
		t.Fatalf("Cut() = %d, want 2", n)
	}
	for _, c := range []net.Conn{c1, c2} {
		c.SetReadDeadline(time.Now().Add(long))
		_, err := c.Read(make([]byte, 1))
		if !isReset(err) {
			t.Fatalf("read after Cut: %v, want connection reset", err)
		}
	}
	// The server's side was reset too.
	waitFor(t, "server side to fail", func() bool {
		_, errs := s.received()
		return len(errs) == 2
	})
	if _, errs := s.received(); !isReset(errs[0]) || !isReset(errs[1]) {
		t.Fatalf("server read errors = %v, want resets", errs)
	}
	// New connections work.
	if err := roundTrip(dial(t, p.Addr()), []byte("again"), long); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Cuts != 2 || st.Accepted != 3 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestRefuse(t *testing.T) {
	s := startServer(t, true)
	p := newProxy(t, s.addr())
	live := dial(t, p.Addr())
	if err := roundTrip(live, []byte("x"), long); err != nil {
		t.Fatal(err)
	}
	p.Refuse(true)
	if err := resetSoon(p.Addr()); err != nil {
		t.Fatalf("while refusing: %v", err)
	}
	// Live connections are untouched.
	if err := roundTrip(live, []byte("still"), long); err != nil {
		t.Fatalf("live connection during Refuse: %v", err)
	}
	p.Refuse(false)
	if err := roundTrip(dial(t, p.Addr()), []byte("ok"), long); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Refused != 1 || st.Accepted != 3 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestUnlistenRelisten(t *testing.T) {
	s := startServer(t, true)
	p := newProxy(t, s.addr())
	live := dial(t, p.Addr())
	// Until the proxy has accepted it, the connection sits in the listen
	// backlog, and Unlisten would reset it: one round trip first.
	if err := roundTrip(live, []byte("up"), long); err != nil {
		t.Fatal(err)
	}
	p.Unlisten()
	_, err := net.DialTimeout("tcp", p.Addr(), long)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial while unlistened: %v, want connection refused", err)
	}
	if err := roundTrip(live, []byte("live"), long); err != nil {
		t.Fatalf("live connection while unlistened: %v", err)
	}
	if err := p.Relisten(); err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(dial(t, p.Addr()), []byte("back"), long); err != nil {
		t.Fatal(err)
	}
}

func TestDialFailureResetsClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	p := newProxy(t, dead)
	if err := resetSoon(p.Addr()); err != nil {
		t.Fatalf("with an unreachable target: %v", err)
	}
	if st := p.Stats(); st.DialFailed != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestSetTarget(t *testing.T) {
	s1 := startServer(t, true)
	s2 := startServer(t, false)
	p := newProxy(t, s1.addr())
	old := dial(t, p.Addr())
	// The proxy reads the target when it accepts: one round trip first, so
	// that old's link exists before the target changes.
	if err := roundTrip(old, []byte("up"), long); err != nil {
		t.Fatal(err)
	}
	p.SetTarget(s2.addr())
	if p.Target() != s2.addr() {
		t.Fatalf("Target() = %s", p.Target())
	}
	if err := roundTrip(old, []byte("old"), long); err != nil {
		t.Fatalf("a live link keeps its target: %v", err)
	}
	c := dial(t, p.Addr())
	if _, err := c.Write([]byte("to s2")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "s2 to receive", func() bool {
		got, _ := s2.received()
		return string(got) == "to s2"
	})
}

func TestStallFiresDeadlinesThenDelivers(t *testing.T) {
	s := startServer(t, true)
	p := newProxy(t, s.addr())
	c := dial(t, p.Addr())
	if err := roundTrip(c, []byte("warm"), long); err != nil {
		t.Fatal(err)
	}
	p.Stall(true)
	p.Stall(true) // idempotent
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	_, err := c.Read(make([]byte, 4))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read during stall: %v, want a timeout", err)
	}
	// A connection opened during the stall is accepted but silent too.
	c2 := dial(t, p.Addr())
	if err := roundTrip(c2, []byte("new"), 100*time.Millisecond); err == nil {
		t.Fatal("a new connection got an echo during the stall")
	}
	// The proxy accepts c2 and counts the echo of "warm" in goroutines
	// of its own: wait for both; "held" must not be counted meanwhile.
	waitFor(t, "c2 to be accepted and the warm-up echo counted", func() bool {
		st := p.Stats()
		return st.Active == 2 && st.BytesToClient >= 4
	})
	if st := p.Stats(); st.Active != 2 || st.BytesToClient != 4 {
		t.Fatalf("stats during stall = %+v", st)
	}
	p.Stall(false)
	p.Stall(false)
	c.SetReadDeadline(time.Now().Add(long))
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "held" {
		t.Fatalf("after the stall: %q, %v", got, err)
	}
}

func TestLatency(t *testing.T) {
	s := startServer(t, true)
	p := newProxy(t, s.addr())
	c := dial(t, p.Addr())
	const d = 60 * time.Millisecond
	p.Latency(d)
	start := time.Now()
	if err := roundTrip(c, []byte("slow"), long); err != nil {
		t.Fatal(err)
	}
	if rt := time.Since(start); rt < 2*d {
		t.Fatalf("round trip took %v, want at least %v", rt, 2*d)
	}
	// Latency does not cap throughput: 20 pipelined writes still take
	// about one round trip, not twenty. A busy machine can make one try
	// slow; a proxy that serialized them would make every try slow, so
	// the test tries until one is fast (long bounds the tries).
	pipelined := func() time.Duration {
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			_, err := io.ReadFull(c, make([]byte, 20*100))
			done <- err
		}()
		for range 20 {
			if _, err := c.Write(bytes.Repeat([]byte{'z'}, 100)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	if el := fastestOf(10*d, pipelined); el > 10*d {
		t.Fatalf("pipelined writes took %v at best; latency should not serialize them", el)
	}
	p.Latency(0)
	unlatent := func() time.Duration {
		start := time.Now()
		if err := roundTrip(c, []byte("fast"), long); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	if fastest := fastestOf(d/2, unlatent); fastest >= d {
		t.Fatalf("round trip without latency took %v at best", fastest)
	}
}

// fastestOf runs try until one takes less than good, at least three times
// and for at most long, and returns the fastest time: a loaded machine
// makes some tries slow, a bug makes every try slow.
func fastestOf(good time.Duration, try func() time.Duration) time.Duration {
	fastest := time.Duration(1<<63 - 1)
	for i, end := 0, time.Now().Add(long); i < 3 || (fastest >= good && time.Now().Before(end)); i++ {
		fastest = min(fastest, try())
	}
	return fastest
}

func TestBandwidth(t *testing.T) {
	s := startServer(t, false)
	p := newProxy(t, s.addr())
	p.Bandwidth(20_000) // bytes per second
	c := dial(t, p.Addr())
	msg := bytes.Repeat([]byte("b"), 8_000) // about 0.4 s at 20 kB/s
	start := time.Now()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(long)
	for {
		got, _ := s.received()
		if len(got) == len(msg) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d bytes", len(got), len(msg))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Fatalf("8 kB at 20 kB/s took %v, want about 400ms", el)
	}
	p.Bandwidth(0)
}

func TestCutAfterBytesCutsMidStream(t *testing.T) {
	s := startServer(t, false)
	p := newProxy(t, s.addr())
	c := dial(t, p.Addr())
	if _, err := c.Write([]byte("HELLO")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "hello to arrive", func() bool {
		got, _ := s.received()
		return len(got) == 5
	})
	// A "frame" of 100 bytes: only the first 10 get through, then a reset.
	p.CutAfter(ToTarget, 10)
	if !p.Armed() {
		t.Fatal("not armed")
	}
	frame := []byte(strings.Repeat("0123456789", 10))
	if _, err := c.Write(frame); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(long))
	if _, err := c.Read(make([]byte, 1)); !isReset(err) {
		t.Fatalf("client read after the cut: %v, want reset", err)
	}
	waitFor(t, "server side to end", func() bool {
		_, errs := s.received()
		return len(errs) == 1
	})
	got, errs := s.received()
	if want := "HELLO0123456789"; string(got) != want {
		t.Fatalf("server received %q, want exactly %q", got, want)
	}
	if !isReset(errs[0]) {
		t.Fatalf("server read error = %v, want reset", errs[0])
	}
	if p.Armed() {
		t.Fatal("still armed after the cut")
	}
	// The proxy counts the cut after resetting both sides.
	waitFor(t, "the cut to be counted", func() bool { return p.Stats().Cuts >= 1 })
	if st := p.Stats(); st.Cuts != 1 || st.BytesToTarget != 15 {
		t.Fatalf("stats = %+v", st)
	}
	// One-shot: the next connection is not cut.
	if _, err := dial(t, p.Addr()).Write(frame); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "second frame", func() bool {
		got, _ := s.received()
		return len(got) == 15+len(frame)
	})
}

func TestCutAfterBytesToClient(t *testing.T) {
	s := startServer(t, true)
	p := newProxy(t, s.addr())
	c := dial(t, p.Addr())
	p.CutAfter(ToClient, 3)
	if _, err := c.Write([]byte("abcdefgh")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(long))
	got, err := io.ReadAll(c)
	if string(got) != "abc" || !isReset(err) {
		t.Fatalf("client got %q, %v; want %q then a reset", got, err, "abc")
	}
}

func TestCutAfterZeroAndDisarm(t *testing.T) {
	s := startServer(t, true)
	p := newProxy(t, s.addr())
	p.CutAfterBytes(5)
	p.CutAfterBytes(-1)
	if p.Armed() {
		t.Fatal("armed after disarm")
	}
	c := dial(t, p.Addr())
	if err := roundTrip(c, []byte("0123456789"), long); err != nil {
		t.Fatalf("disarmed proxy cut: %v", err)
	}
	p.CutAfterBytes(0)
	if err := roundTrip(c, []byte("x"), long); !isReset(err) {
		t.Fatalf("CutAfterBytes(0): %v, want reset", err)
	}
	if st := p.Stats(); st.BytesToTarget != 10 {
		t.Fatalf("stats = %+v; CutAfterBytes(0) must forward nothing", st)
	}
}

func TestCloseResetsAndIsIdempotent(t *testing.T) {
	s := startServer(t, true)
	p, err := New(s.addr())
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, p.Addr())
	if err := roundTrip(c, []byte("x"), long); err != nil {
		t.Fatal(err)
	}
	p.Stall(true) // goroutines parked on the stall must end too
	p.Latency(time.Hour)
	p.Close()
	p.Close()
	c.SetReadDeadline(time.Now().Add(long))
	if _, err := c.Read(make([]byte, 1)); !isReset(err) {
		t.Fatalf("read after Close: %v, want reset", err)
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Fatal("dial after Close succeeded")
	}
	if err := p.Relisten(); err == nil {
		t.Fatal("Relisten after Close succeeded")
	}
}

// TestConcurrentFaults drives traffic while every control is flipped from
// other goroutines; run with -race, it proves the controls are safe at any
// moment and that the proxy never hangs.
func TestConcurrentFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	s := startServer(t, true)
	p := newProxy(t, s.addr())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
				if err != nil {
					time.Sleep(time.Millisecond)
					continue
				}
				for range 5 {
					if roundTrip(c, bytes.Repeat([]byte{byte('a' + w)}, 300), 200*time.Millisecond) != nil {
						break
					}
				}
				c.Close()
			}
		}()
	}
	faults := []func(i int){
		func(int) { p.Cut() },
		func(i int) { p.Refuse(i%2 == 0) },
		func(i int) { p.Stall(i%2 == 0) },
		func(i int) { p.Latency(time.Duration(i%3) * time.Millisecond) },
		func(i int) { p.Bandwidth(int64(i%2) * 100_000) },
		func(i int) { p.CutAfterBytes(int64(i % 700)) },
		func(i int) {
			if i%2 == 0 {
				p.Unlisten()
			} else if err := p.Relisten(); err != nil {
				t.Error(err)
			}
		},
		func(int) { _ = p.Stats() },
	}
	for i := range 400 {
		faults[i%len(faults)](i / len(faults))
		time.Sleep(500 * time.Microsecond)
	}
	close(stop)
	p.Stall(false)
	wg.Wait()
	if err := p.Relisten(); err != nil {
		t.Fatal(err)
	}
	p.Refuse(false)
	p.Latency(0)
	p.CutAfterBytes(-1)
	if err := roundTrip(dial(t, p.Addr()), []byte("healthy"), long); err != nil {
		t.Fatalf("after the storm: %v", err)
	}
	if st := p.Stats(); st.Accepted == 0 {
		t.Fatalf("stats = %+v", st)
	}
	if os.Getenv("FAULTPROXY_VERBOSE") != "" {
		t.Logf("stats: %+v", p.Stats())
	}
}

// TestPortBelowEphemeralRange: the proxy's port is outside the range the
// kernel hands out for port 0 and outgoing connections, so that nobody
// else is given it while the proxy is unlistened.
func TestPortBelowEphemeralRange(t *testing.T) {
	s := startServer(t, true)
	p := newProxy(t, s.addr())
	_, port, err := net.SplitHostPort(p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < lowPortMin || n >= lowPortMax {
		t.Fatalf("proxy port %s, want one in [%d, %d)", port, lowPortMin, lowPortMax)
	}
}
