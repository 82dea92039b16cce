package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/durable-go/durable/internal/bench"
)

// benchInstanceCommand is the process `durable bench --instances` starts
// for each sender and receiver instance; hidden, not for people.
func (a *app) benchInstanceCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "bench-instance",
		Short:             "One instance process of durable bench --instances (reads its spec from stdin)",
		Hidden:            true,
		Args:              cobra.NoArgs,
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			if err := bench.RunInstance(cmd.Context(), a.stdin, a.stdout); err != nil {
				return failuref("%v", err)
			}
			return nil
		}),
	}
}

// benchInstances runs and prints the multi-instance bench.
func (a *app) benchInstances(ctx context.Context, o *benchFlags) error {
	exe, err := os.Executable()
	if err != nil {
		return failuref("--instances: cannot find this binary to start the instances: %v", err)
	}
	rep, err := bench.RunInstances(ctx, &o.Options, exe)
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
	a.benchInstancesPrint(rep)
	return nil
}

func (a *app) benchInstancesPrint(rep *bench.InstancesReport) {
	a.benchHeader(&bench.Report{Machine: rep.Machine})
	for i := range rep.Workloads {
		w := &rep.Workloads[i]
		fmt.Fprintf(a.stdout, "%s %s on %s, %s messages; raw limit (same run): ", strings.ToUpper(w.Workload), w.Name,
			w.Dialect, benchInt(float64(w.Messages)))
		if w.AppTx != nil {
			fmt.Fprintf(a.stdout, "the app's own transaction without durable %s tx/s (single-row commits %s/s), %d writers\n",
				benchInt(w.AppTx.PerSec), benchInt(w.Raw.PerSec), w.Raw.Writers)
		} else {
			fmt.Fprintf(a.stdout, "%s rows/s (%s of %d)\n", benchInt(w.Raw.PerSec), w.Raw.Kind, w.Raw.Batch)
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "instances\twriters/sender\tmsg/s\tof raw\tCPU µs/msg (go + postgres)\tof %d CPUs\tp50 ms\tp99 ms\tmsgs/relay batch\tduplicate sends\thandled\thandled twice\t\n", rep.Machine.CPUs)
		for _, r := range w.Rows {
			ofRaw, busy := "-", "-"
			if r.OfRaw != nil {
				ofRaw = fmt.Sprintf("%.2f", *r.OfRaw)
			}
			if r.Busy != nil {
				busy = fmt.Sprintf("%.0f%%", *r.Busy*100)
			}
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%.1f\t%.1f\t%.1f\t%d\t%d\t%d\t\n", r.Instances, r.WritersPerSender,
				benchInt(r.EndToEndPerSec), ofRaw, benchCPUString(r.CPU, false), busy, r.Latency.P50, r.Latency.P99,
				r.MessagesPerBatch, r.TransportDuplicates, r.Handled, r.DuplicateHandlerCalls)
		}
		tw.Flush()
		fmt.Fprintln(a.stdout, "relay claims during the run (empty / short / full; per message):")
		for _, r := range w.Rows {
			c := r.RelayClaims
			fmt.Fprintf(a.stdout, "  N=%d  %d / %d / %d; %.3f\n", r.Instances, c.Empty, c.Short, c.Full, r.ClaimsPerMessage)
		}
		fmt.Fprintln(a.stdout, "CPU seconds during the run, by process (senders | receivers | postgres app/relay/inbox):")
		for _, r := range w.Rows {
			var snd, rcv []string
			for _, p := range r.Processes {
				s := fmt.Sprintf("%.1f", p.CPUSeconds)
				if p.Role == bench.InstanceSender {
					snd = append(snd, s)
				} else {
					rcv = append(rcv, s)
				}
			}
			pg := "-"
			if r.CPU != nil && r.CPU.Postgres != nil {
				m := float64(r.Messages) / 1e6
				by := r.CPU.PostgresByRole
				pg = fmt.Sprintf("%.1f/%.1f/%.1f", by[bench.RoleApp]*m, by[bench.RoleRelay]*m, by[bench.RoleInbox]*m)
			}
			fmt.Fprintf(a.stdout, "  N=%d  %s | %s | %s  (%.1f s wall)\n", r.Instances, strings.Join(snd, " "),
				strings.Join(rcv, " "), pg, r.Seconds)
		}
		for _, r := range w.Rows {
			for _, wn := range r.Warnings {
				fmt.Fprintf(a.stdout, "warning (%s, %d instances): %s\n", strings.ToUpper(w.Workload), r.Instances, wn)
			}
		}
		fmt.Fprintln(a.stdout)
	}
	fmt.Fprintf(a.stdout, "load average after: %s\n", benchLoadString(rep.Machine.LoadAfter))
}
