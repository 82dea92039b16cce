package outbox

import (
	"sync"
	"sync/atomic"

	"github.com/durable-go/durable/dialects"
)

// Waker is an in-process source of wake-ups for a Relay: it calls wake with
// a destination whenever messages for it may have been enqueued. *Outbox is
// a Waker; see RelayConfig.Outbox.
type Waker interface {
	// Subscribe registers wake and returns a function that removes it.
	// wake must not block.
	Subscribe(wake func(destination string)) (unsubscribe func())
}

var _ Waker = (*Outbox[any])(nil)

// Subscribe registers wake to be called after every successful Enqueue, once
// per distinct destination of the call, from the goroutine that called
// Enqueue. wake must be quick and must not block.
//
// Enqueue returns before the caller's transaction commits, so wake runs
// before the messages are visible to anyone else, and for messages whose
// transaction then rolls back: a subscriber treats it as a hint to look
// soon, and again shortly after if it finds nothing yet. That is what a
// Relay given this Outbox (RelayConfig.Outbox) does.
//
// The returned function unsubscribes wake; calling it again does nothing.
func (o *Outbox[TTx]) Subscribe(wake func(destination string)) (unsubscribe func()) {
	return o.subs.add(wake)
}

// subscribers is the set of Subscribe callbacks of an Outbox. Enqueue reads
// it without a lock (a copy-on-write slice); the zero value is empty.
type subscribers struct {
	mu   sync.Mutex
	list atomic.Pointer[[]*subscriber]
}

type subscriber struct{ wake func(string) }

func (s *subscribers) add(wake func(string)) func() {
	sub := &subscriber{wake: wake}
	s.mu.Lock()
	var next []*subscriber
	if cur := s.list.Load(); cur != nil {
		next = append(next, *cur...)
	}
	next = append(next, sub)
	s.list.Store(&next)
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			cur := s.list.Load()
			if cur == nil {
				return
			}
			next := make([]*subscriber, 0, len(*cur))
			for _, x := range *cur {
				if x != sub {
					next = append(next, x)
				}
			}
			s.list.Store(&next)
		})
	}
}

// notify calls every subscriber once per distinct destination of rows.
func (s *subscribers) notify(rows []dialects.OutboxRow) {
	cur := s.list.Load()
	if cur == nil || len(*cur) == 0 {
		return
	}
	for _, dest := range destinations(rows) {
		for _, sub := range *cur {
			sub.wake(dest)
		}
	}
}

// wake calls every subscriber with dest ("": any destination).
func (s *subscribers) wake(dest string) {
	cur := s.list.Load()
	if cur == nil {
		return
	}
	for _, sub := range *cur {
		sub.wake(dest)
	}
}
