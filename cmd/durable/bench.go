package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"github.com/durable-go/durable/dialects/dsn"
	"github.com/durable-go/durable/internal/bench"
	"github.com/durable-go/durable/migrations"
)

// benchFlags are bench's flags: the benchmark's options, and what the
// command does around the run.
type benchFlags struct {
	bench.Options
	jsonFile   string
	cpuProfile string
	traceFile  string
}

func (a *app) benchCommand() *cobra.Command {
	o := &benchFlags{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the whole pipeline (enqueue → relay → TCP → inbox → handler) against the raw commit rate",
		Long: `bench measures durable end to end, on Postgres and on SQLite: messages enqueued in app
transactions, relayed over TCP on 127.0.0.1 to an inbox in a second database, handled by a
no-op handler. Each workload runs on fresh databases (two new schemas of the --dsn server,
dropped afterwards; two SQLite files in a temporary directory, removed afterwards), and
measures in the same run the raw limit of that database: plain single-row
insert-and-commit statements at the same concurrency, or 1,000-row batch inserts (COPY
on Postgres, one multi-row INSERT on SQLite) for W2 and W4.

  W1 enlisted  16 goroutines; each transaction writes a business row and enqueues one
               message; 20,000 messages. Ratio: end-to-end messages/s over the app's own
               transaction without durable (business row + the message as a plain row),
               beside it over raw single-row commits/s.
  W2 bulk      100,000 messages enqueued in transactions of 1,000. Ratio: end-to-end
               messages/s over raw batch-inserted rows/s.
  W3 latency   200 messages/s for 30s, each in its own W1-style transaction: commit →
               handler start p50/p99/max. Raw: the latency of one plain commit.
  W4 hot key   40,000 messages in transactions of 100, every other one under the same
               ordering key: how soon the unkeyed half is through, and how fast the one
               key drains (one message in flight at a time).

End to end is first commit → last handler's transaction committed; latency is each
message's commit → its handler's start. The breakdown shows where the time goes between
the stages (relay claim, inbox received and stored, worker claim, handler start, handler
committed). See docs/benchmarks.md for how to read the numbers.

--dsn names the Postgres server (default ` + bench.DefaultDSN + `;
DURABLE_DSN is not read, so that a benchmark never lands on an application's database by
accident); the user needs CREATE on the database. --dialect postgres|sqlite|both (default
both). The tuning flags override the configuration bench uses, for experiments.

--instances 1,2,4 runs W1 and W2 once per number N of the list, on Postgres: N sender
processes (the app's transactions, the outbox and its relay) on the sender's schema and N
receiver processes (TCP server, inbox, handlers) on the receiver's, each a process of its
own (this binary again), every sender sending to every receiver. The senders share the
workload's messages and its writers. Per N it reports end-to-end msg/s (start → last
handler call), CPU per message (every process and the Postgres backends), commit → handler
p50/p99, and the duplicate sends: envelopes a receiver got again and dropped.`,
		Example: `  durable bench
  durable bench --dialect sqlite --json
  durable bench --dialect postgres --dsn postgres://postgres@db:5432/bench --w3-duration 10s
  durable bench --workloads w1 --dialect postgres --relay-linger 2ms
  durable bench --instances 1,2,4 --w1-messages 30000 --w2-messages 200000`,
		Args: cobra.NoArgs,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return a.benchValidate(cmd, o)
		},
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			return a.bench(cmd.Context(), cmd, o)
		}),
	}
	f := cmd.Flags()
	f.IntSliceVar(&o.Instances, "instances", nil, "run W1 and W2 with N sender and N receiver processes, for each N of this list (e.g. 1,2,4; Postgres only)")
	f.StringSliceVar(&o.Workloads, "workloads", []string{"w1", "w2", "w3", "w4"}, "workloads to run: w1, w2, w3, w4")
	f.IntVar(&o.W1Messages, "w1-messages", 20000, "W1: messages")
	f.IntVar(&o.W1Writers, "w1-writers", 16, "W1: concurrent app transactions (also the raw limit's writers)")
	f.IntVar(&o.W2Messages, "w2-messages", 100000, "W2: messages")
	f.IntVar(&o.W2Batch, "w2-batch", 1000, "W2: messages per transaction (and rows per raw batch)")
	f.IntVar(&o.W3Rate, "w3-rate", 200, "W3: messages per second")
	f.IntVar(&o.W4Messages, "w4-messages", 40000, "W4: messages, every other one under the same ordering key")
	f.DurationVar(&o.W3Duration, "w3-duration", 30*time.Second, "W3: how long to send")
	f.IntVar(&o.Payload, "payload", 256, "payload bytes per message (and per raw row)")
	f.StringVar(&o.jsonFile, "json-file", "", "also write the JSON report to this file (with the readable output on stdout)")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run (this process: relay, inbox, drivers) to this file")
	f.StringVar(&o.traceFile, "trace", "", "write an execution trace of the whole run to this file (go tool trace; -pprof=sync|sched|syscall for where goroutines wait)")

	f.StringVar(&o.Notify, "notify", "", "Postgres: on or off, NOTIFY at commit to wake the relay (default: the tuned value)")
	f.IntVar(&o.RelayBatch, "relay-batch", 0, "relay BatchSize (default: tuned)")
	f.DurationVar(&o.RelayLinger, "relay-linger", 0, "relay Linger; negative: none (default: tuned)")
	f.IntVar(&o.RelayInFlight, "relay-inflight", 0, "relay InFlight (default: tuned)")
	f.DurationVar(&o.RelayPoll, "relay-poll", 0, "relay PollInterval (default: tuned)")
	f.IntVar(&o.InboxConcurrency, "inbox-concurrency", 0, "inbox Concurrency (default: tuned)")
	f.IntVar(&o.InboxBatch, "inbox-batch", 0, "inbox BatchSize (default: tuned)")
	f.DurationVar(&o.InboxPoll, "inbox-poll", 0, "inbox PollInterval (default: tuned)")
	f.StringVar(&o.Inline, "inbox-inline", "", "on or off, inbox Inline: handle delivered messages in the delivery's transaction (default: the tuned value, on)")
	f.IntVar(&o.SenderConns, "sender-conns", 0, "Postgres: max connections of the sender's dialect: relay and idle inbox (default: relay in-flight + 4)")
	f.IntVar(&o.ReceiverConns, "receiver-conns", 0, "Postgres: max connections of the receiver's dialect: deliveries and workers (default: inbox concurrency + relay in-flight + 4)")
	for _, name := range []string{"notify", "relay-batch", "relay-linger", "relay-inflight", "relay-poll",
		"inbox-concurrency", "inbox-batch", "inbox-poll", "inbox-inline", "sender-conns", "receiver-conns"} {
		_ = f.SetAnnotation(name, "group", []string{"tuning"})
	}
	return cmd
}

