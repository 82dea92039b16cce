package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/spf13/cobra"

	"github.com/durable-go/durable/dialects/dsn"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/demo"
	"github.com/durable-go/durable/migrations"
)

// demoOptions are the demo's flags: the workload's options, and where it
// runs.
type demoOptions struct {
	demo.Options
	dir      string
	postgres string
	keep     bool
}

func (a *app) demoCommand() *cobra.Command {
	o := demoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run two services, orders → billing, through durable and check that nothing is lost or doubled",
		Long: `Run the whole pipeline in one process: two services, orders and billing, each a durable Node
on its own database, connected by real TCP on 127.0.0.1 and authenticated with a shared secret.

orders places N orders from several concurrent goroutines. Each transaction writes a few rows
of its orders table and enqueues one order.placed message per order, in the same transaction.
The relay sends them to billing, whose inbox stores them and runs the handler: it writes an
invoices row in the transaction that marks the message done. A small share of the orders is
poison: their handler always fails, so they are retried with a short backoff and end in
billing's dead letters after --max-attempts attempts.

At the end the demo reads both databases and prints a summary: messages enqueued, delivered
(stored in billing's inbox), handled and dead-lettered; duplicate effects (invoices sharing a
message id) and lost messages (committed orders with neither an invoice nor a dead letter),
which must both be 0; throughput from the first commit to the last handler; and the latency
from commit to handler start (the commit time travels in a message header). The exit code is
0 only when nothing was lost or doubled.

By default both databases are SQLite files in a new temporary folder, kept afterwards for
inspection with the sqlite3 shell (the summary prints the command). --postgres runs the same
exchange on Postgres, in two fresh schemas that are dropped at the end unless --keep.`,
		Example: `  durable demo
  durable demo -n 100000 --enqueuers 8 --dir ./demo
  durable demo --postgres 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable' --json`,
		Args: cobra.NoArgs,
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			for _, f := range []string{"dsn", "schema", "dialect"} {
				if cmd.Flags().Changed(f) {
					return usageErrorf("demo does not take --%s: it uses SQLite files (--dir), or Postgres with --postgres DSN", f)
				}
			}
			if err := o.validate(); err != nil {
				return err
			}
			return a.demo(cmd.Context(), &o)
		}),
	}
	f := cmd.Flags()
	f.IntVarP(&o.Messages, "messages", "n", 10_000, "number of orders, one message each")
	f.StringVar(&o.dir, "dir", "", "folder for the SQLite files orders.db and billing.db (default: a new temporary folder)")
	f.StringVar(&o.postgres, "postgres", "", "run on Postgres at this DSN instead of SQLite, in two fresh schemas")
	f.BoolVar(&o.keep, "keep", false, "Postgres: keep the demo's schemas afterwards (SQLite files are always kept)")
	f.Float64Var(&o.PoisonRate, "poison-rate", 0.005, "share of orders whose handler always fails (0 to 1), spread evenly")
	f.IntVar(&o.Enqueuers, "enqueuers", 4, "goroutines placing orders concurrently")
	f.IntVar(&o.TxSize, "tx-size", 10, "orders (and messages) per transaction")
	f.IntVar(&o.MaxAttempts, "max-attempts", 3, "attempts of a failing message before it is dead-lettered")
	f.DurationVar(&o.MaxTime, "max-time", 5*time.Minute, "give up when the exchange takes longer than this")
	f.BoolVarP(&o.Verbose, "verbose", "v", false, "log the nodes' events at Info level (default: warnings only)")
	cmd.MarkFlagsMutuallyExclusive("dir", "postgres")
	return cmd
}

func (o *demoOptions) validate() error {
	switch {
	case o.Messages < 1:
		return usageErrorf("-n %d: at least one message", o.Messages)
	case o.PoisonRate < 0 || o.PoisonRate > 1:
		return usageErrorf("--poison-rate %g: want a share between 0 and 1", o.PoisonRate)
	case o.Enqueuers < 1:
		return usageErrorf("--enqueuers %d: at least 1", o.Enqueuers)
	case o.TxSize < 1:
		return usageErrorf("--tx-size %d: at least 1", o.TxSize)
	case o.MaxAttempts < 1:
		return usageErrorf("--max-attempts %d: at least 1", o.MaxAttempts)
	case o.MaxTime <= 0:
		return usageErrorf("--max-time %s: must be positive", o.MaxTime)
	case o.keep && o.postgres == "":
		return usageErrorf("--keep applies to --postgres; SQLite files are always kept")
	}
	return nil
}

