package inbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/crashpoint"
	"github.com/durable-go/durable/internal/dbwait"
	"github.com/durable-go/durable/internal/housekeep"
	"github.com/durable-go/durable/internal/pauses"
	"github.com/durable-go/durable/internal/throughput"
	"github.com/durable-go/durable/transport"
)

// Defaults of Config's zero values.
const (
	// DefaultConcurrency is the number of workers of the default queue on
	// Postgres. On SQLite, which has one writer, it is 1.
	DefaultConcurrency = 4
	// DefaultBatchSize is how many messages a worker claims at once and
	// handles in one transaction. It stays under 64 so that a batch's
	// savepoints never overflow Postgres's per-transaction cache of
	// subtransactions, past which every snapshot in the database gets slower.
	DefaultBatchSize = 50
	// DefaultPollInterval is how long an idle worker waits before looking
	// for work again; a Deliver in the same process wakes it sooner.
	DefaultPollInterval = time.Second
	// DefaultHandlerTimeout bounds one handler call.
	DefaultHandlerTimeout = 30 * time.Second
	// DefaultMaxAttempts is how many times a failing message is tried before
	// it goes to the dead letters.
	DefaultMaxAttempts = 10
	// DefaultLease is how long a claim holds its messages before anyone may
	// rescue them. A batch transaction locks its messages, so the lease only
	// needs to cover the time from claim to lock; it also bounds how long
	// the messages of a crashed worker wait.
	DefaultLease = time.Minute
	// DefaultRescueInterval is how often an inbox looks for expired leases.
	DefaultRescueInterval = 30 * time.Second
	// DefaultRetention is the dedupe window: how long handled messages are
	// kept so that a late duplicate is still recognised.
	DefaultRetention = 7 * 24 * time.Hour
	// DefaultCleanupInterval is how often handled messages older than the
	// retention are deleted.
	DefaultCleanupInterval = time.Minute
	// DefaultCleanupBatch is how many rows one cleanup statement deletes.
	DefaultCleanupBatch = 1000
	// DefaultInlineTimeout bounds the handlers of one delivery handled
	// inline; see Config.Inline.
	DefaultInlineTimeout = time.Second
	// DefaultNoHandlerGrace is how long a message whose topic has no
	// handler is retried before it is dead-lettered; see
	// Config.NoHandlerGrace.
	DefaultNoHandlerGrace = 5 * time.Minute
	// DefaultThroughputFlush is how often an inbox writes its throughput
	// counts to durable_throughput; see Config.ThroughputFlush.
	DefaultThroughputFlush = throughput.DefaultFlush
	// DefaultQueue names the default queue: the workers of the topics no
	// Queue lists, and inline handling. Pause it with
	// dialects.Controller.Pause (kind dialects.PauseQueue).
	DefaultQueue = "default"
)

