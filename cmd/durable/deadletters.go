package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/migrations"
)

// inboxOps is what the CLI uses of an *inbox.Inbox, whatever its
// transaction type: the commands share the library's implementation rather
// than holding SQL of their own.
type inboxOps interface {
	CheckSchema(ctx context.Context) error
	DeadLetters(ctx context.Context, f inbox.DeadLetterFilter) ([]inbox.DeadLetter, error)
	Replay(ctx context.Context, f inbox.DeadLetterFilter) (int, error)
	PurgeDeadLetters(ctx context.Context, f inbox.DeadLetterFilter) (int, error)
	Stats(ctx context.Context) (inbox.Stats, error)
}

// durableDB is an open database with durable's inbox on it (never run: no
// workers, no housekeeping) and the dialect's relay storage, for stats.
type durableDB struct {
	*database
	inbox   inboxOps
	relayer dialects.Relayer
}

// openDurable opens the database named by the flags, builds the dialect and
// an inbox on it, and checks the schema: a missing or old schema exits 4, a
// SQLite DSN without durable's settings 3.
func (a *app) openDurable(ctx context.Context) (*durableDB, error) {
	d, err := a.open(ctx, openOptions{})
	if err != nil {
		return nil, err
	}
	db, err := d.durable()
	if err == nil {
		err = db.inbox.CheckSchema(ctx)
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	return db, nil
}

func (d *database) durable() (*durableDB, error) {
	cfg := &inbox.Config{Name: "durable-cli", Logger: slog.New(slog.DiscardHandler)}
	out := &durableDB{database: d}
	switch d.dialect {
	case migrations.Postgres:
		var opts []postgres.Option
		if d.schema != "" {
			opts = append(opts, postgres.WithSchema(d.schema))
		}
		dl := postgres.New(d.pool, opts...)
		ib, err := inbox.New(dl, cfg)
		if err != nil {
			return nil, err
		}
		out.inbox = ib
		out.relayer, _ = any(dl).(dialects.Relayer)
	default:
		dl, err := sqlite.New(d.db)
		if err != nil {
			return nil, err
		}
		ib, err := inbox.New(dl, cfg)
		if err != nil {
			return nil, err
		}
		out.inbox = ib
		out.relayer, _ = any(dl).(dialects.Relayer)
	}
	return out, nil
}

// deadLetterFlags are the filters shared by the deadletters commands.
type deadLetterFlags struct {
	topic, reason, source string
	since, before         string
	ids                   []string
	limit                 int
	includeReplayed       bool
	all                   bool // replay, purge: no filter, on purpose
}

func (f *deadLetterFlags) register(cmd *cobra.Command, limitHelp string, limitDefault int) {
	fl := cmd.Flags()
	fl.StringVar(&f.topic, "topic", "", "only dead letters of this topic")
	fl.StringVar(&f.reason, "reason", "", "only this reason: "+strings.Join(deadLetterReasons, ", "))
	fl.StringVar(&f.source, "source", "", "only messages from this sending node")
	fl.StringVar(&f.since, "since", "", "only those that failed since: a duration ago (90m, 1h, 7d) or a time (RFC 3339, or a UTC date 2006-01-02)")
	fl.StringVar(&f.before, "before", "", "only those that failed before: a duration ago (30d) or a time, as --since")
	fl.StringArrayVar(&f.ids, "id", nil, "only this message id (repeatable)")
	fl.IntVar(&f.limit, "limit", limitDefault, limitHelp)
}

// deadLetterReasons are the reasons --reason accepts.
var deadLetterReasons = []string{inbox.ReasonHandlerError, inbox.ReasonPermanent, inbox.ReasonDecodeError,
	inbox.ReasonNoHandler, inbox.ReasonExpired}

// filtered reports whether any filter flag is set (--limit and
// --include-replayed only bound or widen what matches).
func (f *deadLetterFlags) filtered() bool {
	return f.topic != "" || f.reason != "" || f.source != "" || f.since != "" || f.before != "" || len(f.ids) > 0
}

// filter turns the flags into the inbox's filter, with times relative to now.
func (f *deadLetterFlags) filter(now time.Time) (inbox.DeadLetterFilter, error) {
	out := inbox.DeadLetterFilter{Topic: f.topic, Source: f.source, Reason: f.reason, Limit: f.limit,
		IncludeReplayed: f.includeReplayed}
	if f.reason != "" && !slices.Contains(deadLetterReasons, f.reason) {
		return out, usageErrorf("--reason %q: want one of %s", f.reason, strings.Join(deadLetterReasons, ", "))
	}
	if f.limit < 0 {
		return out, usageErrorf("--limit %d: must not be negative", f.limit)
	}
	for _, id := range f.ids {
		if id == "" {
			return out, usageErrorf("--id: empty message id")
		}
	}
	out.IDs = f.ids
	var err error
	if out.Since, err = parseWhen("since", f.since, now); err != nil {
		return out, err
	}
	if out.Before, err = parseWhen("before", f.before, now); err != nil {
		return out, err
	}
	if !out.Since.IsZero() && !out.Before.IsZero() && !out.Since.Before(out.Before) {
		return out, usageErrorf("--since %s is not before --before %s: nothing can match", f.since, f.before)
	}
	return out, nil
}

// describe names the filter in words, for questions and reports.
func (f *deadLetterFlags) describe() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+" "+v)
		}
	}
	add("topic", f.topic)
	add("reason", f.reason)
	add("source", f.source)
	add("failed since", f.since)
	add("failed before", f.before)
	if len(f.ids) > 0 {
		parts = append(parts, "id "+strings.Join(f.ids, ", "))
	}
	if len(parts) == 0 {
		return "no filter"
	}
	return strings.Join(parts, ", ")
}

