package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects"
	dsnpkg "github.com/durable-go/durable/dialects/dsn"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
)

// dlEnv is a migrated database with the test's dead letters, reachable
// both through the binary (args) and in-process through the inbox API.
type dlEnv struct {
	args   []string // --dsn ...
	target string   // the database as the commands name it
	// inbox reads the dead letters as the library sees them.
	inbox interface {
		DeadLetters(ctx context.Context, f inbox.DeadLetterFilter) ([]deadletter.DeadLetter, error)
	}
	// process runs an inbox whose order.placed handler records an effect in
	// the handler's transaction, until want messages are handled.
	process func(t *testing.T, want int64)
	// effects counts the recorded effects by "source/id".
	effects func(t *testing.T) map[string]int
	// enqueue commits n outbox messages for dest.
	enqueue func(t *testing.T, dest string, n int)
	// outbox reads the outbox side's dead letters as the library sees them.
	outbox interface {
		DeadLetters(ctx context.Context, f outbox.DeadLetterFilter) ([]deadletter.DeadLetter, error)
	}
	// deadLetterOutbox makes outbox dead letters for dest, in this order:
	// it inserts the messages, claims them as a relay does and moves each
	// to the dead letters with its reason and error.
	deadLetterOutbox func(t *testing.T, dest string, dead ...outboxDead)
	// outboxRows lists dest's rows in durable_outbox.
	outboxRows func(t *testing.T, dest string) []dialects.OutboxRow
}

// outboxDead is an outbox message to seed as a dead letter, and why.
type outboxDead struct {
	row    dialects.OutboxRow // ID, Topic, Key, Headers, Payload
	reason string
	err    string
}

// The seeded messages: three from shop and one from crm fail in their
// handler twice (handler_error), and one has no handler (no_handler).
var seedBatches = []transport.Batch{
	{Source: "shop", Envelopes: []transport.Envelope{
		{ID: "o-1", Topic: "order.placed", Key: "cust-7", Headers: map[string]string{"content-type": "application/json", "trace": "abc"}, Payload: []byte(`{"order":1}`)},
		{ID: "o-2", Topic: "order.placed", Payload: []byte(`{"order":2}`)},
		{ID: "o-3", Topic: "order.placed", Payload: []byte(`{"order":3}`)},
		{ID: "r-1", Topic: "refund.issued", Payload: []byte{0, 1, 0xff, 'x'}},
	}},
	{Source: "crm", Envelopes: []transport.Envelope{
		{ID: "o-1", Topic: "order.placed", Payload: []byte(`{"order":101}`)},
	}},
}

// failure is the seeded handler's error for a message.
func failure(m *inbox.Message) error {
	if m.ID == "o-3" {
		return fmt.Errorf("charge card: the payment service answered 503 Service Unavailable after 30s\nretry-after: 120")
	}
	return fmt.Errorf("charge card: declined (attempt %d)", m.Attempt)
}

// fastInbox is an inbox configuration that retries at once.
func fastInbox() *inbox.Config {
	return &inbox.Config{MaxAttempts: 2, Backoff: func(int) time.Duration { return time.Millisecond },
		PollInterval: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
		NoHandlerGrace: -1} // the seeded refund.issued goes to the dead letters at once
}

