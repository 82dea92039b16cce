package durable_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/outbox"
)

// metricsOf collects reader's metrics into name → data.
func metricsOf(t *testing.T, reader *sdkmetric.ManualReader) map[string]metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

// sumOf returns the value of counter name at the data point whose
// attributes include every pair of attrs (k1, v1, k2, v2, ...); 0 when none.
func sumOf(ms map[string]metricdata.Aggregation, name string, attrs ...string) int64 {
	s, ok := ms[name].(metricdata.Sum[int64])
	if !ok {
		return 0
	}
	var total int64
	for _, dp := range s.DataPoints {
		if hasAttrs(dp.Attributes, attrs) {
			total += dp.Value
		}
	}
	return total
}

func hasAttrs(set attribute.Set, attrs []string) bool {
	for i := 0; i+1 < len(attrs); i += 2 {
		v, ok := set.Value(attribute.Key(attrs[i]))
		if !ok || v.AsString() != attrs[i+1] {
			return false
		}
	}
	return true
}

// histCount returns the number of measurements of histogram name at the
// data points matching attrs.
func histCount(ms map[string]metricdata.Aggregation, name string, attrs ...string) uint64 {
	var total uint64
	switch h := ms[name].(type) {
	case metricdata.Histogram[float64]:
		for _, dp := range h.DataPoints {
			if hasAttrs(dp.Attributes, attrs) {
				total += dp.Count
			}
		}
	case metricdata.Histogram[int64]:
		for _, dp := range h.DataPoints {
			if hasAttrs(dp.Attributes, attrs) {
				total += uint64(dp.Sum)
			}
		}
	}
	return total
}

// gaugeOf returns the value of int64 gauge name at the data point matching
// attrs, and whether there is one.
func gaugeOf(ms map[string]metricdata.Aggregation, name string, attrs ...string) (int64, bool) {
	g, ok := ms[name].(metricdata.Gauge[int64])
	if !ok {
		return 0, false
	}
	for _, dp := range g.DataPoints {
		if hasAttrs(dp.Attributes, attrs) {
			return dp.Value, true
		}
	}
	return 0, false
}

