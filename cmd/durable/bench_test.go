package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/durable-go/durable/internal/testdb"
)

// benchSmallArgs makes every workload tiny: the smoke tests check the
// command's output, never a speed.
var benchSmallArgs = []string{"bench", "--json", "--w1-messages", "200", "--w2-messages", "2000",
	"--w3-rate", "100", "--w3-duration", "1s", "--w4-messages", "400"}

// benchResultFields are the keys every result carries, nested ones as
// "parent.child".
var benchResultFields = []string{
	"dialect", "workload", "name", "messages", "writers", "messages_per_tx", "offered_rate_per_sec",
	"duration_sec", "enqueued", "delivered", "handled", "duplicate_handler_calls", "dead_letters",
	"seconds", "enqueue_per_sec", "end_to_end_per_sec",
	"latency_ms.p50", "latency_ms.p90", "latency_ms.p99", "latency_ms.max",
	"raw.kind", "raw.writers", "raw.rows", "raw.batch", "raw.rows_per_sec", "raw.latency_ms.p50",
	"ratio", "app_tx", "ratio_to_app_tx", "stages", "cpu", "calls", "config.notify", "config.relay_batch_size", "config.relay_linger_ms",
	"config.relay_in_flight", "config.inbox_concurrency", "config.inbox_batch_size", "warnings",
}

func benchField(m map[string]any, path string) (any, bool) {
	var v any = m
	for _, k := range strings.Split(path, ".") {
		obj, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = obj[k]; !ok {
			return nil, false
		}
	}
	return v, true
}

