package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/durable-go/durable/dialects"
)

func (a *app) statsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "stats",
		Short: "Report the outbox backlog per destination and the inbox's messages by state",
		Long: `Report what is waiting in durable's tables:

  outbox  per destination: unsent messages, of which in flight (leased by a relay),
          waiting for a retry, and scheduled for later; the age of the oldest unsent
          message; the pending dead letters (messages the relay could not deliver);
          and the totals
  inbox   messages ready (never tried), in progress (leased to a worker), retrying
          (waiting for another attempt), dead (pending dead letters), handled
          (kept for the dedupe window), and of those, handled in the last minute;
          in total and per topic (the queues are the services' configuration:
          inbox.Inbox.Stats in a service counts per queue too)

The numbers are the database's, whichever node works on it; each part is one query that
reads the whole unsent outbox and the whole inbox table, so prefer metrics for frequent
polling. Ages are measured by the database's clock (Postgres) or this machine's (SQLite).`,
		Example: `  durable stats --dsn ./app.db
  durable stats --dsn "$DURABLE_DSN" --json | jq '.outbox.oldest_age_seconds'`,
		Args: cobra.NoArgs,
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			return a.stats(cmd.Context())
		}),
	}
}

// statsResult is what stats prints with --json.
type statsResult struct {
	Dialect  string       `json:"dialect"`
	Database string       `json:"database"`
	Outbox   outboxStats  `json:"outbox"`
	Inbox    inboxSummary `json:"inbox"`
}

type outboxStats struct {
	Unsent int64 `json:"unsent"`
	// OldestAgeSeconds is the age of the oldest unsent message, 0 when none.
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	// DeadLetters counts the pending outbox dead letters.
	DeadLetters  int64              `json:"dead_letters"`
	Destinations []destinationStats `json:"destinations"`
}

type destinationStats struct {
	Destination      string  `json:"destination"`
	Unsent           int64   `json:"unsent"`
	InFlight         int64   `json:"in_flight"`
	Retrying         int64   `json:"retrying"`
	Scheduled        int64   `json:"scheduled"`
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	DeadLetters      int64   `json:"dead_letters"`
}

type inboxSummary struct {
	inboxCounts
	// Topics are the counts per topic, by name: the topics with messages
	// or pending dead letters.
	Topics []inboxTopicStats `json:"topics"`
}

type inboxTopicStats struct {
	Topic string `json:"topic"`
	inboxCounts
}

type inboxCounts struct {
	Ready      int64 `json:"ready"`
	InProgress int64 `json:"in_progress"`
	Retrying   int64 `json:"retrying"`
	Dead       int64 `json:"dead"`
	Handled    int64 `json:"handled"`
	// HandledLastMinute counts the messages handled less than a minute ago,
	// among Handled.
	HandledLastMinute int64 `json:"handled_last_minute"`
}

func (a *app) stats(parent context.Context) error {
	ctx, cancel := a.step(parent)
	defer cancel()
	db, err := a.openDurable(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	dests, err := db.admin.OutboxStats(ctx)
	if err != nil {
		return err
	}
	is, err := db.admin.InboxStats(ctx)
	if err != nil {
		return err
	}
	res := statsResult{Dialect: db.dialect, Database: db.target,
		Outbox: outboxStats{Destinations: make([]destinationStats, 0, len(dests))},
		Inbox:  inboxSummary{inboxCounts: countsOf(is.InboxCounts), Topics: make([]inboxTopicStats, 0, len(is.Topics))},
	}
	for _, topic := range slices.Sorted(maps.Keys(is.Topics)) {
		res.Inbox.Topics = append(res.Inbox.Topics, inboxTopicStats{Topic: topic, inboxCounts: countsOf(is.Topics[topic])})
	}
	var oldest time.Duration
	for _, d := range dests {
		res.Outbox.Unsent += d.Unsent
		res.Outbox.DeadLetters += d.DeadLetters
		oldest = max(oldest, d.OldestAge)
		res.Outbox.Destinations = append(res.Outbox.Destinations, destinationStats{
			Destination: d.Destination, Unsent: d.Unsent, InFlight: d.Leased, Retrying: d.Retrying,
			Scheduled: d.Scheduled, OldestAgeSeconds: ageSeconds(d.OldestAge), DeadLetters: d.DeadLetters,
		})
	}
	res.Outbox.OldestAgeSeconds = ageSeconds(oldest)
	if a.json {
		return a.printJSON(res)
	}
	return a.printStats(&res, dests, oldest)
}

// countsOf is c as printed.
func countsOf(c dialects.InboxCounts) inboxCounts {
	return inboxCounts{Ready: c.Ready, InProgress: c.Running, Retrying: c.Retrying, Dead: c.Dead,
		Handled: c.Handled, HandledLastMinute: c.HandledLastMinute}
}

// ageSeconds is d in seconds, to the millisecond.
func ageSeconds(d time.Duration) float64 {
	return float64(d.Milliseconds()) / 1000
}

// age formats an age for the table: to the second, "-" for none.
func age(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	if d < time.Second {
		return "<1s"
	}
	return d.Truncate(time.Second).String()
}

func (a *app) printStats(res *statsResult, dests []dialects.OutboxStats, oldest time.Duration) error {
	fmt.Fprintf(a.stdout, "%s\n\n", res.Database)
	if len(dests) == 0 {
		fmt.Fprintln(a.stdout, "outbox: no unsent messages, no dead letters")
	} else {
		fmt.Fprintf(a.stdout, "outbox: %d unsent, oldest %s", res.Outbox.Unsent, age(oldest))
		if n := res.Outbox.DeadLetters; n > 0 {
			fmt.Fprintf(a.stdout, "; %s (durable deadletters list --side outbox)", plural(int(n), "pending dead letter"))
		}
		fmt.Fprintln(a.stdout)
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DESTINATION\tUNSENT\tIN FLIGHT\tRETRYING\tSCHEDULED\tOLDEST\tDEAD")
		for _, d := range dests {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%d\n", oneLineText(d.Destination), d.Unsent, d.Leased, d.Retrying, d.Scheduled, age(d.OldestAge), d.DeadLetters)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(a.stdout)
	fmt.Fprintln(a.stdout, "inbox:")
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	in := res.Inbox
	for _, r := range []struct {
		name string
		n    int64
		note string
	}{
		{"ready", in.Ready, "waiting for their first attempt"},
		{"in progress", in.InProgress, "leased to a worker"},
		{"retrying", in.Retrying, "waiting for another attempt"},
		{"dead", in.Dead, "pending dead letters (durable deadletters list)"},
		{"handled", in.Handled, "kept for the dedupe window"},
		{"last minute", in.HandledLastMinute, "handled in the last minute"},
	} {
		fmt.Fprintf(tw, "  %s\t%d\t%s\n", r.name, r.n, r.note)
	}
	if err := tw.Flush(); err != nil || len(in.Topics) == 0 {
		return err
	}
	tw = tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOPIC\tREADY\tIN PROGRESS\tRETRYING\tDEAD\tHANDLED\tLAST MINUTE")
	for _, c := range in.Topics {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\n", oneLineText(c.Topic), c.Ready, c.InProgress, c.Retrying, c.Dead, c.Handled, c.HandledLastMinute)
	}
	return tw.Flush()
}