// demo sets up the two databases, runs the exchange and prints the summary.
func (a *app) demo(ctx context.Context, o *demoOptions) error {
	progress := demo.NewProgress(a.stderr)
	var (
		s   *demo.Summary
		err error
	)
	if o.postgres != "" {
		s, err = a.demoPostgres(ctx, o, progress)
	} else {
		s, err = a.demoSQLite(ctx, o, progress)
	}
	progress.Clear()
	if err != nil {
		return err
	}
	if a.json {
		if err := a.printJSON(s); err != nil {
			return err
		}
	} else {
		s.Print(a.stdout)
	}
	switch {
	case s.TimedOut:
		return failuref("demo failed: the exchange did not finish within --max-time %s (%d messages not handled nor dead-lettered)", o.MaxTime, s.Lost)
	case !s.OK:
		return failuref("demo failed: %d lost, %d duplicate effects, %d unexpected effects", s.Lost, s.DuplicateEffects, s.UnexpectedEffects)
	}
	return nil
}

// demoSQLite runs the demo on two SQLite files, migrated with goose as
// `durable migrate up` does.
func (a *app) demoSQLite(ctx context.Context, o *demoOptions, p *demo.Progress) (*demo.Summary, error) {
	dir := o.dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "durable-demo-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, failuref("--dir %s: %v", dir, err)
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	var paths [2]string
	for i, name := range []string{"orders.db", "billing.db"} {
		paths[i] = filepath.Join(dir, name)
		if _, err := os.Stat(paths[i]); !errors.Is(err, fs.ErrNotExist) {
			return nil, usageErrorf("%s exists already: the demo starts from empty databases; remove it or pick another --dir", paths[i])
		}
	}
	var dbs [2]*database
	defer func() {
		for _, d := range dbs {
			if d != nil {
				d.Close()
			}
		}
	}()
	var dls [2]*sqlite.Dialect
	for i, path := range paths {
		d, err := a.demoMigrate(ctx, path, "")
		if err != nil {
			return nil, err
		}
		dbs[i] = d
		if dls[i], err = sqlite.New(d.db, nil); err != nil {
			return nil, err
		}
	}
	b := &demo.Backend[*sql.Tx]{
		Kind:    migrations.SQLite,
		Orders:  dls[0],
		Billing: dls[1],
		Reads:   [2]*sql.DB{dbs[0].db, dbs[1].db},
		Exec: func(ctx context.Context, tx *sql.Tx, q string, args ...any) error {
			_, err := tx.ExecContext(ctx, q, args...)
			return err
		},
		Where: fmt.Sprintf("SQLite files in %s", dir),
		Files: paths[:],
		Inspect: fmt.Sprintf(`sqlite3 -header -column %s "SELECT id, topic, reason, attempts, last_error, failed_at FROM durable_dead_letters ORDER BY failed_at"`,
			shellQuote(paths[1])),
	}
	return demo.Run(ctx, &o.Options, b, p)
}

