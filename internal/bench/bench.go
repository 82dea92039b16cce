// Package bench is durable's end-to-end benchmark, run by `durable bench`
// (see docs/benchmarks.md): workloads W1–W4 on Postgres and SQLite, each on
// fresh databases, with the raw limit of the same database measured in the
// same run. The command parses the flags into Options and prints the
// Report; Run does the rest.
package bench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/durable-go/durable/migrations"
)

// DefaultDSN is the Postgres server bench uses without Options.DSN: the
// local test server of the project's tests.
const DefaultDSN = benchDefaultDSN

// Options configures Run; the command's flags fill it (see
// `durable bench --help` for each).
type Options struct {
	// Dialect is migrations.Postgres, migrations.SQLite or "both".
	Dialect string
	// DSN names the Postgres server; empty: DefaultDSN.
	DSN string
	// Timeout bounds each setup step (opening, creating a workload's
	// databases); 0: no limit.
	Timeout time.Duration
	// Command is the command line, for the report.
	Command string
	// Progress, when set, is told what runs; "" when done.
	Progress func(format string, args ...any)

	Workloads []string // of w1, w2, w3, w4
	// Instances, when set, runs RunInstances: W1 and W2 with each of
	// these numbers of sender and receiver processes.
	Instances  []int
	W1Messages int
	W1Writers  int
	W2Messages int
	W2Batch    int
	W4Messages int
	W3Rate     int
	W3Duration time.Duration
	Payload    int

	// Overrides of the tuned configuration; zero (or "") keeps it.
	Notify           string // "on" or "off"
	Inline           string // "on" or "off"
	RelayBatch       int
	RelayLinger      time.Duration
	RelayInFlight    int
	RelayPoll        time.Duration
	InboxConcurrency int
	InboxBatch       int
	InboxPoll        time.Duration
	SenderConns      int
	ReceiverConns    int
}

// ErrInterrupted is returned by Run when ctx ended while a workload ran.
var ErrInterrupted = errors.New("interrupted")

// benchTuned is the configuration bench runs with: the knobs chosen for the
// targets on the project's 2-core machine (see docs/benchmarks.md,
// "Tuning"). Throughput workloads batch harder; the latency workload wakes
// the relay at commit.
func benchTuned(dialect string, o *Options, w benchWorkload) benchTuning {
	t := benchTuning{
		RelayBatchSize:   256,
		RelayLingerMS:    5,
		RelayInFlight:    4,
		RelayPollMS:      1000,
		InboxConcurrency: 4,
		InboxBatchSize:   50,
		InboxPollMS:      1000,
		InboxInline:      true,
	}
	switch {
	case dialect == migrations.Postgres && w.id == "w1":
		// NOTIFY takes a database-wide lock at commit, which serialises
		// the app's commits (W1 runs 3× slower with it); the relay shares
		// this process, so Outbox.Subscribe wakes it without a round trip.
		t.RelayLingerMS = 20
	case dialect == migrations.Postgres && w.id == "w2":
		t.RelayBatchSize = 1000
	case dialect == migrations.Postgres && w.id == "w3":
		// At 200 messages/s the lock costs nothing, and the wake-up at
		// commit saves the relay's follow-up claims after the in-process
		// wake-up, which comes before the commit.
		t.Notify = true
	case dialect == migrations.SQLite:
		// One connection serves the app, the relay and the idle inbox of
		// the sender: fewer, larger claims and acks leave it to the app.
		t.InboxConcurrency = 1
		t.InboxBatchSize = 256
		if w.id != "w3" {
			t.RelayLingerMS = 50
			t.RelayBatchSize = 1000
		}
	}
	if o.Notify != "" {
		t.Notify = o.Notify == "on" && dialect == migrations.Postgres
	}
	if o.Inline != "" {
		t.InboxInline = o.Inline == "on"
	}
	set := func(dst *int, v int) {
		if v > 0 {
			*dst = v
		}
	}
	set(&t.RelayBatchSize, o.RelayBatch)
	set(&t.RelayInFlight, o.RelayInFlight)
	set(&t.InboxConcurrency, o.InboxConcurrency)
	set(&t.InboxBatchSize, o.InboxBatch)
	if o.RelayLinger != 0 {
		t.RelayLingerMS = float64(o.RelayLinger) / 1e6
	}
	if o.RelayPoll > 0 {
		t.RelayPollMS = float64(o.RelayPoll) / 1e6
	}
	if o.InboxPoll > 0 {
		t.InboxPollMS = float64(o.InboxPoll) / 1e6
	}
	if dialect == migrations.Postgres {
		// Every app writer holds a connection for its transaction; the relay
		// needs one per batch in flight (the ACK) and one to claim; the
		// inbox one per worker and one per batch being stored.
		t.AppConns = max(w.writers, 1) + 2
		t.SenderConns = t.RelayInFlight + 4
		t.ReceiverConns = t.InboxConcurrency + t.RelayInFlight + 4
		set(&t.SenderConns, o.SenderConns)
		set(&t.ReceiverConns, o.ReceiverConns)
	}
	return t
}

