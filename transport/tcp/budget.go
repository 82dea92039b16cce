package tcp

import (
	"container/list"
	"sync"
)

// memBudget bounds the bytes that batches in flight hold. It is a weighted semaphore that
// grants requests in arrival order, so that a large batch is not starved by a stream of small
// ones. Callers clamp every request to size, so that a batch larger than the whole budget
// still proceeds, alone.
type memBudget struct {
	size int64

	mu      sync.Mutex
	used    int64
	waiters list.List // of *memWaiter, oldest first
}

type memWaiter struct {
	n     int64
	ready chan struct{} // closed when the bytes were granted
}

func newMemBudget(size int64) *memBudget {
	return &memBudget{size: size}
}

// acquire takes n bytes (at most size), waiting until they are free. It returns false, holding
// nothing, if done is closed first.
func (b *memBudget) acquire(n int64, done <-chan struct{}) bool {
	b.mu.Lock()
	return b.acquireLocked(n, done)
}

// grow raises a holding of held bytes by extra (up to size in all) and returns the new
// holding. If the extra bytes are not free at once, it releases held and waits for the whole
// amount, so that no caller holds bytes while it waits: two readers holding part of the budget
// cannot wait for each other. It returns false, holding nothing, if done is closed first.
func (b *memBudget) grow(held, extra int64, done <-chan struct{}) (int64, bool) {
	target := min(held+extra, b.size)
	if target <= held {
		return held, true
	}
	b.mu.Lock()
	if b.waiters.Len() == 0 && b.used+target-held <= b.size {
		b.used += target - held
		b.mu.Unlock()
		return target, true
	}
	b.used -= held
	b.notifyLocked()
	return target, b.acquireLocked(target, done)
}

// acquireLocked is acquire with b.mu held; it unlocks b.mu.
func (b *memBudget) acquireLocked(n int64, done <-chan struct{}) bool {
	if b.waiters.Len() == 0 && b.used+n <= b.size {
		b.used += n
		b.mu.Unlock()
		return true
	}
	w := &memWaiter{n: n, ready: make(chan struct{})}
	e := b.waiters.PushBack(w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return true
	case <-done:
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-w.ready:
		// Granted while done was closing: give the bytes back.
		b.used -= n
	default:
		b.waiters.Remove(e)
	}
	// Either way the waiters behind may fit now.
	b.notifyLocked()
	return false
}

// release returns n bytes.
func (b *memBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.notifyLocked()
	b.mu.Unlock()
}

// notifyLocked grants the waiting requests that fit, in order.
func (b *memBudget) notifyLocked() {
	for e := b.waiters.Front(); e != nil; e = b.waiters.Front() {
		w := e.Value.(*memWaiter)
		if b.used+w.n > b.size {
			return
		}
		b.used += w.n
		b.waiters.Remove(e)
		close(w.ready)
	}
}

// state returns the bytes held and the number of requests waiting.
func (b *memBudget) state() (used int64, waiting int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used, b.waiters.Len()
}

// memCharge is what one batch holds of its connection's and of the server's budget (they
// differ when the batch was clamped to the smaller one).
type memCharge struct {
	conn, srv int64
}