// benchValidate replaces the root's check of the global flags: bench
// accepts --dialect both, and reads no DURABLE_DSN.
func (a *app) benchValidate(cmd *cobra.Command, o *benchFlags) error {
	switch strings.ToLower(a.dialect) {
	case "", "both":
		a.dialect = "both"
	case migrations.Postgres, "postgresql":
		a.dialect = migrations.Postgres
	case migrations.SQLite, "sqlite3":
		a.dialect = migrations.SQLite
	default:
		return usageErrorf("--dialect %q: want postgres, sqlite or both", a.dialect)
	}
	if a.schema != "" {
		return usageErrorf("--schema does not apply to bench: it creates fresh schemas and drops them")
	}
	if a.timeout < 0 {
		return usageErrorf("--timeout %s: must not be negative", a.timeout)
	}
	if a.dsn != "" {
		if dsn.KindOf(a.dsn).Dialect() != migrations.Postgres {
			return usageErrorf("--dsn names the Postgres server bench runs on; SQLite runs in a temporary directory")
		}
	}
	for _, w := range o.Workloads {
		switch w {
		case "w1", "w2", "w3", "w4":
		default:
			return usageErrorf("--workloads: unknown workload %q (want w1, w2, w3, w4)", w)
		}
	}
	for _, c := range []struct {
		name string
		v    int
	}{
		{"w1-messages", o.W1Messages}, {"w1-writers", o.W1Writers}, {"w2-messages", o.W2Messages},
		{"w2-batch", o.W2Batch}, {"w3-rate", o.W3Rate}, {"w4-messages", o.W4Messages}, {"payload", o.Payload},
	} {
		if c.v < 1 {
			return usageErrorf("--%s %d: must be at least 1", c.name, c.v)
		}
	}
	if len(o.Instances) > 0 {
		if a.dialect == migrations.SQLite {
			return usageErrorf("--instances runs on Postgres only: several processes on one SQLite file share its one writer")
		}
		a.dialect = migrations.Postgres
		if len(o.InstancesWorkloads()) == 0 {
			return usageErrorf("--instances runs W1 and W2: --workloads names neither")
		}
		for _, n := range o.Instances {
			if n < 1 || n > 16 {
				return usageErrorf("--instances %d: want 1 to 16", n)
			}
		}
	}
	if o.W3Duration < time.Second/time.Duration(o.W3Rate) {
		return usageErrorf("--w3-duration %s: too short for one message at --w3-rate %d", o.W3Duration, o.W3Rate)
	}
	for _, c := range []struct {
		name string
		v    int
	}{
		{"relay-batch", o.RelayBatch}, {"relay-inflight", o.RelayInFlight}, {"inbox-concurrency", o.InboxConcurrency},
		{"inbox-batch", o.InboxBatch}, {"sender-conns", o.SenderConns}, {"receiver-conns", o.ReceiverConns},
	} {
		if c.v < 0 {
			return usageErrorf("--%s %d: must not be negative", c.name, c.v)
		}
	}
	if o.RelayPoll < 0 || o.InboxPoll < 0 {
		return usageErrorf("--relay-poll and --inbox-poll must not be negative")
	}
	switch o.Notify {
	case "", "on", "off":
	default:
		return usageErrorf("--notify %q: want on or off", o.Notify)
	}
	switch o.Inline {
	case "", "on", "off":
	default:
		return usageErrorf("--inbox-inline %q: want on or off", o.Inline)
	}
	return nil
}

