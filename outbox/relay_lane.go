package outbox

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/crashpoint"
	"github.com/durable-go/durable/transport"
)

// lane relays the rows of one destination: one goroutine claims (loop), and
// each claim is sent by a goroutine of its own (deliver), at most
// cfg.InFlight at once.
type lane struct {
	c      *relayCore
	dest   string
	sender transport.Sender

	hint  chan struct{} // a wake-up is pending (capacity 1)
	early atomic.Bool   // it came from Enqueue, possibly before the commit
	slots chan struct{} // one token per claim in flight

	sent, retried, dead, expired atomic.Int64
	mx                           laneMetrics

	mu         sync.Mutex
	failures   int       // consecutive failed sends
	pauseUntil time.Time // no claims before (the retry backoff)
	failedAt   time.Time // last failure logged
	unlogged   int       // failures since then, not logged
	dbFailedAt time.Time // last database failure logged
}

func newLane(c *relayCore, dest string, s transport.Sender) *lane {
	return &lane{
		c:      c,
		dest:   dest,
		sender: s,
		hint:   make(chan struct{}, 1),
		slots:  make(chan struct{}, c.cfg.InFlight),
		mx:     c.mx.lane(dest),
	}
}

// poke records a wake-up without blocking.
func (l *lane) poke(early bool) {
	if early {
		l.early.Store(true)
	}
	select {
	case l.hint <- struct{}{}:
	default:
	}
}

// failing reports whether the destination's last send failed.
func (l *lane) failing() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failures > 0
}

// pausedFor returns how long the destination's backoff still lasts.
func (l *lane) pausedFor() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Until(l.pauseUntil)
}

// sleep waits for d or until ctx is done; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// backoff returns the delay after n consecutive failures: exponential from
// min to max, with equal jitter (half fixed, half random).
func backoff(n int, lo, hi time.Duration) time.Duration {
	d := hi
	if n < 32 {
		if e := lo << (n - 1); e > 0 && e < hi {
			d = e
		}
	}
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// opCtx returns a context for a database operation that must complete even
// while the relay stops (a claim whose rows must be released, an ack).
func opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
}

