package outbox

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/dbwait"
	"github.com/durable-go/durable/internal/housekeep"
	"github.com/durable-go/durable/internal/pauses"
	"github.com/durable-go/durable/internal/throughput"
	"github.com/durable-go/durable/transport"
)

// Relay defaults: the values RelayConfig's zero fields stand for.
const (
	// DefaultPollInterval is how often an idle relay looks for due rows
	// without a wake-up. It bounds the latency of a message whose wake-up
	// was lost, and how late a scheduled message (DeliverAt) may leave.
	DefaultPollInterval = time.Second
	// DefaultBatchSize is the most rows claimed, and sent, at once.
	DefaultBatchSize = 256
	// DefaultBatchBytes bounds the payload and header bytes of one batch.
	DefaultBatchBytes = 1 << 20
	// DefaultLinger is the shortest time between two claims of a busy
	// destination; see RelayConfig.Linger.
	DefaultLinger = 5 * time.Millisecond
	// DefaultInFlight is the number of batches per destination that may be
	// sent and not yet acknowledged at once.
	DefaultInFlight = 4
	// DefaultLease is how long claimed rows stay reserved for one relay.
	DefaultLease = 30 * time.Second
	// DefaultSendTimeout bounds one Send, unless half the Lease is shorter;
	// see RelayConfig.SendTimeout.
	DefaultSendTimeout = 10 * time.Second
	// DefaultRetryMin and DefaultRetryMax bound the backoff of a destination
	// whose sends fail.
	DefaultRetryMin = 100 * time.Millisecond
	DefaultRetryMax = 30 * time.Second
	// DefaultThroughputFlush is how often a relay writes its throughput
	// counts to durable_throughput; see RelayConfig.ThroughputFlush.
	DefaultThroughputFlush = throughput.DefaultFlush
)

// Internal timings.
const (
	// opTimeout bounds each database operation of the relay.
	opTimeout = 15 * time.Second
	// ackAttempts bounds the writes of one batch's acknowledgement (the
	// lease bounds them too); see lane.ack.
	ackAttempts = 8
	// followWindow and followMax shape the follow-up claims after an
	// in-process wake-up that found nothing: the enqueuing transaction
	// had not committed yet, so the relay looks again after 1ms, 2ms, 4ms
	// ... up to followMax apart, for followWindow.
	followWindow = time.Second
	followMax    = 250 * time.Millisecond
	// emptyBackoffMax bounds the linger after empty claims of a busy
	// destination: Linger, 2×, 4×, at most 8× Linger (see lane.loop).
	emptyBackoffMax = 3
	// housekeepingInterval is how often the relay looks for destinations
	// without a Sender and, with Retention or DeadLetterRetention, purges
	// (see housekeeping.go).
	housekeepingInterval = time.Minute
	// unknownLogInterval rate-limits the warning about a destination
	// without a Sender.
	unknownLogInterval = 5 * time.Minute
	// failureLogInterval rate-limits the warnings about a failing
	// destination or database.
	failureLogInterval = 30 * time.Second
)