// Config configures an Inbox. The zero value (or a nil *Config) gives the
// documented defaults; negative values are invalid unless a field says
// otherwise.
type Config struct {
	// Name identifies this inbox in leases (locked_by) and logs. Empty: the
	// host name, the process id and a random suffix.
	Name string

	// Incarnation, when set, starts every lease token the workers take
	// (durable_inbox.lease_token is Incarnation/random). A durable.Node
	// sets it to the ID of its row in durable_nodes, so that the messages
	// a process that died had claimed can be made ready at once
	// (dialects.Registry.ReleaseIncarnation) rather than when their leases
	// run out. It must be unique to this run of the process and hold no
	// '/' or '%'.
	Incarnation string

	// Concurrency is the number of workers of the default queue, which
	// handles every topic that no Queue lists, unknown topics included.
	// Each worker handles one batch at a time, in a transaction of its own
	// (one database connection). Zero: DefaultConcurrency, or 1 on SQLite.
	Concurrency int
	// Queues give topics workers of their own: a slow or busy topic then
	// does not hold the others back, and its concurrency is set apart.
	Queues []Queue
	// BatchSize is how many messages a worker claims at once and handles in
	// one transaction, with a savepoint per message. Zero: DefaultBatchSize.
	BatchSize int
	// PollInterval is how long an idle worker waits before it looks for
	// work again. Zero: DefaultPollInterval.
	PollInterval time.Duration

	// Inline handles delivered messages in the delivery's own transaction,
	// before the sender gets its ACK, instead of storing them for a worker:
	// one write per message instead of four, one transaction per delivered
	// batch, and no wait for a worker. See "Inline handling" in the package
	// documentation for when a message is handled inline and what happens
	// when a handler fails. Off: every message waits for a worker. A
	// durable.Node turns it on unless its Config.DisableInline is set.
	Inline bool
	// InlineTimeout bounds the handlers of one delivered batch handled
	// inline; when it passes, the running handler's attempt fails and the
	// messages not started yet are stored for the workers without counting
	// an attempt. Zero: DefaultInlineTimeout.
	InlineTimeout time.Duration

	// HandlerTimeout bounds each handler call (its ctx ends then). Zero:
	// DefaultHandlerTimeout.
	HandlerTimeout time.Duration
	// MaxAttempts is how many times a failing message is tried before it
	// goes to the dead letters (reason handler_error). Zero:
	// DefaultMaxAttempts.
	MaxAttempts int
	// Backoff returns the delay before the next attempt after the given
	// failed attempt (from 1). Nil: DefaultBackoff.
	Backoff func(attempt int) time.Duration
	// Topics overrides HandlerTimeout, MaxAttempts and Backoff per topic.
	Topics map[string]TopicPolicy
	// NoHandlerGrace is how long after it was received a message whose
	// topic has no handler keeps being retried before it is dead-lettered
	// (reason no_handler): during a rolling deploy a sender's new topic
	// may reach receivers not yet updated, which then handle it once they
	// are. Each retry waits half the time since the message was received,
	// at least a second and at most 30 s, and counts no attempt; the error
	// is recorded in the message's history. Zero: DefaultNoHandlerGrace;
	// negative: dead-letter such a message at once.
	NoHandlerGrace time.Duration

	// Lease is how long a claim holds its messages; see DefaultLease. Zero:
	// DefaultLease.
	Lease time.Duration
	// RescueInterval is how often the inbox makes messages with expired
	// leases ready again. Zero: DefaultRescueInterval.
	RescueInterval time.Duration

	// Retention is the dedupe window: handled messages are kept this long,
	// then deleted, DefaultCleanupBatch rows per statement. A duplicate
	// that arrives after the window is stored and handled again. Zero:
	// DefaultRetention.
	Retention time.Duration
	// CleanupInterval is how often handled messages past the retention are
	// deleted, by one inbox of the database at a time (see "Housekeeping"
	// in housekeeping.go). Zero: DefaultCleanupInterval.
	CleanupInterval time.Duration
	// DeadLetterRetention, when positive, deletes the inbox's dead letters
	// that failed longer ago (replayed or not) with the housekeeping. A
	// message whose dead letter is gone is no longer recognised as received:
	// a resend of it is stored and handled again. Zero: dead letters are
	// kept until purged by hand.
	DeadLetterRetention time.Duration

	// Logger receives the inbox's logs: start and stop at Info, failures at
	// Warn and Error, batches at Debug; nothing per message above Debug.
	// Nil: slog.Default().
	Logger *slog.Logger

	// ThroughputFlush is how often the inbox adds its per-minute counts
	// (handled and dead-lettered messages, per topic) to
	// durable_throughput, which a console charts; it also writes them when
	// Run returns. Zero: DefaultThroughputFlush.
	ThroughputFlush time.Duration

	// MeterProvider, when set, receives the inbox's metrics (see
	// metrics.go). Nil: no metrics.
	MeterProvider metric.MeterProvider
	// TracerProvider, when set, runs each handler in a consumer span that
	// continues the sender's trace (see "Tracing" in tracing.go). Nil: no
	// span; the handler's ctx still carries the sender's span context.
	TracerProvider trace.TracerProvider
	// Propagator reads the trace context from message headers. Nil: W3C
	// Trace Context (traceparent, tracestate).
	Propagator propagation.TextMapPropagator
}

// Queue is a set of topics with workers of their own.
type Queue struct {
	// Name names the queue in logs and leases. Empty: the first topic.
	Name string
	// Topics are the queue's topics; at least one, none in another queue.
	Topics []string
	// Concurrency is the number of workers. Zero: 1.
	Concurrency int
	// BatchSize overrides Config.BatchSize for the queue.
	BatchSize int
}

// TopicPolicy overrides Config's failure policy for one topic. Zero fields
// keep Config's values.
type TopicPolicy struct {
	HandlerTimeout time.Duration                   // overrides Config.HandlerTimeout
	MaxAttempts    int                             // overrides Config.MaxAttempts
	Backoff        func(attempt int) time.Duration // overrides Config.Backoff
}