// loop claims rows while ctx lives: at once when the last claim was full
// or a wake-up came, otherwise every PollInterval.
func (l *lane) loop(ctx, sendCtx context.Context, inflight *sync.WaitGroup) {
	cfg := &l.c.cfg
	var (
		claimNow   = true // recovery: look at once
		followStep time.Duration
		followEnd  time.Time
		dbFailures int
		lastClaim  time.Time // start of the last claim that found several rows
		lastEmpty  time.Time // start of the last empty claim since then
		empties    int       // consecutive empty claims since lastClaim
		share      = 1.0     // the linger's multiple: see nextShare
		full       bool      // the last claim was full
		timer      = time.NewTimer(time.Hour)
	)
	timer.Stop()
	defer timer.Stop()
	for {
		if !claimNow {
			wait := cfg.PollInterval
			if followStep > 0 {
				if time.Now().Before(followEnd) {
					wait = min(wait, followStep)
				} else {
					followStep = 0
				}
			}
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-l.hint:
				timer.Stop()
				if l.early.Swap(false) {
					followStep, followEnd = time.Millisecond, time.Now().Add(followWindow)
				}
			case <-timer.C:
				if followStep > 0 {
					followStep = min(2*followStep, followMax)
				}
			}
			// Busy (the last claim found several rows, so they arrive
			// faster than a claim takes, and batches are still out): let
			// the rows of more transactions gather. A trickle of messages,
			// one per claim, pays no linger.
			//
			// Busy, and claims since found nothing: other relays sharing
			// the database take the rows. Wake-ups from this process's
			// Enqueue and follow-ups would make this relay claim at their
			// pace and find nothing each time, at the full cost of a claim;
			// it claims no sooner than its linger after the last empty
			// claim, doubling while they stay empty, at most 8× Linger.
			// The others serve the destination meanwhile, and a claim
			// with rows ends the wait.
			//
			// Busy, and other relays claim the destination's rows too
			// (share > 1): linger share × Linger, even with no batch
			// out, so that the relays together claim about once per
			// Linger, as one relay alone would.
			var until time.Time
			linger := time.Duration(float64(cfg.Linger) * share)
			switch {
			case lastClaim.IsZero():
			case empties > 0:
				until = lastEmpty.Add(min(linger<<min(empties-1, emptyBackoffMax), maxShare*cfg.Linger))
			case len(l.slots) > 0 || share > 1:
				until = lastClaim.Add(linger)
			}
			if !until.IsZero() && !sleep(ctx, time.Until(until)) {
				return
			}
		}
		claimNow = false
		if ctx.Err() != nil {
			return
		}
		if d := l.pausedFor(); d > 0 {
			if !sleep(ctx, d) {
				return
			}
			claimNow = true
			continue
		}
		select {
		case l.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		if l.pausedFor() > 0 { // a send failed while this waited for a slot
			<-l.slots
			claimNow = true
			continue
		}
		if l.c.pauses.Paused(l.dest) {
			// Paused by an operator: claim nothing until the pause watcher
			// sees the resume and pokes the lane (or the next poll).
			<-l.slots
			continue
		}
		// A failing destination probes with one row at a time, so that the
		// others are not claimed, released and counted as attempts in vain.
		limit := cfg.BatchSize
		if l.failing() {
			if len(l.slots) > 1 { // a probe is out; its outcome pokes us
				<-l.slots
				continue
			}
			limit = 1
		}
		token := l.c.token()
		start := time.Now()
		octx, cancel := opCtx(ctx)
		rows, err := l.c.store.ClaimOutbox(octx, dialects.OutboxClaim{
			Destination: l.dest, Token: token, Limit: limit, Lease: cfg.Lease,
		})
		cancel()
		if err != nil {
			<-l.slots
			dbFailures++
			l.dbFailed("claiming rows", err)
			if !sleep(ctx, backoff(dbFailures, cfg.RetryMin, min(cfg.PollInterval, cfg.RetryMax))) {
				return
			}
			claimNow = true
			continue
		}
		dbFailures = 0
		l.mx.claimed(len(rows), limit)
		if len(rows) > 0 {
			crashpoint.Hit("relay.after-claim")
			first := 0
			for i := range rows {
				if rows[i].SendAttempt == 1 {
					first++
				}
			}
			l.c.tp.Add(dialects.ThroughputEnqueued, l.dest, first)
		}
		switch {
		case len(rows) > 1:
			lastClaim, empties = start, 0
			share = nextShare(share, cfg.Linger, rows)
		case len(rows) == 0 && !lastClaim.IsZero() && start.Sub(lastClaim) < followWindow:
			// Still busy: see the linger above.
			lastEmpty, empties = start, empties+1
		default:
			lastClaim, empties, share = time.Time{}, 0, 1
		}
		send := l.expire(ctx, token, rows)
		if len(send) == 0 {
			<-l.slots
		} else if ctx.Err() != nil {
			// Stopping: hand the rows back untried.
			l.release(ctx, token, send, dialects.OutboxRelease{Unsent: true})
			<-l.slots
			return
		} else {
			inflight.Add(1)
			go func() {
				defer inflight.Done()
				l.deliver(ctx, sendCtx, token, start, send)
				<-l.slots
				// Settled rows may free the next rows of their keys, and
				// rows may have queued up meanwhile: look again.
				l.poke(false)
			}()
		}
		// A claim that comes up short right after a full one may have
		// lost a race: the candidates of a claim are the
		// oldest due rows, and concurrent claims of other relays that
		// lock them first are passed over (SKIP LOCKED), though more
		// rows wait behind them. Look again soon, as after an early
		// wake-up, rather than sit idle for a PollInterval while the
		// others work through the backlog.
		if len(rows) < limit && full && limit == cfg.BatchSize {
			followStep, followEnd = time.Millisecond, time.Now().Add(followWindow)
		}
		full = len(rows) == limit
		claimNow = full
	}
}

// maxShare bounds the linger's multiple (lane.loop, nextShare).
const maxShare = 8