// demoPostgres runs the demo in two fresh schemas of the database at
// o.postgres, migrated with goose as `durable migrate up --schema` does,
// and drops them afterwards unless --keep.
func (a *app) demoPostgres(ctx context.Context, o *demoOptions, p *demo.Progress) (_ *demo.Summary, err error) {
	if dsn.KindOf(o.postgres).Dialect() != migrations.Postgres {
		return nil, usageErrorf("--postgres wants a postgres:// URL or a key=value string")
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	run := "durable_demo_" + hex.EncodeToString(suffix)
	schemas := [2]string{run + "_orders", run + "_billing"}

	var dbs [2]*database
	var pools [2]*pgxpool.Pool
	defer func() {
		for _, pool := range pools {
			if pool != nil {
				pool.Close()
			}
		}
		if !o.keep {
			for i, d := range dbs {
				if d == nil || !d.createdSchema {
					continue
				}
				cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, derr := d.db.ExecContext(cctx, "DROP SCHEMA "+pgx.Identifier{schemas[i]}.Sanitize()+" CASCADE")
				cancel()
				if derr != nil && err == nil {
					err = fmt.Errorf("drop the demo's schema %s: %w", schemas[i], derr)
				}
			}
		}
		for _, d := range dbs {
			if d != nil {
				d.Close()
			}
		}
	}()
	for i, schema := range schemas {
		if dbs[i], err = a.demoMigrate(ctx, o.postgres, schema); err != nil {
			return nil, err
		}
	}
	// The workload's pools: the migration connection holds four
	// connections at most; the demo's enqueuers, relay, workers and
	// deliveries need more.
	sizes := [2]int32{int32(o.Enqueuers) + 4, 8}
	for i, schema := range schemas {
		cfg, err := pgxpool.ParseConfig(o.postgres)
		if err != nil {
			return nil, databaseErrorf(err, "invalid postgres DSN: %v", err)
		}
		cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{schema}.Sanitize()
		cfg.MaxConns = sizes[i]
		if pools[i], err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
			return nil, databaseErrorf(err, "invalid postgres DSN: %v", err)
		}
	}
	where := fmt.Sprintf("Postgres %s, schemas %s and %s", strings.TrimPrefix(dbs[0].target, "postgres "), schemas[0], schemas[1])
	where = strings.Replace(where, " (schema "+schemas[0]+")", "", 1)
	var dls [2]*postgres.Dialect
	for i, pool := range pools {
		if dls[i], err = postgres.New(pool, nil); err != nil {
			return nil, err
		}
	}
	b := &demo.Backend[pgx.Tx]{
		Kind:    migrations.Postgres,
		Orders:  dls[0],
		Billing: dls[1],
		Reads:   [2]*sql.DB{stdlib.OpenDBFromPool(pools[0]), stdlib.OpenDBFromPool(pools[1])},
		Exec: func(ctx context.Context, tx pgx.Tx, q string, args ...any) error {
			_, err := tx.Exec(ctx, q, args...)
			return err
		},
		Where:   where,
		Schemas: schemas[:],
	}
	defer func() {
		for _, db := range b.Reads {
			_ = db.Close()
		}
	}()
	if o.keep {
		b.Inspect = fmt.Sprintf(`psql %s -c "SELECT id, topic, reason, attempts, last_error, failed_at FROM %s.durable_dead_letters ORDER BY failed_at"`,
			shellQuote(redactDSN(o.postgres)), schemas[1])
	}
	return demo.Run(ctx, &o.Options, b, p)
}

// demoMigrate opens one of the demo's databases through the CLI's own open
// (with create, as migrate up) and applies durable's migrations with goose.
// schema is empty for SQLite.
func (a *app) demoMigrate(ctx context.Context, dsn, schema string) (*database, error) {
	sub := *a
	sub.dsn, sub.schema, sub.dialect = dsn, schema, ""
	sctx, cancel := sub.step(ctx)
	defer cancel()
	d, err := sub.open(sctx, openOptions{create: true})
	if err != nil {
		return nil, err
	}
	p, err := d.provider(d.dialect == migrations.Postgres)
	if err == nil {
		_, err = p.Up(sctx)
		err = migrationError("up", err)
	}
	if err != nil {
		// Close, but keep a schema it created so that the caller drops it.
		if d.createdSchema {
			return d, err
		}
		d.Close()
		return nil, err
	}
	return d, nil
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+:@%=,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// redactDSN hides the password of a Postgres URL; a key=value string that
// carries one is shown as "$DSN".
func redactDSN(s string) string {
	if dsn.KindOf(s) == dsn.PostgresURL {
		if u, err := url.Parse(s); err == nil {
			return u.Redacted()
		}
		return "$DSN"
	}
	if strings.Contains(strings.ToLower(s), "password=") {
		return "$DSN"
	}
	return s
}