// RelayConfig configures a Relay. A nil *RelayConfig, and every zero field,
// stand for the documented default.
type RelayConfig struct {
	// Logger receives the relay's events: failures and recoveries of
	// destinations, dead letters, destinations without a Sender. Nothing is
	// logged per message at Info or above. Nil: slog.Default().
	Logger *slog.Logger

	// ID names this relay in the leases it takes: durable_outbox.locked_by
	// holds ID/nonce/n, with a nonce drawn at random by NewRelay, so that
	// relays given the same ID (replicas sharing one configuration) never
	// share a lease token. Default: host name, process id and a random
	// suffix.
	ID string

	// Incarnation, when set, takes the place of the random nonce in the
	// lease tokens (ID/Incarnation/n). A durable.Node sets it to the ID of
	// its row in durable_nodes, so that the claims of a process that died
	// can be released at once (dialects.Registry.ReleaseIncarnation)
	// rather than when their leases run out. It must be unique to this
	// run of the process and hold no '/' or '%'.
	Incarnation string

	// PollInterval is how often an idle destination is checked for due
	// rows without a wake-up. Default DefaultPollInterval (1s).
	PollInterval time.Duration
	// BatchSize is the most rows claimed at once for one destination, and
	// the most envelopes in one batch. Default DefaultBatchSize.
	BatchSize int
	// BatchBytes bounds the bytes (payload, headers, names) of one batch; a
	// claim that holds more is sent as several batches. A single larger
	// message is sent alone. Default DefaultBatchBytes (1 MiB).
	BatchBytes int
	// Linger batches a stream of messages: while a destination is busy
	// (its last claim found several rows, but not a full batch, and
	// batches are still waiting for their ACK), a wake-up makes it claim
	// again no sooner than Linger after that claim, so that one claim takes
	// the messages of many transactions instead of one each. A trickle of
	// messages, one per claim, pays no linger, and a full claim is followed
	// by the next at once. Relays sharing a database adapt it: a relay
	// whose claims find rows created less than Linger apart (other relays
	// claimed in between) lingers longer, up to 8× Linger, so that they
	// together claim a busy destination about once per Linger, as one
	// relay alone would; and a claim of a busy destination that finds
	// nothing (the others took the rows) is followed by the next no sooner
	// than the linger after it, doubling while claims stay empty, at most
	// 8× Linger. Default DefaultLinger (5ms); negative: never wait.
	Linger time.Duration
	// InFlight bounds the batches per destination sent and not yet
	// answered. Default DefaultInFlight.
	InFlight int

	// Lease is how long claimed rows stay reserved for this relay: another
	// relay on the same database takes them only after it expired, so it
	// must exceed the time to send and acknowledge a batch. Default
	// DefaultLease (30s). Setting Lease alone is enough: SendTimeout's
	// default follows it.
	Lease time.Duration
	// SendTimeout bounds one Send; it must be shorter than Lease, and a
	// SendTimeout that is not makes NewRelay fail. A send is also cut short
	// so that it ends before the lease does. Default: DefaultSendTimeout
	// (10s), or half the Lease when that is shorter (Lease 5s: 2.5s), so
	// that a short Lease needs no SendTimeout of its own.
	SendTimeout time.Duration
	// RetryMin and RetryMax bound the exponential backoff, with jitter, of
	// a destination whose sends fail with a retryable error: its rows wait
	// that long before they are claimed again, and the destination pauses;
	// other destinations are not affected. Defaults DefaultRetryMin (100ms)
	// and DefaultRetryMax (30s).
	RetryMin, RetryMax time.Duration
	// Retention, when positive, keeps acknowledged rows (sent_at set) for
	// that long before the relay deletes them, for audits; zero deletes
	// them on acknowledgement. One relay of the database at a time deletes
	// them (see "Housekeeping" in housekeeping.go).
	Retention time.Duration
	// DeadLetterRetention, when positive, deletes the outbox's dead letters
	// that failed longer ago, with the housekeeping. Zero: dead letters are
	// kept until purged by hand.
	DeadLetterRetention time.Duration
	// DrainTimeout bounds the wait for batches in flight once Run's context
	// is cancelled; batches still unanswered then are cancelled and their
	// rows released for the next relay. Default: SendTimeout.
	DrainTimeout time.Duration

	// NoListen stops the relay from listening for database notifications
	// (Postgres LISTEN) even when the dialect can: use it behind a
	// transaction-mode pooler, which does not pass them. Polling and the
	// in-process wake-ups still work.
	NoListen bool
	// Outbox, when set, wakes the relay as soon as it enqueues a message:
	// pass the *Outbox that writes to the same database in this process.
	// See Outbox.Subscribe.
	Outbox Waker

	// MeterProvider, when set, receives the relay's metrics (see
	// metrics.go). Nil: no metrics.
	MeterProvider metric.MeterProvider

	// ThroughputFlush is how often the relay adds its per-minute counts
	// (enqueued and sent, per destination) to durable_throughput, which a
	// console charts; it also writes them when Run returns. Default
	// DefaultThroughputFlush (10s).
	ThroughputFlush time.Duration
}

