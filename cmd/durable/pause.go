package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/operator"
)

// pauseFlags are the flags that name what pause and resume act on.
type pauseFlags struct {
	destination, queue, reason string
}

func (f *pauseFlags) target() (kind, name string, err error) {
	switch {
	case f.destination != "" && f.queue != "":
		return "", "", usageErrorf("give --destination or --queue, not both")
	case f.destination != "":
		return dialects.PauseDestination, f.destination, nil
	case f.queue != "":
		return dialects.PauseQueue, f.queue, nil
	}
	return "", "", usageErrorf("name what to act on: --destination NAME (a relay's destination) or --queue NAME (an inbox queue)")
}

func (f *pauseFlags) add(cmd *cobra.Command, reason bool) {
	cmd.Flags().StringVar(&f.destination, "destination", "", "a destination of the outbox: its relays stop claiming and sending")
	cmd.Flags().StringVar(&f.queue, "queue", "", `an inbox queue ("default" or a name of inbox.Config.Queues): its workers stop claiming`)
	if reason {
		cmd.Flags().StringVar(&f.reason, "reason", "", "why, recorded with the pause and shown by durable pauses")
	}
}

// actor names the CLI's user in durable_audit and durable_pauses: "cli",
// or "cli:" and $USER when it is set.
func actor() string {
	if u := os.Getenv("USER"); u != "" {
		return "cli:" + u
	}
	return "cli"
}

// pauseResult is what pause and resume print with --json.
type pauseResult struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Changed is false when the pause was there already (pause) or was
	// not there (resume).
	Changed bool `json:"changed"`
}

func (a *app) pauseCommand() *cobra.Command {
	var f pauseFlags
	cmd := &cobra.Command{
		Use:   "pause (--destination NAME | --queue NAME) [--reason TEXT]",
		Short: "Pause a destination's relays or an inbox queue's workers, on every node",
		Long: `Pause a destination of the outbox or a queue of the inbox, on every node of the database:
the pause is a row of durable_pauses, which every relay and inbox reads once per poll
interval, so all of them obey it within one poll interval (a second by default).

  --destination  no relay claims or sends the destination's messages; batches in flight
                 finish; its messages wait in the outbox, expired ones included (they go
                 to the dead letters once the destination is resumed)
  --queue        no worker claims the queue's messages and none is handled inline;
                 deliveries are still stored and acknowledged, so the senders keep going

Pausing what is paused already changes nothing. The pause is recorded in durable_audit
with the actor cli:$USER. durable resume ends it; durable pauses lists the pauses.`,
		Example: `  durable pause --destination billing --reason "billing is migrating"
  durable pause --queue default
  durable resume --destination billing`,
		Args: cobra.NoArgs,
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			kind, name, err := f.target()
			if err != nil {
				return err
			}
			return a.pause(cmd.Context(), kind, name, f.reason)
		}),
	}
	f.add(cmd, true)
	return cmd
}

func (a *app) resumeCommand() *cobra.Command {
	var f pauseFlags
	cmd := &cobra.Command{
		Use:   "resume (--destination NAME | --queue NAME)",
		Short: "Resume a paused destination or inbox queue",
		Long: `Resume what durable pause paused: the relays (--destination) or the inbox workers
(--queue) of every node take it up again within one poll interval. Resuming what is not
paused changes nothing. The resume is recorded in durable_audit with the actor cli:$USER.`,
		Example: `  durable resume --destination billing
  durable resume --queue default --json`,
		Args: cobra.NoArgs,
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			kind, name, err := f.target()
			if err != nil {
				return err
			}
			return a.resume(cmd.Context(), kind, name)
		}),
	}
	f.add(cmd, false)
	return cmd
}

func (a *app) pausesCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "pauses",
		Short: "List the paused destinations and inbox queues",
		Long: `List the rows of durable_pauses: what is paused, since when (UTC), by whom and why,
destinations first, then queues, by name.`,
		Example: `  durable pauses
  durable pauses --json`,
		Args: cobra.NoArgs,
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			return a.listPauses(cmd.Context())
		}),
	}
}

func (a *app) pause(parent context.Context, kind, name, reason string) error {
	ctx, cancel := a.step(parent)
	defer cancel()
	db, err := a.openDurable(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	changed, err := operator.Pause(ctx, db.admin, dialects.Pause{Kind: kind, Name: name, PausedBy: actor(), Reason: reason})
	if err != nil {
		return err
	}
	if a.json {
		return a.printJSON(pauseResult{Kind: kind, Name: name, Changed: changed})
	}
	if changed {
		fmt.Fprintf(a.stdout, "paused %s %s; every node stops within one poll interval\n", kind, name)
	} else {
		fmt.Fprintf(a.stdout, "%s %s was paused already\n", kind, name)
	}
	return nil
}

func (a *app) resume(parent context.Context, kind, name string) error {
	ctx, cancel := a.step(parent)
	defer cancel()
	db, err := a.openDurable(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	changed, err := operator.Resume(ctx, db.admin, kind, name, actor())
	if err != nil {
		return err
	}
	if a.json {
		return a.printJSON(pauseResult{Kind: kind, Name: name, Changed: changed})
	}
	if changed {
		fmt.Fprintf(a.stdout, "resumed %s %s; every node takes it up within one poll interval\n", kind, name)
	} else {
		fmt.Fprintf(a.stdout, "%s %s was not paused\n", kind, name)
	}
	return nil
}

// pauseJSON is one pause as pauses prints it with --json.
type pauseJSON struct {
	Kind     string    `json:"kind"`
	Name     string    `json:"name"`
	PausedAt time.Time `json:"paused_at"`
	PausedBy string    `json:"paused_by"`
	Reason   string    `json:"reason"`
}

func (a *app) listPauses(parent context.Context) error {
	ctx, cancel := a.step(parent)
	defer cancel()
	db, err := a.openDurable(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	ps, err := db.admin.ListPauses(ctx)
	if err != nil {
		return err
	}
	if a.json {
		out := make([]pauseJSON, 0, len(ps))
		for _, p := range ps {
			out = append(out, pauseJSON(p))
		}
		return a.printJSON(out)
	}
	if len(ps) == 0 {
		fmt.Fprintln(a.stdout, "nothing is paused")
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tNAME\tPAUSED AT\tBY\tREASON")
	for _, p := range ps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Kind, p.Name, p.PausedAt.UTC().Format("2006-01-02 15:04:05 UTC"), p.PausedBy, p.Reason)
	}
	return tw.Flush()
}