// DefaultBackoff is the delay before the attempt after the given failed
// attempt: 2 s doubled per attempt (2 s, 4 s, 8 s, … ; about 17 minutes over
// the first ten attempts), at most one hour, each with ±25 % jitter so that
// messages that failed together do not retry together.
func DefaultBackoff(attempt int) time.Duration {
	d := float64(2*time.Second) * math.Pow(2, float64(max(attempt, 1)-1))
	d = min(d, float64(time.Hour))
	return time.Duration(d * (0.75 + 0.5*mrand.Float64()))
}

// Inbox stores the batches a transport delivers (it is a
// transport.Handler) and runs workers that hand each stored message to its
// handler. It is safe for concurrent use.
//
// The Inbox hands every message to the handler given to New, usually a
// *Mux that routes by topic.
type Inbox[TTx any] struct {
	h      Handler[TTx] // nil: no handler for any topic
	d      dialects.InboxDialect[TTx]
	store  dialects.InboxStore[TTx]
	cfg    Config // defaults applied
	name   string
	log    *slog.Logger
	queues []*queue
	mx     *metrics // nil: no metrics
	tr     tracing
	hk     *housekeep.Runner
	pauses *pauses.Watcher     // the queues paused by an operator
	tp     *throughput.Counter // the throughput counts not yet written

	running atomic.Bool
	// inline is set while Run runs and Config.Inline is on.
	inline atomic.Bool
	// queueOf maps each topic of the Queues to its queue's name; those
	// topics are never handled inline.
	queueOf map[string]string
}

// queue is a Queue, or the default queue, with its wake-up signal.
type queue struct {
	name          string
	topics        []string // nil: the default queue
	exclude       []string // the default queue: every listed topic
	concurrency   int
	batch         int
	wake          chan struct{}
	lastClaimFail atomic.Int64 // unix nanoseconds of the last logged claim failure
}

// signal wakes one idle worker of q, if any.
func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// New returns an Inbox storing and working through d and handing the
// messages to h, usually a *Mux (which may still get handlers while the
// inbox runs). It does no I/O; Run checks the schema.
//
// A nil h is no handler for any topic: every message fails with
// ErrNoHandler, is retried for Config.NoHandlerGrace, then dead-lettered
// (reason no_handler), as with an empty Mux. Such an inbox serves to store
// deliveries, read Stats and work on dead letters.
func New[TTx any](d dialects.InboxDialect[TTx], h Handler[TTx], cfg *Config) (*Inbox[TTx], error) {
	if d == nil {
		return nil, errors.New("durable/inbox: New needs a dialect")
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
		if d.Name() == "sqlite" {
			c.Concurrency = 1
		}
	}
	c.BatchSize = orDefault(c.BatchSize, DefaultBatchSize)
	c.PollInterval = orDefault(c.PollInterval, DefaultPollInterval)
	c.HandlerTimeout = orDefault(c.HandlerTimeout, DefaultHandlerTimeout)
	c.MaxAttempts = orDefault(c.MaxAttempts, DefaultMaxAttempts)
	if c.Backoff == nil {
		c.Backoff = DefaultBackoff
	}
	c.Lease = orDefault(c.Lease, DefaultLease)
	c.RescueInterval = orDefault(c.RescueInterval, DefaultRescueInterval)
	c.Retention = orDefault(c.Retention, DefaultRetention)
	c.CleanupInterval = orDefault(c.CleanupInterval, DefaultCleanupInterval)
	c.InlineTimeout = orDefault(c.InlineTimeout, DefaultInlineTimeout)
	c.NoHandlerGrace = orDefault(c.NoHandlerGrace, DefaultNoHandlerGrace)
	c.ThroughputFlush = orDefault(c.ThroughputFlush, DefaultThroughputFlush)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	name := c.Name
	if name == "" {
		host, _ := os.Hostname()
		name = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), rand.Text()[:6])
	}
	ib := &Inbox[TTx]{
		h:     h,
		d:     d,
		store: d,
		cfg:   c,
		name:  name,
		log:   c.Logger.With("inbox", name),
		tr:    newTracing(c.TracerProvider, c.Propagator),
	}
	var err error
	if ib.mx, err = newMetrics(c.MeterProvider); err != nil {
		return nil, err
	}
	ib.hk = ib.newHousekeeper()
	ib.pauses = pauses.New(d, dialects.PauseQueue, ib.log, "durable/inbox: ")
	ib.tp = throughput.New(d, ib.log)
	var listed []string
	ib.queueOf = make(map[string]string)
	for i, q := range c.Queues {
		qn := q.Name
		if qn == "" {
			qn = q.Topics[0]
		}
		for _, topic := range q.Topics {
			ib.queueOf[topic] = qn
		}
		ib.queues = append(ib.queues, &queue{
			name:        qn,
			topics:      q.Topics,
			concurrency: orDefault(q.Concurrency, 1),
			batch:       orDefault(q.BatchSize, c.BatchSize),
			wake:        make(chan struct{}, 1),
		})
		listed = append(listed, c.Queues[i].Topics...)
	}
	ib.queues = append(ib.queues, &queue{
		name:        DefaultQueue,
		exclude:     listed,
		concurrency: c.Concurrency,
		batch:       c.BatchSize,
		wake:        make(chan struct{}, 1),
	})
	return ib, nil
}