// nextShare returns the linger's next multiple after a claim of several
// rows. The claim took the rows enqueued since the destination's previous
// claim, by this relay or another: the spread of their creation times is
// about the time between the destination's claims. One relay that lingers
// sees a spread of at least Linger, and its multiple stays 1; with n relays
// claiming in turn, each sees about 1/n of its own linger, and the multiple
// moves toward n, so that the relays together claim about once per Linger.
// Rows sent again (a retry) or created long before (a scheduled delivery)
// widen the spread and only lower the multiple. The move is halved to damp
// the noise of commit times. Rows that all share one creation time (one
// transaction's) tell nothing, and move the multiple halfway back to 1.
func nextShare(share float64, linger time.Duration, rows []dialects.ClaimedRow) float64 {
	var lo, hi time.Time
	for i := range rows {
		if rows[i].SendAttempt != 1 {
			continue
		}
		at := rows[i].CreatedAt
		if lo.IsZero() || at.Before(lo) {
			lo = at
		}
		if at.After(hi) {
			hi = at
		}
	}
	switch {
	case linger <= 0 || lo.IsZero():
		return 1
	case !hi.After(lo):
		// The rows of one transaction (they share its creation time): no
		// measure of the time between claims. Fall back toward 1, so
		// that one relay taking one multi-message transaction per claim
		// does not linger for it.
		return max((share+1)/2, 1)
	}
	spread := max(hi.Sub(lo), time.Millisecond)
	want := share * float64(linger) / float64(spread)
	return min(max((share+want)/2, 1), maxShare)
}

// expire dead-letters the expired rows of a claim and returns the others.
func (l *lane) expire(ctx context.Context, token string, rows []dialects.ClaimedRow) []dialects.ClaimedRow {
	var (
		letters []dialects.OutboxDeadLetter
		firstID string
	)
	send := rows[:0:0]
	for _, r := range rows {
		if r.Expired {
			if firstID == "" {
				firstID = r.ID
			}
			letters = append(letters, dialects.OutboxDeadLetter{
				Seq: r.Seq, Reason: dialects.ReasonExpired,
				Error: expiredError(r.ExpiresAt),
			})
			continue
		}
		send = append(send, r)
	}
	if len(letters) > 0 {
		octx, cancel := opCtx(ctx)
		n, err := l.c.store.DeadLetterOutbox(octx, token, letters)
		cancel()
		if err != nil {
			// The rows stay leased and come back when the lease expires.
			l.dbFailed("moving expired rows to the dead letters", err)
		} else {
			l.dead.Add(int64(n))
			l.expired.Add(int64(n))
			l.mx.deadLettered(n, dialects.ReasonExpired)
			l.c.log.Warn("durable/outbox: relay: expired messages moved to the dead letters",
				"destination", l.dest, "count", n, "first_id", firstID)
		}
	}
	return send
}

// dbFailed logs a database failure, at most once per failureLogInterval.
func (l *lane) dbFailed(what string, err error) {
	l.mu.Lock()
	log := time.Since(l.dbFailedAt) >= failureLogInterval
	if log {
		l.dbFailedAt = time.Now()
	}
	l.mu.Unlock()
	if log {
		l.c.log.Warn("durable/outbox: relay: database operation failed", "destination", l.dest, "op", what, "err", err)
	}
}

// estimate is the bytes an envelope adds to a batch: its variable parts and
// a fixed overhead for times, lengths and the attempt.
func estimate(r *dialects.ClaimedRow) int {
	n := 64 + len(r.ID) + len(r.Topic) + len(r.Key) + len(r.Payload)
	for k, v := range r.Headers {
		n += 4 + len(k) + len(v)
	}
	return n
}

// split cuts a claim into batches of at most BatchBytes (a larger row goes
// alone).
func (l *lane) split(rows []dialects.ClaimedRow) [][]dialects.ClaimedRow {
	var (
		out  [][]dialects.ClaimedRow
		from int
		size int
	)
	for i := range rows {
		n := estimate(&rows[i])
		if i > from && size+n > l.c.cfg.BatchBytes {
			out = append(out, rows[from:i])
			from, size = i, 0
		}
		size += n
	}
	return append(out, rows[from:])
}

// retry is the verdict on a batch that failed with a retryable error.
type retry struct {
	after time.Duration
	err   string
}

