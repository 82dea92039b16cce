package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/demo"
	"github.com/durable-go/durable/internal/testdb"
)

// runInProcess runs one command line in this process (so that the race
// detector sees the demo's goroutines) and returns what it printed.
func runInProcess(t *testing.T, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := newApp(strings.NewReader(""), &stdout, &stderr).execute(context.Background(), args)
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// runDemoJSON runs the demo with --json and decodes its summary.
func runDemoJSON(t *testing.T, args ...string) demo.Summary {
	t.Helper()
	r := runInProcess(t, append([]string{"demo", "--json"}, args...)...)
	if r.code != exitOK {
		t.Fatalf("demo failed:\n%s", r)
	}
	var s demo.Summary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("decoding the summary: %v\n%s", err, r)
	}
	return s
}

// checkSummary asserts the demo's guarantees on a summary of n messages
// with the given number of poison messages and attempts.
func checkSummary(t *testing.T, s demo.Summary, n, poison, attempts int) {
	t.Helper()
	if !s.OK || s.TimedOut {
		t.Errorf("ok = %v, timed_out = %v, want ok", s.OK, s.TimedOut)
	}
	if s.Enqueued != int64(n) || s.Messages != n {
		t.Errorf("enqueued %d of %d messages, want %d", s.Enqueued, s.Messages, n)
	}
	if s.Delivered != s.Enqueued {
		t.Errorf("delivered %d, want every enqueued message, %d", s.Delivered, s.Enqueued)
	}
	if s.Handled+s.DeadLettered != s.Enqueued {
		t.Errorf("handled %d + dead-lettered %d != enqueued %d", s.Handled, s.DeadLettered, s.Enqueued)
	}
	if s.Effects != s.Handled {
		t.Errorf("%d effects for %d handled messages", s.Effects, s.Handled)
	}
	if s.DuplicateEffects != 0 || s.Lost != 0 || s.UnexpectedEffects != 0 {
		t.Errorf("duplicates %d, lost %d, unexpected %d; want 0", s.DuplicateEffects, s.Lost, s.UnexpectedEffects)
	}
	if s.Poison != poison || s.DeadLettered != int64(poison) || s.DeadLetteredOutbox != 0 {
		t.Errorf("dead-lettered %d (%d never sent), want exactly the %d poison messages (summary says %d)",
			s.DeadLettered, s.DeadLetteredOutbox, poison, s.Poison)
	}
	if s.FailedAttempts != int64(poison*attempts) {
		t.Errorf("failed attempts %d, want %d poison × %d attempts", s.FailedAttempts, poison, attempts)
	}
	if s.OutboxUnsent != 0 {
		t.Errorf("%d outbox rows left unacknowledged", s.OutboxUnsent)
	}
	if s.Handled > 0 && (s.Throughput <= 0 || s.LatencyP50MS <= 0 || s.LatencyP99MS < s.LatencyP50MS) {
		t.Errorf("throughput %.0f/s, latency p50 %.1f ms, p99 %.1f ms: not measured", s.Throughput, s.LatencyP50MS, s.LatencyP99MS)
	}
}

func TestDemoSQLite(t *testing.T) {
	dir := t.TempDir()
	s := runDemoJSON(t, "-n", "300", "--poison-rate", "0.02", "--dir", dir)
	checkSummary(t, s, 300, 6, 3)
	billing := filepath.Join(dir, "billing.db")
	if len(s.Files) != 2 || s.Files[1] != billing || !strings.Contains(s.Inspect, "sqlite3 -header -column "+billing+` "SELECT `) {
		t.Errorf("files %v, inspect %q: want the kept files and the sqlite3 command on %s", s.Files, s.Inspect, billing)
	}

	// The dead letters are the poison orders, each with every attempt's
	// error, where the printed command looks.
	db, err := sql.Open("sqlite", sqlite.DSN(billing))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT reason, attempts, payload, errors FROM durable_dead_letters ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var reason, errs string
		var attempts int
		var payload []byte
		if err := rows.Scan(&reason, &attempts, &payload, &errs); err != nil {
			t.Fatal(err)
		}
		var ord demo.Order
		if err := json.Unmarshal(payload, &ord); err != nil || !ord.Poison {
			t.Errorf("dead letter %s (%v) is not a poison order", payload, err)
		}
		var history []any
		if err := json.Unmarshal([]byte(errs), &history); err != nil || reason != "handler_error" || attempts != 3 || len(history) != 3 {
			t.Errorf("dead letter of order %d: reason %s, %d attempts, history %s; want handler_error after 3 attempts", ord.ID, reason, attempts, errs)
		}
		ids = append(ids, ord.ID)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	// Every 50th order of 300 at 2 %.
	want := []int64{50, 100, 150, 200, 250, 300}
	if len(ids) != len(want) {
		t.Fatalf("dead letters for orders %v, want %v", ids, want)
	}
	got := map[int64]bool{}
	for _, id := range ids {
		got[id] = true
	}
	for _, id := range want {
		if !got[id] {
			t.Errorf("dead letters for orders %v, want %v", ids, want)
			break
		}
	}
}