func (o *Options) workloadList() []benchWorkload {
	var out []benchWorkload
	for _, id := range []string{"w1", "w2", "w3", "w4"} {
		if !containsString(o.Workloads, id) {
			continue
		}
		switch id {
		case "w1":
			out = append(out, benchWorkload{id: id, name: "enlisted", messages: o.W1Messages, writers: o.W1Writers, perTx: 1})
		case "w2":
			out = append(out, benchWorkload{id: id, name: "bulk", messages: o.W2Messages, writers: 1, perTx: o.W2Batch})
		case "w3":
			n := max(int(o.W3Duration.Seconds()*float64(o.W3Rate)), 1)
			out = append(out, benchWorkload{id: id, name: "latency", messages: n, writers: 16, perTx: 1,
				rate: o.W3Rate, duration: o.W3Duration})
		case "w4":
			out = append(out, benchWorkload{id: id, name: "hot key", messages: o.W4Messages, writers: 1,
				perTx: min(100, o.W4Messages), hotKey: true})
		}
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Machine describes where the numbers were measured.
type Machine struct {
	CPUs       int       `json:"cpus"`
	GoVersion  string    `json:"go_version"`
	OS         string    `json:"os"`
	Arch       string    `json:"arch"`
	Postgres   string    `json:"postgres_version"`
	SQLite     string    `json:"sqlite_version"`
	LoadBefore []float64 `json:"load_average_before"`
	LoadAfter  []float64 `json:"load_average_after"`
	Started    time.Time `json:"started_at"`
	Command    string    `json:"command"`
}

// Report is what --json prints.
type Report struct {
	Machine Machine  `json:"machine"`
	Results []Result `json:"results"`
	Targets []Target `json:"targets"`
}

// Target is one of the project's targets, judged on this run.
type Target struct {
	Dialect  string  `json:"dialect"`
	Workload string  `json:"workload"`
	Want     string  `json:"want"`
	Got      float64 `json:"got"`
	Met      bool    `json:"met"`
}

// Load reads the load averages (1, 5, 15 minutes) on Linux; nil
// elsewhere.
func Load() []float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return nil
	}
	fields := strings.Fields(string(b))
	var out []float64
	for _, f := range fields[:min(3, len(fields))] {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return nil
		}
		out = append(out, v)
	}
	return out
}

// step bounds one setup step by o.Timeout.
func (o *Options) step(ctx context.Context) (context.Context, context.CancelFunc) {
	if o.Timeout > 0 {
		return context.WithTimeout(ctx, o.Timeout)
	}
	return context.WithCancel(ctx)
}