// parseWhen reads --since or --before: a duration before now (Go's syntax,
// plus whole days as "7d"), an RFC 3339 time, or a date (UTC midnight).
func parseWhen(flag, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, ok := parseAgo(v); ok {
		if d < 0 {
			return time.Time{}, usageErrorf("--%s %s: the duration must not be negative", flag, v)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t, nil
	}
	return time.Time{}, usageErrorf("--%s %q: want a duration (90m, 1h, 7d), an RFC 3339 time (2026-05-04T09:00:00Z) or a date (2026-05-04)", flag, v)
}

// parseAgo parses a Go duration, or a whole number of days ("7d").
func parseAgo(v string) (time.Duration, bool) {
	if n, ok := strings.CutSuffix(v, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days > 100000 || days < -100000 {
			return 0, false
		}
		return time.Duration(days) * 24 * time.Hour, true
	}
	d, err := time.ParseDuration(v)
	return d, err == nil
}

func (a *app) deadLettersCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "deadletters",
		Aliases: []string{"deadletter", "dl"},
		Short:   "List, show, replay or purge the inbox's dead letters",
		Long: `Inspect and repair the inbox's dead letters: messages the inbox could not process (the
handler kept failing or gave up, the payload could not be decoded, no handler for the
topic, expired), kept in durable_dead_letters with the reason and every attempt's error.
See docs/dead-letters.md.

A dead letter is pending until it is replayed; a replayed message that fails again is
pending again. list and purge see pending dead letters unless --include-replayed is given.

Filters (list, replay, purge): --topic, --reason, --source, --since, --before, --id
(repeatable), --limit. replay and purge need a filter, or --all to act on every pending
dead letter; they ask for confirmation on a terminal and, without one, refuse unless --yes
is given. The commands use the inbox package's own API, as a program would.`,
		Example: `  durable deadletters list --dsn ./app.db
  durable deadletters list --since 1h --reason handler_error --json
  durable deadletters show order-1-placed --source shop
  durable deadletters replay --topic order.placed --yes
  durable deadletters purge --before 30d --include-replayed --yes`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRun,
	}
	cmd.AddCommand(a.deadLettersListCommand(), a.deadLettersShowCommand(),
		a.deadLettersChangeCommand(replayAction), a.deadLettersChangeCommand(purgeAction))
	return cmd
}

// defaultListLimit bounds list unless --limit says otherwise.
const defaultListLimit = 100

func (a *app) deadLettersListCommand() *cobra.Command {
	f := &deadLetterFlags{}
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List dead letters as a table (or --json), oldest first",
		Long: `List the inbox's pending dead letters matching the filters, oldest first (in the order
they were first recorded): id, source, topic, reason, attempts, when it failed (UTC) and
the last error, shortened to one line. --json prints every field, payload and error
history included. At most --limit are listed (default ` + strconv.Itoa(defaultListLimit) + `; 0: all); the last
line says when more match.`,
		Example: `  durable deadletters list --dsn ./app.db
  durable deadletters list --topic order.placed --since 2h
  durable deadletters list --reason no_handler --limit 0 --json | jq -r '.dead_letters[].id'`,
		Args: cobra.NoArgs,
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			return a.deadLettersList(cmd.Context(), f)
		}),
	}
	f.register(cmd, "list at most this many (0: all)", defaultListLimit)
	cmd.Flags().BoolVar(&f.includeReplayed, "include-replayed", false, "also list dead letters replayed since they last failed")
	return cmd
}