// TestMetricsSQLite: after a known run (100 messages handled, 3
// dead-lettered at once) through relay → TCP → inbox on SQLite, in-memory
// readers see exact counter values on both sides.
func TestMetricsSQLite(t *testing.T) {
	const ok, poison = 100, 3
	ordersDB, ordersD := openSQLite(t)
	_, billingD := openSQLite(t)
	ordersReader, billingReader := sdkmetric.NewManualReader(), sdkmetric.NewManualReader()
	ordersMP := sdkmetric.NewMeterProvider(sdkmetric.WithReader(ordersReader))
	billingMP := sdkmetric.NewMeterProvider(sdkmetric.WithReader(billingReader))
	t.Cleanup(func() {
		_ = ordersMP.Shutdown(context.Background())
		_ = billingMP.Shutdown(context.Background())
	})

	ln := listener(t)
	billingMux := inbox.NewMux[*sql.Tx]()
	billing, err := durable.NewNode(billingD, fastConfig(durable.Config[*sql.Tx]{Handler: billingMux, Name: "billing", Listener: ln, MeterProvider: billingMP}))
	if err != nil {
		t.Fatal(err)
	}
	billingMux.HandleFunc("order.placed", func(ctx context.Context, tx *sql.Tx, m *inbox.Message) error {
		return nil
	})
	billingMux.HandleFunc("order.poison", func(ctx context.Context, tx *sql.Tx, m *inbox.Message) error {
		return inbox.Permanent(errors.New("cannot bill this"))
	})
	orders, err := durable.NewNode(ordersD, fastConfig(durable.Config[*sql.Tx]{
		Name:          "orders",
		Peers:         map[string]durable.Peer{"billing": {Addr: ln.Addr().String()}},
		MeterProvider: ordersMP,
	}))
	if err != nil {
		t.Fatal(err)
	}
	runNode(t, billing)
	runNode(t, orders)

	ctx := context.Background()
	tx, err := ordersDB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*outbox.Message
	for i := range ok + poison {
		topic := "order.placed"
		if i >= ok {
			topic = "order.poison"
		}
		msgs = append(msgs, &outbox.Message{Destination: "billing", Topic: topic, Payload: fmt.Appendf(nil, "%d", i)})
	}
	if err := orders.Enqueue(ctx, tx, msgs...); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	// Wait for the database first: the gauges read it at most every few
	// seconds, so the first collection must come after the work is done.
	waitFor(t, "every message settled", func() (bool, error) {
		s, err := billing.Inbox().Stats(ctx)
		return s.Handled == ok && s.Dead == poison, err
	})
	var bm map[string]metricdata.Aggregation
	waitFor(t, "every message settled in the metrics", func() (bool, error) {
		bm = metricsOf(t, billingReader)
		return sumOf(bm, "durable.inbox.handled") == ok+poison, nil
	})
	for _, c := range []struct {
		name  string
		attrs []string
		want  int64
	}{
		{"durable.inbox.received", []string{"durable.status", "stored"}, ok + poison},
		{"durable.inbox.received", []string{"durable.status", "duplicate"}, 0},
		{"durable.inbox.handled", []string{"durable.topic", "order.placed", "durable.outcome", "done"}, ok},
		{"durable.inbox.handled", []string{"durable.topic", "order.poison", "durable.outcome", "dead_letter"}, poison},
		{"durable.inbox.handled", []string{"durable.outcome", "retry"}, 0},
		{"durable.inbox.dead_lettered", []string{"durable.topic", "order.poison", "durable.reason", "permanent"}, poison},
		{"durable.inbox.dead_lettered", nil, poison},
	} {
		if got := sumOf(bm, c.name, c.attrs...); got != c.want {
			t.Errorf("billing %s%v = %d, want %d", c.name, c.attrs, got, c.want)
		}
	}
	if got := histCount(bm, "durable.inbox.latency", "durable.topic", "order.placed"); got != ok {
		t.Errorf("billing durable.inbox.latency count = %d, want %d", got, ok)
	}
	if got := histCount(bm, "durable.inbox.handler.duration", "durable.outcome", "ok"); got != ok {
		t.Errorf("billing durable.inbox.handler.duration{ok} count = %d, want %d", got, ok)
	}
	if got := histCount(bm, "durable.inbox.handler.duration", "durable.outcome", "error"); got != poison {
		t.Errorf("billing durable.inbox.handler.duration{error} count = %d, want %d", got, poison)
	}
	if got := histCount(bm, "durable.inbox.batch.size"); got != ok+poison {
		t.Errorf("billing durable.inbox.batch.size sum = %d, want %d", got, ok+poison)
	}
	for state, want := range map[string]int64{"handled": ok, "dead": poison, "ready": 0, "running": 0} {
		if got, found := gaugeOf(bm, "durable.inbox.messages", "durable.state", state); !found || got != want {
			t.Errorf("billing durable.inbox.messages{%s} = %d (reported %v), want %d", state, got, found, want)
		}
	}

	var om map[string]metricdata.Aggregation
	waitFor(t, "the relay's acknowledgements in the metrics", func() (bool, error) {
		om = metricsOf(t, ordersReader)
		return sumOf(om, "durable.relay.acked") == ok+poison, nil
	})
	for _, c := range []struct {
		name  string
		attrs []string
		want  int64
	}{
		{"durable.outbox.enqueued", []string{"durable.destination", "billing"}, ok + poison},
		{"durable.relay.sent", []string{"durable.destination", "billing"}, ok + poison},
		{"durable.relay.acked", []string{"durable.destination", "billing", "durable.status", "accepted"}, ok + poison},
		{"durable.relay.nacked", nil, 0},
		{"durable.relay.retried", nil, 0},
		{"durable.relay.dead_lettered", nil, 0},
	} {
		if got := sumOf(om, c.name, c.attrs...); got != c.want {
			t.Errorf("orders %s%v = %d, want %d", c.name, c.attrs, got, c.want)
		}
	}
	if got := histCount(om, "durable.relay.batch.size", "durable.destination", "billing"); got != ok+poison {
		t.Errorf("orders durable.relay.batch.size sum = %d, want %d", got, ok+poison)
	}
	// Every envelope sent comes from a claim that leased rows, and every
	// such claim sends at least one.
	leased := sumOf(om, "durable.relay.claims", "durable.destination", "billing", "durable.result", "short") +
		sumOf(om, "durable.relay.claims", "durable.destination", "billing", "durable.result", "full")
	if sent := histCount(om, "durable.relay.batch.size", "durable.destination", "billing"); leased < 1 || uint64(leased) > sent {
		t.Errorf("orders durable.relay.claims{short,full} = %d, want 1 to %d (the envelopes sent)", leased, sent)
	}
	// The gauges are cached for a while; the backlog may have been read
	// before the acknowledgements. It is reported for the destination.
	if _, found := gaugeOf(om, "durable.outbox.backlog", "durable.destination", "billing"); !found {
		t.Errorf("orders durable.outbox.backlog{billing} not reported")
	}
	if n, found := gaugeOf(om, "durable.outbox.dead_letters", "durable.destination", "billing"); !found || n != 0 {
		t.Errorf("orders durable.outbox.dead_letters{billing} = %d, %v; want 0 reported (the poison is the inbox's)", n, found)
	}
}

