package tcp

import (
	"net"
	"net/netip"
)

// handshakeSet tracks the connections that have not yet authenticated, so that a flood of them
// cannot lock real clients out: when a budget is full, the server evicts the oldest handshake
// (of the newcomer's address, or else of the address holding the most) instead of refusing the
// newcomer. A real client answers CHALLENGE within a round trip, so it is evicted only when a
// whole budget of newer connections arrives during its handshake; a flood that redials as fast
// as it is closed only ever evicts itself.
//
// Per address, the connections form a FIFO list threaded through the serverConns; the
// addresses form a max-heap ordered by their number of handshakes and then by the age of their
// oldest one (so that with many addresses holding one handshake each, eviction is oldest
// first). Every operation costs O(1) plus O(log addresses) for the heap. The zero value is
// empty; the Server's mutex guards it.
type handshakeSet struct {
	n      int // handshakes tracked, all addresses together
	byAddr map[netip.Addr]*addrHandshakes
	heap   []*addrHandshakes
}

// addrHandshakes is the FIFO list of the handshakes from one remote IP address.
type addrHandshakes struct {
	addr       netip.Addr
	n          int
	idx        int         // position in handshakeSet.heap
	head, tail *serverConn // oldest, newest
}

// remoteIP returns the IP address of a remote network address, the unit of
// MaxHandshakesPerAddr. Addresses it cannot parse share the zero Addr.
func remoteIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	if a == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// count returns the number of handshakes from addr.
func (hs *handshakeSet) count(addr netip.Addr) int {
	if q := hs.byAddr[addr]; q != nil {
		return q.n
	}
	return 0
}

// victim returns the handshake to evict before one more from addr is admitted under the
// given limits, or nil when there is room.
func (hs *handshakeSet) victim(addr netip.Addr, maxTotal, maxPerAddr int) *serverConn {
	if q := hs.byAddr[addr]; q != nil && q.n >= maxPerAddr {
		return q.head
	}
	if hs.n >= maxTotal && len(hs.heap) > 0 {
		return hs.heap[0].head
	}
	return nil
}

// add appends sc, whose hsSeq is newer than any tracked, to the list of its address.
func (hs *handshakeSet) add(sc *serverConn) {
	q := hs.byAddr[sc.ip]
	if q == nil {
		if hs.byAddr == nil {
			hs.byAddr = make(map[netip.Addr]*addrHandshakes)
		}
		q = &addrHandshakes{addr: sc.ip, idx: len(hs.heap)}
		hs.byAddr[sc.ip] = q
		hs.heap = append(hs.heap, q)
	}
	sc.hsList = q
	sc.hsPrev = q.tail
	sc.hsNext = nil
	if q.tail != nil {
		q.tail.hsNext = sc
	} else {
		q.head = sc
	}
	q.tail = sc
	q.n++
	hs.n++
	hs.fix(q.idx)
}

// remove stops tracking sc. It reports false when sc was not tracked (it authenticated, was
// evicted, or was removed before), so that each handshake releases its slot exactly once.
func (hs *handshakeSet) remove(sc *serverConn) bool {
	q := sc.hsList
	if q == nil {
		return false
	}
	if sc.hsPrev != nil {
		sc.hsPrev.hsNext = sc.hsNext
	} else {
		q.head = sc.hsNext
	}
	if sc.hsNext != nil {
		sc.hsNext.hsPrev = sc.hsPrev
	} else {
		q.tail = sc.hsPrev
	}
	sc.hsList, sc.hsPrev, sc.hsNext = nil, nil, nil
	q.n--
	hs.n--
	if q.n > 0 {
		hs.fix(q.idx)
		return true
	}
	// The address has no handshake left: drop it from the heap and the map.
	last := len(hs.heap) - 1
	i := q.idx
	if i != last {
		hs.swap(i, last)
	}
	hs.heap[last] = nil
	hs.heap = hs.heap[:last]
	if i != last {
		hs.fix(i)
	}
	delete(hs.byAddr, q.addr)
	return true
}

// before reports whether address list a is evicted before b: more handshakes first, then the
// older oldest handshake.
func before(a, b *addrHandshakes) bool {
	if a.n != b.n {
		return a.n > b.n
	}
	return a.head.hsSeq < b.head.hsSeq
}

func (hs *handshakeSet) swap(i, j int) {
	h := hs.heap
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}

// fix restores the heap order after the key of the element at i changed.
func (hs *handshakeSet) fix(i int) {
	h := hs.heap
	for i > 0 {
		p := (i - 1) / 2
		if !before(h[i], h[p]) {
			break
		}
		hs.swap(i, p)
		i = p
	}
	for {
		c := 2*i + 1
		if c >= len(h) {
			return
		}
		if c+1 < len(h) && before(h[c+1], h[c]) {
			c++
		}
		if !before(h[c], h[i]) {
			return
		}
		hs.swap(i, c)
		i = c
	}
}
