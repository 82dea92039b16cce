package dialecttest

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
)

// run runs the conformance suite of the relay's operations
// (dialects.Relayer) as subtests of t.
//
// Some subtests wait for leases and retry delays to pass; they use delays of
// a few hundred milliseconds, so SQLite's millisecond clock is enough.
func (s relaySuite[TTx]) run(t *testing.T) {
	t.Run("ClaimOrder", s.claimOrder)
	t.Run("LeaseExclusion", s.leaseExclusion)
	t.Run("ConcurrentClaims", s.concurrentClaims)
	t.Run("ExpiredLease", s.expiredLease)
	t.Run("KeyGating", s.keyGating)
	t.Run("HotKey", s.hotKey)
	t.Run("KeyRoundRobin", s.keyRoundRobin)
	t.Run("Due", s.due)
	t.Run("Ack", s.ack)
	t.Run("AckRetain", s.ackRetain)
	t.Run("Release", s.release)
	t.Run("DeadLetter", s.deadLetter)
	t.Run("DeadLetterAgain", s.deadLetterAgain)
	t.Run("Expiry", s.expiry)
	t.Run("ClaimExpiredOnly", s.claimExpiredOnly)
	t.Run("Stats", s.stats)
	t.Run("BadArguments", s.badArguments)
}

type relaySuite[TTx any] struct{ h Harness[TTx] }

// lease is the lease of claims that are not meant to expire in a subtest.
const lease = time.Minute

// due returns a row ready to be sent: due a second ago, no key, no expiry.
func dueRow(i int, destination string) dialects.OutboxRow {
	r := Row(i, destination)
	r.Key = ""
	r.CreatedAt = time.Time{}
	r.DeliverAt = time.Now().Add(-time.Second)
	r.ExpiresAt = time.Time{}
	return r
}

func keyed(r dialects.OutboxRow, key string) dialects.OutboxRow {
	r.Key = key
	return r
}

func claim(t *testing.T, r dialects.Relayer, destination, token string, limit int, lease time.Duration) []dialects.ClaimedRow {
	t.Helper()
	rows, err := r.ClaimOutbox(ctxFor(t), dialects.OutboxClaim{Destination: destination, Token: token, Limit: limit, Lease: lease})
	if err != nil {
		t.Fatalf("ClaimOutbox(%s, %s): %v", destination, token, err)
	}
	return rows
}

// sleepUntil sleeps until t: for a delay of the database to pass, counted
// from when the call that set it returned.
func sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }

func claimedIDs(rows []dialects.ClaimedRow) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.ID
	}
	return out
}

func seqs(rows []dialects.ClaimedRow) []int64 {
	out := make([]int64, len(rows))
	for i, r := range rows {
		out[i] = r.Seq
	}
	return out
}