func TestDemoPostgres(t *testing.T) {
	base := testdb.PostgresURL(t)
	s := runDemoJSON(t, "-n", "300", "--poison-rate", "0.01", "--postgres", base)
	checkSummary(t, s, 300, 3, 3)
	if len(s.Schemas) != 2 || s.Inspect != "" {
		t.Fatalf("schemas %v, inspect %q: want two schemas, dropped, and no inspect command", s.Schemas, s.Inspect)
	}
	pool := testdb.OpenPostgres(t, base, false)
	var left int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)`, s.Schemas).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d of the demo's schemas %v are left; want them dropped", left, s.Schemas)
	}
}

func TestDemoPostgresKeep(t *testing.T) {
	base := testdb.PostgresURL(t)
	s := runDemoJSON(t, "-n", "20", "--poison-rate", "0.1", "--max-attempts", "2", "--postgres", base, "--keep")
	pool := testdb.OpenPostgres(t, base, false)
	ctx := context.Background()
	t.Cleanup(func() {
		for _, schema := range s.Schemas {
			_, _ = pool.Exec(ctx, `DROP SCHEMA IF EXISTS "`+schema+`" CASCADE`)
		}
	})
	checkSummary(t, s, 20, 2, 2)
	if len(s.Schemas) != 2 || !strings.Contains(s.Inspect, "psql ") || !strings.Contains(s.Inspect, s.Schemas[1]+".durable_dead_letters") {
		t.Fatalf("schemas %v, inspect %q: want the psql command on the billing schema", s.Schemas, s.Inspect)
	}
	var dead int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM "`+s.Schemas[1]+`".durable_dead_letters`).Scan(&dead); err != nil {
		t.Fatal(err)
	}
	if dead != 2 {
		t.Errorf("%d dead letters kept in %s, want 2", dead, s.Schemas[1])
	}
}

// TestDemoText checks the table a person reads, through the built binary.
func TestDemoText(t *testing.T) {
	dir := t.TempDir()
	r := durable(t, "demo", "-n", "40", "--poison-rate", "0.05", "--dir", dir)
	if r.code != exitOK {
		t.Fatalf("demo failed:\n%s", r)
	}
	for _, want := range []string{
		"  enqueued                  40   ",
		"  dead-lettered              2   poison orders after 6 failed attempts",
		"  duplicate effects          0   ",
		"  lost                       0   ",
		"latency p99",
		"OK: every order was invoiced exactly once or dead-lettered; none was lost.",
		`sqlite3 -header -column ` + filepath.Join(dir, "billing.db") + ` "SELECT id, topic, reason, attempts, last_error, failed_at FROM durable_dead_letters ORDER BY failed_at"`,
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	if r.stderr != "" {
		t.Errorf("stderr is not a terminal, so no progress bar and no logs are expected; got:\n%s", r.stderr)
	}
}

func TestDemoUsage(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "orders.db"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"demo", "--dsn", "./x.db"}, "demo does not take --dsn"},
		{[]string{"demo", "-n", "0"}, "-n 0"},
		{[]string{"demo", "--poison-rate", "1.5"}, "--poison-rate 1.5"},
		{[]string{"demo", "--keep"}, "--keep applies to --postgres"},
		{[]string{"demo", "--postgres", "./x.db"}, "--postgres wants a postgres:// URL"},
		{[]string{"demo", "--dir", dir}, "exists already"},
		{[]string{"demo", "--dir", dir, "--postgres", "postgres://x"}, "none of the others can be"},
	} {
		r := runInProcess(t, tc.args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: want exit %d and %q, got\n%s", tc.args, exitUsage, tc.want, r)
		}
	}
}

func TestDemoFormatting(t *testing.T) {
	for in, want := range map[string]string{"/tmp/a.db": "/tmp/a.db", "/tmp/my dir/a.db": "'/tmp/my dir/a.db'", "it's": `'it'\''s'`} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %q, want %q", in, got, want)
		}
	}
	if got := redactDSN("postgres://app:secret@db:5432/app"); strings.Contains(got, "secret") {
		t.Errorf("redactDSN kept the password: %s", got)
	}
}

// TestDemoTimeout: an exchange that cannot finish in --max-time fails with
// exit code 1 and says so, after printing what it saw.
func TestDemoTimeout(t *testing.T) {
	r := runInProcess(t, "demo", "--json", "-n", "200", "--dir", t.TempDir(), "--max-time", "1ns")
	if r.code != exitFailure || !strings.Contains(r.stderr, "did not finish within --max-time") {
		t.Fatalf("want exit %d and the timeout named, got\n%s", exitFailure, r)
	}
	var s demo.Summary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("decoding the summary: %v\n%s", err, r)
	}
	if s.OK || !s.TimedOut {
		t.Errorf("ok %v, timed_out %v: want a failed, timed-out summary", s.OK, s.TimedOut)
	}
}