// runInbox runs ib until done says so (or fails the test after a while),
// and for at least a few poll intervals, so that anything left to do is done.
func runInbox[TTx any](t *testing.T, ib *inbox.Inbox[TTx], done func(inbox.Stats) bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan error, 1)
	go func() { finished <- ib.Run(ctx) }()
	start := time.Now()
	var s inbox.Stats
	for {
		var err error
		if s, err = ib.Stats(context.Background()); err != nil {
			t.Fatal(err)
		}
		if (done(s) && time.Since(start) > 300*time.Millisecond) || time.Since(start) > time.Minute {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-finished; err != nil {
		t.Fatal(err)
	}
	if !done(s) {
		t.Fatalf("inbox did not get there in time: %+v", s)
	}
}

// seedEnv seeds the dead letters on d through a real inbox and returns the
// environment. insertEffect is the handler's SQL, count the effects query.
func seedEnv[TTx any](t *testing.T, d dialects.Dialect[TTx], args []string, target string,
	exec func(ctx context.Context, tx TTx, source, id string) error, effects func(t *testing.T) map[string]int) *dlEnv {
	t.Helper()
	ctx := context.Background()
	mux := inbox.NewMux[TTx]()
	mux.HandleFunc("order.placed", func(_ context.Context, _ TTx, m *inbox.Message) error { return failure(m) })
	ib, err := inbox.New(d, mux, fastInbox())
	if err != nil {
		t.Fatal(err)
	}
	for i := range seedBatches {
		b := seedBatches[i]
		b.Envelopes = slices.Clone(b.Envelopes)
		for j := range b.Envelopes {
			b.Envelopes[j].CreatedAt = time.Now()
		}
		if _, err := ib.Deliver(ctx, &b); err != nil {
			t.Fatal(err)
		}
	}
	runInbox(t, ib, func(s inbox.Stats) bool { return s.Dead == 5 && s.Ready+s.Running+s.Retrying == 0 })
	ob, err := outbox.New(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &dlEnv{
		args:    args,
		target:  target,
		inbox:   ib,
		effects: effects,
		process: func(t *testing.T, want int64) {
			t.Helper()
			fixedMux := inbox.NewMux[TTx]()
			fixedMux.HandleFunc("order.placed", func(ctx context.Context, tx TTx, m *inbox.Message) error {
				return exec(ctx, tx, m.Source, m.ID)
			})
			fixed, err := inbox.New(d, fixedMux, fastInbox())
			if err != nil {
				t.Fatal(err)
			}
			runInbox(t, fixed, func(s inbox.Stats) bool { return s.Handled >= want && s.Ready+s.Running+s.Retrying == 0 })
		},
		enqueue: func(t *testing.T, dest string, n int) {
			t.Helper()
			tx, err := d.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for range n {
				if err := ob.Enqueue(ctx, tx, &outbox.Message{Destination: dest, Topic: "invoice.created", Payload: []byte("{}")}); err != nil {
					t.Fatal(err)
				}
			}
			if err := d.Commit(ctx, tx); err != nil {
				t.Fatal(err)
			}
		},
		outbox: ob,
		deadLetterOutbox: func(t *testing.T, dest string, dead ...outboxDead) {
			t.Helper()
			rows := make([]dialects.OutboxRow, len(dead))
			for i, dl := range dead {
				rows[i] = dl.row
				rows[i].Destination, rows[i].DeliverAt = dest, time.Now().Add(-time.Second)
			}
			tx, err := d.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.InsertOutbox(ctx, tx, rows); err != nil {
				t.Fatal(err)
			}
			if err := d.Commit(ctx, tx); err != nil {
				t.Fatal(err)
			}
			token := "cli-test-" + dest
			claimed, err := d.ClaimOutbox(ctx, dialects.OutboxClaim{Destination: dest, Token: token, Limit: len(dead) + 1, Lease: time.Minute})
			if err != nil || len(claimed) != len(dead) {
				t.Fatalf("claimed %d rows of %s, %v; want %d", len(claimed), dest, err, len(dead))
			}
			for i, r := range claimed {
				if r.ID != dead[i].row.ID {
					t.Fatalf("claimed %s, want %s", r.ID, dead[i].row.ID)
				}
				// One move per row: the dead letters are recorded in this order.
				n, err := d.DeadLetterOutbox(ctx, token, []dialects.OutboxDeadLetter{{Seq: r.Seq, Reason: dead[i].reason, Error: dead[i].err}})
				if err != nil || n != 1 {
					t.Fatalf("DeadLetterOutbox(%s/%s) = %d, %v", dest, r.ID, n, err)
				}
			}
		},
		outboxRows: func(t *testing.T, dest string) []dialects.OutboxRow {
			t.Helper()
			rows, err := d.ListOutbox(ctx, dialects.OutboxQuery{Destination: dest})
			if err != nil {
				t.Fatal(err)
			}
			return rows
		},
	}
}

func sqliteEnv(t *testing.T) *dlEnv {
	t.Helper()
	path := testdb.SQLitePath(t)
	mustSucceed(t, "migrate", "up", "--dsn", path)
	db, err := sql.Open("sqlite", sqlite.DSN(path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Exec(`CREATE TABLE cli_effects (source TEXT NOT NULL, id TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return seedEnv(t, d, []string{"--dsn", path}, "sqlite "+path,
		func(ctx context.Context, tx *sql.Tx, source, id string) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO cli_effects (source, id) VALUES (?, ?)`, source, id)
			return err
		},
		func(t *testing.T) map[string]int { return countEffects(t, db) })
}

func postgresEnv(t *testing.T) *dlEnv {
	t.Helper()
	dsn, _ := testdb.PostgresSchema(t)
	mustSucceed(t, "migrate", "up", "--dsn", dsn)
	pool := testdb.OpenPostgres(t, dsn, false)
	if _, err := pool.Exec(context.Background(), `CREATE TABLE cli_effects (source text NOT NULL, id text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	d, err := postgres.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	return seedEnv(t, d, []string{"--dsn", dsn}, dsnpkg.PostgresTarget(cfg, ""),
		func(ctx context.Context, tx pgx.Tx, source, id string) error {
			_, err := tx.Exec(ctx, `INSERT INTO cli_effects (source, id) VALUES ($1, $2)`, source, id)
			return err
		},
		func(t *testing.T) map[string]int {
			t.Helper()
			rows, err := pool.Query(context.Background(), `SELECT source || '/' || id FROM cli_effects`)
			if err != nil {
				t.Fatal(err)
			}
			keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			out := map[string]int{}
			for _, k := range keys {
				out[k]++
			}
			return out
		})
}

func countEffects(t *testing.T, db *sql.DB) map[string]int {
	t.Helper()
	rows, err := db.Query(`SELECT source || '/' || id FROM cli_effects`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		out[k]++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// args appends the environment's database flags to a command line.
func (e *dlEnv) cmd(a ...string) []string { return append(a, e.args...) }

// deadLetters reads the dead letters through the library.
func (e *dlEnv) deadLetters(t *testing.T, f inbox.DeadLetterFilter) []deadletter.DeadLetter {
	t.Helper()
	dls, err := e.inbox.DeadLetters(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	return dls
}

// key names a dead letter "source/id".
func key(d *deadletter.DeadLetter) string { return d.Source + "/" + d.ID }

func keys(dls []deadletter.DeadLetter) []string {
	var out []string
	for i := range dls {
		out = append(out, key(&dls[i]))
	}
	slices.Sort(out)
	return out
}

// wantTable is list's table for dls, written out independently of the
// command's code: the column widths follow from the seeded values.
func wantTable(dls []deadletter.DeadLetter, footer string) string {
	var b strings.Builder
	row := "%-5s%-8s%-15s%-15s%-10s%-25s%s\n"
	fmt.Fprintf(&b, row, "ID", "SOURCE", "TOPIC", "REASON", "ATTEMPTS", "FAILED AT", "LAST ERROR")
	for _, d := range dls {
		last := strings.ReplaceAll(d.LastError, "\n", " ")
		if len(last) > 60 {
			last = last[:59] + "…"
		}
		fmt.Fprintf(&b, row, d.ID, d.Source, d.Topic, d.Reason, fmt.Sprint(d.Attempts), d.FailedAt.UTC().Format("2006-01-02 15:04:05 UTC"), last)
	}
	return b.String() + footer + "\n"
}

func TestDeadLetters(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testDeadLetters(t, sqliteEnv(t)) })
	t.Run("postgres", func(t *testing.T) { testDeadLetters(t, postgresEnv(t)) })
}

func testDeadLetters(t *testing.T, e *dlEnv) {
	all := e.deadLetters(t, inbox.DeadLetterFilter{})
	if got := keys(all); !reflect.DeepEqual(got, []string{"crm/o-1", "shop/o-1", "shop/o-2", "shop/o-3", "shop/r-1"}) {
		t.Fatalf("seeded dead letters: %v", got)
	}

	// list: the table, exactly.
	r := mustSucceed(t, e.cmd("deadletters", "list")...)
	if want := wantTable(all, "5 pending dead letters, oldest first"); r.stdout != want {
		t.Errorf("list printed:\n%s\nwant:\n%s", r.stdout, want)
	}
	checkListJSON(t, e, all)

	// Filters.
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--topic", "refund.issued"}, []string{"shop/r-1"}},
		{[]string{"--reason", "no_handler"}, []string{"shop/r-1"}},
		{[]string{"--reason", "handler_error", "--source", "shop"}, []string{"shop/o-1", "shop/o-2", "shop/o-3"}},
		{[]string{"--id", "o-1", "--id", "r-1"}, []string{"crm/o-1", "shop/o-1", "shop/r-1"}},
		{[]string{"--since", "1h"}, []string{"crm/o-1", "shop/o-1", "shop/o-2", "shop/o-3", "shop/r-1"}},
		{[]string{"--since", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)}, []string{"crm/o-1", "shop/o-1", "shop/o-2", "shop/o-3", "shop/r-1"}},
		{[]string{"--before", "1d"}, nil},
	} {
		var got deadLetterList
		r := mustSucceed(t, e.cmd(append([]string{"deadletters", "list", "--json"}, c.args...)...)...)
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
			t.Fatal(err)
		}
		var ks []string
		for _, d := range got.DeadLetters {
			ks = append(ks, d.Source+"/"+d.ID)
		}
		slices.Sort(ks)
		if !reflect.DeepEqual(ks, c.want) || got.Count != len(c.want) || got.More {
			t.Errorf("list %v: %v (count %d, more %v), want %v", c.args, ks, got.Count, got.More, c.want)
		}
	}
	r = mustSucceed(t, e.cmd("deadletters", "list", "--before", "1d")...)
	if r.stdout != "no pending dead letters match (failed before 1d)\n" {
		t.Errorf("empty list printed %q", r.stdout)
	}
	r = mustSucceed(t, e.cmd("deadletters", "list", "--limit", "2")...)
	if want := wantTable(all[:2], "the oldest 2 pending dead letters; more match (raise --limit, or 0 for all)"); r.stdout != want {
		t.Errorf("list --limit 2 printed:\n%s\nwant:\n%s", r.stdout, want)
	}

	checkShow(t, e)

	// replay and purge refuse without --yes (no terminal), without a filter,
	// and with --all and a filter; nothing changes.
	for _, c := range []struct {
		args []string
		line string
	}{
		{[]string{"deadletters", "replay", "--topic", "order.placed"}, confirmChange("replay")},
		{[]string{"deadletters", "purge", "--all"}, confirmChange("purge")},
		{[]string{"deadletters", "replay", "--yes"}, "replay needs a filter (--topic, --reason, --source, --since, --before, --id), or --all to replay every pending dead letter"},
		{[]string{"deadletters", "purge", "--include-replayed", "--limit", "3", "--yes"}, "purge needs a filter (--topic, --reason, --source, --since, --before, --id), or --all to purge every pending dead letter"},
		{[]string{"deadletters", "replay", "--all", "--source", "shop", "--yes"}, "--all means every pending dead letter: it cannot be combined with filters"},
	} {
		wantError(t, durable(t, e.cmd(c.args...)...), exitUsage, c.line)
	}
	if n := len(e.deadLetters(t, inbox.DeadLetterFilter{})); n != 5 {
		t.Fatalf("a refused command changed the dead letters: %d pending", n)
	}

	// replay: shop's order.placed messages go back and are processed once.
	r = mustSucceed(t, e.cmd("deadletters", "replay", "--topic", "order.placed", "--source", "shop", "--yes")...)
	if want := "replayed 3 dead letters on " + e.target + "\n"; r.stdout != want {
		t.Errorf("replay printed %q, want %q", r.stdout, want)
	}
	e.process(t, 3)
	if got, want := e.effects(t), map[string]int{"shop/o-1": 1, "shop/o-2": 1, "shop/o-3": 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("effects after replay and processing: %v, want %v", got, want)
	}
	// The replayed dead letters are no longer pending; they stay for the
	// record, marked replayed (the inbox's documented behaviour).
	if got := keys(e.deadLetters(t, inbox.DeadLetterFilter{})); !reflect.DeepEqual(got, []string{"crm/o-1", "shop/r-1"}) {
		t.Errorf("pending after replay: %v", got)
	}
	for _, d := range e.deadLetters(t, inbox.DeadLetterFilter{IncludeReplayed: true}) {
		if replayed := d.Source == "shop" && d.Topic == "order.placed"; replayed != !d.ReplayedAt.IsZero() || replayed == d.Pending() {
			t.Errorf("%s: replayed_at %v, pending %v", key(&d), d.ReplayedAt, d.Pending())
		}
	}
	var list deadLetterList
	if err := json.Unmarshal([]byte(mustSucceed(t, e.cmd("deadletters", "list", "--json")...).stdout), &list); err != nil || list.Count != 2 {
		t.Errorf("list after replay: %+v, %v", list, err)
	}
	// A second replay finds nothing: exactly once.
	r = mustSucceed(t, e.cmd("deadletters", "replay", "--topic", "order.placed", "--source", "shop", "--yes", "--json")...)
	var ch changeResult
	if err := json.Unmarshal([]byte(r.stdout), &ch); err != nil || ch != (changeResult{Database: e.target, Side: "inbox", Action: "replay", Count: 0}) {
		t.Errorf("second replay --json: %+v, %v", ch, err)
	}
	e.process(t, 3)
	if got := e.effects(t); len(got) != 3 || got["shop/o-1"]+got["shop/o-2"]+got["shop/o-3"] != 3 {
		t.Errorf("effects after a second replay: %v", got)
	}

	// purge with a filter, then the replayed ones.
	r = mustSucceed(t, e.cmd("deadletters", "purge", "--reason", "no_handler", "--yes", "--json")...)
	if err := json.Unmarshal([]byte(r.stdout), &ch); err != nil || ch != (changeResult{Database: e.target, Side: "inbox", Action: "purge", Count: 1}) {
		t.Errorf("purge --json: %+v, %v", ch, err)
	}
	r = mustSucceed(t, e.cmd("deadletters", "purge", "--source", "shop", "--yes")...)
	if want := "no dead letters match on " + e.target + "; nothing was purged\n"; r.stdout != want {
		t.Errorf("purge of replayed dead letters without --include-replayed printed %q, want %q", r.stdout, want)
	}
	r = mustSucceed(t, e.cmd("deadletters", "purge", "--source", "shop", "--include-replayed", "--yes")...)
	if want := "purged 3 dead letters on " + e.target + "\n"; r.stdout != want {
		t.Errorf("purge --include-replayed printed %q, want %q", r.stdout, want)
	}
	if got := keys(e.deadLetters(t, inbox.DeadLetterFilter{IncludeReplayed: true})); !reflect.DeepEqual(got, []string{"crm/o-1"}) {
		t.Errorf("dead letters after purges: %v", got)
	}
}

// checkListJSON compares list --json with the library's dead letters, field
// by field.
func checkListJSON(t *testing.T, e *dlEnv, all []deadletter.DeadLetter) {
	t.Helper()
	r := mustSucceed(t, e.cmd("deadletters", "list", "--json")...)
	var got deadLetterList
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("list --json: %v\n%s", err, r.stdout)
	}
	if got.Database != e.target || got.Side != "inbox" || got.Count != 5 || got.More || len(got.DeadLetters) != 5 {
		t.Fatalf("list --json: database %q, side %q, count %d, more %v", got.Database, got.Side, got.Count, got.More)
	}
	for i, d := range all {
		g := got.DeadLetters[i]
		var env transport.Envelope
		for _, b := range seedBatches {
			for _, en := range b.Envelopes {
				if b.Source == d.Source && en.ID == d.ID {
					env = en
				}
			}
		}
		payload, enc := string(env.Payload), "utf-8"
		if d.ID == "r-1" {
			payload, enc = "AAH/eA==", "base64"
		}
		headers := env.Headers
		if headers == nil {
			headers = map[string]string{}
		}
		attempts, reason := 2, "handler_error"
		if d.ID == "r-1" {
			attempts, reason = 1, "no_handler"
		}
		want := deadLetterJSON{
			Side: "inbox", Source: d.Source, ID: d.ID, Topic: env.Topic, Key: env.Key, Headers: headers,
			Payload: payload, PayloadEncoding: enc, CreatedAt: d.CreatedAt.UTC(), Reason: reason,
			Attempts: attempts, LastError: d.LastError, FirstFailedAt: d.FirstFailedAt.UTC(), FailedAt: d.FailedAt.UTC(),
			Pending: true,
		}
		for _, ae := range d.Errors {
			want.Errors = append(want.Errors, attemptJSON{Attempt: ae.Attempt, At: ae.At.UTC(), Error: ae.Error})
		}
		if len(want.Errors) != attempts {
			t.Errorf("%s: %d errors in the history, want %d", key(&d), len(want.Errors), attempts)
		}
		if d.ID == "o-2" && (len(want.Errors) != 2 || want.Errors[1].Error != "charge card: declined (attempt 2)" || want.LastError != want.Errors[1].Error) {
			t.Errorf("%s: errors %+v", key(&d), want.Errors)
		}
		if !reflect.DeepEqual(g, want) {
			t.Errorf("list --json, dead letter %d:\n got %+v\nwant %+v", i, g, want)
		}
	}
}

// checkShow checks show's text and JSON, and its errors.
func checkShow(t *testing.T, e *dlEnv) {
	t.Helper()
	dls := e.deadLetters(t, inbox.DeadLetterFilter{Source: "shop", IDs: []string{"o-3", "r-1"}})
	slices.SortFunc(dls, func(a, b deadletter.DeadLetter) int { return strings.Compare(a.ID, b.ID) })
	ts := func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000 UTC") }
	o3, r1 := dls[0], dls[1]
	want := "dead letter o-3 from shop (pending)\n" +
		"topic:        order.placed\n" +
		"key:          -\n" +
		"reason:       handler_error\n" +
		"attempts:     2\n" +
		"created at:   " + ts(o3.CreatedAt) + "\n" +
		"expires at:   never\n" +
		"first failed: " + ts(o3.FirstFailedAt) + "\n" +
		"failed at:    " + ts(o3.FailedAt) + "\n" +
		"replayed at:  never\n" +
		"last error:   charge card: the payment service answered 503 Service Unavailable after 30s …\n" +
		"headers:      none\n" +
		"payload:      11 bytes, text\n" +
		"  {\"order\":3}\n" +
		"errors:       2\n" +
		"  attempt 1 at " + ts(o3.Errors[0].At) + "\n" +
		"    charge card: the payment service answered 503 Service Unavailable after 30s\n" +
		"    retry-after: 120\n" +
		"  attempt 2 at " + ts(o3.Errors[1].At) + "\n" +
		"    charge card: the payment service answered 503 Service Unavailable after 30s\n" +
		"    retry-after: 120\n"
	if r := mustSucceed(t, e.cmd("deadletters", "show", "o-3")...); r.stdout != want {
		t.Errorf("show o-3 printed:\n%s\nwant:\n%s", r.stdout, want)
	}
	r := mustSucceed(t, e.cmd("deadletters", "show", "r-1", "--source", "shop")...)
	for _, line := range []string{
		"reason:       no_handler\n",
		"payload:      4 bytes, binary (hex)\n",
		"  " + strings.TrimRight(hex.Dump([]byte{0, 1, 0xff, 'x'}), "\n") + "\n",
		"errors:       1\n  attempt 1 at " + ts(r1.Errors[0].At) + "\n    " + r1.LastError + "\n",
	} {
		if !strings.Contains(r.stdout, line) {
			t.Errorf("show r-1 lacks %q:\n%s", line, r.stdout)
		}
	}
	var one deadLetterJSON
	r = mustSucceed(t, e.cmd("deadletters", "show", "o-1", "--source", "shop", "--json")...)
	if err := json.Unmarshal([]byte(r.stdout), &one); err != nil || one.Key != "cust-7" || one.Headers["trace"] != "abc" || one.Payload != `{"order":1}` {
		t.Errorf("show --json: %+v, %v", one, err)
	}
	wantError(t, durable(t, e.cmd("deadletters", "show", "o-1")...), exitUsage, "dead letter o-1 came from 2 sources (shop, crm): pass --source")
	wantError(t, durable(t, e.cmd("deadletters", "show", "nope")...), exitFailure, "no dead letter nope on "+e.target)
	wantError(t, durable(t, e.cmd("deadletters", "show", "o-2", "--source", "crm")...), exitFailure, "no dead letter o-2 from source crm on "+e.target)
}

// The seeded outbox dead letters, in the order they are recorded: two for
// billing (rejected, expired) and one for crm, of the same id as billing's
// first.
var (
	billingDead = []outboxDead{
		{row: dialects.OutboxRow{Envelope: transport.Envelope{ID: "inv-1", Topic: "invoice.created", Key: "cust-7",
			Headers: map[string]string{"content-type": "application/json"}, Payload: []byte(`{"invoice":1}`)}},
			reason: dialects.ReasonRejected, err: "billing rejected the message: unknown customer cust-7"},
		{row: dialects.OutboxRow{Envelope: transport.Envelope{ID: "inv-2", Topic: "invoice.created", Payload: []byte(`{"invoice":2}`)}},
			reason: dialects.ReasonExpired, err: "expired before billing acknowledged it"},
	}
	crmDead = []outboxDead{
		{row: dialects.OutboxRow{Envelope: transport.Envelope{ID: "inv-1", Topic: "customer.updated", Payload: []byte(`{"customer":7}`)}},
			reason: dialects.ReasonRejected, err: "crm: permanent send error: 400 Bad Request from the peer\nbody: topic not accepted"},
	}
)

// outboxKey names an outbox dead letter "destination/id".
func outboxKey(d *deadletter.DeadLetter) string { return d.Destination + "/" + d.ID }

func outboxKeys(dls []deadletter.DeadLetter) []string {
	var out []string
	for i := range dls {
		out = append(out, outboxKey(&dls[i]))
	}
	slices.Sort(out)
	return out
}

// outboxDeadLetters reads the outbox side's dead letters through the
// library.
func (e *dlEnv) outboxDeadLetters(t *testing.T, f outbox.DeadLetterFilter) []deadletter.DeadLetter {
	t.Helper()
	dls, err := e.outbox.DeadLetters(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	return dls
}

// wantOutboxTable is list --side outbox's table for dls, written out
// independently of the command's code: the column widths follow from the
// seeded values (the topic's from the longest listed).
func wantOutboxTable(dls []deadletter.DeadLetter, footer string) string {
	var b strings.Builder
	topic := len("TOPIC")
	for _, d := range dls {
		topic = max(topic, len(d.Topic))
	}
	row := "%-7s%-13s%-" + fmt.Sprint(topic+2) + "s%-10s%-10s%-25s%s\n"
	fmt.Fprintf(&b, row, "ID", "DESTINATION", "TOPIC", "REASON", "ATTEMPTS", "FAILED AT", "LAST ERROR")
	for _, d := range dls {
		last := strings.ReplaceAll(d.LastError, "\n", " ")
		if len(last) > 60 {
			last = last[:59] + "…"
		}
		fmt.Fprintf(&b, row, d.ID, d.Destination, d.Topic, d.Reason, fmt.Sprint(d.Attempts), d.FailedAt.UTC().Format("2006-01-02 15:04:05 UTC"), last)
	}
	return b.String() + footer + "\n"
}

// TestDeadLettersOutbox: --side outbox lists, shows, replays and purges the
// relay's dead letters, and leaves the inbox's alone.
func TestDeadLettersOutbox(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testDeadLettersOutbox(t, sqliteEnv(t)) })
	t.Run("postgres", func(t *testing.T) { testDeadLettersOutbox(t, postgresEnv(t)) })
}

func testDeadLettersOutbox(t *testing.T, e *dlEnv) {
	e.deadLetterOutbox(t, "billing", billingDead...)
	e.deadLetterOutbox(t, "crm", crmDead...)
	all := e.outboxDeadLetters(t, outbox.DeadLetterFilter{})
	if got := outboxKeys(all); !reflect.DeepEqual(got, []string{"billing/inv-1", "billing/inv-2", "crm/inv-1"}) {
		t.Fatalf("seeded outbox dead letters: %v", got)
	}
	if got := []string{outboxKey(&all[0]), outboxKey(&all[1]), outboxKey(&all[2])}; !reflect.DeepEqual(got, []string{"billing/inv-1", "billing/inv-2", "crm/inv-1"}) {
		t.Fatalf("outbox dead letters, oldest first: %v", got)
	}
	for _, dest := range []string{"billing", "crm"} {
		if rows := e.outboxRows(t, dest); len(rows) != 0 {
			t.Fatalf("%d rows left in the outbox for %s", len(rows), dest)
		}
	}

	// list: the table, exactly; the inbox side (the default) is unchanged.
	r := mustSucceed(t, e.cmd("deadletters", "list", "--side", "outbox")...)
	if want := wantOutboxTable(all, "3 pending outbox dead letters, oldest first"); r.stdout != want {
		t.Errorf("list --side outbox printed:\n%s\nwant:\n%s", r.stdout, want)
	}
	r = mustSucceed(t, e.cmd("deadletters", "list", "--side", "outbox", "--limit", "2")...)
	if want := wantOutboxTable(all[:2], "the oldest 2 pending outbox dead letters; more match (raise --limit, or 0 for all)"); r.stdout != want {
		t.Errorf("list --side outbox --limit 2 printed:\n%s\nwant:\n%s", r.stdout, want)
	}
	inboxAll := e.deadLetters(t, inbox.DeadLetterFilter{})
	for _, args := range [][]string{{"deadletters", "list"}, {"deadletters", "list", "--side", "inbox"}} {
		r = mustSucceed(t, e.cmd(args...)...)
		if want := wantTable(inboxAll, "5 pending dead letters, oldest first"); r.stdout != want {
			t.Errorf("%v with outbox dead letters printed:\n%s\nwant:\n%s", args, r.stdout, want)
		}
	}
	checkOutboxListJSON(t, e, all)

	// Filters.
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--destination", "billing"}, []string{"billing/inv-1", "billing/inv-2"}},
		{[]string{"--reason", "expired"}, []string{"billing/inv-2"}},
		{[]string{"--reason", "rejected", "--destination", "crm"}, []string{"crm/inv-1"}},
		{[]string{"--id", "inv-1"}, []string{"billing/inv-1", "crm/inv-1"}},
		{[]string{"--topic", "customer.updated"}, []string{"crm/inv-1"}},
		{[]string{"--since", "1h", "--destination", "billing", "--id", "inv-2"}, []string{"billing/inv-2"}},
		{[]string{"--id", "o-1"}, nil}, // an id of the inbox side
		{[]string{"--before", "1d"}, nil},
	} {
		var got deadLetterList
		r := mustSucceed(t, e.cmd(append([]string{"deadletters", "list", "--side", "outbox", "--json"}, c.args...)...)...)
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
			t.Fatal(err)
		}
		var ks []string
		for _, d := range got.DeadLetters {
			if d.Side != "outbox" || d.Source != "" {
				t.Errorf("list --side outbox %v: side %q, source %q", c.args, d.Side, d.Source)
			}
			ks = append(ks, d.Destination+"/"+d.ID)
		}
		slices.Sort(ks)
		if !reflect.DeepEqual(ks, c.want) || got.Count != len(c.want) || got.More || got.Side != "outbox" {
			t.Errorf("list --side outbox %v: %v (count %d, more %v, side %q), want %v", c.args, ks, got.Count, got.More, got.Side, c.want)
		}
	}
	r = mustSucceed(t, e.cmd("deadletters", "list", "--side", "outbox", "--destination", "erp")...)
	if r.stdout != "no pending outbox dead letters match (destination erp)\n" {
		t.Errorf("empty outbox list printed %q", r.stdout)
	}

	checkOutboxShow(t, e)
	checkOutboxConfirmation(t, e)

	// replay: billing's rejected message goes back into the outbox, due,
	// with its id, creation time and content, attempts reset, no expiry.
	r = mustSucceed(t, e.cmd("deadletters", "replay", "--side", "outbox", "--destination", "billing", "--reason", "rejected", "--yes")...)
	if want := "replayed 1 outbox dead letter on " + e.target + "\n"; r.stdout != want {
		t.Errorf("replay --side outbox printed %q, want %q", r.stdout, want)
	}
	checkReplayedRow := func(when string) {
		t.Helper()
		rows := e.outboxRows(t, "billing")
		if len(rows) != 1 {
			t.Fatalf("%s: %d rows in the outbox for billing, want 1", when, len(rows))
		}
		got, seed := rows[0], billingDead[0].row
		if got.ID != "inv-1" || got.Topic != seed.Topic || got.Key != seed.Key || !reflect.DeepEqual(got.Headers, seed.Headers) ||
			string(got.Payload) != string(seed.Payload) || got.SendAttempt != 0 || !got.ExpiresAt.IsZero() || got.LeaseToken != "" ||
			!got.SentAt.IsZero() || !got.CreatedAt.Equal(all[0].CreatedAt) || got.DeliverAt.After(time.Now().Add(time.Minute)) {
			t.Errorf("%s: outbox row %+v", when, got)
		}
	}
	checkReplayedRow("after replay")
	if rows := e.outboxRows(t, "crm"); len(rows) != 0 {
		t.Errorf("replay of billing's dead letter put %d rows in crm's outbox", len(rows))
	}
	// The replayed dead letter stays for the record, no longer pending (crm's
	// was purged by checkOutboxConfirmation).
	if got := outboxKeys(e.outboxDeadLetters(t, outbox.DeadLetterFilter{})); !reflect.DeepEqual(got, []string{"billing/inv-2"}) {
		t.Errorf("pending outbox dead letters after replay: %v", got)
	}
	for _, d := range e.outboxDeadLetters(t, outbox.DeadLetterFilter{IncludeReplayed: true}) {
		if replayed := outboxKey(&d) == "billing/inv-1"; replayed != !d.ReplayedAt.IsZero() || replayed == d.Pending() {
			t.Errorf("%s: replayed_at %v, pending %v", outboxKey(&d), d.ReplayedAt, d.Pending())
		}
	}
	var list deadLetterList
	if err := json.Unmarshal([]byte(mustSucceed(t, e.cmd("deadletters", "list", "--side", "outbox", "--json")...).stdout), &list); err != nil ||
		list.Count != 1 || list.DeadLetters[0].ID != "inv-2" {
		t.Errorf("list --side outbox after replay: %+v, %v", list, err)
	}
	if err := json.Unmarshal([]byte(mustSucceed(t, e.cmd("deadletters", "list", "--side", "outbox", "--include-replayed", "--json", "--destination", "billing")...).stdout), &list); err != nil ||
		list.Count != 2 || list.DeadLetters[0].ID != "inv-1" || list.DeadLetters[0].Pending || list.DeadLetters[0].ReplayedAt == nil || !list.DeadLetters[1].Pending {
		t.Errorf("list --side outbox --include-replayed after replay: %+v, %v", list, err)
	}
	// A second replay finds nothing: no duplicate row.
	r = mustSucceed(t, e.cmd("deadletters", "replay", "--side", "outbox", "--destination", "billing", "--reason", "rejected", "--yes", "--json")...)
	var ch changeResult
	if err := json.Unmarshal([]byte(r.stdout), &ch); err != nil || ch != (changeResult{Database: e.target, Side: "outbox", Action: "replay", Count: 0}) {
		t.Errorf("second replay --side outbox --json: %+v, %v", ch, err)
	}
	checkReplayedRow("after a second replay")

	// purge: pending ones, then the replayed one; the inbox side and the
	// replayed outbox row are untouched.
	r = mustSucceed(t, e.cmd("deadletters", "purge", "--side", "outbox", "--all", "--yes", "--json")...)
	if err := json.Unmarshal([]byte(r.stdout), &ch); err != nil || ch != (changeResult{Database: e.target, Side: "outbox", Action: "purge", Count: 1}) {
		t.Errorf("purge --side outbox --all --json: %+v, %v", ch, err)
	}
	r = mustSucceed(t, e.cmd("deadletters", "purge", "--side", "outbox", "--all", "--yes")...)
	if want := "no outbox dead letters match on " + e.target + "; nothing was purged\n"; r.stdout != want {
		t.Errorf("purge --side outbox of replayed dead letters without --include-replayed printed %q, want %q", r.stdout, want)
	}
	r = mustSucceed(t, e.cmd("deadletters", "purge", "--side", "outbox", "--destination", "billing", "--include-replayed", "--yes")...)
	if want := "purged 1 outbox dead letter on " + e.target + "\n"; r.stdout != want {
		t.Errorf("purge --side outbox --include-replayed printed %q, want %q", r.stdout, want)
	}
	if got := e.outboxDeadLetters(t, outbox.DeadLetterFilter{IncludeReplayed: true}); len(got) != 0 {
		t.Errorf("outbox dead letters after purges: %v", outboxKeys(got))
	}
	if got := keys(e.deadLetters(t, inbox.DeadLetterFilter{IncludeReplayed: true})); !reflect.DeepEqual(got, keys(inboxAll)) {
		t.Errorf("inbox dead letters after the outbox side's replay and purges: %v", got)
	}
	checkReplayedRow("after purges")
}

// checkOutboxListJSON compares list --side outbox --json with the library's
// dead letters, field by field.
func checkOutboxListJSON(t *testing.T, e *dlEnv, all []deadletter.DeadLetter) {
	t.Helper()
	r := mustSucceed(t, e.cmd("deadletters", "list", "--side", "outbox", "--json")...)
	var got deadLetterList
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("list --side outbox --json: %v\n%s", err, r.stdout)
	}
	if got.Database != e.target || got.Side != "outbox" || got.Count != 3 || got.More || len(got.DeadLetters) != 3 {
		t.Fatalf("list --side outbox --json: database %q, side %q, count %d, more %v", got.Database, got.Side, got.Count, got.More)
	}
	seeds := []outboxDead{billingDead[0], billingDead[1], crmDead[0]}
	for i, d := range all {
		seed := seeds[i]
		headers := seed.row.Headers
		if headers == nil {
			headers = map[string]string{}
		}
		want := deadLetterJSON{
			Side: "outbox", Destination: d.Destination, ID: seed.row.ID, Topic: seed.row.Topic, Key: seed.row.Key, Headers: headers,
			Payload: string(seed.row.Payload), PayloadEncoding: "utf-8", CreatedAt: d.CreatedAt.UTC(), Reason: seed.reason,
			Attempts: 1, LastError: seed.err, FirstFailedAt: d.FirstFailedAt.UTC(), FailedAt: d.FailedAt.UTC(), Pending: true,
		}
		for _, ae := range d.Errors {
			want.Errors = append(want.Errors, attemptJSON{Attempt: ae.Attempt, At: ae.At.UTC(), Error: ae.Error})
		}
		if len(want.Errors) != 1 || want.Errors[0].Error != seed.err {
			t.Errorf("%s: errors %+v", outboxKey(&d), want.Errors)
		}
		if !reflect.DeepEqual(got.DeadLetters[i], want) {
			t.Errorf("list --side outbox --json, dead letter %d:\n got %+v\nwant %+v", i, got.DeadLetters[i], want)
		}
	}
}

// checkOutboxShow checks show --side outbox's text and JSON, and its errors.
func checkOutboxShow(t *testing.T, e *dlEnv) {
	t.Helper()
	ts := func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000 UTC") }
	inv2, err := e.outbox.DeadLetters(context.Background(), outbox.DeadLetterFilter{Destination: "billing", IDs: []string{"inv-2"}})
	if err != nil || len(inv2) != 1 || len(inv2[0].Errors) != 1 {
		t.Fatalf("billing/inv-2: %+v, %v", inv2, err)
	}
	d := inv2[0]
	want := "outbox dead letter inv-2 for billing (pending)\n" +
		"topic:        invoice.created\n" +
		"key:          -\n" +
		"reason:       expired\n" +
		"attempts:     1\n" +
		"created at:   " + ts(d.CreatedAt) + "\n" +
		"expires at:   never\n" +
		"first failed: " + ts(d.FirstFailedAt) + "\n" +
		"failed at:    " + ts(d.FailedAt) + "\n" +
		"replayed at:  never\n" +
		"last error:   expired before billing acknowledged it\n" +
		"headers:      none\n" +
		"payload:      13 bytes, text\n" +
		"  {\"invoice\":2}\n" +
		"errors:       1\n" +
		"  attempt 1 at " + ts(d.Errors[0].At) + "\n" +
		"    expired before billing acknowledged it\n"
	for _, args := range [][]string{
		{"deadletters", "show", "inv-2", "--side", "outbox"},
		{"deadletters", "show", "inv-2", "--side", "outbox", "--destination", "billing"},
	} {
		if r := mustSucceed(t, e.cmd(args...)...); r.stdout != want {
			t.Errorf("%v printed:\n%s\nwant:\n%s", args, r.stdout, want)
		}
	}
	r := mustSucceed(t, e.cmd("deadletters", "show", "inv-1", "--side", "outbox", "--destination", "crm")...)
	for _, line := range []string{
		"outbox dead letter inv-1 for crm (pending)\n",
		"reason:       rejected\n",
		"last error:   crm: permanent send error: 400 Bad Request from the peer …\n",
		"    crm: permanent send error: 400 Bad Request from the peer\n    body: topic not accepted\n",
	} {
		if !strings.Contains(r.stdout, line) {
			t.Errorf("show inv-1 --side outbox --destination crm lacks %q:\n%s", line, r.stdout)
		}
	}
	var one deadLetterJSON
	r = mustSucceed(t, e.cmd("deadletters", "show", "inv-1", "--side", "outbox", "--destination", "billing", "--json")...)
	if err := json.Unmarshal([]byte(r.stdout), &one); err != nil || one.Side != "outbox" || one.Destination != "billing" || one.Source != "" ||
		one.Key != "cust-7" || one.Headers["content-type"] != "application/json" || one.Payload != `{"invoice":1}` || one.Reason != "rejected" {
		t.Errorf("show --side outbox --json: %+v, %v", one, err)
	}
	wantError(t, durable(t, e.cmd("deadletters", "show", "inv-1", "--side", "outbox")...), exitUsage,
		"outbox dead letter inv-1 was for 2 destinations (billing, crm): pass --destination")
	wantError(t, durable(t, e.cmd("deadletters", "show", "nope", "--side", "outbox")...), exitFailure, "no outbox dead letter nope on "+e.target)
	wantError(t, durable(t, e.cmd("deadletters", "show", "inv-2", "--side", "outbox", "--destination", "crm")...), exitFailure,
		"no outbox dead letter inv-2 for destination crm on "+e.target)
	// Each side sees its own dead letters only.
	wantError(t, durable(t, e.cmd("deadletters", "show", "inv-1")...), exitFailure, "no dead letter inv-1 on "+e.target)
	wantError(t, durable(t, e.cmd("deadletters", "show", "o-2", "--side", "outbox")...), exitFailure, "no outbox dead letter o-2 on "+e.target)
}

// checkOutboxConfirmation answers replay's and purge's question on the
// outbox side, in-process with a stdin that claims to be a terminal: the
// question says what happens there. Purging crm's dead letter leaves
// billing's two.
func checkOutboxConfirmation(t *testing.T, e *dlEnv) {
	t.Helper()
	ask := func(answer string, args ...string) result {
		var stdout, stderr bytes.Buffer
		a := newApp(strings.NewReader(answer), &stdout, &stderr)
		a.isTerminal = func() bool { return true }
		code := a.execute(context.Background(), e.cmd(args...))
		return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
	}
	question := "This replays 1 pending outbox dead letter (destination crm) on " + e.target +
		": they go back into the outbox and the relay sends them again.\nReplay them? [y/N] "
	r := ask("n\n", "deadletters", "replay", "--side", "outbox", "--destination", "crm")
	if r.code != exitFailure || r.stdout != "" || r.stderr != question+"durable: not confirmed; nothing was replayed\n" {
		t.Errorf("replay --side outbox, answer n: %v", r)
	}
	if rows := e.outboxRows(t, "crm"); len(rows) != 0 {
		t.Errorf("a declined replay put %d rows in the outbox", len(rows))
	}
	question = "This purges 1 pending outbox dead letter (destination crm) on " + e.target +
		": they are deleted for good and the messages are never sent.\nPurge them? [y/N] "
	r = ask("y\n", "deadletters", "purge", "--side", "outbox", "--destination", "crm")
	if r.code != exitOK || r.stderr != question || r.stdout != "purged 1 outbox dead letter on "+e.target+"\n" {
		t.Errorf("purge --side outbox, answer y: %v", r)
	}
	if got := outboxKeys(e.outboxDeadLetters(t, outbox.DeadLetterFilter{IncludeReplayed: true})); !reflect.DeepEqual(got, []string{"billing/inv-1", "billing/inv-2"}) {
		t.Errorf("outbox dead letters after purging crm's: %v", got)
	}
}

// TestDeadLettersConfirmation answers replay's and purge's question on a
// terminal, in-process with a stdin that claims to be one.
func TestDeadLettersConfirmation(t *testing.T) {
	e := sqliteEnv(t)
	ask := func(answer string, args ...string) result {
		var stdout, stderr bytes.Buffer
		a := newApp(strings.NewReader(answer), &stdout, &stderr)
		a.isTerminal = func() bool { return true }
		code := a.execute(context.Background(), e.cmd(args...))
		return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
	}
	question := "This replays 3 pending dead letters (reason handler_error, source shop) on " + e.target +
		": they go back into the inbox and are handled again when a node runs.\nReplay them? [y/N] "
	for answer, line := range map[string]string{
		"n\n":    "durable: not confirmed; nothing was replayed\n",
		"yes?\n": "durable: not confirmed; nothing was replayed\n",
		"":       "durable: no answer on stdin; nothing was replayed (pass --yes to skip the question)\n",
	} {
		r := ask(answer, "deadletters", "replay", "--source", "shop", "--reason", "handler_error")
		if r.code != exitFailure || r.stdout != "" || r.stderr != question+line {
			t.Errorf("answer %q: %v", answer, r)
		}
	}
	if n := len(e.deadLetters(t, inbox.DeadLetterFilter{})); n != 5 {
		t.Fatalf("a declined replay changed the dead letters: %d pending", n)
	}
	r := ask("y\n", "deadletters", "replay", "--source", "shop", "--reason", "handler_error")
	if r.code != exitOK || r.stderr != question || r.stdout != "replayed 3 dead letters on "+e.target+"\n" {
		t.Errorf("answer y: %v", r)
	}
	// Nothing left to replay: no question.
	r = ask("", "deadletters", "replay", "--source", "shop", "--reason", "handler_error")
	if r.code != exitOK || r.stderr != "" || r.stdout != "no dead letters match on "+e.target+"; nothing was replayed\n" {
		t.Errorf("replay with nothing to do: %v", r)
	}
	question = "This purges 1 pending dead letter (topic refund.issued) on " + e.target + ": they are deleted for good.\nPurge them? [y/N] "
	r = ask("yes\n", "deadletters", "purge", "--topic", "refund.issued")
	if r.code != exitOK || r.stderr != question || r.stdout != "purged 1 dead letter on "+e.target+"\n" {
		t.Errorf("purge, answer yes: %v", r)
	}
}

// TestDeadLettersErrors: bad DSNs, unmigrated databases and bad flags get
// their one line and exit code, for every new command.
func TestDeadLettersErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.db")
	empty := filepath.Join(dir, "empty.db")
	db, err := sql.Open("sqlite", sqlite.DSN(empty))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE app (id INTEGER)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	port := closedPort(t)
	pgDown := "postgres://postgres@127.0.0.1:" + port + "/test?sslmode=disable"
	commands := [][]string{{"deadletters", "list"}, {"deadletters", "show", "x"},
		{"deadletters", "replay", "--all", "--yes"}, {"deadletters", "purge", "--topic", "t", "--yes"}, {"stats"}}
	for _, c := range commands {
		name := strings.Join(c, " ")
		wantError(t, durable(t, append(c, "--dsn", missing)...), exitDatabase,
			"sqlite database "+missing+" does not exist (durable migrate up creates it)")
		wantErrorPrefix(t, durable(t, append(c, "--dsn", pgDown)...), exitDatabase,
			"cannot connect to postgres 127.0.0.1:"+port+"/test: dial tcp 127.0.0.1:"+port+": connect: connection refused")
		wantError(t, durable(t, append(c, "--dialect", "sqlite", "--dsn", pgDown)...), exitDatabase,
			"--dialect sqlite does not match the DSN, a postgres:// URL; pass --dialect postgres, or a SQLite file path")
		wantErrorPrefix(t, durable(t, append(c, "--dsn", empty)...), exitSchema,
			"sqlite schema is at version 0, need version 4: missing migration 0001_init")
		wantError(t, durable(t, c...), exitUsage, "no database given: pass --dsn, or set DURABLE_DSN")
		if t.Failed() {
			t.Fatalf("after %s", name)
		}
	}
	if _, err := os.Stat(missing); err == nil {
		t.Errorf("a failed command created %s", missing)
	}
	t.Run("postgres unmigrated", func(t *testing.T) {
		dsn, _ := testdb.PostgresSchema(t)
		for _, c := range commands {
			wantErrorPrefix(t, durable(t, append(c, "--dsn", dsn)...), exitSchema,
				"postgres schema is at version 0, need version 4: missing migration 0001_init")
		}
	})

	path := testdb.SQLitePath(t)
	mustSucceed(t, "migrate", "up", "--dsn", path)
	for _, c := range []struct {
		args []string
		line string
	}{
		{[]string{"deadletters", "list", "--reason", "boom"}, `--reason "boom": want one of handler_error, permanent, decode_error, no_handler, expired`},
		{[]string{"deadletters", "list", "--since", "yesterday"}, `--since "yesterday": want a duration (90m, 1h, 7d), an RFC 3339 time (2026-05-04T09:00:00Z) or a date (2026-05-04)`},
		{[]string{"deadletters", "list", "--before", "-1h"}, "--before -1h: the duration must not be negative"},
		{[]string{"deadletters", "list", "--since", "1h", "--before", "2h"}, "--since 1h is not before --before 2h: nothing can match"},
		{[]string{"deadletters", "list", "--limit", "-1"}, "--limit -1: must not be negative"},
		{[]string{"deadletters", "replay", "--id", "", "--yes"}, "--id: empty message id"},
		{[]string{"deadletters", "show"}, "accepts 1 arg(s), received 0 (see 'durable deadletters show --help')"},
		{[]string{"deadletters", "replay", "--include-replayed", "--all"}, "unknown flag: --include-replayed (see 'durable deadletters replay --help')"},
		{[]string{"deadletters", "lst"}, `unknown command "lst" for "durable deadletters"; did you mean "list"?`},
		{[]string{"stats", "now"}, `unknown command "now" for "durable stats" (see 'durable stats --help')`},
		// --side, and the flags of one side only.
		{[]string{"deadletters", "list", "--side", "both"}, `--side "both": want inbox or outbox`},
		{[]string{"deadletters", "show", "x", "--side", "Outbox"}, `--side "Outbox": want inbox or outbox`},
		{[]string{"deadletters", "replay", "--side", "sent", "--yes"}, `--side "sent": want inbox or outbox`},
		{[]string{"deadletters", "list", "--side", "outbox", "--source", "shop"}, "--source is for the inbox side; with --side outbox, use --destination"},
		{[]string{"deadletters", "show", "x", "--side", "outbox", "--source", "shop"}, "--source is for the inbox side; with --side outbox, use --destination"},
		{[]string{"deadletters", "purge", "--side", "outbox", "--source", "shop", "--yes"}, "--source is for the inbox side; with --side outbox, use --destination"},
		{[]string{"deadletters", "list", "--destination", "billing"}, "--destination is for the outbox side (--side outbox); the inbox side uses --source"},
		{[]string{"deadletters", "show", "x", "--side", "inbox", "--destination", "billing"}, "--destination is for the outbox side (--side outbox); the inbox side uses --source"},
		{[]string{"deadletters", "replay", "--destination", "billing", "--yes"}, "--destination is for the outbox side (--side outbox); the inbox side uses --source"},
		{[]string{"deadletters", "list", "--side", "outbox", "--reason", "no_handler"}, `--reason "no_handler" with --side outbox: want one of expired, rejected (no_handler is a reason of the inbox side)`},
		{[]string{"deadletters", "purge", "--side", "outbox", "--reason", "boom", "--yes"}, `--reason "boom" with --side outbox: want one of expired, rejected`},
		{[]string{"deadletters", "replay", "--reason", "rejected", "--yes"}, `--reason "rejected": want one of handler_error, permanent, decode_error, no_handler, expired (rejected is a reason of the outbox side: add --side outbox)`},
		{[]string{"deadletters", "replay", "--side", "outbox", "--yes"}, "replay needs a filter (--topic, --reason, --destination, --since, --before, --id), or --all to replay every pending outbox dead letter"},
		{[]string{"deadletters", "purge", "--side", "outbox", "--all", "--destination", "billing", "--yes"}, "--all means every pending dead letter: it cannot be combined with filters"},
	} {
		wantError(t, durable(t, append(c.args, "--dsn", path)...), exitUsage, c.line)
	}
	r := mustSucceed(t, "deadletters", "list", "--dsn", path)
	if r.stdout != "no pending dead letters\n" {
		t.Errorf("list on an empty inbox printed %q", r.stdout)
	}
	r = mustSucceed(t, "deadletters", "list", "--side", "outbox", "--dsn", path)
	if r.stdout != "no pending outbox dead letters\n" {
		t.Errorf("list --side outbox on an empty database printed %q", r.stdout)
	}
	r = mustSucceed(t, "deadletters", "replay", "--side", "outbox", "--all", "--yes", "--dsn", path)
	if want := "no outbox dead letters match on sqlite " + path + "; nothing was replayed\n"; r.stdout != want {
		t.Errorf("replay --side outbox on an empty database printed %q, want %q", r.stdout, want)
	}
	for _, cmd := range [][]string{{"deadletters"}, {"deadletters", "list"}, {"deadletters", "show"}, {"deadletters", "replay"}, {"deadletters", "purge"}, {"stats"}} {
		r := mustSucceed(t, append(cmd, "--help")...)
		for _, want := range []string{"Usage:", "Examples:", "durable " + strings.Join(cmd, " "), "--dsn", "--json"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("durable %s --help lacks %q", strings.Join(cmd, " "), want)
			}
		}
	}
}

// TestParseWhen covers the forms of --since and --before.
func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                          {},
		"90m":                       now.Add(-90 * time.Minute),
		"7d":                        now.AddDate(0, 0, -7),
		"0s":                        now,
		"2026-05-01T08:30:00+02:00": time.Date(2026, 5, 1, 6, 30, 0, 0, time.UTC),
		"2026-05-01":                time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC),
	} {
		got, err := parseWhen("since", in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"d", "1.5d", "tomorrow", "2026-13-01", "-2d"} {
		if _, err := parseWhen("since", in, now); err == nil {
			t.Errorf("parseWhen(%q) accepted", in)
		}
	}
}

// TestTerminalSafety: text from the database cannot drive the terminal.
func TestTerminalSafety(t *testing.T) {
	for in, want := range map[string]string{
		"plain":              "plain",
		"a\x1b[31mred":       `a\x1b[31mred`,
		"two\nlines\ttab":    "two lines tab",
		"bad\xffutf8 \u00e9": `bad\xffutf8 é`,
		"bell\a":             `bell\x07`,
		"c1\u009b":           `c1\x9b`,
	} {
		if got := oneLineText(in); got != want {
			t.Errorf("oneLineText(%q) = %q, want %q", in, got, want)
		}
	}
	if isText([]byte("a\x1b[2J")) || !isText([]byte("a\nb\té")) || isText([]byte{0xff}) {
		t.Error("isText misjudges control characters or invalid UTF-8")
	}
	if got := truncateText("abcdefghij", 5); got != "abcd…" {
		t.Errorf("truncateText = %q", got)
	}
}