// Run runs the workloads of o on the dialects of o and returns the report.
// The errors of opening the Postgres server are *dsn.Error.
func Run(ctx context.Context, o *Options) (*Report, error) {
	rep := &Report{Machine: Machine{
		CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH,
		LoadBefore: Load(), Started: time.Now().UTC().Truncate(time.Second),
		Command: o.Command,
	}}
	payload := make([]byte, o.Payload)
	_, _ = rand.Read(payload)
	workloads := o.workloadList()

	var (
		pg *benchPG
		sl *benchSQLite
	)
	if o.Dialect != migrations.SQLite {
		dsn := o.DSN
		if dsn == "" {
			dsn = benchDefaultDSN
		}
		sctx, cancel := o.step(ctx)
		var err error
		pg, err = benchOpenPostgres(sctx, dsn)
		cancel()
		if err != nil {
			return nil, err
		}
		defer pg.close()
		rep.Machine.Postgres = pg.version
	}
	if o.Dialect != migrations.Postgres {
		var err error
		if sl, err = benchOpenSQLite(ctx); err != nil {
			return nil, fmt.Errorf("sqlite: %v", err)
		}
		defer sl.close()
		rep.Machine.SQLite = sl.version
	}

	progress := o.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	for _, dialect := range []string{migrations.Postgres, migrations.SQLite} {
		if (dialect == migrations.Postgres && pg == nil) || (dialect == migrations.SQLite && sl == nil) {
			continue
		}
		for _, w := range workloads {
			t := benchTuned(dialect, o, w)
			p := newBenchProbe(w.messages)
			var (
				res Result
				err error
			)
			progress("running %s %s on %s…", strings.ToUpper(w.id), w.name, dialect)
			sctx, cancel := o.step(ctx)
			if dialect == migrations.Postgres {
				env, eerr := pg.env(sctx, w.id, p, t)
				cancel()
				if eerr != nil {
					return nil, fmt.Errorf("postgres %s: %w", w.id, eerr)
				}
				res, err = benchRunWorkload(ctx, env, p, dialect, w, t, payload)
				env.close()
			} else {
				env, eerr := sl.env(sctx, w.id, p)
				cancel()
				if eerr != nil {
					return nil, fmt.Errorf("sqlite %s: %w", w.id, eerr)
				}
				res, err = benchRunWorkload(ctx, env, p, dialect, w, t, payload)
				env.close()
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil, ErrInterrupted
				}
				return nil, fmt.Errorf("%s %s: %w", dialect, w.id, err)
			}
			rep.Results = append(rep.Results, res)
		}
	}
	progress("")
	rep.Machine.LoadAfter = Load()
	rep.Targets = Targets(rep.Results)
	return rep, nil
}

// Targets judges the project's targets on the results of this run.
// W1 is judged against the app's own transaction (ratio_to_app_tx), the
// ceiling of any outbox; W2 against the raw COPY of the same run.
func Targets(results []Result) []Target {
	var out []Target
	for i := range results {
		r := &results[i]
		switch {
		case r.Workload == "w1" && r.RatioToAppTx != nil && r.Dialect == migrations.Postgres:
			out = append(out,
				Target{r.Dialect, r.Workload, "end-to-end ≥ 0.8 × the app's own transaction", *r.RatioToAppTx, *r.RatioToAppTx >= 0.8},
				Target{r.Dialect, r.Workload, "commit → handler p50 < 10 ms", r.Latency.P50, r.Latency.P50 < 10})
		case r.Workload == "w1" && r.RatioToAppTx != nil && r.Dialect == migrations.SQLite:
			out = append(out, Target{r.Dialect, r.Workload, "end-to-end ≥ 0.6 × the app's own transaction", *r.RatioToAppTx, *r.RatioToAppTx >= 0.6})
		case r.Workload == "w2" && r.Ratio != nil && r.Dialect == migrations.Postgres:
			out = append(out, Target{r.Dialect, r.Workload, "end-to-end ≥ 0.2 × raw 1,000-row COPY", *r.Ratio, *r.Ratio >= 0.2})
		case r.Workload == "w3" && r.Dialect == migrations.Postgres:
			out = append(out,
				Target{r.Dialect, r.Workload, "commit → handler p50 ≤ 1 ms", r.Latency.P50, r.Latency.P50 <= 1},
				Target{r.Dialect, r.Workload, "commit → handler p99 ≤ 5 ms", r.Latency.P99, r.Latency.P99 <= 5})
		}
	}
	return out
}