// resolve fills in the defaults and checks the values.
func (c RelayConfig) resolve() (RelayConfig, error) {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ID == "" {
		c.ID = defaultRelayID()
	}
	if strings.ContainsAny(c.Incarnation, "/%") {
		return c, fmt.Errorf("durable/outbox: RelayConfig.Incarnation %q holds '/' or '%%'", c.Incarnation)
	}
	for _, f := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"PollInterval", &c.PollInterval, DefaultPollInterval},
		{"Lease", &c.Lease, DefaultLease},
		{"SendTimeout", &c.SendTimeout, 0}, // follows Lease, below
		{"RetryMin", &c.RetryMin, DefaultRetryMin},
		{"RetryMax", &c.RetryMax, DefaultRetryMax},
		{"Retention", &c.Retention, 0},
		{"DeadLetterRetention", &c.DeadLetterRetention, 0},
		{"DrainTimeout", &c.DrainTimeout, 0},
		{"ThroughputFlush", &c.ThroughputFlush, DefaultThroughputFlush},
	} {
		if *f.v < 0 {
			return c, fmt.Errorf("durable/outbox: RelayConfig.%s is negative (%v)", f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	for _, f := range []struct {
		name string
		v    *int
		def  int
	}{
		{"BatchSize", &c.BatchSize, DefaultBatchSize},
		{"BatchBytes", &c.BatchBytes, DefaultBatchBytes},
		{"InFlight", &c.InFlight, DefaultInFlight},
	} {
		if *f.v < 0 {
			return c, fmt.Errorf("durable/outbox: RelayConfig.%s is negative (%d)", f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	switch {
	case c.Linger == 0:
		c.Linger = DefaultLinger
	case c.Linger < 0:
		c.Linger = 0
	}
	if c.SendTimeout == 0 {
		// Half the lease: a send that takes all of its time still leaves
		// the other half to settle its rows under the lease.
		c.SendTimeout = min(DefaultSendTimeout, c.Lease/2)
		if c.SendTimeout == 0 {
			return c, fmt.Errorf("durable/outbox: RelayConfig.Lease (%v) is too short to send anything in", c.Lease)
		}
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = c.SendTimeout
	}
	if c.RetryMax < c.RetryMin {
		return c, fmt.Errorf("durable/outbox: RelayConfig.RetryMax (%v) is below RetryMin (%v)", c.RetryMax, c.RetryMin)
	}
	if c.SendTimeout >= c.Lease {
		return c, fmt.Errorf("durable/outbox: RelayConfig.SendTimeout (%v) must be shorter than Lease (%v): a send outliving its lease may be duplicated by another relay (leave SendTimeout zero to derive it from Lease)", c.SendTimeout, c.Lease)
	}
	return c, nil
}

func defaultRelayID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "relay"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// Relay moves committed outbox rows to their destinations: it claims due
// rows in batches with a lease, sends them through the destination's
// transport.Sender, and deletes them (or marks them sent) once the peer
// acknowledged them. Several relays, in one process or many, may run on
// one database: a row is leased to one of them at a time.
//
// # Delivery
//
// Delivery is at least once. A row leaves the outbox only after its peer
// acknowledged it, in one statement guarded by the lease; a relay that dies
// between the acknowledgement and that statement leaves the row to be sent
// again once its lease expired, and the receiver recognises the id.
//
// Per envelope, the peer's answer decides: Accepted and Duplicate are
// delivered; Rejected moves the row to durable_dead_letters (side outbox,
// reason rejected, with the peer's reason).
//
// A batch that fails with a retryable error (see transport.IsRetryable) is
// released with a backoff of its destination alone: the destination pauses,
// the others keep flowing. Until a send to it succeeds again, the
// destination is probed with one message at a time, so that its backlog is
// not claimed, released and counted as attempts over and over.
//
// A batch refused for good (transport.ErrRejected, or any other error marked
// permanent) is dead-lettered with the error, except for
// transport.ErrTooLarge and transport.ErrInvalid: those describe the batch's
// composition or one envelope, and the relay chose the composition, so it
// splits the batch in halves and sends them again, until the single
// offending envelope is dead-lettered alone and every other one delivered.
// Both errors arise while encoding, before anything is written to the
// network, so the search costs no round trips. A peer's permanent NACK of a
// whole batch, by contrast, says nothing about which envelope it objects to
// (a peer that can tell answers Rejected per envelope), so splitting would
// only resend the batch in parts to a peer that refused it.
//
// A message whose ExpiresAt passed before it could be sent is moved to the
// dead letters with reason expired and never sent. A message with DeliverAt
// in the future leaves within PollInterval of that time.
//
// # Order
//
// Within a destination rows are claimed and sent in enqueue order, and
// several batches may be in flight, so messages without a key can arrive
// in a different order. A message with an ordering key is not sent while an
// earlier message with the same destination and key is unsent (in flight,
// waiting for a retry, or scheduled later): such messages leave one at a
// time, in enqueue order, even across relays. Throughput per key is
// therefore one message per round trip; spread ordered traffic over many
// keys.
//
// # Wake-ups
//
// Polling every PollInterval is the floor; wake-ups only save latency. On
// Postgres the relay listens for the NOTIFY that Enqueue sends at commit
// with Config.Notify (through dialects.Listener, on a connection of its own
// that reconnects with backoff and then looks at every destination, since
// notifications sent meanwhile are lost). In one process,
// RelayConfig.Outbox wakes the relay from Enqueue itself; that happens
// before the enqueuing transaction commits, so a relay that finds nothing
// looks again after 1, 2, 4 ... ms for a second. When the relay runs in the
// enqueuing process, prefer RelayConfig.Outbox to Config.Notify: NOTIFY
// makes Postgres serialise the commits of concurrent notifying
// transactions, which halved the enqueue rate of 16 writers here.
//
// # Cost of a claim
//
// A claim reads the destination's unsent rows in enqueue order until it has
// a batch, passing over rows in flight and rows held back behind an earlier
// row of their key, so its cost grows with those. A deep backlog on few
// keys makes every claim read it all; keys spread over many values, or no
// keys, keep claims cheap.
//
// # Pauses and throughput
//
// An operator pauses a destination with dialects.Controller.Pause, kind
// dialects.PauseDestination, or `durable pause --destination`. Run reads
// durable_pauses before its first claim and then once per PollInterval (one
// query for all destinations): while a destination is paused the relay
// neither claims nor sends its rows; batches already in flight finish, and
// its rows wait in the outbox, expired ones too (they are dead-lettered once
// it is resumed). A resume seen wakes the destination at once. Both are
// logged at Info. The relay also counts per destination and minute the rows
// it claims for their first attempt ("enqueued") and the rows acknowledged
// ("sent"), and adds them to durable_throughput every
// RelayConfig.ThroughputFlush and when Run returns.
//
// # Destinations without a Sender
//
// Rows for a destination that has no Sender in this relay are kept, never
// dropped; Stats reports them and the relay logs a warning now and then.
//
// # Stopping
//
// When Run's context is cancelled, the relay stops claiming, lets the
// batches in flight finish (up to DrainTimeout), releases what it claimed
// and did not send, and returns nil. The Senders stay open: the caller
// closes them after Run returned.
type Relay struct {
	d       dialects.RelayStore
	core    *relayCore
	running atomic.Bool
}

// NewRelay returns a relay for the outbox of d that sends each destination's
// rows through senders[destination]. A nil cfg gives the defaults. NewRelay
// does no I/O; Run checks the schema.
func NewRelay(d dialects.RelayStore, senders map[string]transport.Sender, cfg *RelayConfig) (*Relay, error) {
	if d == nil {
		return nil, errors.New("durable/outbox: NewRelay needs a dialect")
	}
	if len(senders) == 0 {
		return nil, errors.New("durable/outbox: NewRelay needs at least one destination's Sender")
	}
	var c RelayConfig
	if cfg != nil {
		c = *cfg
	}
	c, err := c.resolve()
	if err != nil {
		return nil, err
	}
	mx, err := newRelayMetrics(c.MeterProvider)
	if err != nil {
		return nil, err
	}
	core := &relayCore{
		store:   d,
		cfg:     c,
		log:     c.Logger,
		mx:      mx,
		lanes:   make(map[string]*lane, len(senders)),
		unknown: make(map[string]time.Time),
		nonce:   cmp.Or(c.Incarnation, rand.Text()[:8]),
	}
	core.pauses = pauses.New(d, dialects.PauseDestination, c.Logger, "durable/outbox: relay: ")
	core.tp = throughput.New(d, c.Logger)
	if l, ok := d.(dialects.Listener); ok && !c.NoListen {
		core.listener = l
	}
	core.hk = newHousekeeper(d, core)
	for dest, s := range senders {
		if dest == "" || transport.CheckName(dest) != "" {
			return nil, fmt.Errorf("durable/outbox: invalid destination name %q in the senders", dest)
		}
		if s == nil {
			return nil, fmt.Errorf("durable/outbox: nil Sender for destination %q", dest)
		}
		core.lanes[dest] = newLane(core, dest, s)
	}
	return &Relay{d: d, core: core}, nil
}

// Run checks the schema, then relays until ctx is cancelled. It then drains
// (see Relay, "Stopping") and returns nil. While the database does not
// answer at start (connection refused, reset or timed out; the server
// starting up or shutting down), Run waits for it, checking again with a
// backoff up to 5s and logging each failure. It returns an error only when
// it cannot start: the database answered the schema check with an error
// (schema missing or older, authentication failed, unknown database), or
// the relay is running already. A relay may be run again after Run
// returned.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("durable/outbox: Relay.Run called while the relay is running")
	}
	defer r.running.Store(false)
	if err := dbwait.Wait(ctx, r.d.CheckSchema, dbwait.Options{Logger: r.core.log, What: "relay"}); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting: nothing was started
		}
		return err
	}
	r.core.run(ctx)
	return nil
}

// RelayStats is a snapshot of a relay's work and of the outbox's backlog.
// The counters are this relay's since it was created; the backlog is the
// database's, whichever relay will send it.
type RelayStats struct {
	Sent         int64 // rows acknowledged by their peer (Duplicate included)
	Retried      int64 // rows released for a retry after a failed send
	DeadLettered int64 // rows moved to the dead letters (Expired included)
	Expired      int64 // rows dead-lettered because they expired
	Unsent       int64 // rows not yet acknowledged, in every destination
	// OldestAge is the age of the oldest unsent row; zero when none.
	OldestAge time.Duration
	// DeadLetters counts the pending outbox dead letters of every
	// destination, whichever relay moved them there (see
	// Outbox.DeadLetters).
	DeadLetters int64
	// Destinations holds every destination that has a Sender, unsent rows
	// or pending dead letters.
	Destinations map[string]DestinationStats
}

// DestinationStats is the part of RelayStats about one destination.
type DestinationStats struct {
	// HasSender reports whether this relay has a Sender for the
	// destination; rows of a destination without one wait in the outbox.
	HasSender bool
	// Paused reports that the destination is in its retry backoff.
	Paused bool
	// PausedByOperator reports that the destination was paused in
	// durable_pauses (dialects.Controller.Pause) when the relay last
	// looked: the relay neither claims nor sends its rows.
	PausedByOperator bool

	Sent, Retried, DeadLettered, Expired int64 // as in RelayStats

	Unsent    int64         // rows not yet acknowledged
	InFlight  int64         // rows leased by a relay now
	Retrying  int64         // rows waiting for a retry
	Scheduled int64         // rows whose DeliverAt is in the future
	OldestAge time.Duration // age of the oldest unsent row

	DeadLetters int64 // pending outbox dead letters
}

// Stats returns the relay's counters and the outbox's backlog and pending
// dead letters per destination (one query that reads every unsent row and
// counts the outbox's dead letters). It may be called at
// any time, also while Run is not running.
func (r *Relay) Stats(ctx context.Context) (RelayStats, error) {
	return r.core.stats(ctx)
}

// Wake makes the relay look for due rows of destination now, as a commit
// of Enqueue in this process does ("" wakes every destination): for rows
// that became claimable by other means, such as the claims of a stopped
// process released by a durable.Node. It may be called any time.
func (r *Relay) Wake(destination string) {
	r.core.wake(destination, false)
}

// relayCore is the part of Relay that does not depend on the transaction
// type.
type relayCore struct {
	store    dialects.Relayer
	listener dialects.Listener // nil: none, or NoListen
	cfg      RelayConfig
	log      *slog.Logger
	mx       *relayMetrics       // nil: no metrics
	hk       *housekeep.Runner   // the retention jobs
	pauses   *pauses.Watcher     // the destinations paused by an operator
	tp       *throughput.Counter // the throughput counts not yet written
	lanes    map[string]*lane    // fixed after NewRelay
	nonce    string              // random, per relay: tokens stay unique when IDs are not
	claims   atomic.Uint64       // numbers the claim tokens

	mu      sync.Mutex
	unknown map[string]time.Time // destination without a Sender → last warned
}

// token returns a lease token unique to this claim, also among relays that
// were given the same ID.
func (c *relayCore) token() string {
	return fmt.Sprintf("%s/%s/%d", c.cfg.ID, c.nonce, c.claims.Add(1))
}

// wake pokes the lane of dest, or every lane for "". early marks an
// in-process wake-up that may precede the commit.
func (c *relayCore) wake(dest string, early bool) {
	if dest == "" {
		for _, l := range c.lanes {
			l.poke(early)
		}
		return
	}
	if l, ok := c.lanes[dest]; ok {
		l.poke(early)
	}
}

func (c *relayCore) run(ctx context.Context) {
	// Sends outlive ctx during the drain; stop cancels them afterwards.
	sendCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	var (
		loops    sync.WaitGroup
		inflight sync.WaitGroup
	)
	if c.cfg.Outbox != nil {
		unsubscribe := c.cfg.Outbox.Subscribe(func(dest string) { c.wake(dest, true) })
		defer unsubscribe()
	}
	defer c.mx.observe(c)()
	// The pauses, before the first claim, then once per poll interval.
	pctx, cancel := context.WithTimeout(ctx, opTimeout)
	c.pauses.Poll(pctx)
	cancel()
	loops.Go(func() {
		c.pauses.Run(ctx, c.cfg.PollInterval, opTimeout, func(resumed []string) {
			for _, d := range resumed {
				c.wake(d, false)
			}
		})
	})
	loops.Go(func() { c.tp.Run(ctx, c.cfg.ThroughputFlush, opTimeout) })
	if c.listener != nil {
		loops.Go(func() { c.listen(ctx) })
	}
	for _, l := range c.lanes {
		loops.Go(func() { l.loop(ctx, sendCtx, &inflight) })
	}
	loops.Go(func() { c.housekeeping(ctx) })
	loops.Wait() // every loop ends when ctx is done; no new sends start

	drained := make(chan struct{})
	go func() {
		inflight.Wait()
		close(drained)
	}()
	t := time.NewTimer(c.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-drained:
	case <-t.C:
		c.log.Warn("durable/outbox: relay: batches still unanswered after the drain timeout; cancelling them", "drain_timeout", c.cfg.DrainTimeout)
		stop()
		<-drained
	}
	fctx, cancel := opCtx(ctx)
	c.tp.Flush(fctx)
	cancel()
}

func (c *relayCore) listen(ctx context.Context) {
	var (
		mu   sync.Mutex
		last time.Time
	)
	err := c.listener.ListenOutbox(ctx, func(dest string) { c.wake(dest, false) }, func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) >= failureLogInterval {
			last = time.Now()
			c.log.Warn("durable/outbox: relay: listening for wake-ups failed; polling meanwhile", "err", err)
		}
	})
	if err != nil && ctx.Err() == nil {
		c.log.Error("durable/outbox: relay: cannot listen for wake-ups; relying on polling", "err", err)
	}
}

