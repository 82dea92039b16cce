package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestRun: after 200 messages (2 poison), /metrics serves durable's counters
// in Prometheus's format with the expected values.
func TestRun(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sent := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- run(ctx, ln, 200, sent) }()
	select {
	case <-sent:
	case err := <-done:
		t.Fatalf("run: %v", err)
	}
	want := map[string]string{
		`durable_outbox_enqueued_total{durable_destination="billing"`:                               "200",
		`durable_inbox_handled_total{durable_outcome="done",durable_topic="order.placed"`:           "198",
		`durable_inbox_handled_total{durable_outcome="dead_letter",durable_topic="order.placed"`:    "2",
		`durable_inbox_dead_lettered_total{durable_reason="permanent",durable_topic="order.placed"`: "2",
	}
	var body string
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		if missing(body, want) == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m := missing(body, want); m != "" {
		t.Fatalf("/metrics lacks %s; durable lines:\n%s", m, durableLines(body))
	}
	for _, name := range []string{"durable_relay_acked_total", "durable_inbox_latency_seconds_bucket", "durable_inbox_messages", "durable_outbox_backlog"} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	cancel()
	if err := <-done; err != nil && err != context.Canceled {
		t.Fatalf("run: %v", err)
	}
}

// missing returns the first series of want whose value differs in body.
func missing(body string, want map[string]string) string {
	for prefix, v := range want {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(prefix) + `[^}]*} (\S+)$`)
		m := re.FindStringSubmatch(body)
		if m == nil || m[1] != v {
			return prefix + "} " + v
		}
	}
	return ""
}

func durableLines(body string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "durable_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
