package inbox

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

// Metrics. With Config.MeterProvider the inbox reports these instruments
// (scope "github.com/durable-go/durable/inbox"); without one they cost
// nothing. Attributes are bounded: topics beyond the 256th distinct one are
// reported as "_other" (topics come from peers); never a message id.
//
//	durable.inbox.received         counter   {message}  durable.status (stored|duplicate|rejected)
//	    envelopes delivered to the inbox (Deliver), by what became of them
//	durable.inbox.handled          counter   {message}  durable.topic, durable.outcome
//	    settled attempts, counted once their transaction committed; outcome:
//	    done (handled), retry (failed, will be tried again), dead_letter,
//	    deferred (back to ready without counting an attempt: inbox.Retry, or
//	    released unstarted at shutdown or with a batch that another message
//	    broke)
//	durable.inbox.dead_lettered    counter   {message}  durable.topic, durable.reason
//	    messages moved to the dead letters, by reason (handler_error,
//	    decode_error, no_handler, expired, permanent)
//	durable.inbox.rescued          counter   {message}
//	    messages whose lease expired, made ready again
//	durable.inbox.handler.duration histogram s          durable.topic, durable.outcome (ok|error)
//	    one handler call
//	durable.inbox.latency          histogram s          durable.topic
//	    end to end: from the message's creation (its enqueue, by the sender's
//	    clock) to the commit of its handling; outcome done only. Clock skew
//	    between the two services shifts it.
//	durable.inbox.batch.size       histogram {message}  durable.queue
//	    messages per claimed batch
//	durable.inbox.messages         gauge     {message}  durable.state (ready|retrying|running|handled|dead)
//	    the inbox table by state and the pending dead letters, observed while
//	    Run runs from the Stats query (which reads the whole inbox table), at
//	    most once per gaugeRefresh
//	durable.housekeeping.deleted   counter   {row}      durable.table (inbox|dead_letters)
//	    rows deleted past their retention by this inbox's housekeeping
const (
	// gaugeRefresh is the shortest interval between two database queries
	// behind the observable gauge.
	gaugeRefresh = 10 * time.Second
	// gaugeTimeout bounds that query.
	gaugeTimeout = 5 * time.Second
)

// Outcomes of durable.inbox.handled.
const (
	outcomeDone     = "done"
	outcomeRetry    = "retry"
	outcomeDead     = "dead_letter"
	outcomeDeferred = "deferred"
)

// metrics are the instruments of an Inbox; a nil *metrics records nothing.
type metrics struct {
	meter                            metric.Meter
	received, handled, dead, rescued metric.Int64Counter
	purged                           metric.Int64Counter
	duration, latency                metric.Float64Histogram
	batch                            metric.Int64Histogram
	messages                         metric.Int64ObservableGauge
	topics                           telemetry.Names
	sets                             telemetry.Sets

	mu     sync.Mutex
	snapAt time.Time
	snap   dialects.InboxStats
}

func newMetrics(mp metric.MeterProvider) (*metrics, error) {
	meter := telemetry.Meter(mp, "inbox")
	if meter == nil {
		return nil, nil
	}
	m := &metrics{meter: meter}
	var errs []error
	counter := func(name, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithUnit("{message}"), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	m.received = counter("durable.inbox.received", "Envelopes delivered to the inbox, by what became of them.")
	m.handled = counter("durable.inbox.handled", "Settled attempts by topic and outcome.")
	m.dead = counter("durable.inbox.dead_lettered", "Messages moved to the dead letters, by topic and reason.")
	m.rescued = counter("durable.inbox.rescued", "Messages whose lease expired, made ready again.")
	var err error
	m.purged, err = meter.Int64Counter("durable.housekeeping.deleted", metric.WithUnit("{row}"),
		metric.WithDescription("Rows deleted past their retention."))
	errs = append(errs, err)
	secs := metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
	m.duration, err = meter.Float64Histogram("durable.inbox.handler.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of one handler call."), secs)
	errs = append(errs, err)
	m.latency, err = meter.Float64Histogram("durable.inbox.latency", metric.WithUnit("s"),
		metric.WithDescription("From a message's creation by the sender to the commit of its handling."), secs)
	errs = append(errs, err)
	m.batch, err = meter.Int64Histogram("durable.inbox.batch.size", metric.WithUnit("{message}"),
		metric.WithDescription("Messages per claimed batch."),
		metric.WithExplicitBucketBoundaries(1, 2, 5, 10, 20, 50, 100, 200, 500))
	errs = append(errs, err)
	m.messages, err = meter.Int64ObservableGauge("durable.inbox.messages", metric.WithUnit("{message}"),
		metric.WithDescription("Inbox messages by state, and pending dead letters (state dead)."))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("durable/inbox: metrics: %w", err)
	}
	return m, nil
}