func orDefault[T int | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

func (c *Config) validate() error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"Concurrency", int64(c.Concurrency)}, {"BatchSize", int64(c.BatchSize)},
		{"PollInterval", int64(c.PollInterval)}, {"HandlerTimeout", int64(c.HandlerTimeout)},
		{"MaxAttempts", int64(c.MaxAttempts)}, {"Lease", int64(c.Lease)},
		{"RescueInterval", int64(c.RescueInterval)}, {"Retention", int64(c.Retention)},
		{"CleanupInterval", int64(c.CleanupInterval)}, {"DeadLetterRetention", int64(c.DeadLetterRetention)},
		{"InlineTimeout", int64(c.InlineTimeout)}, {"ThroughputFlush", int64(c.ThroughputFlush)},
	} {
		if f.v < 0 {
			return fmt.Errorf("durable/inbox: Config.%s must not be negative", f.name)
		}
	}
	seen := map[string]string{}
	names := map[string]bool{DefaultQueue: true}
	for i, q := range c.Queues {
		if len(q.Topics) == 0 {
			return fmt.Errorf("durable/inbox: Config.Queues[%d] has no topics", i)
		}
		if q.Concurrency < 0 || q.BatchSize < 0 {
			return fmt.Errorf("durable/inbox: Config.Queues[%d]: Concurrency and BatchSize must not be negative", i)
		}
		qn := q.Name
		if qn == "" {
			qn = q.Topics[0]
		}
		if names[qn] {
			return fmt.Errorf("durable/inbox: Config.Queues[%d]: queue name %q is taken", i, qn)
		}
		names[qn] = true
		for _, t := range q.Topics {
			if t == "" {
				return fmt.Errorf("durable/inbox: Config.Queues[%d] lists an empty topic", i)
			}
			if other, dup := seen[t]; dup {
				return fmt.Errorf("durable/inbox: topic %q is in queues %q and %q", t, other, qn)
			}
			seen[t] = qn
		}
	}
	for t, p := range c.Topics {
		if p.HandlerTimeout < 0 || p.MaxAttempts < 0 {
			return fmt.Errorf("durable/inbox: Config.Topics[%q]: values must not be negative", t)
		}
	}
	if strings.ContainsAny(c.Incarnation, "/%") {
		return fmt.Errorf("durable/inbox: Config.Incarnation %q holds '/' or '%%'", c.Incarnation)
	}
	return nil
}

// policy is the effective failure policy of a topic.
type policy struct {
	timeout     time.Duration
	maxAttempts int
	backoff     func(int) time.Duration
}

func (ib *Inbox[TTx]) policy(topic string) policy {
	p := policy{timeout: ib.cfg.HandlerTimeout, maxAttempts: ib.cfg.MaxAttempts, backoff: ib.cfg.Backoff}
	if tp, ok := ib.cfg.Topics[topic]; ok {
		p.timeout = orDefault(tp.HandlerTimeout, p.timeout)
		p.maxAttempts = orDefault(tp.MaxAttempts, p.maxAttempts)
		if tp.Backoff != nil {
			p.backoff = tp.Backoff
		}
	}
	return p
}

// Name returns the inbox's name, as used in leases and logs.
func (ib *Inbox[TTx]) Name() string { return ib.name }