func (a *app) deadLettersShowCommand() *cobra.Command {
	var source string
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Print one dead letter fully: headers, payload, every attempt's error",
		Long: `Print one dead letter, replayed or not, with everything kept about it: the message
(topic, key, headers, payload: as text when it is UTF-8, else as a hex dump), the reason,
the times, and every attempt's error in full. Message ids are unique per sending node:
when two sources sent the same id, name one with --source.`,
		Example: `  durable deadletters show order-1-placed --dsn ./app.db
  durable deadletters show order-1-placed --source shop --json`,
		Args: cobra.ExactArgs(1),
		RunE: a.wrap(func(cmd *cobra.Command, args []string) error {
			return a.deadLettersShow(cmd.Context(), source, args[0])
		}),
	}
	cmd.Flags().StringVar(&source, "source", "", "the sending node, when the id is not unique")
	return cmd
}

// changeAction is replay or purge: they share their flags, guard and
// confirmation.
type changeAction struct {
	name    string // "replay"
	past    string // "replayed"
	short   string
	long    string
	example string
	// question explains the change before the confirmation.
	question string
	run      func(ctx context.Context, ib inboxOps, f inbox.DeadLetterFilter) (int, error)
}

var replayAction = changeAction{
	name:  "replay",
	past:  "replayed",
	short: "Put dead letters back into the inbox, to be handled again",
	long: `Put the pending dead letters matching the filters back into the inbox, in one transaction,
as fresh messages: ready at once, attempts reset, no expiry, the error history kept. The
dead letters stay for the record, marked replayed (they no longer list as pending), so a
second replay does not duplicate them; a replayed message that fails again becomes a
pending dead letter again. The messages are handled when a node's inbox runs.

A filter is required, or --all for every pending dead letter. On a terminal replay asks
for confirmation; without one it refuses unless --yes is given. It prints how many it
replayed.`,
	example: `  durable deadletters replay --reason no_handler --dsn ./app.db --yes
  durable deadletters replay --id order-1-placed --source shop
  durable deadletters replay --all --limit 100 --yes --json`,
	question: "they go back into the inbox and are handled again when a node runs",
	run: func(ctx context.Context, ib inboxOps, f inbox.DeadLetterFilter) (int, error) {
		return ib.Replay(ctx, f)
	},
}

var purgeAction = changeAction{
	name:  "purge",
	past:  "purged",
	short: "Delete dead letters for good",
	long: `Delete the dead letters matching the filters (pending ones; with --include-replayed
replayed ones too), in statements of 1,000 rows. A purged message is forgotten: if its
source sends it again, it is stored and handled again.

A filter is required, or --all for every pending dead letter. On a terminal purge asks for
confirmation; without one it refuses unless --yes is given. It prints how many it
deleted.`,
	example: `  durable deadletters purge --before 30d --include-replayed --dsn ./app.db --yes
  durable deadletters purge --topic test.ping --yes --json
  durable deadletters purge --all`,
	question: "they are deleted for good",
	run: func(ctx context.Context, ib inboxOps, f inbox.DeadLetterFilter) (int, error) {
		return ib.PurgeDeadLetters(ctx, f)
	},
}

func (a *app) deadLettersChangeCommand(act changeAction) *cobra.Command {
	f := &deadLetterFlags{}
	var yes bool
	cmd := &cobra.Command{
		Use:     act.name,
		Short:   act.short,
		Long:    act.long,
		Example: act.example,
		Args:    cobra.NoArgs,
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			return a.deadLettersChange(cmd.Context(), act, f, yes)
		}),
	}
	f.register(cmd, act.name+" at most this many, oldest first (0: every match)", 0)
	fl := cmd.Flags()
	if act.name == "purge" {
		fl.BoolVar(&f.includeReplayed, "include-replayed", false, "also purge dead letters replayed since they last failed")
	}
	fl.BoolVar(&f.all, "all", false, act.name+" every pending dead letter (required when no filter is given)")
	fl.BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

