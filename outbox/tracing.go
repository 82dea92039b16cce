package outbox

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/telemetry"
)

// Tracing.
//
// Enqueue carries the caller's trace to the handler: whenever ctx holds a
// valid span context, each message gets the headers of Config.Propagator
// (default: W3C Trace Context, "traceparent" and "tracestate"). This does
// not need a TracerProvider: a service whose incoming requests carry a span
// (from any instrumentation) propagates it. Headers the application set
// itself are never overwritten, the caller's Headers map is never modified
// (a message that gains headers gets a copy), and the trace headers are left
// out rather than push a message over MaxHeaderBytes.
//
// With Config.TracerProvider, Enqueue also records a span of its own
// ("enqueue <destination>", kind producer, a child of ctx's span), and the
// messages carry that span's context instead. Without one, no span is
// created.
//
// The inbox continues the trace: see package inbox, "Tracing".

// tracing is the trace set-up of an Outbox.
type tracing struct {
	tracer trace.Tracer // nil: no spans of our own
	prop   propagation.TextMapPropagator
}

func newTracing(tp trace.TracerProvider, p propagation.TextMapPropagator) tracing {
	return tracing{tracer: telemetry.Tracer(tp, "outbox"), prop: telemetry.Propagator(p)}
}

// start begins the producer span of an Enqueue call when a tracer is
// configured; end records err and ends it.
func (t *tracing) start(ctx context.Context, rows []dialects.OutboxRow) (context.Context, func(error)) {
	if t.tracer == nil {
		return ctx, func(error) {}
	}
	dests := destinations(rows)
	name := "enqueue"
	attrs := []attribute.KeyValue{
		attribute.String("messaging.system", "durable"),
		attribute.String("messaging.operation.name", "enqueue"),
		attribute.String("messaging.operation.type", "send"),
	}
	if len(dests) == 1 {
		name += " " + dests[0]
		attrs = append(attrs, attribute.String("messaging.destination.name", dests[0]))
	}
	if len(rows) == 1 {
		attrs = append(attrs, attribute.String("messaging.message.id", rows[0].ID))
	} else {
		attrs = append(attrs, attribute.Int("messaging.batch.message_count", len(rows)))
	}
	ctx, span := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	return ctx, func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}

// inject adds the trace headers of ctx to rows (see Merge).
func (t *tracing) inject(ctx context.Context, rows []dialects.OutboxRow, maxHeaderBytes int) {
	add := telemetry.Inject(ctx, t.prop)
	if add == nil {
		return
	}
	for i := range rows {
		rows[i].Headers = telemetry.Merge(rows[i].Headers, add, maxHeaderBytes)
	}
}
