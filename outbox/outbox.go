package outbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// Config configures an Outbox. The zero value (or a nil *Config) gives the
// documented defaults.
type Config struct {
	// Destinations, when not empty, is the closed set of destination names
	// Enqueue accepts; any other destination is refused with
	// ErrUnknownDestination. Empty: any destination is accepted and kept in
	// the outbox until a relay knows it.
	Destinations []string
	// MaxPayloadBytes bounds a message's payload. Zero: DefaultMaxPayloadBytes.
	MaxPayloadBytes int
	// MaxHeaderBytes bounds the total size of a message's header names and
	// values. Zero: DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// Notify makes Enqueue ask the database to wake relays when the
	// transaction commits (Postgres NOTIFY). It is a hint that saves relay
	// latency; polling remains the source of truth. New fails when the
	// dialect cannot notify.
	Notify bool
	// NewID generates the ID of a message enqueued without one. Nil: a
	// UUIDv7 in its canonical text form.
	NewID func() (string, error)

	// MeterProvider, when set, receives the outbox's metrics (see
	// metrics.go: durable.outbox.enqueued). Nil: no metrics.
	MeterProvider metric.MeterProvider
	// TracerProvider, when set, makes Enqueue record a producer span whose
	// context the messages carry (see "Tracing" in tracing.go). Nil: no
	// span; the trace context of ctx is carried all the same.
	TracerProvider trace.TracerProvider
	// Propagator writes the trace context into message headers. Nil: W3C
	// Trace Context (traceparent, tracestate).
	Propagator propagation.TextMapPropagator
}

// Outbox enqueues messages into durable_outbox in the caller's transactions.
// It is safe for concurrent use.
type Outbox[TTx any] struct {
	d        dialects.Enqueuer[TTx]
	notifier dialects.Notifier[TTx] // nil unless Config.Notify
	lim      limits
	newID    func() (string, error)
	subs     subscribers // in-process wake-ups (Subscribe)
	mx       *outboxMetrics
	tr       tracing
}

// New returns an Outbox writing through d. It does no I/O; call CheckSchema
// to verify the migrations at startup (Enqueue against an unmigrated database
// fails with ErrSchema anyway).
func New[TTx any](d dialects.Enqueuer[TTx], cfg *Config) (*Outbox[TTx], error) {
	if d == nil {
		return nil, errors.New("durable/outbox: New needs a dialect")
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	o := &Outbox[TTx]{
		d: d,
		lim: limits{
			maxPayload: c.MaxPayloadBytes,
			maxHeaders: c.MaxHeaderBytes,
		},
		newID: c.NewID,
	}
	if o.lim.maxPayload < 0 || o.lim.maxHeaders < 0 {
		return nil, errors.New("durable/outbox: MaxPayloadBytes and MaxHeaderBytes must not be negative")
	}
	if o.lim.maxPayload == 0 {
		o.lim.maxPayload = DefaultMaxPayloadBytes
	}
	if o.lim.maxHeaders == 0 {
		o.lim.maxHeaders = DefaultMaxHeaderBytes
	}
	if len(c.Destinations) > 0 {
		o.lim.destinations = make(map[string]bool, len(c.Destinations))
		for _, dest := range c.Destinations {
			if dest == "" || transport.CheckName(dest) != "" {
				return nil, fmt.Errorf("durable/outbox: invalid destination name %q in Config.Destinations", dest)
			}
			o.lim.destinations[dest] = true
		}
	}
	if c.Notify {
		n, ok := d.(dialects.Notifier[TTx])
		if !ok {
			return nil, fmt.Errorf("durable/outbox: Config.Notify is set but the %s dialect cannot notify", d.Name())
		}
		o.notifier = n
	}
	if o.newID == nil {
		o.newID = newUUIDv7
	}
	var err error
	if o.mx, err = newOutboxMetrics(c.MeterProvider); err != nil {
		return nil, err
	}
	o.tr = newTracing(c.TracerProvider, c.Propagator)
	return o, nil
}

func newUUIDv7() (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("durable/outbox: generate id: %w", err)
	}
	return id.String(), nil
}

// CheckSchema verifies that durable's migrations ran on the outbox's
// database; see dialects.Dialect.CheckSchema.
func (o *Outbox[TTx]) CheckSchema(ctx context.Context) error {
	return o.d.CheckSchema(ctx)
}

// Dialect returns the dialect the outbox writes through, as New took it.
func (o *Outbox[TTx]) Dialect() dialects.Enqueuer[TTx] { return o.d }

// Enqueue writes msgs to the outbox in tx, the caller's transaction: they are
// sent once tx commits, and never if it rolls back. Enqueue does not commit.
//
// All messages are validated first (a destination, a topic, the rules of
// transport.Envelope.Validate, the size limits of Config); if any is
// invalid, Enqueue returns a *ValidationError (errors.Is ErrInvalidMessage)
// and writes nothing. A
// message whose ID is already in the outbox for its destination makes the
// whole call fail with ErrDuplicateID, again writing nothing of the call and
// leaving tx usable. Messages without an ID get a UUIDv7, written back into
// their ID field once the call succeeds.
//
// Any other error (the database's, or the context's) may leave part of the
// call in tx: roll tx back.
//
// All messages of one call are written with one statement (COPY for large
// batches on pgx), so enqueueing many messages at once is cheap.
//
// When ctx holds a span, the messages carry its trace context in their
// headers (see "Tracing" in tracing.go).
func (o *Outbox[TTx]) Enqueue(ctx context.Context, tx TTx, msgs ...*Message) (err error) {
	if len(msgs) == 0 {
		return nil
	}
	rows := make([]dialects.OutboxRow, len(msgs))
	for i, m := range msgs {
		if err := o.lim.check(i, m); err != nil {
			return err
		}
		id := m.ID
		if id == "" {
			var err error
			if id, err = o.newID(); err != nil {
				return err
			}
			if id == "" || transport.CheckName(id) != "" {
				return fmt.Errorf("durable/outbox: Config.NewID returned an invalid id %q", id)
			}
		}
		rows[i] = dialects.OutboxRow{Envelope: m.envelope(id), Destination: m.Destination}
		if err := o.lim.validate(i, m, &rows[i].Envelope); err != nil {
			return err
		}
	}
	ctx, end := o.tr.start(ctx, rows)
	defer func() { end(err) }()
	o.tr.inject(ctx, rows, o.lim.maxHeaders)
	if err := o.d.InsertOutbox(ctx, tx, rows); err != nil {
		return err
	}
	if o.notifier != nil {
		if err := o.notifier.NotifyOutbox(ctx, tx, destinations(rows)); err != nil {
			return fmt.Errorf("durable/outbox: notify: %w", err)
		}
	}
	for i, m := range msgs {
		m.ID = rows[i].ID
	}
	o.mx.enqueue(ctx, rows)
	o.subs.notify(rows)
	return nil
}

// destinations returns the distinct destinations of rows, in first-seen order.
func destinations(rows []dialects.OutboxRow) []string {
	var out []string
	for i := range rows {
		d := rows[i].Destination
		seen := false
		for _, x := range out {
			if x == d {
				seen = true
				break
			}
		}
		if !seen {
			out = append(out, d)
		}
	}
	return out
}