func wantIDs(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	if got == nil {
		got = []string{}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

func idOf(i int) string { return Row(i, "").ID }

func byID[TTx any](t *testing.T, d dialects.Dialect[TTx], id string) dialects.OutboxRow {
	t.Helper()
	rows, err := d.ListOutbox(ctxFor(t), dialects.OutboxQuery{IDs: []string{id}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 {
		t.Fatalf("%d rows with id %s, want 1", len(rows), id)
	}
	return rows[0]
}

func count(t *testing.T, what string, n int, err error, want int) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if n != want {
		t.Fatalf("%s changed %d rows, want %d", what, n, want)
	}
}

// near fails unless got is within slack of want.
func near(t *testing.T, what string, got, want time.Time, slack time.Duration) {
	t.Helper()
	if d := got.Sub(want); d < -slack || d > slack {
		t.Fatalf("%s = %v, want %v ± %v", what, got, want, slack)
	}
}

func (s relaySuite[TTx]) claimOrder(t *testing.T) {
	d := s.h.Open(t)
	var want []dialects.OutboxRow
	for i := range 5 {
		want = append(want, dueRow(100-i, "billing")) // ids not in lexical order
	}
	want[1].Headers = nil
	want[2].Payload = []byte{}
	insert(t, d, want[0], dueRow(1, "shipping"), want[1], want[2])
	insert(t, d, want[3], dueRow(2, "shipping"), want[4])

	before := time.Now()
	got := claim(t, d, "billing", "tok-1", 3, lease)
	wantIDs(t, "first claim", claimedIDs(got), want[0].ID, want[1].ID, want[2].ID)
	for i, g := range got {
		w := want[i]
		if g.Destination != "billing" || g.Topic != w.Topic || !bytes.Equal(g.Payload, w.Payload) || g.Key != "" {
			t.Fatalf("claimed row %d: %+v, want the fields of %+v", i, g.OutboxRow, w)
		}
		if !maps.Equal(g.Headers, w.Headers) && !(len(g.Headers) == 0 && len(w.Headers) == 0) {
			t.Fatalf("claimed row %d: headers %v, want %v", i, g.Headers, w.Headers)
		}
		if g.SendAttempt != 1 || g.LeaseToken != "tok-1" || g.Expired || !g.SentAt.IsZero() {
			t.Fatalf("claimed row %d: attempts %d, locked_by %q, expired %v, sent %v; want 1, tok-1, false, zero",
				i, g.SendAttempt, g.LeaseToken, g.Expired, g.SentAt)
		}
		near(t, "locked_until", g.LockedUntil, before.Add(lease), 5*time.Second)
		near(t, "deliver_at", g.DeliverAt, w.DeliverAt, 5*time.Millisecond)
		if i > 0 && g.Seq <= got[i-1].Seq {
			t.Fatalf("claim not in seq order: %d after %d", g.Seq, got[i-1].Seq)
		}
	}
	// The lease is stored.
	stored := byID(t, d, want[0].ID)
	if stored.LeaseToken != "tok-1" || stored.SendAttempt != 1 {
		t.Fatalf("stored row after claim: locked_by %q attempts %d", stored.LeaseToken, stored.SendAttempt)
	}
	// Other destinations are untouched.
	for _, row := range list(t, d, dialects.OutboxQuery{Destination: "shipping"}) {
		if row.LeaseToken != "" || row.SendAttempt != 0 {
			t.Fatalf("shipping row %s touched by a billing claim: %+v", row.ID, row)
		}
	}
	wantIDs(t, "claim of shipping", claimedIDs(claim(t, d, "shipping", "tok-2", 10, lease)), idOf(1), idOf(2))
	wantIDs(t, "claim of an unknown destination", claimedIDs(claim(t, d, "nowhere", "tok-3", 10, lease)))
}

func (s relaySuite[TTx]) leaseExclusion(t *testing.T) {
	d := s.h.Open(t)
	for i := range 5 {
		insert(t, d, dueRow(i, "billing"))
	}
	wantIDs(t, "claim 1", claimedIDs(claim(t, d, "billing", "tok-1", 3, lease)), idOf(0), idOf(1), idOf(2))
	wantIDs(t, "claim 2", claimedIDs(claim(t, d, "billing", "tok-2", 3, lease)), idOf(3), idOf(4))
	wantIDs(t, "claim 3", claimedIDs(claim(t, d, "billing", "tok-3", 3, lease)))
	for _, row := range list(t, d, dialects.OutboxQuery{}) {
		if row.SendAttempt != 1 {
			t.Fatalf("row %s has %d attempts after one claim", row.ID, row.SendAttempt)
		}
	}
}

// concurrentClaims: claimers racing on one destination never get the same
// row, and together get every row (SKIP LOCKED on Postgres).
func (s relaySuite[TTx]) concurrentClaims(t *testing.T) {
	d := s.h.Open(t)
	const n, claimers = 300, 4
	rows := make([]dialects.OutboxRow, n)
	for i := range rows {
		rows[i] = dueRow(i, "billing")
		if i%3 == 0 {
			rows[i].Key = fmt.Sprintf("k%d", i%2) // keyed rows must not block the race
		}
	}
	insert(t, d, rows...)
	var (
		mu    sync.Mutex
		owner = map[string]string{}
		wg    sync.WaitGroup
		errs  = make(chan error, claimers)
		stop  atomic.Bool // one claimer failed: the others end too
	)
	for c := range claimers {
		wg.Go(func() {
			defer func() {
				if t.Failed() {
					stop.Store(true)
				}
			}()
			for round := 0; !stop.Load(); round++ {
				tok := fmt.Sprintf("c%d-%d", c, round)
				got, err := d.ClaimOutbox(ctxFor(t), dialects.OutboxClaim{Destination: "billing", Token: tok, Limit: 7, Lease: lease})
				if err != nil {
					stop.Store(true)
					errs <- err
					return
				}
				mu.Lock()
				for _, g := range got {
					if prev, dup := owner[g.ID]; dup {
						mu.Unlock()
						stop.Store(true)
						errs <- fmt.Errorf("%s claimed by %s and %s", g.ID, prev, tok)
						return
					}
					owner[g.ID] = tok
				}
				mu.Unlock()
				if len(got) > 0 {
					// Keyed rows come one per key per claim: ack them so
					// that the next of their key becomes claimable.
					if _, err := d.AckOutbox(ctxFor(t), tok, seqs(got), false); err != nil {
						errs <- err
						return
					}
					continue
				}
				if left := list(t, d, dialects.OutboxQuery{Limit: 1}); len(left) == 0 {
					return
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(owner) != n {
		t.Fatalf("%d rows claimed, want %d", len(owner), n)
	}
}

func (s relaySuite[TTx]) expiredLease(t *testing.T) {
	d := s.h.Open(t)
	insert(t, d, dueRow(1, "billing"), dueRow(2, "billing"))
	const short = 400 * time.Millisecond
	began := time.Now()
	first := claim(t, d, "billing", "old", 10, short)
	wantIDs(t, "first claim", claimedIDs(first), idOf(1), idOf(2))
	again, token := claim(t, d, "billing", "early", 10, lease), "early"
	switch took := time.Since(began); {
	case len(again) == 0:
		time.Sleep(short + 150*time.Millisecond)
		again, token = claim(t, d, "billing", "new", 10, lease), "new"
	case took < short:
		t.Fatalf("claim while leased: got %v, want none", claimedIDs(again))
	default:
		// A loaded machine let the lease end before the second claim,
		// which then rightly took the rows over.
		t.Logf("the second claim came %v after the first, past the lease", took)
	}
	wantIDs(t, "claim after the lease expired", claimedIDs(again), idOf(1), idOf(2))
	for _, g := range again {
		if g.SendAttempt != 2 || g.LeaseToken != token {
			t.Fatalf("reclaimed row: attempts %d locked_by %q, want 2, %s", g.SendAttempt, g.LeaseToken, token)
		}
	}
	// The stale token changes nothing.
	ctx := ctxFor(t)
	n, err := d.AckOutbox(ctx, "old", seqs(first), false)
	count(t, "AckOutbox with a stale token", n, err, 0)
	n, err = d.AckOutbox(ctx, "old", seqs(first), true)
	count(t, "AckOutbox(retain) with a stale token", n, err, 0)
	n, err = d.ReleaseOutbox(ctx, "old", seqs(first), dialects.OutboxRelease{Error: "stale"})
	count(t, "ReleaseOutbox with a stale token", n, err, 0)
	n, err = d.DeadLetterOutbox(ctx, "old", []dialects.OutboxDeadLetter{{Seq: first[0].Seq, Reason: dialects.ReasonRejected, Error: "stale"}})
	count(t, "DeadLetterOutbox with a stale token", n, err, 0)
	for _, row := range list(t, d, dialects.OutboxQuery{}) {
		if row.LeaseToken != token || row.LastError != "" || !row.SentAt.IsZero() || row.SendAttempt != 2 {
			t.Fatalf("row %s changed by a stale token: %+v", row.ID, row)
		}
	}
	if dl := deadLetters(t, d, dialects.DeadLetterQuery{}); len(dl) != 0 {
		t.Fatalf("stale token wrote %d dead letters", len(dl))
	}
}

func (s relaySuite[TTx]) keyGating(t *testing.T) {
	d := s.h.Open(t)
	insert(t, d,
		keyed(dueRow(1, "billing"), "k1"),
		keyed(dueRow(2, "billing"), "k1"),
		keyed(dueRow(3, "billing"), "k2"),
		dueRow(4, "billing"),
		dueRow(5, "billing"),
		keyed(dueRow(6, "billing"), "k2"),
		keyed(dueRow(7, "shipping"), "k1"), // same key, other destination: independent
	)
	ctx := ctxFor(t)
	c1 := claim(t, d, "billing", "t1", 10, lease)
	wantIDs(t, "claim 1: the first row of each key, and unkeyed rows", claimedIDs(c1), idOf(1), idOf(3), idOf(4), idOf(5))
	wantIDs(t, "claim 2: later rows of a key in flight", claimedIDs(claim(t, d, "billing", "t2", 10, lease)))
	wantIDs(t, "shipping's k1", claimedIDs(claim(t, d, "shipping", "t3", 10, lease)), idOf(7))

	// Row 1 acknowledged: row 2 is next of k1.
	n, err := d.AckOutbox(ctx, "t1", []int64{c1[0].Seq}, false)
	count(t, "AckOutbox", n, err, 1)
	// Row 3 waiting for a retry: row 6 stays behind it.
	const retryAfter = 300 * time.Millisecond
	before := time.Now()
	n, err = d.ReleaseOutbox(ctx, "t1", []int64{c1[1].Seq}, dialects.OutboxRelease{RetryAfter: retryAfter, Error: "nack"})
	released := time.Now()
	count(t, "ReleaseOutbox", n, err, 1)
	c4 := claim(t, d, "billing", "t4", 10, lease)
	row3, token3 := dialects.ClaimedRow{}, "t4"
	if took := time.Since(before); took < retryAfter || len(c4) == 1 {
		wantIDs(t, "claim 3", claimedIDs(c4), idOf(2))
		sleepUntil(released.Add(retryAfter + 100*time.Millisecond))
		c5 := claim(t, d, "billing", "t5", 10, lease)
		wantIDs(t, "claim after the retry delay: row 3 again, row 6 still behind it", claimedIDs(c5), idOf(3))
		row3, token3 = c5[0], "t5"
	} else {
		// A loaded machine let the retry delay pass before the claim,
		// which then rightly took row 3 again; row 6 stays behind it.
		t.Logf("claim 3 came %v after the release, past the retry delay", took)
		wantIDs(t, "claim 3, after the retry delay: row 2, and row 3 again", claimedIDs(c4), idOf(2), idOf(3))
		row3 = c4[1]
	}
	// Row 3 dead-lettered: row 6 is free.
	n, err = d.DeadLetterOutbox(ctx, token3, []dialects.OutboxDeadLetter{{Seq: row3.Seq, Reason: dialects.ReasonRejected, Error: "no"}})
	count(t, "DeadLetterOutbox", n, err, 1)
	wantIDs(t, "claim after the dead letter", claimedIDs(claim(t, d, "billing", "t6", 10, lease)), idOf(6))

	// A scheduled row holds back the later rows of its key.
	later := keyed(dueRow(8, "billing"), "k3")
	later.DeliverAt = time.Now().Add(time.Hour)
	insert(t, d, later, keyed(dueRow(9, "billing"), "k3"), dueRow(10, "billing"))
	wantIDs(t, "claim behind a scheduled row", claimedIDs(claim(t, d, "billing", "t7", 10, lease)), idOf(10))
}

func (s relaySuite[TTx]) due(t *testing.T) {
	d := s.h.Open(t)
	future := dueRow(1, "billing")
	future.DeliverAt = time.Now().Add(time.Hour)
	soon := dueRow(2, "billing")
	soon.DeliverAt = time.Now().Add(300 * time.Millisecond)
	insert(t, d, future, soon, dueRow(3, "billing"))
	now := claim(t, d, "billing", "t1", 10, lease)
	var got []dialects.ClaimedRow
	if time.Now().Before(soon.DeliverAt) || len(now) == 1 {
		wantIDs(t, "claim now", claimedIDs(now), idOf(3))
		sleepUntil(soon.DeliverAt.Add(150 * time.Millisecond))
		got = claim(t, d, "billing", "t2", 10, lease)
		wantIDs(t, "claim once the second row is due", claimedIDs(got), idOf(2))
	} else {
		// A loaded machine got to the claim after the second row was due:
		// the claim rightly took it.
		t.Logf("the first claim ended after the second row was due")
		wantIDs(t, "claim after the second row was due", claimedIDs(now), idOf(2), idOf(3))
		got = now
	}
	near(t, "deliver_at", got[0].DeliverAt, soon.DeliverAt, 5*time.Millisecond)
}

func (s relaySuite[TTx]) ack(t *testing.T) {
	d := s.h.Open(t)
	insert(t, d, dueRow(1, "billing"), dueRow(2, "billing"), dueRow(3, "billing"))
	got := claim(t, d, "billing", "t1", 10, lease)
	ctx := ctxFor(t)
	n, err := d.AckOutbox(ctx, "t2", seqs(got), false)
	count(t, "AckOutbox with another token", n, err, 0)
	n, err = d.AckOutbox(ctx, "t1", seqs(got[:2]), false)
	count(t, "AckOutbox", n, err, 2)
	n, err = d.AckOutbox(ctx, "t1", seqs(got[:2]), false)
	count(t, "second AckOutbox", n, err, 0)
	n, err = d.AckOutbox(ctx, "t1", nil, false)
	count(t, "empty AckOutbox", n, err, 0)
	left := list(t, d, dialects.OutboxQuery{})
	if len(left) != 1 || left[0].ID != idOf(3) || left[0].LeaseToken != "t1" {
		t.Fatalf("after acking two of three: %v", ids(left))
	}
}

func (s relaySuite[TTx]) ackRetain(t *testing.T) {
	d := s.h.Open(t)
	insert(t, d, keyed(dueRow(1, "billing"), "k"), keyed(dueRow(2, "billing"), "k"), dueRow(3, "billing"))
	got := claim(t, d, "billing", "t1", 10, lease)
	wantIDs(t, "claim", claimedIDs(got), idOf(1), idOf(3))
	ctx := ctxFor(t)
	before := time.Now()
	n, err := d.AckOutbox(ctx, "t1", seqs(got), true)
	count(t, "AckOutbox(retain)", n, err, 2)
	n, err = d.AckOutbox(ctx, "t1", seqs(got), true)
	count(t, "second AckOutbox(retain)", n, err, 0)
	n, err = d.AckOutbox(ctx, "t1", seqs(got), false)
	count(t, "AckOutbox(delete) of a sent row", n, err, 0)
	sent := byID(t, d, idOf(1))
	near(t, "sent_at", sent.SentAt, before, 5*time.Second)
	if !sent.LockedUntil.IsZero() {
		t.Fatalf("a sent row keeps locked_until %v", sent.LockedUntil)
	}
	// A sent row is never claimed again and no longer holds its key back.
	wantIDs(t, "claim after the retained ack", claimedIDs(claim(t, d, "billing", "t2", 10, lease)), idOf(2))
	st := stats(t, d)
	if len(st) != 1 || st[0].Unsent != 1 {
		t.Fatalf("stats count sent rows: %+v", st)
	}
	// Purge removes sent rows older than the age, in batches of limit.
	n, err = d.PurgeOutbox(ctx, time.Hour, 10)
	count(t, "PurgeOutbox(1h)", n, err, 0)
	time.Sleep(20 * time.Millisecond)
	n, err = d.PurgeOutbox(ctx, 0, 1)
	count(t, "PurgeOutbox(0, limit 1)", n, err, 1)
	n, err = d.PurgeOutbox(ctx, 0, 10)
	count(t, "PurgeOutbox(0, limit 10)", n, err, 1)
	left := list(t, d, dialects.OutboxQuery{})
	if len(left) != 1 || left[0].ID != idOf(2) {
		t.Fatalf("after purge: %v, want only the unsent row", ids(left))
	}
}

func (s relaySuite[TTx]) release(t *testing.T) {
	d := s.h.Open(t)
	insert(t, d, dueRow(1, "billing"), dueRow(2, "billing"))
	ctx := ctxFor(t)
	got := claim(t, d, "billing", "t1", 10, lease)
	// Never sent: released at once, the attempt undone.
	n, err := d.ReleaseOutbox(ctx, "t1", seqs(got[:1]), dialects.OutboxRelease{Unsent: true})
	count(t, "ReleaseOutbox(unsent)", n, err, 1)
	row := byID(t, d, idOf(1))
	if row.SendAttempt != 0 || row.LeaseToken != "" || !row.LockedUntil.IsZero() || row.LastError != "" {
		t.Fatalf("after an unsent release: %+v", row)
	}
	got2 := claim(t, d, "billing", "t2", 10, lease)
	wantIDs(t, "claim after the release", claimedIDs(got2), idOf(1))
	if got2[0].SendAttempt != 1 {
		t.Fatalf("attempts %d, want 1", got2[0].SendAttempt)
	}
	// Failed send: released with a delay and the error.
	const retryAfter = 300 * time.Millisecond
	before := time.Now()
	n, err = d.ReleaseOutbox(ctx, "t2", seqs(got2), dialects.OutboxRelease{RetryAfter: retryAfter, Error: "peer down"})
	released := time.Now()
	count(t, "ReleaseOutbox(delay)", n, err, 1)
	row = byID(t, d, idOf(1))
	if row.SendAttempt != 1 || row.LeaseToken != "" || row.LastError != "peer down" {
		t.Fatalf("after a delayed release: %+v", row)
	}
	near(t, "locked_until of a row waiting for a retry", row.LockedUntil, before.Add(retryAfter), 5*time.Second)
	st := stats(t, d)
	during := claim(t, d, "billing", "t3", 10, lease)
	got4, token4 := during, "t3"
	if took := time.Since(before); took < retryAfter || len(during) == 0 {
		// The stats were read before the claim: the row was waiting then.
		if len(st) != 1 || st[0].Retrying != 1 || st[0].Leased != 1 || st[0].Unsent != 2 {
			t.Fatalf("stats while waiting for a retry: %+v", st)
		}
		wantIDs(t, "claim during the delay", claimedIDs(during))
		sleepUntil(released.Add(retryAfter + 150*time.Millisecond))
		got4, token4 = claim(t, d, "billing", "t4", 10, lease), "t4"
	} else {
		// A loaded machine let the delay pass before the claim, which then
		// rightly took the row again (and the stats may have seen it due).
		t.Logf("the claim came %v after the release, past the retry delay", took)
		if len(st) != 1 || st[0].Retrying > 1 || st[0].Leased != 1 || st[0].Unsent != 2 {
			t.Fatalf("stats around the end of the retry delay: %+v", st)
		}
	}
	wantIDs(t, "claim after the delay", claimedIDs(got4), idOf(1))
	if got4[0].SendAttempt != 2 || got4[0].LastError != "peer down" {
		t.Fatalf("reclaimed: attempts %d last_error %q", got4[0].SendAttempt, got4[0].LastError)
	}
	// An empty error keeps the last one.
	n, err = d.ReleaseOutbox(ctx, token4, seqs(got4), dialects.OutboxRelease{})
	count(t, "ReleaseOutbox", n, err, 1)
	if row := byID(t, d, idOf(1)); row.LastError != "peer down" {
		t.Fatalf("last_error %q after a release without error", row.LastError)
	}
	// Row 2, still leased to t1, was not touched by any of this.
	if row := byID(t, d, idOf(2)); row.LeaseToken != "t1" || row.SendAttempt != 1 {
		t.Fatalf("row 2: %+v", row)
	}
}

func deadLetters[TTx any](t *testing.T, d dialects.Dialect[TTx], q dialects.DeadLetterQuery) []dialects.DeadLetterRow {
	t.Helper()
	dl, err := d.ListDeadLetters(ctxFor(t), q)
	if err != nil {
		t.Fatalf("ListDeadLetters: %v", err)
	}
	return dl
}

func (s relaySuite[TTx]) deadLetter(t *testing.T) {
	d := s.h.Open(t)
	a := keyed(dueRow(1, "billing"), "k")
	a.ExpiresAt = time.Now().Add(time.Hour).Truncate(time.Millisecond)
	insert(t, d, a, dueRow(2, "billing"), dueRow(3, "billing"))
	ctx := ctxFor(t)
	got := claim(t, d, "billing", "t1", 10, lease)
	letters := []dialects.OutboxDeadLetter{
		{Seq: got[0].Seq, Reason: dialects.ReasonRejected, Error: "peer: schema mismatch"},
		{Seq: got[1].Seq, Reason: dialects.ReasonExpired, Error: "expired"},
	}
	n, err := d.DeadLetterOutbox(ctx, "t2", letters)
	count(t, "DeadLetterOutbox with another token", n, err, 0)
	before := time.Now()
	n, err = d.DeadLetterOutbox(ctx, "t1", letters)
	count(t, "DeadLetterOutbox", n, err, 2)
	left := list(t, d, dialects.OutboxQuery{})
	if len(left) != 1 || left[0].ID != idOf(3) {
		t.Fatalf("outbox after moving two rows: %v", ids(left))
	}
	dl := deadLetters(t, d, dialects.DeadLetterQuery{})
	if len(dl) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dl))
	}
	for i, l := range dl {
		want := []dialects.OutboxRow{a, dueRow(2, "billing")}[i]
		if l.Side != dialects.SideOutbox || l.ID != want.ID || l.Destination != "billing" || l.Source != "" ||
			l.Topic != want.Topic || l.Key != want.Key || !bytes.Equal(l.Payload, want.Payload) || !maps.Equal(l.Headers, want.Headers) {
			t.Fatalf("dead letter %d: %+v, want the message %+v", i, l, want)
		}
		if l.Reason != letters[i].Reason || l.LastError != letters[i].Error || l.Attempts != 1 {
			t.Fatalf("dead letter %d: reason %q error %q attempts %d, want %q %q 1", i, l.Reason, l.LastError, l.Attempts, letters[i].Reason, letters[i].Error)
		}
		if len(l.Errors) != 1 || l.Errors[0].Error != letters[i].Error || l.Errors[0].Attempt != 1 {
			t.Fatalf("dead letter %d: errors %+v", i, l.Errors)
		}
		near(t, "errors[0].at", l.Errors[0].At, before, 5*time.Second)
		near(t, "failed_at", l.FailedAt, before, 5*time.Second)
		near(t, "first_failed_at", l.FirstFailedAt, before, 5*time.Second)
		near(t, "created_at", l.CreatedAt, got[i].CreatedAt, time.Millisecond)
		if !l.ExpiresAt.Equal(want.ExpiresAt) || !l.ReplayedAt.IsZero() {
			t.Fatalf("dead letter %d: expires_at %v (want %v), replayed_at %v", i, l.ExpiresAt, want.ExpiresAt, l.ReplayedAt)
		}
	}
	// Filters.
	if got := deadLetters(t, d, dialects.DeadLetterQuery{Reason: dialects.ReasonExpired}); len(got) != 1 || got[0].ID != idOf(2) {
		t.Fatalf("Reason filter: %d rows", len(got))
	}
	if got := deadLetters(t, d, dialects.DeadLetterQuery{Side: dialects.SideOutbox, Destination: "billing", IDs: []string{idOf(1)}}); len(got) != 1 || got[0].ID != idOf(1) {
		t.Fatalf("Side/Destination/IDs filter: %d rows", len(got))
	}
	if got := deadLetters(t, d, dialects.DeadLetterQuery{Destination: "shipping"}); len(got) != 0 {
		t.Fatalf("Destination filter: %d rows", len(got))
	}
	if got := deadLetters(t, d, dialects.DeadLetterQuery{Limit: 1}); len(got) != 1 {
		t.Fatalf("Limit: %d rows", len(got))
	}
}

// deadLetterAgain: a message dead-lettered a second time (it was replayed,
// that is enqueued again with its id) updates its dead letter in place.
func (s relaySuite[TTx]) deadLetterAgain(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	insert(t, d, dueRow(1, "billing"))
	got := claim(t, d, "billing", "t1", 10, lease)
	n, err := d.DeadLetterOutbox(ctx, "t1", []dialects.OutboxDeadLetter{{Seq: got[0].Seq, Reason: dialects.ReasonRejected, Error: "first"}})
	count(t, "DeadLetterOutbox", n, err, 1)

	again := dueRow(1, "billing")
	again.Payload = []byte("replayed")
	insert(t, d, again)
	got = claim(t, d, "billing", "t2", 10, 50*time.Millisecond)
	n, err = d.ReleaseOutbox(ctx, "t2", seqs(got), dialects.OutboxRelease{Error: "timeout"})
	count(t, "ReleaseOutbox", n, err, 1)
	got = claim(t, d, "billing", "t3", 10, lease)
	if len(got) != 1 || got[0].SendAttempt != 2 {
		t.Fatalf("claim: %+v", got)
	}
	n, err = d.DeadLetterOutbox(ctx, "t3", []dialects.OutboxDeadLetter{{Seq: got[0].Seq, Reason: dialects.ReasonExpired, Error: "second"}})
	count(t, "second DeadLetterOutbox", n, err, 1)
	dl := deadLetters(t, d, dialects.DeadLetterQuery{})
	if len(dl) != 1 {
		t.Fatalf("%d dead letters for one message, want 1", len(dl))
	}
	l := dl[0]
	if l.Reason != dialects.ReasonExpired || l.LastError != "second" || l.Attempts != 3 || string(l.Payload) != "replayed" {
		t.Fatalf("dead letter after the second failure: reason %q error %q attempts %d payload %q", l.Reason, l.LastError, l.Attempts, l.Payload)
	}
	var hist []string
	for _, e := range l.Errors {
		hist = append(hist, fmt.Sprintf("%d:%s", e.Attempt, e.Error))
	}
	wantIDs(t, "error history", hist, "1:first", "1:timeout", "2:second")
	if !l.FailedAt.After(l.FirstFailedAt) && !l.FailedAt.Equal(l.FirstFailedAt) {
		t.Fatalf("failed_at %v before first_failed_at %v", l.FailedAt, l.FirstFailedAt)
	}
}

func (s relaySuite[TTx]) expiry(t *testing.T) {
	d := s.h.Open(t)
	gone := dueRow(1, "billing")
	gone.ExpiresAt = time.Now().Add(150 * time.Millisecond)
	live := dueRow(2, "billing")
	live.ExpiresAt = time.Now().Add(time.Hour)
	insert(t, d, gone, live, dueRow(3, "billing"))
	time.Sleep(300 * time.Millisecond)
	got := claim(t, d, "billing", "t1", 10, lease)
	wantIDs(t, "claim", claimedIDs(got), idOf(1), idOf(2), idOf(3))
	if !got[0].Expired || got[0].SendAttempt != 0 {
		t.Fatalf("expired row: Expired %v attempts %d, want true, 0", got[0].Expired, got[0].SendAttempt)
	}
	for _, g := range got[1:] {
		if g.Expired || g.SendAttempt != 1 {
			t.Fatalf("row %s: Expired %v attempts %d, want false, 1", g.ID, g.Expired, g.SendAttempt)
		}
	}
	n, err := d.DeadLetterOutbox(ctxFor(t), "t1", []dialects.OutboxDeadLetter{{Seq: got[0].Seq, Reason: dialects.ReasonExpired, Error: "expired before it could be sent"}})
	count(t, "DeadLetterOutbox", n, err, 1)
	dl := deadLetters(t, d, dialects.DeadLetterQuery{})
	if len(dl) != 1 || dl[0].Reason != dialects.ReasonExpired || dl[0].Attempts != 0 || dl[0].ID != idOf(1) {
		t.Fatalf("dead letters: %+v", dl)
	}
}

// claimExpiredOnly: ExpiredOnly claims the expired unsent rows of the
// destination that no live lease holds, in seq order, due or not and
// whatever their key's order, counting no attempt; nothing else.
func (s relaySuite[TTx]) claimExpiredOnly(t *testing.T) {
	d := s.h.Open(t)
	past := time.Now().Add(-time.Minute)
	expired := func(i int) dialects.OutboxRow {
		r := dueRow(i, "gone")
		r.ExpiresAt = past
		return r
	}
	head := keyed(dueRow(1, "gone"), "k") // unexpired head of key k
	behind := keyed(expired(2), "k")      // expired, behind it
	later := expired(3)
	later.DeliverAt = time.Now().Add(time.Hour) // not due, expired
	held := expired(4)                          // expired, leased below
	live := dueRow(5, "gone")
	live.ExpiresAt = time.Now().Add(time.Hour)
	other := expired(6)
	other.Destination = "elsewhere"
	insert(t, d, head, behind, later, held, live, other, expired(7))
	leased, err := d.ClaimOutbox(ctxFor(t), dialects.OutboxClaim{Destination: "gone", Token: "holder", Limit: 1, Lease: lease, ExpiredOnly: true})
	if err != nil || len(leased) != 1 || leased[0].ID != idOf(2) {
		t.Fatalf("first ExpiredOnly claim: %v, %v; want %s", claimedIDs(leased), err, idOf(2))
	}
	// Release it with a delay: a "waiting for a retry" lease holds it too.
	n, err := d.ReleaseOutbox(ctxFor(t), "holder", seqs(leased), dialects.OutboxRelease{RetryAfter: time.Hour})
	count(t, "ReleaseOutbox", n, err, 1)
	got, err := d.ClaimOutbox(ctxFor(t), dialects.OutboxClaim{Destination: "gone", Token: "t", Limit: 10, Lease: lease, ExpiredOnly: true})
	if err != nil {
		t.Fatalf("ExpiredOnly claim: %v", err)
	}
	wantIDs(t, "ExpiredOnly claim", claimedIDs(got), idOf(3), idOf(4), idOf(7))
	for _, g := range got {
		if !g.Expired || g.SendAttempt != 0 || g.LeaseToken != "t" {
			t.Fatalf("row %s: Expired %v, attempts %d, locked_by %q; want true, 0, t", g.ID, g.Expired, g.SendAttempt, g.LeaseToken)
		}
	}
	// Nothing left to claim expired; a plain claim still finds the live rows.
	again := claim(t, d, "gone", "t2", 10, lease)
	wantIDs(t, "plain claim after", claimedIDs(again), idOf(1), idOf(5))
	if b := byID(t, d, idOf(2)); b.SendAttempt != 0 || b.LeaseToken != "" {
		t.Fatalf("row waiting for a retry: attempts %d, locked_by %q", b.SendAttempt, b.LeaseToken)
	}
}

func stats(t *testing.T, r dialects.Relayer) []dialects.OutboxStats {
	t.Helper()
	st, err := r.OutboxStats(ctxFor(t))
	if err != nil {
		t.Fatalf("OutboxStats: %v", err)
	}
	return st
}

func (s relaySuite[TTx]) stats(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	if st := stats(t, d); len(st) != 0 {
		t.Fatalf("stats of an empty outbox: %+v", st)
	}
	if dests, err := d.OutboxDestinations(ctx); err != nil || len(dests) != 0 {
		t.Fatalf("OutboxDestinations of an empty outbox: %v, %v", dests, err)
	}
	scheduled := dueRow(3, "billing")
	scheduled.DeliverAt = time.Now().Add(time.Hour)
	insert(t, d, dueRow(1, "billing"), dueRow(2, "billing"), scheduled, dueRow(4, "shipping"), dueRow(5, "zeta"))
	time.Sleep(300 * time.Millisecond)
	got := claim(t, d, "billing", "t1", 1, lease)
	insert(t, d, dueRow(6, "shipping"))

	st := stats(t, d)
	if len(st) != 3 {
		t.Fatalf("stats: %+v, want 3 destinations", st)
	}
	b, sh, z := st[0], st[1], st[2]
	if b.Destination != "billing" || b.Unsent != 3 || b.Leased != 1 || b.Retrying != 0 || b.Scheduled != 1 {
		t.Fatalf("billing stats: %+v", b)
	}
	if sh.Destination != "shipping" || sh.Unsent != 2 || sh.Leased != 0 || z.Destination != "zeta" || z.Unsent != 1 {
		t.Fatalf("stats: %+v", st)
	}
	for _, x := range st {
		if x.OldestAge < 250*time.Millisecond || x.OldestAge > time.Minute {
			t.Fatalf("%s: oldest age %v, want about 300ms", x.Destination, x.OldestAge)
		}
	}
	dests, err := d.OutboxDestinations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantIDs(t, "OutboxDestinations", dests, "billing", "shipping", "zeta")

	n, err := d.AckOutbox(ctx, "t1", seqs(got), true)
	count(t, "AckOutbox", n, err, 1)
	for _, row := range list(t, d, dialects.OutboxQuery{Destination: "zeta"}) {
		tok := "z"
		claimed := claim(t, d, "zeta", tok, 10, lease)
		if len(claimed) != 1 || claimed[0].ID != row.ID {
			t.Fatalf("zeta claim: %v", claimedIDs(claimed))
		}
		n, err := d.AckOutbox(ctx, tok, seqs(claimed), false)
		count(t, "AckOutbox", n, err, 1)
	}
	st = stats(t, d)
	if len(st) != 2 || st[0].Unsent != 2 || st[0].Leased != 0 {
		t.Fatalf("stats after acks: %+v", st)
	}
	dests, err = d.OutboxDestinations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantIDs(t, "OutboxDestinations after acks", dests, "billing", "shipping")

	// Pending outbox dead letters are counted per destination, also for a
	// destination without unsent rows; replayed ones are not.
	for _, dest := range []string{"shipping", "omega"} {
		if dest == "omega" {
			insert(t, d, dueRow(7, "omega"))
		}
		c := claim(t, d, dest, "dl-"+dest, 1, lease)
		n, err := d.DeadLetterOutbox(ctx, "dl-"+dest, []dialects.OutboxDeadLetter{{Seq: c[0].Seq, Reason: dialects.ReasonRejected, Error: "no"}})
		count(t, "DeadLetterOutbox", n, err, 1)
	}
	st = stats(t, d)
	if len(st) != 3 || st[0].Destination != "billing" || st[0].DeadLetters != 0 ||
		st[1].Destination != "omega" || st[1].Unsent != 0 || st[1].Leased != 0 || st[1].OldestAge != 0 || st[1].DeadLetters != 1 ||
		st[2].Destination != "shipping" || st[2].Unsent != 1 || st[2].DeadLetters != 1 {
		t.Fatalf("stats with dead letters: %+v", st)
	}
	dests, err = d.OutboxDestinations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantIDs(t, "OutboxDestinations with dead letters", dests, "billing", "shipping")
	n, err = d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{Side: dialects.SideOutbox, Destination: "omega"})
	count(t, "ReplayDeadLetters(omega)", n, err, 1)
	st = stats(t, d)
	if len(st) != 3 || st[1].Destination != "omega" || st[1].Unsent != 1 || st[1].DeadLetters != 0 {
		t.Fatalf("stats after the replay: %+v", st)
	}
}

func (s relaySuite[TTx]) badArguments(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	for _, c := range []dialects.OutboxClaim{
		{Destination: "billing", Token: "", Limit: 1, Lease: time.Second},
		{Destination: "billing", Token: "t", Limit: 0, Lease: time.Second},
		{Destination: "billing", Token: "t", Limit: 1, Lease: 0},
	} {
		if _, err := d.ClaimOutbox(ctx, c); err == nil {
			t.Errorf("ClaimOutbox(%+v) succeeded", c)
		}
	}
	if _, err := d.ReleaseOutbox(ctx, "t", []int64{1}, dialects.OutboxRelease{RetryAfter: -time.Second}); err == nil {
		t.Error("ReleaseOutbox with a negative delay succeeded")
	}
	if _, err := d.DeadLetterOutbox(ctx, "t", []dialects.OutboxDeadLetter{{Seq: 1}}); err == nil {
		t.Error("DeadLetterOutbox without a reason succeeded")
	}
	if _, err := d.PurgeOutbox(ctx, time.Hour, 0); err == nil {
		t.Error("PurgeOutbox with limit 0 succeeded")
	}
}