// deliver sends the rows of one claim, batch after batch. The rows of one
// claim never share an ordering key, so their batches' order does not
// matter; a batch that fails with a retryable error takes the unsent rest
// with it into the backoff.
func (l *lane) deliver(ctx, sendCtx context.Context, token string, claimed time.Time, rows []dialects.ClaimedRow) {
	batches := l.split(rows)
	for i, b := range batches {
		var rest []dialects.ClaimedRow
		for _, r := range batches[i+1:] {
			rest = append(rest, r...)
		}
		// Send only while the lease outlives the send: a send still
		// running when the lease expires could be duplicated by another
		// relay claiming the rows.
		deadline := claimed.Add(l.c.cfg.Lease - l.c.cfg.Lease/10)
		if ctx.Err() != nil || time.Until(deadline) < l.c.cfg.SendTimeout/2 {
			l.release(ctx, token, append(b, rest...), dialects.OutboxRelease{Unsent: true})
			return
		}
		if rt := l.send(sendCtx, token, deadline, b); rt != nil {
			if len(rest) > 0 {
				l.release(ctx, token, rest, dialects.OutboxRelease{RetryAfter: rt.after, Error: rt.err, Unsent: true})
			}
			return
		}
	}
}

// send sends one batch and settles its rows. It returns nil unless the
// batch failed with a retryable error, when its rows are released for a
// retry after the destination's backoff.
func (l *lane) send(sendCtx context.Context, token string, deadline time.Time, rows []dialects.ClaimedRow) *retry {
	env := make([]transport.Envelope, len(rows))
	for i := range rows {
		env[i] = rows[i].Envelope // SendAttempt counted by the claim
	}
	sctx, cancel := context.WithTimeout(sendCtx, l.c.cfg.SendTimeout)
	sctx, cancel2 := context.WithDeadline(sctx, deadline)
	res, err := l.sender.Send(sctx, &transport.Batch{Envelopes: env})
	cancel2()
	cancel()
	if !errors.Is(err, transport.ErrTooLarge) && !errors.Is(err, transport.ErrInvalid) {
		l.mx.sending(len(rows)) // refused while encoding: nothing left
	}

	switch {
	case err == nil:
		l.succeeded()
		var (
			acked   []int64
			letters []dialects.OutboxDeadLetter
			dups    int
		)
		for i := range rows {
			o := res.Outcome(i)
			if o.Status == transport.Duplicate {
				dups++
			}
			if o.Status == transport.Rejected {
				reason := o.Reason
				if reason == "" {
					reason = "rejected by the peer"
				}
				letters = append(letters, dialects.OutboxDeadLetter{Seq: rows[i].Seq, Reason: dialects.ReasonRejected, Error: reason})
				continue
			}
			acked = append(acked, rows[i].Seq) // Accepted or Duplicate
		}
		l.mx.answered(len(acked)-dups, dups, len(letters))
		if l.c.log.Enabled(context.Background(), slog.LevelDebug) {
			l.c.log.Debug("durable/outbox: relay: batch acknowledged", "destination", l.dest, "messages", len(rows),
				"duplicates", dups, "rejected", len(letters), "first_id", rows[0].ID)
		}
		l.ack(sendCtx, token, deadline, acked)
		l.deadLetter(sendCtx, token, rows, letters, "rejected by the peer")
		return nil

	case transport.IsRetryable(err):
		var after time.Duration // the relay is stopping: leave the rows to the next one at once
		if sendCtx.Err() == nil {
			after = l.failed(err)
		}
		l.release(sendCtx, token, rows, dialects.OutboxRelease{RetryAfter: after, Error: err.Error()})
		l.retried.Add(int64(len(rows)))
		l.mx.retried(len(rows))
		return &retry{after: after, err: err.Error()}

	case errors.Is(err, transport.ErrTooLarge) || errors.Is(err, transport.ErrInvalid):
		if len(rows) > 1 {
			half := len(rows) / 2
			if rt := l.send(sendCtx, token, deadline, rows[:half]); rt != nil {
				l.release(sendCtx, token, rows[half:], dialects.OutboxRelease{RetryAfter: rt.after, Error: rt.err, Unsent: true})
				return rt
			}
			return l.send(sendCtx, token, deadline, rows[half:])
		}
		fallthrough

	default: // refused for good
		letters := make([]dialects.OutboxDeadLetter, len(rows))
		for i := range rows {
			letters[i] = dialects.OutboxDeadLetter{Seq: rows[i].Seq, Reason: dialects.ReasonRejected, Error: err.Error()}
		}
		l.mx.refused(len(rows))
		l.deadLetter(sendCtx, token, rows, letters, "refused for good")
		return nil
	}
}

