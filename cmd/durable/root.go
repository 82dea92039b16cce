package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"github.com/durable-go/durable/migrations"
)

// dsnEnv is the environment variable read when --dsn is not given, so that
// a password need not appear on the command line (or in shell history).
const dsnEnv = "DURABLE_DSN"

// defaultTimeout bounds each database step of a command (see --timeout).
const defaultTimeout = 30 * time.Second

// app holds the global flags and the process's streams; every command reads
// them from here. One app runs one command line.
type app struct {
	dialect string
	dsn     string
	schema  string
	json    bool
	timeout time.Duration

	stdin          io.Reader
	stdout, stderr io.Writer
	// isTerminal reports whether stdin is a terminal, where a confirmation
	// can be asked; tests replace it.
	isTerminal func() bool
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *app {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	a.isTerminal = func() bool {
		f, ok := a.stdin.(*os.File)
		return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
	}
	return a
}

// rootCommand builds the command tree. Each command group lives in a file of
// its own (migrate.go, …) and is added here.
func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "durable",
		Short: "Operate durable's outbox, inbox and dead-letter tables",
		Long: `durable is the command-line tool for durable, the transactional outbox → TCP relay → inbox
library. It migrates durable's schema on Postgres or SQLite, lists, replays and purges the
dead letters of the inbox (--side inbox, the default) and of the outbox (--side outbox), and
reports the outbox and inbox backlogs, pauses and resumes a destination's relays or an inbox
queue on every node, and runs the demo and the benchmark.

The database is chosen with --dsn (or the DURABLE_DSN environment variable):
  - Postgres: a URL (postgres://user:password@host:5432/app?sslmode=disable) or a
    key=value string (host=... dbname=...);
  - SQLite: a file path (./app.db), opened with the settings durable needs, or your own
    modernc.org/sqlite DSN (file:app.db?_pragma=...), used as given.
--dialect is inferred from the DSN when omitted: postgres:// and postgresql:// URLs and
key=value strings are postgres, file: DSNs and plain paths are sqlite.

Errors are one line on stderr, prefixed "durable: ". Exit codes:
  0  success
  1  failure (a migration failed, a confirmation was declined, a timeout)
  2  usage error (unknown command or flag, bad value, --yes missing without a terminal)
  3  database unusable: invalid DSN, DSN and --dialect disagree, unreachable,
     authentication refused, SQLite file missing or not a database
  4  durable schema missing or at the wrong version (run: durable migrate up)`,
		Example: `  export DURABLE_DSN='postgres://app@db:5432/app?sslmode=disable'
  durable migrate up
  durable migrate status --json
  durable migrate up --dsn ./app.db
  durable deadletters list --since 1h
  durable stats --json
  durable pause --destination billing --reason "billing is migrating"`,
		Version:           version(),
		SilenceUsage:      true,
		SilenceErrors:     true,
		Args:              cobra.ArbitraryArgs,
		RunE:              groupRun,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return a.validateGlobals() },
	}
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)

	f := root.PersistentFlags()
	f.StringVar(&a.dialect, "dialect", "", "database dialect: postgres or sqlite (default: inferred from the DSN)")
	f.StringVar(&a.dsn, "dsn", "", "database: Postgres URL or key=value string, SQLite path or file: DSN (default $"+dsnEnv+")")
	f.StringVar(&a.schema, "schema", "", "Postgres schema holding durable's tables (default: the DSN's search_path)")
	f.BoolVar(&a.json, "json", false, "print data as JSON on stdout")
	f.DurationVar(&a.timeout, "timeout", defaultTimeout, "time limit for connecting and for each database step (0: none)")

	root.AddCommand(a.migrateCommand())
	root.AddCommand(a.deadLettersCommand())
	root.AddCommand(a.statsCommand())
	root.AddCommand(a.pauseCommand())
	root.AddCommand(a.resumeCommand())
	root.AddCommand(a.pausesCommand())
	root.AddCommand(a.demoCommand())
	root.AddCommand(a.benchCommand())
	root.AddCommand(a.benchInstanceCommand())
	root.AddCommand(a.consoleCommand())
	return root
}

// groupRun is the RunE of commands that only group others: without
// arguments it prints help; with an unknown subcommand it is a usage error
// (cobra would otherwise print help and exit 0).
func groupRun(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %q?", s[0])
	}
	return usageErrorf("%s", msg)
}

// validateGlobals checks the global flags once the command line is parsed.
func (a *app) validateGlobals() error {
	if a.dsn == "" {
		a.dsn = os.Getenv(dsnEnv)
	}
	switch strings.ToLower(a.dialect) {
	case "":
	case migrations.Postgres, "postgresql":
		a.dialect = migrations.Postgres
	case migrations.SQLite, "sqlite3":
		a.dialect = migrations.SQLite
	default:
		return usageErrorf("--dialect %q: want postgres or sqlite", a.dialect)
	}
	if a.timeout < 0 {
		return usageErrorf("--timeout %s: must not be negative", a.timeout)
	}
	if a.schema != "" {
		if err := validSchemaName(a.schema); err != nil {
			return err
		}
		if a.dialect == migrations.SQLite {
			return usageErrorf("--schema applies to postgres only")
		}
	}
	return nil
}

func validSchemaName(s string) error {
	switch {
	case len(s) > 63:
		return usageErrorf("--schema %q: longer than Postgres's 63-byte limit", s)
	case strings.IndexByte(s, 0) >= 0:
		return usageErrorf("--schema: the name holds a NUL byte")
	}
	return nil
}

// step returns the context for one database step of a command, bounded by
// --timeout. Steps are separate so that time spent at a confirmation
// prompt does not count.
func (a *app) step(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.timeout > 0 {
		return context.WithTimeout(ctx, a.timeout)
	}
	return context.WithCancel(ctx)
}

// wrap classifies the errors of a command's RunE (see classify), so that
// only cobra's own errors reach main unclassified.
func (a *app) wrap(f func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := f(cmd, args); err != nil {
			return a.classify(err)
		}
		return nil
	}
}

// version is the module version the binary was built from.
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
