// Package telemetry holds what the outbox and the inbox share to emit
// OpenTelemetry metrics and traces: the attribute keys, a bound on the
// values of name-like attributes, a cache of attribute sets, and the trace
// context carried in message headers. It imports only the OpenTelemetry
// API modules (never an SDK or an exporter).
package telemetry

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// ScopePrefix is the prefix of the instrumentation scope names: each
// package meters and traces as ScopePrefix + "/" + its name, for example
// "github.com/durable-go/durable/inbox".
const ScopePrefix = "github.com/durable-go/durable"

// Attribute keys of durable's metrics. Values are names chosen by the
// application (destinations, topics, queues) or fixed words (reasons,
// outcomes, states); never message ids.
const (
	KeyDestination = attribute.Key("durable.destination")
	KeyTopic       = attribute.Key("durable.topic")
	KeyReason      = attribute.Key("durable.reason")
	KeyOutcome     = attribute.Key("durable.outcome")
	KeyStatus      = attribute.Key("durable.status")
	KeyQueue       = attribute.Key("durable.queue")
	KeyState       = attribute.Key("durable.state")
	KeyTable       = attribute.Key("durable.table")
	KeyResult      = attribute.Key("durable.result")
)

// MaxNames is how many distinct values a name-like attribute (a topic, a
// destination) takes in one process; later values are reported as Other.
// Topics arrive from peers, so without a bound a peer could make a
// time series per message.
const MaxNames = 256

// Other replaces a name beyond MaxNames.
const Other = "_other"

// Names bounds the distinct values of one name-like attribute to MaxNames.
// The zero value is ready; it is safe for concurrent use.
type Names struct {
	mu   sync.Mutex
	seen map[string]struct{}
}

// Bound returns v while fewer than MaxNames distinct values were seen, or
// v was seen before; Other afterwards.
func (n *Names) Bound(v string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.seen[v]; ok {
		return v
	}
	if len(n.seen) >= MaxNames {
		return Other
	}
	if n.seen == nil {
		n.seen = make(map[string]struct{})
	}
	n.seen[v] = struct{}{}
	return v
}

// Key names an attribute combination: the values, in a fixed order per
// call site, of at most three attributes.
type Key struct{ A, B, C string }

// Sets caches the measurement option of each attribute combination, so that
// recording a measurement allocates nothing. Keys must come from bounded
// values (see Names). The zero value is ready.
type Sets struct {
	m sync.Map // Key → metric.MeasurementOption
}

// Get returns the option for k, building its attributes with attrs the first
// time.
func (s *Sets) Get(k Key, attrs func() []attribute.KeyValue) metric.MeasurementOption {
	if o, ok := s.m.Load(k); ok {
		return o.(metric.MeasurementOption)
	}
	o, _ := s.m.LoadOrStore(k, metric.WithAttributeSet(attribute.NewSet(attrs()...)))
	return o.(metric.MeasurementOption)
}

// Meter returns the meter of package pkg from mp; nil when mp is nil, which
// callers take for "metrics off".
func Meter(mp metric.MeterProvider, pkg string) metric.Meter {
	if mp == nil {
		return nil
	}
	return mp.Meter(ScopePrefix + "/" + pkg)
}

// Tracer returns the tracer of package pkg from tp; nil when tp is nil.
func Tracer(tp trace.TracerProvider, pkg string) trace.Tracer {
	if tp == nil {
		return nil
	}
	return tp.Tracer(ScopePrefix + "/" + pkg)
}

// Propagator returns p, or the W3C Trace Context propagator (headers
// traceparent and tracestate) when p is nil. The global propagator of
// package otel is deliberately not the default: it propagates nothing
// unless the application set it, and durable's messages should carry the
// trace context whenever there is one.
func Propagator(p propagation.TextMapPropagator) propagation.TextMapPropagator {
	if p == nil {
		return propagation.TraceContext{}
	}
	return p
}

// Inject returns the headers p writes for the span context of ctx, or nil
// when ctx has no valid span context.
func Inject(ctx context.Context, p propagation.TextMapPropagator) map[string]string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	c := propagation.MapCarrier{}
	p.Inject(ctx, c)
	if len(c) == 0 {
		return nil
	}
	return c
}

// Merge returns h with the entries of add that h does not have, as long as
// the total size of names and values stays within maxBytes; h itself is
// never modified (a copy is returned when anything is added). Headers the
// application set always win.
func Merge(h, add map[string]string, maxBytes int) map[string]string {
	if len(add) == 0 {
		return h
	}
	size := 0
	for k, v := range h {
		size += len(k) + len(v)
	}
	var out map[string]string
	for k, v := range add {
		if _, ok := h[k]; ok {
			continue
		}
		if size+len(k)+len(v) > maxBytes {
			continue
		}
		if out == nil {
			out = make(map[string]string, len(h)+len(add))
			for hk, hv := range h {
				out[hk] = hv
			}
		}
		out[k] = v
		size += len(k) + len(v)
	}
	if out == nil {
		return h
	}
	return out
}

// Extract returns ctx with the remote span context p reads from headers, if
// any.
func Extract(ctx context.Context, p propagation.TextMapPropagator, headers map[string]string) context.Context {
	if len(headers) == 0 {
		return ctx
	}
	return p.Extract(ctx, propagation.MapCarrier(headers))
}