// Dialect returns the dialect the inbox works through, as New took it.
func (ib *Inbox[TTx]) Dialect() dialects.InboxDialect[TTx] { return ib.d }

// CheckSchema verifies that durable's migrations ran; see
// dialects.Dialect.CheckSchema.
func (ib *Inbox[TTx]) CheckSchema(ctx context.Context) error { return ib.d.CheckSchema(ctx) }

var _ transport.Handler = (*Inbox[any])(nil)

// Deliver stores a delivered batch: every envelope becomes an inbox row
// keyed by (b.Source, ID), all in one transaction and one statement (a few
// on SQLite for very large batches), and Deliver returns only after it
// committed. An envelope whose (source, id) is stored already, or is in the
// dead letters, or repeats an earlier envelope of the batch, is answered
// Duplicate and not stored again, so a resend is acknowledged and handled
// once. Duplicates are recognised while the original is kept: handled
// messages for Config.Retention, dead letters until purged.
//
// An envelope that cannot be stored (transport.Envelope.Validate: an empty
// ID, a name over 255 bytes, text that is not valid UTF-8 or holds a NUL
// byte, ...) is answered Rejected with the reason, and the others are
// stored. An invalid source fails the whole batch permanently.
// A database error fails it retryably: the sender sends it again. (Two
// deliveries of overlapping ids in different orders at the same moment can
// deadlock on Postgres, which then fails one of them: retryably too.) The
// envelope's SendAttempt (the sender's) is not kept; the inbox counts its
// own handler attempts. Its DeliverAt becomes the row's first RunAt, the
// receiver's own schedule, which retries and snoozes then move.
//
// Storing wakes idle workers of this Inbox.
func (ib *Inbox[TTx]) Deliver(ctx context.Context, b *transport.Batch) (transport.Result, error) {
	if b == nil || len(b.Envelopes) == 0 {
		return transport.Result{}, nil
	}
	if reason := transport.CheckName(b.Source); reason != "" {
		return transport.Result{}, transport.Permanent(fmt.Errorf("durable/inbox: batch source %s", reason))
	}
	outcomes := make([]transport.Outcome, len(b.Envelopes))
	rows := make([]dialects.InboxRow, 0, len(b.Envelopes))
	index := make([]int, 0, len(b.Envelopes))
	var resent []bool // per row: sent before (see deliverInline)
	for i := range b.Envelopes {
		e := &b.Envelopes[i]
		if err := e.Validate(); err != nil {
			outcomes[i] = transport.Outcome{Status: transport.Rejected, Reason: rejectReason(err)}
			continue
		}
		// The sender's schedule is the first of the receiver's own.
		rows = append(rows, dialects.InboxRow{Envelope: *e, Source: b.Source, RunAt: e.DeliverAt})
		index = append(index, i)
		resent = append(resent, e.SendAttempt > 1)
	}
	if len(rows) == 0 {
		return transport.Result{Outcomes: outcomes}, nil
	}
	var (
		stored []bool
		err    error
	)
	if ib.inline.Load() {
		stored, err = ib.deliverInline(ctx, rows, resent)
	} else {
		stored, err = ib.insert(ctx, rows)
	}
	if err != nil {
		return transport.Result{}, err
	}
	crashpoint.Hit("inbox.after-insert-commit")
	wake := false
	dups := 0
	for j, ok := range stored {
		if !ok {
			outcomes[index[j]].Status = transport.Duplicate
			dups++
		}
		wake = wake || ok && rows[j].State != dialects.InboxStateHandled
	}
	ib.mx.receivedBatch(len(stored)-dups, dups, len(b.Envelopes)-len(rows))
	if wake {
		ib.wakeAll()
	}
	return transport.Result{Outcomes: outcomes}, nil
}

// beginDelivery starts the transaction that stores a delivered batch: a
// durable one where the dialect offers it (dialects.DurableBeginner; SQLite),
// since the acknowledgement that follows its commit lets the sender delete
// its copy, and a commit lost to a power loss would lose the messages.
func (ib *Inbox[TTx]) beginDelivery(ctx context.Context) (TTx, error) {
	if db, ok := ib.d.(dialects.DurableBeginner[TTx]); ok {
		return db.BeginDurable(ctx)
	}
	return ib.d.Begin(ctx)
}