// TestTracingSQLite: the handler's span, through relay → TCP → inbox on
// SQLite, continues the enqueuer's trace: same trace id, the enqueue span
// as parent and as link; the handler's ctx carries it too.
func TestTracingSQLite(t *testing.T) {
	ordersDB, ordersD := openSQLite(t)
	_, billingD := openSQLite(t)
	ordersSpans, billingSpans := tracetest.NewSpanRecorder(), tracetest.NewSpanRecorder()
	ordersTP := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(ordersSpans))
	billingTP := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(billingSpans))
	t.Cleanup(func() {
		_ = ordersTP.Shutdown(context.Background())
		_ = billingTP.Shutdown(context.Background())
	})

	ln := listener(t)
	billingMux := inbox.NewMux[*sql.Tx]()
	billing, err := durable.NewNode(billingD, fastConfig(durable.Config[*sql.Tx]{Handler: billingMux, Name: "billing", Listener: ln, TracerProvider: billingTP}))
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		inCtx   = map[string]trace.SpanContext{} // message id → span context seen by the handler
		handled = make(chan struct{}, 2)
	)
	billingMux.HandleFunc("order.placed", func(ctx context.Context, tx *sql.Tx, m *inbox.Message) error {
		mu.Lock()
		inCtx[m.ID] = trace.SpanContextFromContext(ctx)
		mu.Unlock()
		handled <- struct{}{}
		return nil
	})
	orders, err := durable.NewNode(ordersD, fastConfig(durable.Config[*sql.Tx]{
		Name:           "orders",
		Peers:          map[string]durable.Peer{"billing": {Addr: ln.Addr().String()}},
		TracerProvider: ordersTP,
	}))
	if err != nil {
		t.Fatal(err)
	}
	runNode(t, billing)
	runNode(t, orders)

	// The request that enqueues, in a span of the application's.
	ctx, request := ordersTP.Tracer("app").Start(context.Background(), "POST /orders")
	tx, err := ordersDB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	traced := &outbox.Message{Destination: "billing", Topic: "order.placed", Payload: []byte("1")}
	if err := orders.Enqueue(ctx, tx, traced); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	request.End()
	// And one enqueued outside any span: the enqueue span starts a trace of
	// its own.
	tx, err = ordersDB.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	untraced := &outbox.Message{Destination: "billing", Topic: "order.placed", Payload: []byte("2")}
	if err := orders.Enqueue(context.Background(), tx, untraced); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case <-handled:
		case <-time.After(60 * time.Second):
			t.Fatal("timed out waiting for the handlers")
		}
	}

	var enqueue sdktrace.ReadOnlySpan
	for _, s := range ordersSpans.Ended() {
		if s.Name() == "enqueue billing" && s.SpanContext().TraceID() == request.SpanContext().TraceID() {
			enqueue = s
		}
	}
	if enqueue == nil {
		t.Fatalf("no enqueue span in the request's trace among %d spans", len(ordersSpans.Ended()))
	}
	if enqueue.SpanKind() != trace.SpanKindProducer || enqueue.Parent().SpanID() != request.SpanContext().SpanID() {
		t.Errorf("enqueue span: kind %v, parent %v; want producer, child of the request", enqueue.SpanKind(), enqueue.Parent().SpanID())
	}

	var process []sdktrace.ReadOnlySpan
	waitFor(t, "both handler spans ended", func() (bool, error) {
		process = process[:0]
		for _, s := range billingSpans.Ended() {
			if s.Name() == "process order.placed" {
				process = append(process, s)
			}
		}
		return len(process) == 2, nil
	})
	var got, other sdktrace.ReadOnlySpan
	for _, s := range process {
		if hasAttr(s.Attributes(), "messaging.message.id", traced.ID) {
			got = s
		} else {
			other = s
		}
	}
	if got == nil {
		t.Fatal("no handler span for the traced message")
	}
	want := enqueue.SpanContext()
	if got.SpanContext().TraceID() != want.TraceID() {
		t.Errorf("handler span trace id %v, want the enqueuer's %v", got.SpanContext().TraceID(), want.TraceID())
	}
	if got.Parent().SpanID() != want.SpanID() || !got.Parent().IsRemote() {
		t.Errorf("handler span parent %v (remote %v), want the enqueue span %v", got.Parent().SpanID(), got.Parent().IsRemote(), want.SpanID())
	}
	if got.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("handler span kind %v, want consumer", got.SpanKind())
	}
	linked := false
	for _, l := range got.Links() {
		linked = linked || (l.SpanContext.TraceID() == want.TraceID() && l.SpanContext.SpanID() == want.SpanID())
	}
	if !linked {
		t.Errorf("handler span links %v, want one to the enqueue span", got.Links())
	}
	mu.Lock()
	defer mu.Unlock()
	if sc := inCtx[traced.ID]; sc.TraceID() != want.TraceID() || sc.SpanID() != got.SpanContext().SpanID() {
		t.Errorf("handler ctx span %v/%v, want the handler span %v/%v", sc.TraceID(), sc.SpanID(), want.TraceID(), got.SpanContext().SpanID())
	}
	if other.SpanContext().TraceID() == want.TraceID() || !other.Parent().IsRemote() {
		t.Errorf("the other message's handler span: trace %v, parent %v; want its own enqueue span's trace", other.SpanContext().TraceID(), other.Parent())
	}
}

