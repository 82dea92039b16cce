package outbox_test

import (
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/durable-go/durable/outbox"
)

// TestTraceHeaders: without a TracerProvider, Enqueue writes the W3C trace
// context of ctx's span into the headers; it keeps headers the caller set,
// never modifies the caller's map, writes nothing without a span, and
// leaves the trace out rather than exceed MaxHeaderBytes.
func TestTraceHeaders(t *testing.T) {
	d := sqliteTarget.open(t, true)
	ob := newOutbox(t, d, &outbox.Config{MaxHeaderBytes: 100})
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		SpanID:     trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8},
		TraceFlags: trace.FlagsSampled,
	})
	traced := trace.ContextWithSpanContext(ctxT(t), sc)
	const want = "00-0102030405060708090a0b0c0d0e0f10-0102030405060708-01"

	userHeaders := map[string]string{"content-type": "text/plain"}
	mine := map[string]string{"traceparent": "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01"}
	big := map[string]string{"x": strings.Repeat("y", 60)} // 61 bytes: traceparent (66) would exceed 100
	msgs := []*outbox.Message{
		{ID: "plain", Destination: "billing", Topic: "t", Headers: userHeaders},
		{ID: "mine", Destination: "billing", Topic: "t", Headers: mine},
		{ID: "big", Destination: "billing", Topic: "t", Headers: big},
	}
	tx, err := d.Begin(traced)
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.Enqueue(traced, tx, msgs...); err != nil {
		t.Fatal(err)
	}
	if err := ob.Enqueue(ctxT(t), tx, &outbox.Message{ID: "untraced", Destination: "billing", Topic: "t"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(traced, tx); err != nil {
		t.Fatal(err)
	}
	if len(userHeaders) != 1 || len(mine) != 1 || len(big) != 1 {
		t.Errorf("the caller's header maps were modified: %v %v %v", userHeaders, mine, big)
	}
	got := map[string]map[string]string{}
	for _, r := range rowsOf(t, d) {
		got[r.ID] = r.Headers
	}
	if h := got["plain"]; h["traceparent"] != want || h["content-type"] != "text/plain" {
		t.Errorf("plain: headers %v, want traceparent %s beside content-type", h, want)
	}
	if h := got["mine"]; h["traceparent"] != mine["traceparent"] {
		t.Errorf("mine: traceparent %q, want the caller's %q", h["traceparent"], mine["traceparent"])
	}
	if h := got["big"]; len(h) != 1 {
		t.Errorf("big: headers %v, want only the caller's (the trace would exceed MaxHeaderBytes)", h)
	}
	if h := got["untraced"]; len(h) != 0 {
		t.Errorf("untraced: headers %v, want none", h)
	}
}