func (ib *Inbox[TTx]) insert(ctx context.Context, rows []dialects.InboxRow) ([]bool, error) {
	tx, err := ib.beginDelivery(ctx)
	if err != nil {
		return nil, fmt.Errorf("durable/inbox: deliver: begin: %w", err)
	}
	stored, err := ib.store.InsertInbox(ctx, tx, rows)
	if err != nil {
		_ = ib.d.Rollback(ctx, tx)
		return nil, fmt.Errorf("durable/inbox: deliver: %w", err)
	}
	if err := ib.d.Commit(ctx, tx); err != nil {
		_ = ib.d.Rollback(ctx, tx)
		return nil, fmt.Errorf("durable/inbox: deliver: commit: %w", err)
	}
	return stored, nil
}

// rejectReason is the reason of a Rejected outcome for the error of
// transport.Envelope.Validate: the field and what is wrong with it.
func rejectReason(err error) string {
	var ee *transport.EnvelopeError
	if errors.As(err, &ee) {
		return ee.Field + " " + ee.Reason
	}
	return err.Error()
}

// Wake makes an idle worker of every queue look for ready messages now:
// for messages that became ready by other means than this inbox, such as
// the claims of a stopped process released by a durable.Node. It may be
// called any time.
func (ib *Inbox[TTx]) Wake() { ib.wakeAll() }

// wakeAll wakes an idle worker of every queue.
func (ib *Inbox[TTx]) wakeAll() {
	for _, q := range ib.queues {
		q.signal()
	}
}

// Counts counts messages of an inbox by state. The groups do not overlap.
type Counts struct {
	Ready    int64 // waiting for their first attempt
	Retrying int64 // waiting for another attempt after a failure
	Running  int64 // leased to a worker
	Handled  int64 // done, kept for the dedupe window
	Dead     int64 // in the dead letters, not replayed since they failed

	// HandledLastMinute counts the messages handled less than a minute ago
	// (by the database's clock), among Handled: the recent throughput.
	HandledLastMinute int64
}

// Stats counts the inbox's messages: the embedded Counts are the totals,
// Topics and Queues the same counts per topic and per queue.
type Stats struct {
	Counts
	// Topics maps each topic with at least one message or pending dead
	// letter to its counts; nil when there is none.
	Topics map[string]Counts
	// Queues maps the name of each queue of this inbox (Config.Queues, and
	// "default" for the topics no Queue lists) to the counts of its
	// topics; every queue is there, with zero counts when it has nothing.
	// The queues are this inbox's Config: messages stored by another inbox
	// of the database count in the queue their topic has here.
	Queues map[string]Counts
}

// Stats counts the inbox's messages by state, those handled in the last
// minute and its pending dead letters, in total, per topic and per queue.
// It reads the whole inbox table.
func (ib *Inbox[TTx]) Stats(ctx context.Context) (Stats, error) {
	s, err := ib.store.InboxStats(ctx)
	if err != nil {
		return Stats{}, err
	}
	out := Stats{Counts: Counts(s.InboxCounts), Queues: make(map[string]Counts, len(ib.queues))}
	for _, q := range ib.queues {
		out.Queues[q.name] = Counts{}
	}
	for topic, c := range s.Topics {
		if out.Topics == nil {
			out.Topics = make(map[string]Counts, len(s.Topics))
		}
		out.Topics[topic] = Counts(c)
		q := ib.queueOf[topic]
		if q == "" {
			q = "default"
		}
		out.Queues[q] = out.Queues[q].add(Counts(c))
	}
	return out, nil
}

// add returns c + o.
func (c Counts) add(o Counts) Counts {
	return Counts{
		Ready: c.Ready + o.Ready, Retrying: c.Retrying + o.Retrying, Running: c.Running + o.Running,
		Handled: c.Handled + o.Handled, Dead: c.Dead + o.Dead, HandledLastMinute: c.HandledLastMinute + o.HandledLastMinute,
	}
}

