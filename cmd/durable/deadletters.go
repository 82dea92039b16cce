package main

import (
	"bufio"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects/dsn"
)

// durableDB is an open database with durable's dialect on it and the dead
// letters of both sides.
type durableDB struct {
	*database
	admin dsn.Admin
	dead  *deadletter.Store
}

// openDurable opens the database named by the flags, builds the dialect on
// it, and checks the schema: a missing or old schema exits 4, a SQLite DSN
// without durable's settings 3.
func (a *app) openDurable(ctx context.Context) (*durableDB, error) {
	d, err := a.open(ctx, openOptions{})
	if err != nil {
		return nil, err
	}
	db, err := d.durable()
	if err == nil {
		err = db.admin.CheckSchema(ctx)
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	return db, nil
}

func (d *database) durable() (*durableDB, error) {
	dl, err := d.src.Admin()
	if err != nil {
		return nil, err
	}
	dead, err := deadletter.New(dl, nil)
	if err != nil {
		return nil, err
	}
	return &durableDB{database: d, admin: dl, dead: dead}, nil
}

// Sides of durable_dead_letters, as --side names them.
const (
	sideInbox  = deadletter.SideInbox
	sideOutbox = deadletter.SideOutbox
)

// inboxReasons and outboxReasons are the reasons --reason accepts on each
// side.
var (
	inboxReasons  = deadletter.Reasons(deadletter.SideInbox)
	outboxReasons = deadletter.Reasons(deadletter.SideOutbox)
)

// sideFlagHelp is the help of --side.
const sideFlagHelp = "which dead letters: inbox (messages received and not processed) or outbox (messages the relay could not deliver)"

// checkSide validates --side and the flags that belong to one side only:
// --source (inbox) and --destination (outbox).
func checkSide(side, source, destination string) error {
	switch side {
	case sideInbox:
		if destination != "" {
			return usageErrorf("--destination is for the outbox side (--side outbox); the inbox side uses --source")
		}
	case sideOutbox:
		if source != "" {
			return usageErrorf("--source is for the inbox side; with --side outbox, use --destination")
		}
	default:
		return usageErrorf("--side %q: want inbox or outbox", side)
	}
	return nil
}

// noun names a dead letter of side in the commands' output: the inbox side,
// the default, as "dead letter", the outbox side as "outbox dead letter".
func noun(side string) string {
	if side == sideOutbox {
		return "outbox dead letter"
	}
	return "dead letter"
}

// deadLetterFlags are the filters shared by the deadletters commands.
type deadLetterFlags struct {
	side                  string
	topic, reason, source string
	destination           string
	since, before         string
	ids                   []string
	limit                 int
	includeReplayed       bool
	all                   bool // replay, purge: no filter, on purpose
}

func (f *deadLetterFlags) register(cmd *cobra.Command, limitHelp string, limitDefault int) {
	fl := cmd.Flags()
	fl.StringVar(&f.side, "side", sideInbox, sideFlagHelp)
	fl.StringVar(&f.topic, "topic", "", "only dead letters of this topic")
	fl.StringVar(&f.reason, "reason", "", "only this reason; inbox: "+strings.Join(inboxReasons, ", ")+"; outbox: "+strings.Join(outboxReasons, ", "))
	fl.StringVar(&f.source, "source", "", "inbox side: only messages from this sending node")
	fl.StringVar(&f.destination, "destination", "", "outbox side: only messages for this destination")
	fl.StringVar(&f.since, "since", "", "only those that failed since: a duration ago (90m, 1h, 7d) or a time (RFC 3339, or a UTC date 2006-01-02)")
	fl.StringVar(&f.before, "before", "", "only those that failed before: a duration ago (30d) or a time, as --since")
	fl.StringArrayVar(&f.ids, "id", nil, "only this message id (repeatable)")
	fl.IntVar(&f.limit, "limit", limitDefault, limitHelp)
}

// filtered reports whether any filter flag is set (--limit and
// --include-replayed only bound or widen what matches).
func (f *deadLetterFlags) filtered() bool {
	return f.topic != "" || f.reason != "" || f.source != "" || f.destination != "" ||
		f.since != "" || f.before != "" || len(f.ids) > 0
}

// filterFlags names the filter flags of the chosen side, for messages.
func (f *deadLetterFlags) filterFlags() string {
	if f.side == sideOutbox {
		return "--topic, --reason, --destination, --since, --before, --id"
	}
	return "--topic, --reason, --source, --since, --before, --id"
}

// checkReason validates --reason against the chosen side's reasons.
func (f *deadLetterFlags) checkReason() error {
	if f.reason == "" {
		return nil
	}
	switch {
	case f.side == sideOutbox && !slices.Contains(outboxReasons, f.reason):
		hint := ""
		if slices.Contains(inboxReasons, f.reason) {
			hint = " (" + f.reason + " is a reason of the inbox side)"
		}
		return usageErrorf("--reason %q with --side outbox: want one of %s%s", f.reason, strings.Join(outboxReasons, ", "), hint)
	case f.side != sideOutbox && !slices.Contains(inboxReasons, f.reason):
		hint := ""
		if slices.Contains(outboxReasons, f.reason) {
			hint = " (" + f.reason + " is a reason of the outbox side: add --side outbox)"
		}
		return usageErrorf("--reason %q: want one of %s%s", f.reason, strings.Join(inboxReasons, ", "), hint)
	}
	return nil
}

// deadLetterQuery is the filter of either side, with times relative to now:
// it becomes a deadletter.Query.
type deadLetterQuery struct {
	side                string
	source, destination string
	topic, reason       string
	ids                 []string
	since, before       time.Time
	includeReplayed     bool
	limit               int
}

func (q *deadLetterQuery) query() deadletter.Query {
	return deadletter.Query{Side: q.side, Source: q.source, Destination: q.destination, Topic: q.topic, Reason: q.reason,
		IDs: q.ids, Since: q.since, Before: q.before, IncludeReplayed: q.includeReplayed, Limit: q.limit}
}

// filter turns the flags into a query of the chosen side, with times
// relative to now.
func (f *deadLetterFlags) filter(now time.Time) (deadLetterQuery, error) {
	out := deadLetterQuery{side: f.side, source: f.source, destination: f.destination, topic: f.topic,
		reason: f.reason, limit: f.limit, includeReplayed: f.includeReplayed}
	if err := checkSide(f.side, f.source, f.destination); err != nil {
		return out, err
	}
	if err := f.checkReason(); err != nil {
		return out, err
	}
	if f.limit < 0 {
		return out, usageErrorf("--limit %d: must not be negative", f.limit)
	}
	for _, id := range f.ids {
		if id == "" {
			return out, usageErrorf("--id: empty message id")
		}
	}
	out.ids = f.ids
	var err error
	if out.since, err = parseWhen("since", f.since, now); err != nil {
		return out, err
	}
	if out.before, err = parseWhen("before", f.before, now); err != nil {
		return out, err
	}
	if !out.since.IsZero() && !out.before.IsZero() && !out.since.Before(out.before) {
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
	add("destination", f.destination)
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

// deadLetters lists the dead letters of q's side.
func (d *durableDB) deadLetters(ctx context.Context, q deadLetterQuery) ([]deadletter.DeadLetter, error) {
	return d.dead.List(ctx, q.query())
}

// replay replays the pending dead letters matching q: back into the inbox,
// or into the outbox for the relay to send.
func (d *durableDB) replay(ctx context.Context, q deadLetterQuery) (int, error) {
	return d.dead.Replay(ctx, q.query())
}

// purge deletes the dead letters matching q.
func (d *durableDB) purge(ctx context.Context, q deadLetterQuery) (int, error) {
	return d.dead.Purge(ctx, q.query())
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
		Short:   "List, show, replay or purge dead letters of the inbox or the outbox",
		Long: `Inspect and repair dead letters, kept in durable_dead_letters with the whole message, the
reason and every attempt's error. See docs/dead-letters.md. There are two sides:

  --side inbox (the default): messages the inbox could not process (the handler kept
  failing or gave up, the payload could not be decoded, no handler for the topic,
  expired). Replayed, they go back into the inbox.

  --side outbox: messages the relay could not deliver (the peer rejected them, or they
  expired before it acknowledged them). Replayed, they go back into the outbox and the
  relay sends them again.

A dead letter is pending until it is replayed; a replayed message that fails again is
pending again. list and purge see pending dead letters unless --include-replayed is given.

Filters (list, replay, purge): --topic, --reason, --source (inbox side), --destination
(outbox side), --since, --before, --id (repeatable), --limit. replay and purge need a
filter, or --all to act on every pending dead letter of the side; they ask for
confirmation on a terminal and, without one, refuse unless --yes is given. The commands
use the inbox and outbox packages' own API, as a program would.`,
		Example: `  durable deadletters list --dsn ./app.db
  durable deadletters list --since 1h --reason handler_error --json
  durable deadletters show order-1-placed --source shop
  durable deadletters replay --topic order.placed --yes
  durable deadletters purge --before 30d --include-replayed --yes
  durable deadletters list --side outbox --destination billing
  durable deadletters replay --side outbox --reason rejected --destination billing --yes`,
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
		Long: `List the pending dead letters of one side (--side inbox, the default, or --side outbox)
matching the filters, oldest first (in the order they were first recorded): id, source
(on the outbox side: destination), topic, reason, attempts, when it failed (UTC) and the
last error, shortened to one line. --json prints every field, payload and error history
included. At most --limit are listed (default ` + strconv.Itoa(defaultListLimit) + `; 0: all); the last line says
when more match.`,
		Example: `  durable deadletters list --dsn ./app.db
  durable deadletters list --topic order.placed --since 2h
  durable deadletters list --reason no_handler --limit 0 --json | jq -r '.dead_letters[].id'
  durable deadletters list --side outbox --destination billing --reason rejected`,
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
	var side, source, destination string
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Print one dead letter fully: headers, payload, every attempt's error",
		Long: `Print one dead letter, replayed or not, with everything kept about it: the message
(topic, key, headers, payload: as text when it is UTF-8, else as a hex dump), the reason,
the times, and every attempt's error in full. Message ids are unique per sending node on
the inbox side and per destination on the outbox side: when the id is not unique, name
the source with --source, or with --side outbox the destination with --destination.`,
		Example: `  durable deadletters show order-1-placed --dsn ./app.db
  durable deadletters show order-1-placed --source shop --json
  durable deadletters show invoice-7 --side outbox --destination billing`,
		Args: cobra.ExactArgs(1),
		RunE: a.wrap(func(cmd *cobra.Command, args []string) error {
			return a.deadLettersShow(cmd.Context(), side, source, destination, args[0])
		}),
	}
	fl := cmd.Flags()
	fl.StringVar(&side, "side", sideInbox, sideFlagHelp)
	fl.StringVar(&source, "source", "", "inbox side: the sending node, when the id is not unique")
	fl.StringVar(&destination, "destination", "", "outbox side: the destination, when the id is not unique")
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
	// question and outboxQuestion explain the change before the
	// confirmation, on the inbox and the outbox side.
	question, outboxQuestion string
	run                      func(ctx context.Context, db *durableDB, q deadLetterQuery) (int, error)
}

var replayAction = changeAction{
	name:  "replay",
	past:  "replayed",
	short: "Put dead letters back into the inbox (or the outbox), to be handled (or sent) again",
	long: `Put the pending dead letters matching the filters back where they came from, in one
transaction. The dead letters stay for the record, marked replayed (they no longer list as
pending), so a second replay does not duplicate them; a replayed message that fails again
becomes a pending dead letter again.

Inbox side (the default): the messages go back into the inbox as fresh messages: ready at
once, attempts reset, no expiry, the error history kept. They are handled when a node's
inbox runs.

Outbox side (--side outbox): the messages go back into the outbox and the relay sends them
again: due at once, attempts reset, no expiry, their id and creation time kept (the peer
still recognizes a message it had stored). On Postgres the replay wakes the relays
(NOTIFY); on SQLite they pick them up at their next poll. A message whose id is in the
outbox for its destination already is not replayed.

A filter is required, or --all for every pending dead letter of the side. On a terminal
replay asks for confirmation; without one it refuses unless --yes is given. It prints how
many it replayed.`,
	example: `  durable deadletters replay --reason no_handler --dsn ./app.db --yes
  durable deadletters replay --id order-1-placed --source shop
  durable deadletters replay --all --limit 100 --yes --json
  durable deadletters replay --side outbox --destination billing --reason rejected --yes`,
	question:       "they go back into the inbox and are handled again when a node runs",
	outboxQuestion: "they go back into the outbox and the relay sends them again",
	run: func(ctx context.Context, db *durableDB, q deadLetterQuery) (int, error) {
		return db.replay(ctx, q)
	},
}

var purgeAction = changeAction{
	name:  "purge",
	past:  "purged",
	short: "Delete dead letters for good",
	long: `Delete the dead letters matching the filters (pending ones; with --include-replayed
replayed ones too), in statements of 1,000 rows.

Inbox side (the default): a purged message is forgotten: if its source sends it again, it
is stored and handled again. Outbox side (--side outbox): a purged message is never sent;
nothing of it is left to replay.

A filter is required, or --all for every pending dead letter of the side. On a terminal
purge asks for confirmation; without one it refuses unless --yes is given. It prints how
many it deleted.`,
	example: `  durable deadletters purge --before 30d --include-replayed --dsn ./app.db --yes
  durable deadletters purge --topic test.ping --yes --json
  durable deadletters purge --all
  durable deadletters purge --side outbox --reason expired --before 7d --yes`,
	question:       "they are deleted for good",
	outboxQuestion: "they are deleted for good and the messages are never sent",
	run: func(ctx context.Context, db *durableDB, q deadLetterQuery) (int, error) {
		return db.purge(ctx, q)
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
	fl.BoolVar(&f.all, "all", false, act.name+" every pending dead letter of the side (required when no filter is given)")
	fl.BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

func (a *app) deadLettersList(parent context.Context, fl *deadLetterFlags) error {
	q, err := fl.filter(time.Now())
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
	if q.limit > 0 {
		q.limit++ // one more tells whether more match
	}
	dls, err := db.deadLetters(ctx, q)
	if err != nil {
		return err
	}
	more := fl.limit > 0 && len(dls) > fl.limit
	if more {
		dls = dls[:fl.limit]
	}
	if a.json {
		out := deadLetterList{Database: db.target, Side: fl.side, Count: len(dls), More: more, DeadLetters: make([]deadLetterJSON, len(dls))}
		for i := range dls {
			out.DeadLetters[i] = toDeadLetterJSON(&dls[i])
		}
		return a.printJSON(out)
	}
	return a.printDeadLetterTable(dls, fl, more)
}

func (a *app) deadLettersShow(parent context.Context, side, source, destination, id string) error {
	if err := checkSide(side, source, destination); err != nil {
		return err
	}
	ctx, cancel := a.step(parent)
	defer cancel()
	db, err := a.openDurable(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	// Not deadletter.Store.Get: without --source or --destination, an id
	// held by two peers must be told apart.
	dls, err := db.deadLetters(ctx, deadLetterQuery{side: side, source: source, destination: destination,
		ids: []string{id}, includeReplayed: true})
	if err != nil {
		return err
	}
	peer, peerFlag := source, "source"
	if side == sideOutbox {
		peer, peerFlag = destination, "destination"
	}
	switch {
	case len(dls) == 0 && peer != "" && side == sideOutbox:
		return failuref("no outbox dead letter %s for destination %s on %s", id, peer, db.target)
	case len(dls) == 0 && peer != "":
		return failuref("no dead letter %s from source %s on %s", id, peer, db.target)
	case len(dls) == 0:
		return failuref("no %s %s on %s", noun(side), id, db.target)
	case len(dls) > 1:
		var peers []string
		for _, dl := range dls {
			peers = append(peers, peerOf(&dl))
		}
		if side == sideOutbox {
			return usageErrorf("outbox dead letter %s was for %d destinations (%s): pass --%s", id, len(dls), strings.Join(peers, ", "), peerFlag)
		}
		return usageErrorf("dead letter %s came from %d sources (%s): pass --%s", id, len(dls), strings.Join(peers, ", "), peerFlag)
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
	Side     string `json:"side"`   // "inbox" or "outbox"
	Action   string `json:"action"` // "replay" or "purge"
	Count    int    `json:"count"`  // rows replayed or deleted
}

func (a *app) deadLettersChange(parent context.Context, act changeAction, fl *deadLetterFlags, yes bool) error {
	if err := checkSide(fl.side, fl.source, fl.destination); err != nil {
		return err
	}
	switch {
	case fl.all && fl.filtered():
		return usageErrorf("--all means every pending dead letter: it cannot be combined with filters")
	case !fl.all && !fl.filtered():
		return usageErrorf("%s needs a filter (%s), or --all to %s every pending %s", act.name, fl.filterFlags(), act.name, noun(fl.side))
	}
	q, err := fl.filter(time.Now())
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
		matching, err := db.deadLetters(ctx, q)
		if err != nil {
			return err
		}
		cancel() // the question is not a database step
		if len(matching) == 0 {
			return a.printChange(db, act, fl.side, 0)
		}
		what := "pending " + noun(fl.side)
		if q.includeReplayed {
			what = noun(fl.side)
		}
		question := act.question
		if fl.side == sideOutbox {
			question = act.outboxQuestion
		}
		fmt.Fprintf(a.stderr, "This %ss %s (%s) on %s: %s.\n%s them? [y/N] ",
			act.name, plural(len(matching), what), fl.describe(), db.target, question, capitalize(act.name))
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
	n, err := act.run(ctx, db, q)
	if err != nil {
		if n > 0 {
			return fmt.Errorf("%s %s before failing: %w", act.past, plural(n, noun(fl.side)), err)
		}
		return err
	}
	return a.printChange(db, act, fl.side, n)
}

func (a *app) printChange(db *durableDB, act changeAction, side string, n int) error {
	if a.json {
		return a.printJSON(changeResult{Database: db.target, Side: side, Action: act.name, Count: n})
	}
	if n == 0 {
		fmt.Fprintf(a.stdout, "no %ss match on %s; nothing was %s\n", noun(side), db.target, act.past)
		return nil
	}
	fmt.Fprintf(a.stdout, "%s %s on %s\n", act.past, plural(n, noun(side)), db.target)
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