func (a *app) bench(ctx context.Context, cmd *cobra.Command, o *benchFlags) error {
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return failuref("--cpuprofile: %v", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return failuref("--cpuprofile: %v", err)
		}
		defer pprof.StopCPUProfile()
	}
	if o.traceFile != "" {
		f, err := os.Create(o.traceFile)
		if err != nil {
			return failuref("--trace: %v", err)
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return failuref("--trace: %v", err)
		}
		defer trace.Stop()
	}
	o.Dialect, o.DSN, o.Timeout = a.dialect, a.dsn, a.timeout
	o.Command = "durable " + strings.Join(os.Args[1:], " ")
	o.Progress = a.benchProgress()
	if len(o.Instances) > 0 {
		return a.benchInstances(ctx, o)
	}
	rep, err := bench.Run(ctx, &o.Options)
	switch {
	case errors.Is(err, bench.ErrInterrupted):
		return failuref("interrupted")
	case err != nil:
		return a.openError(err)
	}
	if o.jsonFile != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err == nil {
			err = os.WriteFile(o.jsonFile, append(b, '\n'), 0o644)
		}
		if err != nil {
			return failuref("--json-file: %v", err)
		}
	}
	if a.json {
		return a.printJSON(rep)
	}
	a.benchPrint(rep)
	return nil
}

// benchProgress returns a function that shows what runs, on one line of
// stderr rewritten in place, when stderr is a terminal (and does nothing
// otherwise, so that stderr stays for errors); "" clears the line.
func (a *app) benchProgress() func(format string, args ...any) {
	f, ok := a.stderr.(*os.File)
	if !ok || !(isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())) {
		return func(string, ...any) {}
	}
	return func(format string, args ...any) {
		fmt.Fprintf(f, "\r\033[K"+format, args...)
	}
}

