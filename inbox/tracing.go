package inbox

import (
	"context"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/durable-go/durable/internal/telemetry"
)

// Tracing.
//
// The sender's trace context travels in the message headers (see package
// outbox, "Tracing"). Before each handler call the inbox reads it with
// Config.Propagator (default W3C Trace Context) and puts it into the
// handler's ctx as the remote parent, even without a TracerProvider: spans
// the handler starts with the application's own tracer continue the
// sender's trace.
//
// With Config.TracerProvider, the handler runs in a span of the inbox's
// ("process <topic>", kind consumer) that is a child of the sender's span
// and also links to it, as OpenTelemetry's messaging conventions suggest:
// the trace shows enqueue → handle as one tree, and tools that follow
// links across traces find it as well. We chose child-of over a new trace
// with only a link because a message here is handled on its own (one span
// per message, not per batch), so the parent is unambiguous, and on-call
// engineers look for one trace per request. A retry is another child of the
// same parent (attribute durable.attempt tells them apart). The span ends
// with the handler call, with status error and the error recorded when the
// handler failed; the batch's commit comes later and is not part of it.
//
// Without a TracerProvider no span is created.

// tracing is the trace set-up of an Inbox.
type tracing struct {
	tracer trace.Tracer // nil: no spans of our own
	prop   propagation.TextMapPropagator
}

func newTracing(tp trace.TracerProvider, p propagation.TextMapPropagator) tracing {
	return tracing{tracer: telemetry.Tracer(tp, "inbox"), prop: telemetry.Propagator(p)}
}

// start returns the ctx for msg's handler: with the sender's span context,
// and in a consumer span when a tracer is configured. end records the
// handler's error and ends the span.
func (t *tracing) start(ctx context.Context, msg *Message) (context.Context, func(error)) {
	ctx = telemetry.Extract(ctx, t.prop, msg.Headers)
	if t.tracer == nil {
		return ctx, func(error) {}
	}
	opts := []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "durable"),
			attribute.String("messaging.operation.name", "process"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", msg.Topic),
			attribute.String("messaging.message.id", msg.ID),
			attribute.String("durable.source", msg.Source),
			attribute.Int("durable.attempt", msg.Attempt),
		),
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
	}
	ctx, span := t.tracer.Start(ctx, "process "+msg.Topic, opts...)
	return ctx, func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, truncateStatus(err.Error()))
		}
		span.End()
	}
}

// truncateStatus bounds a span status description (a panic's carries the
// whole stack).
func truncateStatus(s string) string {
	const maxLen = 1024
	if len(s) <= maxLen {
		return s
	}
	cut := maxLen
	for cut > 0 && !utf8RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(" + strconv.Itoa(len(s)-cut) + " more bytes)"
}