func hasAttr(attrs []attribute.KeyValue, key, value string) bool {
	for _, a := range attrs {
		if string(a.Key) == key && a.Value.AsString() == value {
			return true
		}
	}
	return false
}

// TestNodeInlineByDefault: a Node's inbox handles delivered messages inline
// (the batch-size histogram's queue "inline") unless DisableInline is set,
// and then its workers do (queue "default"). One message fails once: its
// handler runs once per attempt either way.
func TestNodeInlineByDefault(t *testing.T) {
	for _, disable := range []bool{false, true} {
		t.Run(fmt.Sprintf("DisableInline=%v", disable), func(t *testing.T) {
			const n = 20
			ordersDB, ordersD := openSQLite(t)
			_, billingD := openSQLite(t)
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
			ln := listener(t)
			billingMux := inbox.NewMux[*sql.Tx]()
			billing, err := durable.NewNode(billingD, fastConfig(durable.Config[*sql.Tx]{
				Name: "billing", Listener: ln, MeterProvider: mp, DisableInline: disable, Handler: billingMux,
			}))
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			calls := map[string]int{}
			billingMux.HandleFunc("order.placed", func(ctx context.Context, tx *sql.Tx, m *inbox.Message) error {
				mu.Lock()
				defer mu.Unlock()
				calls[string(m.Payload)]++
				if string(m.Payload) == "7" && m.Attempt == 1 {
					return errors.New("fails its first attempt")
				}
				return nil
			})
			orders, err := durable.NewNode(ordersD, fastConfig(durable.Config[*sql.Tx]{
				Name:  "orders",
				Peers: map[string]durable.Peer{"billing": {Addr: ln.Addr().String()}},
			}))
			if err != nil {
				t.Fatal(err)
			}
			billingMux.HandleFunc("warm.up", func(ctx context.Context, tx *sql.Tx, m *inbox.Message) error { return nil })
			runNode(t, billing)
			runNode(t, orders)
			ctx := context.Background()
			// A first message, handled before the others are sent: the
			// inbox turns inline handling on when its Run starts, after the
			// server may already take deliveries; once a message is handled,
			// Run is past that point.
			wtx, err := ordersDB.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := orders.Enqueue(ctx, wtx, &outbox.Message{Destination: "billing", Topic: "warm.up"}); err != nil {
				t.Fatal(err)
			}
			if err := wtx.Commit(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the warm-up message handled", func() (bool, error) {
				s, err := billing.Inbox().Stats(ctx)
				return s.Handled == 1, err
			})
			tx, err := ordersDB.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				if err := orders.Enqueue(ctx, tx, &outbox.Message{Destination: "billing", Topic: "order.placed", Payload: fmt.Appendf(nil, "%d", i)}); err != nil {
					t.Fatal(err)
				}
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "every message handled", func() (bool, error) {
				s, err := billing.Inbox().Stats(ctx)
				return s.Handled == n+1, err
			})
			mu.Lock()
			for i := range n {
				want := 1
				if i == 7 {
					want = 2
				}
				if got := calls[fmt.Sprint(i)]; got != want {
					t.Errorf("message %d: handler called %d times, want %d (once per attempt)", i, got, want)
				}
			}
			mu.Unlock()
			var m map[string]metricdata.Aggregation
			waitFor(t, "the handled messages in the metrics", func() (bool, error) {
				m = metricsOf(t, reader)
				return sumOf(m, "durable.inbox.handled") == n+2, nil // the warm-up, n, and message 7's first attempt
			})
			inline, workers := histCount(m, "durable.inbox.batch.size", "durable.queue", "inline"), histCount(m, "durable.inbox.batch.size", "durable.queue", "default")
			if disable && (inline != 0 || workers != n+2) {
				t.Errorf("with DisableInline: %d messages handled inline, %d by workers; want 0 and %d", inline, workers, n+2)
			}
			// The n messages sent after the warm-up are handled inline (one
			// of them fails there and is retried by a worker); the warm-up
			// may have come before inline handling was on.
			if !disable && (inline < n || inline+workers != n+2) {
				t.Errorf("by default: %d messages handled inline, %d by workers; want at least %d inline, %d in all", inline, workers, n, n+2)
			}
		})
	}
}