// opt returns the cached option of the attributes k1=v1 (and k2=v2 when k2
// is not empty).
func (m *metrics) opt(k1 attribute.Key, v1 string, k2 attribute.Key, v2 string) metric.MeasurementOption {
	return m.sets.Get(telemetry.Key{A: string(k1) + "=" + v1, B: string(k2), C: v2}, func() []attribute.KeyValue {
		kv := []attribute.KeyValue{k1.String(v1)}
		if k2 != "" {
			kv = append(kv, k2.String(v2))
		}
		return kv
	})
}

// receivedBatch records what Deliver made of a batch.
func (m *metrics) receivedBatch(stored, duplicate, rejected int) {
	if m == nil {
		return
	}
	ctx := context.Background()
	for _, c := range []struct {
		status string
		n      int
	}{{"stored", stored}, {"duplicate", duplicate}, {"rejected", rejected}} {
		if c.n > 0 {
			m.received.Add(ctx, int64(c.n), m.opt(telemetry.KeyStatus, c.status, "", ""))
		}
	}
}

// claimed records the size of a claimed batch of q.
func (m *metrics) claimed(q string, n int) {
	if m != nil && n > 0 {
		m.batch.Record(context.Background(), int64(n), m.opt(telemetry.KeyQueue, q, "", ""))
	}
}

// handlerDone records one handler call.
func (m *metrics) handlerDone(topic string, d time.Duration, err error) {
	if m == nil {
		return
	}
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.duration.Record(context.Background(), d.Seconds(), m.opt(telemetry.KeyTopic, m.topics.Bound(topic), telemetry.KeyOutcome, outcome))
}

// settled records the outcomes of a batch whose transaction committed;
// rows[i] is the message of outcomes[i].
func (m *metrics) settled(rows []dialects.InboxRow, outcomes []dialects.InboxOutcome) {
	if m == nil {
		return
	}
	ctx := context.Background()
	now := time.Now()
	for i := range outcomes {
		o := &outcomes[i]
		topic := ""
		var created time.Time
		if i < len(rows) && rows[i].Source == o.Source && rows[i].ID == o.ID {
			topic, created = rows[i].Topic, rows[i].CreatedAt
		}
		topic = m.topics.Bound(topic)
		var outcome string
		switch {
		case o.Kind == dialects.InboxHandled:
			outcome = outcomeDone
			if !created.IsZero() {
				m.latency.Record(ctx, max(now.Sub(created), 0).Seconds(), m.opt(telemetry.KeyTopic, topic, "", ""))
			}
		case o.Kind == dialects.InboxDead:
			outcome = outcomeDead
			m.dead.Add(ctx, 1, m.opt(telemetry.KeyTopic, topic, telemetry.KeyReason, o.Reason))
		case o.UndoAttempt:
			outcome = outcomeDeferred
		default:
			outcome = outcomeRetry
		}
		m.handled.Add(ctx, 1, m.opt(telemetry.KeyTopic, topic, telemetry.KeyOutcome, outcome))
	}
}

// deleted records n rows of table deleted by the housekeeping.
func (m *metrics) deleted(table string, n int) {
	if m != nil && n > 0 {
		m.purged.Add(context.Background(), int64(n), m.opt(telemetry.KeyTable, table, "", ""))
	}
}

// rescuedRows records n rescued messages.
func (m *metrics) rescuedRows(n int) {
	if m != nil && n > 0 {
		m.rescued.Add(context.Background(), int64(n))
	}
}

// observe registers the callback of the state gauge, reading stats; the
// returned function unregisters it.
func (m *metrics) observe(stats func(context.Context) (dialects.InboxStats, error), warn func(error)) (unregister func()) {
	if m == nil {
		return func() {}
	}
	reg, err := m.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		s, err := m.snapshot(ctx, stats)
		if err != nil {
			return fmt.Errorf("durable/inbox: observing the inbox: %w", err)
		}
		for _, st := range []struct {
			state string
			n     int64
		}{{"ready", s.Ready}, {"retrying", s.Retrying}, {"running", s.Running}, {"handled", s.Handled}, {"dead", s.Dead}} {
			o.ObserveInt64(m.messages, st.n, m.opt(telemetry.KeyState, st.state, "", ""))
		}
		return nil
	}, m.messages)
	if err != nil {
		warn(err)
		return func() {}
	}
	return func() { _ = reg.Unregister() }
}

// snapshot returns the inbox's counts, queried at most once per
// gaugeRefresh.
func (m *metrics) snapshot(ctx context.Context, stats func(context.Context) (dialects.InboxStats, error)) (dialects.InboxStats, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.snapAt.IsZero() && time.Since(m.snapAt) < gaugeRefresh {
		return m.snap, nil
	}
	qctx, cancel := context.WithTimeout(ctx, gaugeTimeout)
	defer cancel()
	s, err := stats(qctx)
	if err != nil {
		return s, err
	}
	m.snap, m.snapAt = s, time.Now()
	return s, nil
}
