package outbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/telemetry"
)

// Metrics. With a metric.MeterProvider in Config.MeterProvider or
// RelayConfig.MeterProvider, the outbox and the relay report these
// instruments (scope "github.com/durable-go/durable/outbox"); without one
// they cost nothing. Attributes are bounded: a destination, a reason, a
// status; never a message id. Destinations beyond the 256th distinct one are
// reported as "_other".
//
//	durable.outbox.enqueued       counter   {message}  durable.destination
//	    messages written by Enqueue calls that returned nil (a transaction
//	    that rolls back afterwards is still counted)
//	durable.relay.sent            counter   {message}  durable.destination
//	    envelopes handed to the destination's Sender, every attempt counted
//	durable.relay.acked           counter   {message}  durable.destination, durable.status (accepted|duplicate)
//	    envelopes the peer acknowledged
//	durable.relay.nacked          counter   {message}  durable.destination
//	    envelopes refused for good, by the peer or the transport
//	durable.relay.retried         counter   {message}  durable.destination
//	    envelopes released for a retry after a retryable send failure
//	durable.relay.dead_lettered   counter   {message}  durable.destination, durable.reason (expired|rejected)
//	durable.relay.batch.size      histogram {message}  durable.destination
//	    envelopes per batch sent
//	durable.relay.claims          counter   {claim}    durable.destination, durable.result (empty|short|full)
//	    claims made, by how many rows they leased: none, fewer than the
//	    claim's limit, or the limit
//	durable.outbox.backlog        gauge     {message}  durable.destination
//	    unsent rows in the database, whichever relay will send them
//	durable.outbox.oldest_age     gauge     s          durable.destination
//	    age of the oldest unsent row
//	durable.housekeeping.deleted  counter   {row}      durable.table (outbox|dead_letters)
//	    rows deleted past their retention by this relay's housekeeping
//
// The two gauges are observed while Relay.Run runs, from Relay.Stats's
// query, which reads every unsent row: it runs at most once per
// gaugeRefresh however often the metrics are collected. Every relay on a
// database reports the same backlog; aggregate them with max, not sum.

const (
	// gaugeRefresh is the shortest interval between two database queries
	// behind the observable gauges.
	gaugeRefresh = 10 * time.Second
	// gaugeTimeout bounds that query.
	gaugeTimeout = 5 * time.Second
)

// outboxMetrics are the instruments of an Outbox; a nil *outboxMetrics
// records nothing.
type outboxMetrics struct {
	enqueued metric.Int64Counter
	names    telemetry.Names
	sets     telemetry.Sets
}

func newOutboxMetrics(mp metric.MeterProvider) (*outboxMetrics, error) {
	m := telemetry.Meter(mp, "outbox")
	if m == nil {
		return nil, nil
	}
	c, err := m.Int64Counter("durable.outbox.enqueued", metric.WithUnit("{message}"),
		metric.WithDescription("Messages written to the outbox by Enqueue calls that returned nil."))
	if err != nil {
		return nil, fmt.Errorf("durable/outbox: metrics: %w", err)
	}
	return &outboxMetrics{enqueued: c}, nil
}

// enqueue counts rows by destination.
func (m *outboxMetrics) enqueue(ctx context.Context, rows []dialects.OutboxRow) {
	if m == nil {
		return
	}
	for _, dest := range destinations(rows) {
		n := 0
		for i := range rows {
			if rows[i].Destination == dest {
				n++
			}
		}
		dest = m.names.Bound(dest)
		m.enqueued.Add(ctx, int64(n), m.sets.Get(telemetry.Key{A: dest}, func() []attribute.KeyValue {
			return []attribute.KeyValue{telemetry.KeyDestination.String(dest)}
		}))
	}
}

// relayMetrics are the instruments of a Relay; a nil *relayMetrics records
// nothing.
type relayMetrics struct {
	meter                              metric.Meter
	sent, acked, nacked, retried, dead metric.Int64Counter
	purged, claims                     metric.Int64Counter
	batch                              metric.Int64Histogram
	backlog                            metric.Int64ObservableGauge
	oldest                             metric.Float64ObservableGauge
	deadLetters                        metric.Int64ObservableGauge
	names                              telemetry.Names
	sets                               telemetry.Sets
	mu                                 sync.Mutex
	snapAt                             time.Time
	snap                               []dialects.OutboxStats
}