// Run checks the schema, then runs the workers of every queue and the
// housekeeping (rescue of expired leases, deletion of handled messages past
// the retention) until ctx ends. It then stops claiming, lets each
// in-flight handler finish (bounded by its timeout), releases the messages
// of its batch that had not started, commits, and returns nil. Errors of
// the database while running are logged and retried, not returned.
//
// While the database does not answer at start (connection refused, reset
// or timed out; the server starting up or shutting down), Run waits for it,
// checking again with a backoff up to 5s and logging each failure. An
// answer that is an error (schema missing or older, authentication failed,
// unknown database) is returned at once.
//
// Several Inboxes, in one process or many, may run on one database: they
// share the work.
func (ib *Inbox[TTx]) Run(ctx context.Context) error {
	if !ib.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer ib.running.Store(false)
	if err := dbwait.Wait(ctx, ib.d.CheckSchema, dbwait.Options{Logger: ib.log, What: "inbox"}); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting: nothing was started
		}
		return err
	}
	// The pauses, before the first claim, then once per poll interval.
	pctx, cancel := context.WithTimeout(ctx, opTimeout)
	ib.pauses.Poll(pctx)
	cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		ib.pauses.Run(ctx, ib.cfg.PollInterval, opTimeout, func(resumed []string) {
			for _, q := range ib.queues {
				if slices.Contains(resumed, q.name) {
					q.signal()
				}
			}
		})
	})
	wg.Go(func() { ib.tp.Run(ctx, ib.cfg.ThroughputFlush, opTimeout) })
	if ib.cfg.Inline {
		ib.inline.Store(true)
		wg.Go(func() {
			<-ctx.Done()
			ib.inline.Store(false)
		})
	}
	workers := 0
	for _, q := range ib.queues {
		wg.Go(func() { ib.poll(ctx, q) })
		for i := range q.concurrency {
			worker := fmt.Sprintf("%s/%s/%d", ib.name, q.name, i)
			wg.Go(func() { ib.work(ctx, q, worker) })
			workers++
		}
	}
	wg.Go(func() { ib.housekeep(ctx) })
	defer ib.mx.observe(ib.store.InboxStats, func(err error) {
		ib.log.Warn("durable/inbox: cannot register the state gauge", "err", err)
	})()
	ib.log.Info("durable/inbox: running", "dialect", ib.d.Name(), "queues", len(ib.queues), "workers", workers)
	wg.Wait()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	ib.tp.Flush(fctx)
	cancel()
	ib.log.Info("durable/inbox: stopped")
	return nil
}

// housekeep rescues expired leases and deletes old handled messages, at
// once and then periodically, until ctx ends.
func (ib *Inbox[TTx]) housekeep(ctx context.Context) {
	rescue := time.NewTicker(ib.cfg.RescueInterval)
	defer rescue.Stop()
	cleanup := time.NewTicker(ib.cfg.CleanupInterval)
	defer cleanup.Stop()
	defer ib.hk.Release(ctx)
	ib.rescueLogged(ctx)
	ib.retention(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-rescue.C:
			ib.rescueLogged(ctx)
		case <-cleanup.C:
			ib.retention(ctx)
		}
	}
}

func (ib *Inbox[TTx]) rescueLogged(ctx context.Context) {
	n, err := ib.Rescue(ctx)
	switch {
	case err != nil && ctx.Err() == nil:
		ib.log.Warn("durable/inbox: rescue of expired leases failed", "err", err)
	case n > 0:
		ib.log.Warn("durable/inbox: rescued messages whose lease expired (a worker died or stalled)", "messages", n)
	}
}

// rescueBatch bounds one rescue statement.
const rescueBatch = 1000

// Rescue makes messages whose lease expired ready again, as Run does every
// RescueInterval, and returns how many. Messages a live worker holds in its
// batch transaction are left alone whatever their lease says.
func (ib *Inbox[TTx]) Rescue(ctx context.Context) (int, error) {
	total := 0
	for {
		n, err := ib.store.RescueInbox(ctx, rescueBatch)
		total += n
		if err != nil {
			return total, err
		}
		if n < rescueBatch {
			break
		}
	}
	if total > 0 {
		ib.mx.rescuedRows(total)
		ib.wakeAll()
	}
	return total, nil
}

// Cleanup deletes handled messages older than the retention, in statements
// of DefaultCleanupBatch rows, and returns how many it deleted. Run does the
// same every CleanupInterval, under the housekeeping lease (see
// housekeeping.go); Cleanup takes no lease.
func (ib *Inbox[TTx]) Cleanup(ctx context.Context) (int, error) {
	total := 0
	for {
		n, err := ib.store.PurgeInbox(ctx, ib.cfg.Retention, DefaultCleanupBatch)
		total += n
		if err != nil || n < DefaultCleanupBatch {
			return total, err
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
	}
}