func (a *app) deadLettersList(parent context.Context, fl *deadLetterFlags) error {
	f, err := fl.filter(time.Now())
	if err != nil {
		return err
	}
	ctx, cancel := a.step(parent)
	defer cancel()
	db, err := a.openDurable(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	if f.Limit > 0 {
		f.Limit++ // one more tells whether more match
	}
	dls, err := db.inbox.DeadLetters(ctx, f)
	if err != nil {
		return err
	}
	more := fl.limit > 0 && len(dls) > fl.limit
	if more {
		dls = dls[:fl.limit]
	}
	if a.json {
		out := deadLetterList{Database: db.target, Count: len(dls), More: more, DeadLetters: make([]deadLetterJSON, len(dls))}
		for i := range dls {
			out.DeadLetters[i] = toDeadLetterJSON(&dls[i])
		}
		return a.printJSON(out)
	}
	return a.printDeadLetterTable(dls, fl, more)
}

func (a *app) deadLettersShow(parent context.Context, source, id string) error {
	ctx, cancel := a.step(parent)
	defer cancel()
	db, err := a.openDurable(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	dls, err := db.inbox.DeadLetters(ctx, inbox.DeadLetterFilter{Source: source, IDs: []string{id}, IncludeReplayed: true})
	if err != nil {
		return err
	}
	switch {
	case len(dls) == 0 && source != "":
		return failuref("no dead letter %s from source %s on %s", id, source, db.target)
	case len(dls) == 0:
		return failuref("no dead letter %s on %s", id, db.target)
	case len(dls) > 1:
		var sources []string
		for _, dl := range dls {
			sources = append(sources, dl.Source)
		}
		return usageErrorf("dead letter %s came from %d sources (%s): pass --source", id, len(dls), strings.Join(sources, ", "))
	}
	if a.json {
		return a.printJSON(toDeadLetterJSON(&dls[0]))
	}
	return a.printDeadLetter(&dls[0])
}

// confirmChange is the refusal when replay or purge would need a
// confirmation that cannot be asked.
func confirmChange(act string) string {
	return "deadletters " + act + " changes the dead letters; pass --yes to confirm (stdin is not a terminal)"
}

// changeResult is what replay and purge print with --json.
type changeResult struct {
	Database string `json:"database"`
	Action   string `json:"action"` // "replay" or "purge"
	Count    int    `json:"count"`  // rows replayed or deleted
}

func (a *app) deadLettersChange(parent context.Context, act changeAction, fl *deadLetterFlags, yes bool) error {
	switch {
	case fl.all && fl.filtered():
		return usageErrorf("--all means every pending dead letter: it cannot be combined with filters")
	case !fl.all && !fl.filtered():
		return usageErrorf("%s needs a filter (--topic, --reason, --source, --since, --before, --id), or --all to %s every pending dead letter", act.name, act.name)
	}
	f, err := fl.filter(time.Now())
	if err != nil {
		return err
	}
	if !yes && !a.isTerminal() {
		return usageErrorf("%s", confirmChange(act.name))
	}
	ctx, cancel := a.step(parent)
	defer cancel()
	db, err := a.openDurable(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	if !yes {
		matching, err := db.inbox.DeadLetters(ctx, f)
		if err != nil {
			return err
		}
		cancel() // the question is not a database step
		if len(matching) == 0 {
			return a.printChange(db, act, 0)
		}
		what := "pending dead letter"
		if f.IncludeReplayed {
			what = "dead letter"
		}
		fmt.Fprintf(a.stderr, "This %ss %s (%s) on %s: %s.\n%s them? [y/N] ",
			act.name, plural(len(matching), what), fl.describe(), db.target, act.question, capitalize(act.name))
		line, err := bufio.NewReader(a.stdin).ReadString('\n')
		if answer := strings.ToLower(strings.TrimSpace(line)); answer != "y" && answer != "yes" {
			if err != nil && answer == "" {
				return failuref("no answer on stdin; nothing was %s (pass --yes to skip the question)", act.past)
			}
			return failuref("not confirmed; nothing was %s", act.past)
		}
		ctx, cancel = a.step(parent)
		defer cancel()
	}
	n, err := act.run(ctx, db.inbox, f)
	if err != nil {
		if n > 0 {
			return fmt.Errorf("%s %s before failing: %w", act.past, plural(n, "dead letter"), err)
		}
		return err
	}
	return a.printChange(db, act, n)
}

func (a *app) printChange(db *durableDB, act changeAction, n int) error {
	if a.json {
		return a.printJSON(changeResult{Database: db.target, Action: act.name, Count: n})
	}
	if n == 0 {
		fmt.Fprintf(a.stdout, "no dead letters match on %s; nothing was %s\n", db.target, act.past)
		return nil
	}
	fmt.Fprintf(a.stdout, "%s %s on %s\n", act.past, plural(n, "dead letter"), db.target)
	return nil
}

// plural is "1 dead letter", "2 dead letters".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