// checkBenchJSON checks the report of a smoke run on dialects: every
// workload of every dialect present with all its fields, every message
// handled once, no dead letter.
func checkBenchJSON(t *testing.T, out string, dialects ...string) {
	t.Helper()
	var rep struct {
		Machine map[string]any   `json:"machine"`
		Results []map[string]any `json:"results"`
		Targets []map[string]any `json:"targets"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench --json printed no JSON report: %v\n%s", err, out)
	}
	for _, k := range []string{"cpus", "go_version", "postgres_version", "sqlite_version", "load_average_before", "load_average_after", "command"} {
		if _, ok := rep.Machine[k]; !ok {
			t.Errorf("machine has no %q", k)
		}
	}
	if want := 4 * len(dialects); len(rep.Results) != want {
		t.Fatalf("%d results, want %d (W1–W4 on %v)", len(rep.Results), want, dialects)
	}
	for i, r := range rep.Results {
		name := r["dialect"].(string) + " " + r["workload"].(string)
		if want := dialects[i/4]; r["dialect"] != want {
			t.Errorf("result %d is on %v, want %s", i, r["dialect"], want)
		}
		for _, f := range benchResultFields {
			if _, ok := benchField(r, f); !ok {
				t.Errorf("%s: no field %q", name, f)
			}
		}
		messages := r["messages"].(float64)
		for _, f := range []string{"enqueued", "delivered", "handled"} {
			if r[f] != messages {
				t.Errorf("%s: %s = %v, want %v (every message)", name, f, r[f], messages)
			}
		}
		if r["workload"] == "w4" {
			// Half the messages under the hot key, all of them handled.
			h, _ := r["hot_key"].(map[string]any)
			if h == nil || h["keyed"] != messages/2 || h["unkeyed"] != messages/2 {
				t.Errorf("%s: hot_key = %v, want %v keyed and %v unkeyed", name, r["hot_key"], messages/2, messages/2)
			}
		}
		if r["workload"] == "w1" {
			if v, _ := r["ratio_to_app_tx"].(float64); v <= 0 {
				t.Errorf("%s: ratio_to_app_tx = %v, want the ratio to the app's own transaction", name, r["ratio_to_app_tx"])
			}
		}
		if r["dead_letters"] != 0.0 {
			t.Errorf("%s: %v dead letters", name, r["dead_letters"])
		}
		if e2e, _ := r["end_to_end_per_sec"].(float64); e2e <= 0 {
			t.Errorf("%s: end_to_end_per_sec = %v", name, r["end_to_end_per_sec"])
		}
		// Inline, the path skips the worker's claim and the separate
		// store: 4 steps instead of 6, and the ACK beside them.
		want := 7
		if cfg, _ := r["config"].(map[string]any); cfg["inbox_inline"] == true {
			want = 5
		}
		if stages, _ := r["stages"].([]any); len(stages) != want {
			t.Errorf("%s: %d stages, want %d", name, len(stages), want)
		}
	}
}

func TestBenchSmokeSQLite(t *testing.T) {
	r := mustSucceed(t, append(benchSmallArgs, "--dialect", "sqlite")...)
	checkBenchJSON(t, r.stdout, "sqlite")
}

// TestBenchSmokeSQLiteWorkers runs the bench with inline handling off:
// every message goes through the inbox's workers.
func TestBenchSmokeSQLiteWorkers(t *testing.T) {
	r := mustSucceed(t, append(benchSmallArgs, "--dialect", "sqlite", "--inbox-inline", "off")...)
	checkBenchJSON(t, r.stdout, "sqlite")
	if !strings.Contains(r.stdout, `"inbox_inline": false`) {
		t.Fatalf("the JSON does not record inbox_inline false")
	}
}

// TestBenchSmokePostgres runs on the test server (skipped when it is not
// reachable, unless CI is set); the bench creates and drops its own
// schemas.
func TestBenchSmokePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	u := testdb.PostgresURL(t)
	r := mustSucceed(t, append(benchSmallArgs, "--dialect", "postgres", "--dsn", u)...)
	checkBenchJSON(t, r.stdout, "postgres")
}

func TestBenchUsage(t *testing.T) {
	wantError(t, durable(t, "bench", "--dialect", "mysql"), exitUsage, `--dialect "mysql": want postgres, sqlite or both`)
	wantError(t, durable(t, "bench", "--workloads", "w5"), exitUsage, `--workloads: unknown workload "w5" (want w1, w2, w3, w4)`)
	wantError(t, durable(t, "bench", "--dsn", "./app.db"), exitUsage, "--dsn names the Postgres server bench runs on; SQLite runs in a temporary directory")
}

// TestBenchInstances runs W1 and W2 with one and with two sender and
// receiver processes, tiny: every row present, every message handled
// exactly once, the duplicate sends reported, and every instance process
// gone when the command has returned.
func TestBenchInstances(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	u := testdb.PostgresURL(t)
	r := mustSucceed(t, "bench", "--instances", "1,2", "--workloads", "w1,w2", "--w1-messages", "200",
		"--w2-messages", "2000", "--w2-batch", "100", "--dsn", u, "--json")
	var rep struct {
		Machine   map[string]any `json:"machine"`
		Workloads []struct {
			Workload string         `json:"workload"`
			Messages float64        `json:"messages"`
			Raw      map[string]any `json:"raw"`
			AppTx    map[string]any `json:"app_tx"`
			Rows     []map[string]any
		} `json:"workloads"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("bench --instances --json printed no JSON report: %v\n%s", err, r.stdout)
	}
	if rep.Machine["postgres_version"] == "" {
		t.Errorf("machine has no postgres_version: %v", rep.Machine)
	}
	if len(rep.Workloads) != 2 || rep.Workloads[0].Workload != "w1" || rep.Workloads[1].Workload != "w2" {
		t.Fatalf("workloads %+v, want w1 and w2", rep.Workloads)
	}
	for _, w := range rep.Workloads {
		if v, _ := w.Raw["rows_per_sec"].(float64); v <= 0 {
			t.Errorf("%s: raw limit %v", w.Workload, w.Raw)
		}
		if (w.AppTx != nil) != (w.Workload == "w1") {
			t.Errorf("%s: app_tx = %v, want one for W1 only", w.Workload, w.AppTx)
		}
		if len(w.Rows) != 2 {
			t.Fatalf("%s: %d rows, want 2 (1 and 2 instances)", w.Workload, len(w.Rows))
		}
		for i, row := range w.Rows {
			name := fmt.Sprintf("%s with %v instances", w.Workload, row["instances"])
			if row["instances"] != float64(i+1) {
				t.Errorf("%s: row %d, want %d instances", name, i, i+1)
			}
			for _, f := range []string{"handled", "handled_in_db", "messages"} {
				if row[f] != w.Messages {
					t.Errorf("%s: %s = %v, want %v (every message once)", name, f, row[f], w.Messages)
				}
			}
			for _, f := range []string{"duplicate_handler_calls", "dead_letters"} {
				if row[f] != 0.0 {
					t.Errorf("%s: %s = %v, want 0", name, f, row[f])
				}
			}
			// Duplicate sends depend on timing (a retried batch): a count,
			// whatever it is.
			if d, ok := row["transport_duplicates"].(float64); !ok || d < 0 {
				t.Errorf("%s: transport_duplicates = %v, want a count", name, row["transport_duplicates"])
			}
			for _, f := range []string{"end_to_end_per_sec", "seconds", "claims_per_message"} {
				if v, _ := row[f].(float64); v <= 0 {
					t.Errorf("%s: %s = %v", name, f, row[f])
				}
			}
			// Every message was claimed, by claims that leased rows.
			if c, _ := row["relay_claims"].(map[string]any); c == nil || c["short"].(float64)+c["full"].(float64) < 1 {
				t.Errorf("%s: relay_claims = %v, want claims that leased rows", name, row["relay_claims"])
			}
			if lat, _ := row["latency_ms"].(map[string]any); lat == nil || lat["p99"].(float64) < lat["p50"].(float64) {
				t.Errorf("%s: latency_ms = %v", name, row["latency_ms"])
			}
			procs, _ := row["processes"].([]any)
			if len(procs) != 2*(i+1) {
				t.Fatalf("%s: %d processes, want %d", name, len(procs), 2*(i+1))
			}
			roles := map[string]int{}
			for _, p := range procs {
				p := p.(map[string]any)
				roles[p["role"].(string)]++
				// The command reaped its instances before it returned.
				if pid := int(p["pid"].(float64)); pid <= 0 {
					t.Errorf("%s: process %v has no pid", name, p)
				} else if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
					t.Errorf("%s: instance process %d still exists", name, pid)
				}
			}
			if roles["sender"] != i+1 || roles["receiver"] != i+1 {
				t.Errorf("%s: processes by role %v", name, roles)
			}
		}
	}
}

func TestBenchInstancesUsage(t *testing.T) {
	wantError(t, durable(t, "bench", "--instances", "1,2", "--dialect", "sqlite"), exitUsage,
		"--instances runs on Postgres only: several processes on one SQLite file share its one writer")
	wantError(t, durable(t, "bench", "--instances", "0"), exitUsage, "--instances 0: want 1 to 16")
	wantError(t, durable(t, "bench", "--instances", "2", "--workloads", "w3"), exitUsage, "--instances runs W1 and W2: --workloads names neither")
}