func benchLoadString(l []float64) string {
	if l == nil {
		return "unknown"
	}
	return fmt.Sprintf("%.2f %.2f %.2f", l[0], l[1], l[2])
}

func (a *app) benchPrint(rep *bench.Report) {
	a.benchHeader(rep)
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tdialect\tmessages\tend-to-end msg/s\traw limit (same run)\tratio\tcommit→handler p50 / p99 / max ms\t")
	for i := range rep.Results {
		benchRow(tw, &rep.Results[i])
	}
	tw.Flush()
	a.benchFooter(rep)
}

func (a *app) benchHeader(rep *bench.Report) {
	m := rep.Machine
	fmt.Fprintf(a.stdout, "durable bench: %d CPUs, %s %s/%s", m.CPUs, m.GoVersion, m.OS, m.Arch)
	if m.Postgres != "" {
		fmt.Fprintf(a.stdout, ", PostgreSQL %s", m.Postgres)
	}
	if m.SQLite != "" {
		fmt.Fprintf(a.stdout, ", SQLite %s", m.SQLite)
	}
	fmt.Fprintf(a.stdout, "\nload average before: %s\n\n", benchLoadString(m.LoadBefore))
}

func benchWorkloadLabel(r *bench.Result) string {
	return strings.ToUpper(r.Workload) + " " + r.Name
}

func benchRow(tw *tabwriter.Writer, r *bench.Result) {
	raw := ""
	ratio := "-"
	if r.Ratio != nil {
		ratio = fmt.Sprintf("%.2f", *r.Ratio)
	}
	switch {
	case r.Workload == "w2" || r.Workload == "w4":
		raw = fmt.Sprintf("%s rows/s (%s of %d)", benchInt(r.Raw.PerSec), r.Raw.Kind, r.Raw.Batch)
	case r.Workload == "w3":
		raw = fmt.Sprintf("commit p50 %.2f / p99 %.2f ms", r.Raw.Latency.P50, r.Raw.Latency.P99)
	case r.AppTx != nil && r.RatioToAppTx != nil:
		// W1 is bounded by the app's own transaction, not by a bare
		// single-statement commit: the ratio is to the former.
		raw = fmt.Sprintf("%s app tx/s (single-row commits %s/s, %d writers)", benchInt(r.AppTx.PerSec),
			benchInt(r.Raw.PerSec), r.Raw.Writers)
		ratio = fmt.Sprintf("%.2f of app tx", *r.RatioToAppTx)
		if r.Ratio != nil {
			ratio += fmt.Sprintf(" (%.2f of single)", *r.Ratio)
		}
	default:
		raw = fmt.Sprintf("%s commits/s (%d writers)", benchInt(r.Raw.PerSec), r.Raw.Writers)
	}
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.1f / %.1f / %.1f\t\n", benchWorkloadLabel(r), r.Dialect,
		benchInt(float64(r.Messages)), benchInt(r.EndToEndPerSec), raw, ratio, r.Latency.P50, r.Latency.P99, r.Latency.Max)
}

