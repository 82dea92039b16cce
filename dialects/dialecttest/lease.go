package dialecttest

import (
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
)

// leaseSuite checks dialects.Leaser: who may take, renew and release a named
// lease, and when.
type leaseSuite[TTx any] struct{ h Harness[TTx] }

// leaseShort is the time to live of a lease the suite lets expire.
const leaseShort = 300 * time.Millisecond

func (s leaseSuite[TTx]) run(t *testing.T) {
	t.Run("AcquireFree", s.acquireFree)
	t.Run("HeldRefused", s.heldRefused)
	t.Run("Renew", s.renew)
	t.Run("ExpiredTakeover", s.expiredTakeover)
	t.Run("ReleaseWrongHolder", s.releaseWrongHolder)
	t.Run("ReleaseFrees", s.releaseFrees)
}

// acquire calls AcquireLease and fails t on an error.
func acquire(t *testing.T, l dialects.Leaser, name, holder string, ttl time.Duration) bool {
	t.Helper()
	ok, err := l.AcquireLease(ctxFor(t), name, holder, ttl)
	if err != nil {
		t.Fatalf("AcquireLease(%q, %q, %v): %v", name, holder, ttl, err)
	}
	return ok
}

// release calls ReleaseLease and fails t on an error.
func release(t *testing.T, l dialects.Leaser, name, holder string) {
	t.Helper()
	if err := l.ReleaseLease(ctxFor(t), name, holder); err != nil {
		t.Fatalf("ReleaseLease(%q, %q): %v", name, holder, err)
	}
}

func (s leaseSuite[TTx]) acquireFree(t *testing.T) {
	d := s.h.Open(t)
	if !acquire(t, d, "job", "a", time.Minute) {
		t.Fatal("a could not take a free lease")
	}
	ctx := ctxFor(t)
	for _, c := range []struct {
		name, holder string
		ttl          time.Duration
	}{{"job", "a", 0}, {"job", "a", -time.Second}, {"", "a", time.Minute}, {"job", "", time.Minute}} {
		if _, err := d.AcquireLease(ctx, c.name, c.holder, c.ttl); err == nil {
			t.Errorf("AcquireLease(%q, %q, %v) = nil error", c.name, c.holder, c.ttl)
		}
	}
}

func (s leaseSuite[TTx]) heldRefused(t *testing.T) {
	d := s.h.Open(t)
	if !acquire(t, d, "job", "a", time.Minute) {
		t.Fatal("a could not take a free lease")
	}
	if acquire(t, d, "job", "b", time.Minute) {
		t.Fatal("b took a lease a holds")
	}
	if !acquire(t, d, "other", "b", time.Minute) {
		t.Fatal("b could not take another lease")
	}
	if acquire(t, d, "other", "a", time.Minute) {
		t.Fatal("a took the other lease b holds")
	}
}

func (s leaseSuite[TTx]) renew(t *testing.T) {
	d := s.h.Open(t)
	if !acquire(t, d, "job", "a", leaseShort) {
		t.Fatal("a could not take a free lease")
	}
	if !acquire(t, d, "job", "a", time.Minute) {
		t.Fatal("a could not renew its lease")
	}
	// The renewal moved the expiry: past the first ttl, a still holds it.
	time.Sleep(leaseShort + 100*time.Millisecond)
	if acquire(t, d, "job", "b", time.Minute) {
		t.Fatal("b took a renewed lease once its first ttl had passed")
	}
	if !acquire(t, d, "job", "a", time.Minute) {
		t.Fatal("a could not renew its lease again")
	}
}

func (s leaseSuite[TTx]) expiredTakeover(t *testing.T) {
	d := s.h.Open(t)
	if !acquire(t, d, "job", "a", leaseShort) {
		t.Fatal("a could not take a free lease")
	}
	time.Sleep(leaseShort + 100*time.Millisecond)
	if !acquire(t, d, "job", "b", time.Minute) {
		t.Fatal("b could not take over an expired lease")
	}
	if acquire(t, d, "job", "a", time.Minute) {
		t.Fatal("a took back a lease b took over")
	}
}

func (s leaseSuite[TTx]) releaseWrongHolder(t *testing.T) {
	d := s.h.Open(t)
	if !acquire(t, d, "job", "a", time.Minute) {
		t.Fatal("a could not take a free lease")
	}
	release(t, d, "job", "b")
	if acquire(t, d, "job", "b", time.Minute) {
		t.Fatal("b's release of a's lease freed it")
	}
	if !acquire(t, d, "job", "a", time.Minute) {
		t.Fatal("a lost its lease to b's release")
	}
}

func (s leaseSuite[TTx]) releaseFrees(t *testing.T) {
	d := s.h.Open(t)
	if !acquire(t, d, "job", "a", time.Minute) {
		t.Fatal("a could not take a free lease")
	}
	release(t, d, "job", "a")
	if !acquire(t, d, "job", "b", time.Minute) {
		t.Fatal("b could not take a released lease at once")
	}
	// Releasing a lease one does not hold, or that nobody holds, is not an
	// error.
	release(t, d, "job", "a")
	release(t, d, "nobody", "a")
}