// housekeeping reports destinations without a Sender and purges retained
// rows, at start and every housekeepingInterval.
func (c *relayCore) housekeeping(ctx context.Context) {
	t := time.NewTicker(housekeepingInterval)
	defer t.Stop()
	defer c.releaseRetention(ctx)
	for {
		c.reportUnknown(ctx)
		c.retention(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *relayCore) reportUnknown(ctx context.Context) {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	dests, err := c.store.OutboxDestinations(octx)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("durable/outbox: relay: listing the outbox's destinations failed", "err", err)
		}
		return
	}
	var warn []string
	now := time.Now()
	c.mu.Lock()
	for _, d := range dests {
		if _, ok := c.lanes[d]; ok {
			continue
		}
		if last, ok := c.unknown[d]; !ok || now.Sub(last) >= unknownLogInterval {
			c.unknown[d] = now
			warn = append(warn, d)
		}
	}
	c.mu.Unlock()
	for _, d := range warn {
		c.log.Warn("durable/outbox: relay: unsent messages for a destination without a Sender are kept in the outbox", "destination", d)
	}
	for _, d := range dests {
		if _, ok := c.lanes[d]; !ok && !c.pauses.Paused(d) {
			c.expireUnattended(ctx, d)
		}
	}
}

// expireUnattended moves the expired messages of dest, a destination this
// relay has no Sender for, to the dead letters (reason expired), so that a
// message's expiry holds whether or not anyone sends to its destination. A
// relay that does send there would do the same with them.
func (c *relayCore) expireUnattended(ctx context.Context, dest string) {
	const limit = 1000
	moved := 0
	for ctx.Err() == nil {
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		token := c.token()
		rows, err := c.store.ClaimOutbox(octx, dialects.OutboxClaim{
			Destination: dest, Token: token, Limit: limit, Lease: c.cfg.Lease, ExpiredOnly: true,
		})
		n := 0
		if err == nil && len(rows) > 0 {
			letters := make([]dialects.OutboxDeadLetter, len(rows))
			for i, r := range rows {
				letters[i] = dialects.OutboxDeadLetter{Seq: r.Seq, Reason: dialects.ReasonExpired,
					Error: expiredError(r.ExpiresAt) + " (no Sender for its destination)"}
			}
			n, err = c.store.DeadLetterOutbox(octx, token, letters)
		}
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				// The rows stay leased and come back when the lease expires.
				c.log.Warn("durable/outbox: relay: moving the expired messages of a destination without a Sender failed", "destination", dest, "err", err)
			}
			break
		}
		moved += n
		if len(rows) < limit {
			break
		}
	}
	if moved > 0 {
		c.mx.lane(dest).deadLettered(moved, dialects.ReasonExpired)
		c.log.Warn("durable/outbox: relay: expired messages of a destination without a Sender moved to the dead letters", "destination", dest, "count", moved)
	}
}