// benchInt formats v rounded, with thousands separators.
func benchInt(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func (a *app) benchFooter(rep *bench.Report) {
	var apps []*bench.Result
	for i := range rep.Results {
		if rep.Results[i].AppTx != nil {
			apps = append(apps, &rep.Results[i])
		}
	}
	if len(apps) > 0 {
		fmt.Fprintf(a.stdout, "\nthe app's own W1 transaction without durable (business row + the message as a plain row):\n")
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "dialect\ttransactions/s\tof raw\tend-to-end of it\tCPU µs/tx (go + postgres)\t")
		for _, r := range apps {
			fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.2f\t%s\t\n", r.Dialect, benchInt(r.AppTx.PerSec), r.AppTx.PerSec/r.Raw.PerSec,
				*r.RatioToAppTx, benchCPUString(r.CPU.AppTxPerTx, false))
		}
		tw.Flush()
	}

	fmt.Fprintf(a.stdout, "\nwhere the time goes, per message, p50 / p99 ms (the ACK runs beside the path):\n")
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	if len(rep.Results) > 0 {
		fmt.Fprint(tw, "workload\tdialect\t")
		for _, s := range rep.Results[0].Stages {
			fmt.Fprintf(tw, "%s → %s\t", s.From, s.To)
		}
		fmt.Fprintln(tw)
	}
	for i := range rep.Results {
		r := &rep.Results[i]
		fmt.Fprintf(tw, "%s\t%s\t", benchWorkloadLabel(r), r.Dialect)
		for _, s := range r.Stages {
			fmt.Fprintf(tw, "%.1f / %.1f\t", s.P50, s.P99)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()

	fmt.Fprintf(a.stdout, "\nenqueue side (app commits/s while the pipeline ran), CPU per message against a raw row, and checks:\n")
	tw = tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tdialect\tenqueued/s\tCPU µs/msg (go + postgres app/relay/inbox)\tCPU µs/raw row\tenqueued\tdelivered\thandled\tduplicate calls\tdead letters\t")
	for i := range rep.Results {
		r := &rep.Results[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t\n", benchWorkloadLabel(r), r.Dialect, benchInt(r.EnqueuePerSec),
			benchCPUString(r.CPU.PerMessage, true), benchCPUString(r.CPU.RawPerRow, false),
			r.Enqueued, r.Delivered, r.Handled, r.Duplicates, r.DeadLetters)
	}
	tw.Flush()

	for i := range rep.Results {
		r := &rep.Results[i]
		if h := r.HotKey; h != nil {
			fmt.Fprintf(a.stdout, "\n%s %s: the %s unkeyed messages were all handled %.1f s after the first commit (%s msg/s); "+
				"the %s messages of the one hot key %.1f s after it (%s msg/s, one in flight at a time)\n",
				benchWorkloadLabel(r), r.Dialect, benchInt(float64(h.Unkeyed)), h.UnkeyedSeconds, benchInt(h.UnkeyedPerSec),
				benchInt(float64(h.Keyed)), h.KeyedSeconds, benchInt(h.KeyedPerSec))
		}
	}

	if len(rep.Targets) > 0 {
		fmt.Fprintf(a.stdout, "\ntargets (judged on this run, never asserted):\n")
		tw = tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		for _, t := range rep.Targets {
			verdict := "met"
			if !t.Met {
				verdict = "MISSED"
			}
			fmt.Fprintf(tw, "  %s %s\t%s\t%s\t%s\n", strings.ToUpper(t.Workload), t.Dialect, t.Want, strconv.FormatFloat(t.Got, 'f', 2, 64), verdict)
		}
		tw.Flush()
	}
	for i := range rep.Results {
		r := &rep.Results[i]
		for _, w := range r.Warnings {
			fmt.Fprintf(a.stdout, "warning (%s %s): %s\n", strings.ToUpper(r.Workload), r.Dialect, w)
		}
	}
	fmt.Fprintf(a.stdout, "\nload average after: %s\n", benchLoadString(rep.Machine.LoadAfter))
}

// benchCPUString shows a CPU cost: its total, and with roles its parts.
func benchCPUString(c *bench.CPU, roles bool) string {
	if c == nil {
		return "-"
	}
	if c.Postgres == nil {
		return fmt.Sprintf("%.0f", c.Go)
	}
	s := fmt.Sprintf("%.0f = %.0f + %.0f", c.Go+*c.Postgres, c.Go, *c.Postgres)
	if roles {
		r := c.PostgresByRole
		s += fmt.Sprintf(" (%.0f/%.0f/%.0f)", r[bench.RoleApp], r[bench.RoleRelay], r[bench.RoleInbox])
	}
	return s
}