func (l *lane) ack(ctx context.Context, token string, deadline time.Time, seqs []int64) {
	if len(seqs) == 0 {
		return
	}
	crashpoint.Hit("relay.after-ack")
	var (
		n   int
		err error
	)
	// A failed write (a busy SQLite file, a Postgres restart) is tried
	// again while the lease lasts (twice when the relay is stopping): rows left in the outbox are sent again
	// once it ends, a duplicate the receiver has to recognise.
	for attempt := 1; ; attempt++ {
		octx, cancel := opCtx(ctx)
		n, err = l.c.store.AckOutbox(octx, token, seqs, l.c.cfg.Retention > 0)
		cancel()
		if err == nil {
			break
		}
		wait := backoff(attempt, l.c.cfg.RetryMin, time.Second)
		if attempt >= ackAttempts || time.Now().Add(wait).After(deadline) || (ctx.Err() != nil && attempt >= 2) {
			// Delivered but still in the outbox: sent again after the
			// lease, and recognised by the receiver.
			l.dbFailed("recording acknowledged rows", err)
			return
		}
		// Sleep on a context that outlives a stop: the ACK was received,
		// and recording it spares the next relay a resend.
		if !sleep(context.WithoutCancel(ctx), wait) {
			return
		}
	}
	crashpoint.Hit("relay.after-delete")
	l.sent.Add(int64(n))
	l.c.tp.Add(dialects.ThroughputSent, l.dest, n)
	if n < len(seqs) {
		l.c.log.Warn("durable/outbox: relay: lease lost before the acknowledgement was recorded; those messages will be sent again",
			"destination", l.dest, "acknowledged", len(seqs), "recorded", n)
	}
}

func (l *lane) deadLetter(ctx context.Context, token string, rows []dialects.ClaimedRow, letters []dialects.OutboxDeadLetter, what string) {
	if len(letters) == 0 {
		return
	}
	octx, cancel := opCtx(ctx)
	n, err := l.c.store.DeadLetterOutbox(octx, token, letters)
	cancel()
	if err != nil {
		l.dbFailed("moving rejected rows to the dead letters", err)
		return
	}
	l.dead.Add(int64(n))
	l.mx.deadLettered(n, dialects.ReasonRejected)
	first := &rows[0]
	for i := range rows {
		if rows[i].Seq == letters[0].Seq {
			first = &rows[i]
			break
		}
	}
	l.c.log.Warn("durable/outbox: relay: messages "+what+", moved to the dead letters",
		"destination", l.dest, "count", n, "first_id", first.ID, "first_topic", first.Topic, "error", letters[0].Error)
}

func (l *lane) release(ctx context.Context, token string, rows []dialects.ClaimedRow, r dialects.OutboxRelease) {
	if len(rows) == 0 {
		return
	}
	seqs := make([]int64, len(rows))
	for i := range rows {
		seqs[i] = rows[i].Seq
	}
	octx, cancel := opCtx(ctx)
	_, err := l.c.store.ReleaseOutbox(octx, token, seqs, r)
	cancel()
	if err != nil {
		// The rows come back when their lease expires.
		l.dbFailed("releasing rows", err)
	}
}

// failed records a retryable send failure: the destination pauses for the
// returned backoff. Failures are logged at most once per
// failureLogInterval.
func (l *lane) failed(err error) time.Duration {
	l.mu.Lock()
	l.failures++
	d := backoff(l.failures, l.c.cfg.RetryMin, l.c.cfg.RetryMax)
	if until := time.Now().Add(d); until.After(l.pauseUntil) {
		l.pauseUntil = until
	}
	n, log := l.failures, time.Since(l.failedAt) >= failureLogInterval
	skipped := l.unlogged
	if log {
		l.failedAt, l.unlogged = time.Now(), 0
	} else {
		l.unlogged++
	}
	l.mu.Unlock()
	if log {
		l.c.log.Warn("durable/outbox: relay: send failed; the destination waits and retries",
			"destination", l.dest, "err", err, "consecutive_failures", n, "unlogged_failures", skipped, "retry_in", d)
	}
	return d
}

// succeeded ends the destination's backoff.
func (l *lane) succeeded() {
	l.mu.Lock()
	n := l.failures
	l.failures, l.pauseUntil, l.unlogged = 0, time.Time{}, 0
	if n > 0 {
		l.failedAt = time.Time{}
	}
	l.mu.Unlock()
	if n > 0 {
		l.c.log.Info("durable/outbox: relay: destination reachable again", "destination", l.dest, "failed_sends", n)
	}
}