// expiredError is the error of a message dead-lettered because it expired
// before it was sent.
func expiredError(at time.Time) string {
	return fmt.Sprintf("expired at %s before it could be sent", at.UTC().Format(time.RFC3339Nano))
}

func (c *relayCore) stats(ctx context.Context) (RelayStats, error) {
	rows, err := c.store.OutboxStats(ctx)
	if err != nil {
		return RelayStats{}, err
	}
	s := RelayStats{Destinations: make(map[string]DestinationStats, len(c.lanes)+len(rows))}
	for dest, l := range c.lanes {
		ds := DestinationStats{
			HasSender:        true,
			Paused:           l.pausedFor() > 0,
			PausedByOperator: c.pauses.Paused(dest),
			Sent:             l.sent.Load(),
			Retried:          l.retried.Load(),
			DeadLettered:     l.dead.Load(),
			Expired:          l.expired.Load(),
		}
		s.Sent += ds.Sent
		s.Retried += ds.Retried
		s.DeadLettered += ds.DeadLettered
		s.Expired += ds.Expired
		s.Destinations[dest] = ds
	}
	for _, r := range rows {
		ds := s.Destinations[r.Destination]
		ds.Unsent, ds.InFlight, ds.Retrying, ds.Scheduled, ds.OldestAge = r.Unsent, r.Leased, r.Retrying, r.Scheduled, r.OldestAge
		ds.DeadLetters = r.DeadLetters
		s.Destinations[r.Destination] = ds
		s.Unsent += r.Unsent
		s.DeadLetters += r.DeadLetters
		s.OldestAge = max(s.OldestAge, r.OldestAge)
	}
	return s, nil
}