func newRelayMetrics(mp metric.MeterProvider) (*relayMetrics, error) {
	meter := telemetry.Meter(mp, "outbox")
	if meter == nil {
		return nil, nil
	}
	m := &relayMetrics{meter: meter}
	var errs []error
	counter := func(name, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithUnit("{message}"), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	m.sent = counter("durable.relay.sent", "Envelopes handed to a destination's Sender, every attempt counted.")
	m.acked = counter("durable.relay.acked", "Envelopes the peer acknowledged (accepted, or recognised as a duplicate).")
	m.nacked = counter("durable.relay.nacked", "Envelopes refused for good by the peer or the transport.")
	m.retried = counter("durable.relay.retried", "Envelopes released for a retry after a retryable send failure.")
	m.dead = counter("durable.relay.dead_lettered", "Outbox rows moved to the dead letters.")
	var err error
	m.claims, err = meter.Int64Counter("durable.relay.claims", metric.WithUnit("{claim}"),
		metric.WithDescription("Claims made, by result: no row (empty), fewer than the limit (short), the limit (full)."))
	errs = append(errs, err)
	m.purged, err = meter.Int64Counter("durable.housekeeping.deleted", metric.WithUnit("{row}"),
		metric.WithDescription("Rows deleted past their retention."))
	errs = append(errs, err)
	m.batch, err = meter.Int64Histogram("durable.relay.batch.size", metric.WithUnit("{message}"),
		metric.WithDescription("Envelopes per batch sent."),
		metric.WithExplicitBucketBoundaries(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000))
	errs = append(errs, err)
	m.backlog, err = meter.Int64ObservableGauge("durable.outbox.backlog", metric.WithUnit("{message}"),
		metric.WithDescription("Unsent outbox rows per destination."))
	errs = append(errs, err)
	m.oldest, err = meter.Float64ObservableGauge("durable.outbox.oldest_age", metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest unsent outbox row per destination."))
	errs = append(errs, err)
	m.deadLetters, err = meter.Int64ObservableGauge("durable.outbox.dead_letters", metric.WithUnit("{message}"),
		metric.WithDescription("Pending outbox dead letters per destination (never replayed, or failed again since)."))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("durable/outbox: metrics: %w", err)
	}
	return m, nil
}

// dest returns the attribute option of a destination.
func (m *relayMetrics) dest(d string) metric.MeasurementOption {
	d = m.names.Bound(d)
	return m.sets.Get(telemetry.Key{A: d}, func() []attribute.KeyValue {
		return []attribute.KeyValue{telemetry.KeyDestination.String(d)}
	})
}

// deleted records n rows of table deleted by the housekeeping.
func (m *relayMetrics) deleted(table string, n int) {
	if m == nil || n <= 0 {
		return
	}
	m.purged.Add(context.Background(), int64(n), m.sets.Get(telemetry.Key{A: "table", B: table}, func() []attribute.KeyValue {
		return []attribute.KeyValue{telemetry.KeyTable.String(table)}
	}))
}

// laneMetrics records the measurements of one destination; the zero value
// records nothing.
type laneMetrics struct {
	m                         *relayMetrics
	dest, accepted, duplicate metric.MeasurementOption
	expired, rejected         metric.MeasurementOption
	empty, short, full        metric.MeasurementOption
}

func (m *relayMetrics) lane(dest string) laneMetrics {
	if m == nil {
		return laneMetrics{}
	}
	d := m.names.Bound(dest)
	opt := func(k attribute.Key, v string) metric.MeasurementOption {
		return m.sets.Get(telemetry.Key{A: d, B: string(k), C: v}, func() []attribute.KeyValue {
			return []attribute.KeyValue{telemetry.KeyDestination.String(d), k.String(v)}
		})
	}
	return laneMetrics{
		m:         m,
		dest:      m.dest(d),
		accepted:  opt(telemetry.KeyStatus, "accepted"),
		duplicate: opt(telemetry.KeyStatus, "duplicate"),
		expired:   opt(telemetry.KeyReason, dialects.ReasonExpired),
		rejected:  opt(telemetry.KeyReason, dialects.ReasonRejected),
		empty:     opt(telemetry.KeyResult, "empty"),
		short:     opt(telemetry.KeyResult, "short"),
		full:      opt(telemetry.KeyResult, "full"),
	}
}

// claimed records a claim that leased n rows of at most limit.
func (l laneMetrics) claimed(n, limit int) {
	if l.m == nil {
		return
	}
	opt := l.short
	switch {
	case n == 0:
		opt = l.empty
	case n >= limit:
		opt = l.full
	}
	l.m.claims.Add(context.Background(), 1, opt)
}

// sending records a batch of n envelopes handed to the Sender.
func (l laneMetrics) sending(n int) {
	if l.m == nil {
		return
	}
	ctx := context.Background()
	l.m.sent.Add(ctx, int64(n), l.dest)
	l.m.batch.Record(ctx, int64(n), l.dest)
}

// answered records the peer's answer to a batch.
func (l laneMetrics) answered(accepted, duplicate, rejected int) {
	if l.m == nil {
		return
	}
	ctx := context.Background()
	if accepted > 0 {
		l.m.acked.Add(ctx, int64(accepted), l.accepted)
	}
	if duplicate > 0 {
		l.m.acked.Add(ctx, int64(duplicate), l.duplicate)
	}
	if rejected > 0 {
		l.m.nacked.Add(ctx, int64(rejected), l.dest)
	}
}

// refused records n envelopes refused for good as a whole batch.
func (l laneMetrics) refused(n int) {
	if l.m != nil && n > 0 {
		l.m.nacked.Add(context.Background(), int64(n), l.dest)
	}
}

// retried records n envelopes released for a retry.
func (l laneMetrics) retried(n int) {
	if l.m != nil && n > 0 {
		l.m.retried.Add(context.Background(), int64(n), l.dest)
	}
}

// deadLettered records n rows moved to the dead letters for reason.
func (l laneMetrics) deadLettered(n int, reason string) {
	if l.m == nil || n <= 0 {
		return
	}
	opt := l.rejected
	if reason == dialects.ReasonExpired {
		opt = l.expired
	}
	l.m.dead.Add(context.Background(), int64(n), opt)
}

// observe registers the callback of the backlog gauges; the returned
// function unregisters it. Destinations of this relay without a backlog are
// reported as 0, so that their series fall to zero rather than vanish.
func (m *relayMetrics) observe(c *relayCore) (unregister func()) {
	if m == nil {
		return func() {}
	}
	reg, err := m.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		rows, err := m.snapshot(ctx, c.store)
		if err != nil {
			return fmt.Errorf("durable/outbox: observing the backlog: %w", err)
		}
		seen := make(map[string]bool, len(rows))
		for _, r := range rows {
			seen[r.Destination] = true
			opt := m.dest(r.Destination)
			o.ObserveInt64(m.backlog, r.Unsent, opt)
			o.ObserveFloat64(m.oldest, r.OldestAge.Seconds(), opt)
			o.ObserveInt64(m.deadLetters, r.DeadLetters, opt)
		}
		for dest := range c.lanes {
			if !seen[dest] {
				opt := m.dest(dest)
				o.ObserveInt64(m.backlog, 0, opt)
				o.ObserveFloat64(m.oldest, 0, opt)
				o.ObserveInt64(m.deadLetters, 0, opt)
			}
		}
		return nil
	}, m.backlog, m.oldest, m.deadLetters)
	if err != nil {
		c.log.Warn("durable/outbox: relay: cannot register the backlog gauges", "err", err)
		return func() {}
	}
	return func() { _ = reg.Unregister() }
}

// snapshot returns the outbox's backlog, queried at most once per
// gaugeRefresh.
func (m *relayMetrics) snapshot(ctx context.Context, store dialects.Relayer) ([]dialects.OutboxStats, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.snapAt.IsZero() && time.Since(m.snapAt) < gaugeRefresh {
		return m.snap, nil
	}
	qctx, cancel := context.WithTimeout(ctx, gaugeTimeout)
	defer cancel()
	rows, err := store.OutboxStats(qctx)
	if err != nil {
		return nil, err
	}
	m.snap, m.snapAt = rows, time.Now()
	return rows, nil
}
