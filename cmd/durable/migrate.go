package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"github.com/spf13/cobra"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/migrations"
)

func (a *app) migrateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply, roll back, inspect or print durable's schema migrations",
		Long: `Manage durable's schema with goose, as a library: the migrations are embedded in this binary
and their history is kept in durable's own version table, ` + migrations.GooseTable + `, apart
from your application's migrations. Each migration also records itself in
durable_schema_version, the table durable checks at startup.

On Postgres the tables go into the connection's current schema: --schema NAME (or
search_path=NAME in the DSN) keeps durable in a schema of its own.`,
		Example: `  durable migrate up --dsn 'postgres://app@db:5432/app?sslmode=disable'
  durable migrate status --dsn ./app.db
  durable migrate sql --dialect postgres > durable_up.sql`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRun,
	}
	cmd.AddCommand(a.migrateUpCommand(), a.migrateDownCommand(), a.migrateStatusCommand(),
		a.migrateSQLCommand(), a.migrateCheckCommand())
	return cmd
}

func (a *app) migrateUpCommand() *cobra.Command {
	var to int64
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Apply pending migrations (all, or up to --to)",
		Long: `Apply the pending migrations, each in its own transaction, up to the latest or to --to.
A SQLite file that does not exist is created; on Postgres, a schema named by --schema that
does not exist is created. Concurrent runs on one Postgres database wait for each other.`,
		Example: `  durable migrate up --dsn 'postgres://app@db:5432/app?sslmode=disable'
  durable migrate up --dsn 'postgres://app@db:5432/app' --schema durable
  durable migrate up --dsn ./app.db --to 1 --json`,
		Args: cobra.NoArgs,
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("to") && to < 1 {
				return usageErrorf("--to %d: the first migration is 1", to)
			}
			return a.migrateUp(cmd.Context(), to)
		}),
	}
	cmd.Flags().Int64Var(&to, "to", 0, "apply migrations up to and including this version (default: the latest)")
	return cmd
}

func (a *app) migrateDownCommand() *cobra.Command {
	var (
		to       int64
		all, yes bool
	)
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Roll back the latest migration (or down to --to, or --all)",
		Long: `Roll back applied migrations, newest first, each in its own transaction: by default the
latest one; with --to N those above version N; with --all every one.

Rolling back drops durable's tables and every message in them (outbox, inbox, dead
letters). durable asks for confirmation on a terminal; without a terminal (scripts, CI)
it refuses unless --yes is given.`,
		Example: `  durable migrate down --dsn ./app.db
  durable migrate down --dsn ./app.db --all --yes
  durable migrate down --dsn "$DURABLE_DSN" --to 1 --yes --json`,
		Args: cobra.NoArgs,
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			target := int64(-1) // one step
			switch {
			case all:
				target = 0
			case cmd.Flags().Changed("to"):
				if to < 0 {
					return usageErrorf("--to %d: must be 0 or more", to)
				}
				target = to
			}
			return a.migrateDown(cmd.Context(), target, yes)
		}),
	}
	cmd.Flags().Int64Var(&to, "to", 0, "roll back the migrations above this version (0: all)")
	cmd.Flags().BoolVar(&all, "all", false, "roll back every migration")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	cmd.MarkFlagsMutuallyExclusive("to", "all")
	return cmd
}

func (a *app) migrateStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "List migrations: applied (with the time) or pending",
		Long: `List every migration of this build with its state, applied or pending, and when it was
applied (as goose recorded it, UTC). Reading the status changes nothing in the database.`,
		Example: `  durable migrate status --dsn 'postgres://app@db:5432/app'
  durable migrate status --dsn ./app.db --json | jq '.migrations[] | select(.state == "pending")'`,
		Args: cobra.NoArgs,
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			return a.migrateStatus(cmd.Context())
		}),
	}
}

func (a *app) migrateSQLCommand() *cobra.Command {
	var (
		down bool
		only int64
	)
	cmd := &cobra.Command{
		Use:   "sql",
		Short: "Print the migrations' SQL, for applying them with your own tool",
		Long: `Print the SQL of durable's migrations for the dialect, in the order to run them: the up
migrations oldest first, or with --down the down migrations newest first. Each migration
is preceded by a comment naming it; run each one in a transaction of its own. No database
is needed: give --dialect (or a --dsn to infer it from).

Every up migration ends by recording itself in durable_schema_version, which durable checks
at startup, so the schema is recognised whatever tool applies it.`,
		Example: `  durable migrate sql --dialect postgres > durable_up.sql
  durable migrate sql --dialect sqlite --down
  durable migrate sql --dialect postgres --version 1 --json`,
		Args: cobra.NoArgs,
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			return a.migrateSQL(down, only)
		}),
	}
	cmd.Flags().BoolVar(&down, "down", false, "print the down migrations (newest first)")
	cmd.Flags().Int64Var(&only, "version", 0, "print only this migration")
	return cmd
}

func (a *app) migrateCheckCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Exit 0 if the schema is what this build needs, 4 if not",
		Long: `Run the check durable itself runs at startup: the durable schema must be at the version
this build needs. Exit code 0 when it is, 4 when it is missing or at another version (with
the missing migration named), 3 when the database cannot be used. On SQLite the DSN's
connection settings are checked too (WAL, busy timeout, immediate transactions). Use it
in deployment scripts and readiness checks.`,
		Example: `  durable migrate check --dsn "$DURABLE_DSN" || durable migrate up --dsn "$DURABLE_DSN"
  durable migrate check --dsn ./app.db --json`,
		Args: cobra.NoArgs,
		RunE: a.wrap(func(cmd *cobra.Command, _ []string) error {
			return a.migrateCheck(cmd.Context())
		}),
	}
}

// provider returns a goose provider on d with durable's migrations and
// version table. locked adds the Postgres advisory lock that serialises
// concurrent runs (up and down; status reads without waiting).
func (d *database) provider(locked bool) (*goose.Provider, error) {
	fsys, err := migrations.GooseFS(d.dialect)
	if err != nil {
		return nil, err
	}
	gd := goose.DialectSQLite3 // goose's name for SQLite
	opts := []goose.ProviderOption{
		goose.WithTableName(migrations.GooseTable),
		goose.WithDisableGlobalRegistry(true),
	}
	if d.dialect == migrations.Postgres {
		gd = goose.DialectPostgres
		if locked {
			locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(migrations.LockID), lock.WithLockTimeout(1, 3600))
			if err != nil {
				return nil, err
			}
			opts = append(opts, goose.WithSessionLocker(locker))
		}
	}
	return goose.NewProvider(gd, d.db, fsys, opts...)
}

// migrationName is the name of a goose source: "0001_init".
func migrationName(s *goose.Source) string {
	return strings.TrimSuffix(path.Base(s.Path), path.Ext(s.Path))
}

// migrationState is one migration as status reports it.
type migrationState struct {
	Version   int64      `json:"version"`
	Name      string     `json:"name"`
	State     string     `json:"state"`      // "applied" or "pending"
	AppliedAt *time.Time `json:"applied_at"` // null when pending, or applied by another tool
	// By is "another tool" for a migration that durable_schema_version
	// records and goose's table does not yet (see adoptForeignHistory).
	By string `json:"by,omitempty"`
}

// migrationStates reads the state of every migration without writing: when
// goose's version table does not exist yet (goose would create it), every
// migration is pending.
func (d *database) migrationStates(ctx context.Context, p *goose.Provider) ([]migrationState, error) {
	st, err := migrations.Check(ctx, d.db, d.dialect)
	if err != nil {
		return nil, err
	}
	var out []migrationState
	if !st.GooseTableExists {
		for _, s := range p.ListSources() {
			out = append(out, migrationState{Version: s.Version, Name: migrationName(s), State: string(goose.StatePending)})
		}
		return out, nil
	}
	sts, err := p.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", migrations.GooseTable, err)
	}
	for _, st := range sts {
		m := migrationState{Version: st.Source.Version, Name: migrationName(st.Source), State: string(st.State)}
		if st.State == goose.StateApplied {
			t := st.AppliedAt.UTC()
			m.AppliedAt = &t
		}
		out = append(out, m)
	}
	return out, nil
}

// currentVersion is the highest applied version among states, 0 when none.
func currentVersion(states []migrationState) int64 {
	var v int64
	for _, s := range states {
		if s.State == string(goose.StateApplied) {
			v = max(v, s.Version)
		}
	}
	return v
}

func latestVersion(p *goose.Provider) int64 {
	src := p.ListSources()
	if len(src) == 0 {
		return 0
	}
	return src[len(src)-1].Version
}

// adoptForeignHistory prepares goose's run on a database whose durable
// schema was applied by another tool (golang-migrate, or SQL copied into the
// application's migrations): when durable_schema_version records more than
// goose's table does, migrations.Adopt records the rest there (and in
// golang-migrate's table), so that goose does not try to create tables that
// exist. It says so on stderr.
func (a *app) adoptForeignHistory(ctx context.Context, d *database) error {
	st, err := migrations.Check(ctx, d.db, d.dialect)
	if err != nil {
		return err
	}
	gooseV, schemaV := st.GooseVersion, st.Version
	if schemaV <= gooseV {
		return nil
	}
	if _, err := migrations.Adopt(ctx, d.db, d.dialect); err != nil {
		return fmt.Errorf("record the history of another tool: %w", err)
	}
	fmt.Fprintf(a.stderr, "durable: durable_schema_version records version %d but %s recorded %d (applied by golang-migrate or copied SQL); recorded versions up to %d there\n",
		schemaV, migrations.GooseTable, gooseV, schemaV)
	return nil
}

// runResult is what up and down print with --json.
type runResult struct {
	Direction     string          `json:"direction"`
	Database      string          `json:"database"`
	CreatedSchema string          `json:"created_schema,omitempty"`
	Migrations    []migrationDone `json:"migrations"`
	Version       int64           `json:"version"`
	Latest        int64           `json:"latest"`
}

type migrationDone struct {
	Version    int64   `json:"version"`
	Name       string  `json:"name"`
	DurationMS float64 `json:"duration_ms"`
}

// checkTarget refuses a --to beyond the latest migration before anything
// is opened (migrate up would otherwise create a SQLite file first). When the
// dialect cannot be resolved yet, open reports why.
func (a *app) checkTarget(to int64) error {
	if to <= 0 || a.dsn == "" {
		return nil
	}
	dialect, err := a.resolveDialect()
	if err != nil {
		return nil
	}
	ms, err := migrationSQL(dialect, false, 0)
	if err != nil || len(ms) == 0 {
		return err
	}
	if latest := ms[len(ms)-1].Version; to > latest {
		return usageErrorf("--to %d: there is no migration %d; the latest is %d", to, to, latest)
	}
	return nil
}

func (a *app) migrateUp(parent context.Context, to int64) error {
	if err := a.checkTarget(to); err != nil {
		return err
	}
	ctx, cancel := a.step(parent)
	defer cancel()
	d, err := a.open(ctx, openOptions{create: true})
	if err != nil {
		return err
	}
	defer d.Close()
	p, err := d.provider(true)
	if err != nil {
		return err
	}
	latest := latestVersion(p)
	if to > latest {
		return usageErrorf("--to %d: there is no migration %d; the latest is %d", to, to, latest)
	}
	if d.dialect == migrations.Postgres {
		var cur *string
		if err := d.db.QueryRowContext(ctx, "SELECT current_schema()").Scan(&cur); err != nil {
			return fmt.Errorf("read current schema: %w", err)
		}
		if cur == nil {
			return failuref("%s: the search_path names no existing schema; create it, or pass --schema NAME to have migrate up create it", d.target)
		}
	}
	if err := a.adoptForeignHistory(ctx, d); err != nil {
		return err
	}
	var results []*goose.MigrationResult
	if to == 0 {
		results, err = p.Up(ctx)
	} else {
		results, err = p.UpTo(ctx, to)
	}
	if err != nil {
		return migrationError("up", err)
	}
	return a.printRun(ctx, d, p, "up", results)
}

// migrationError reports a failed goose run: which migration failed, and
// which ones were applied before it.
func migrationError(direction string, err error) error {
	var pe *goose.PartialError
	if !errors.As(err, &pe) {
		return err
	}
	done := ""
	if len(pe.Applied) > 0 {
		var names []string
		for _, r := range pe.Applied {
			names = append(names, migrationName(r.Source))
		}
		done = fmt.Sprintf(" (%s before it: %s)", map[string]string{"up": "applied", "down": "rolled back"}[direction], strings.Join(names, ", "))
	}
	return &exitError{code: exitFailure, err: err,
		msg: fmt.Sprintf("migration %s %s failed, rolled back%s: %v", migrationName(pe.Failed.Source), direction, done, pe.Err)}
}

func (a *app) printRun(ctx context.Context, d *database, p *goose.Provider, direction string, results []*goose.MigrationResult) error {
	states, err := d.migrationStates(ctx, p)
	if err != nil {
		return err
	}
	res := runResult{Direction: direction, Database: d.target, Migrations: []migrationDone{},
		Version: currentVersion(states), Latest: latestVersion(p)}
	if d.createdSchema {
		res.CreatedSchema = d.schema
	}
	for _, r := range results {
		res.Migrations = append(res.Migrations, migrationDone{Version: r.Source.Version, Name: migrationName(r.Source),
			DurationMS: float64(r.Duration.Microseconds()) / 1000})
	}
	if a.json {
		return a.printJSON(res)
	}
	verb := map[string]string{"up": "applied", "down": "rolled back"}[direction]
	if d.createdSchema {
		fmt.Fprintf(a.stdout, "created schema %s\n", d.schema)
	}
	if len(results) == 0 {
		fmt.Fprintf(a.stdout, "nothing to do on %s\n", d.target)
	}
	for _, r := range results {
		fmt.Fprintf(a.stdout, "%s %s (%s)\n", verb, migrationName(r.Source), r.Duration.Round(time.Millisecond/10))
	}
	fmt.Fprintln(a.stdout, versionLine(res.Version, res.Latest))
	return nil
}

func versionLine(cur, latest int64) string {
	switch {
	case cur == latest:
		return fmt.Sprintf("durable schema at version %d of %d: up to date", cur, latest)
	case cur < latest:
		return fmt.Sprintf("durable schema at version %d of %d: %d pending", cur, latest, latest-cur)
	default:
		return fmt.Sprintf("durable schema at version %d, newer than this build's %d (which runs on it)", cur, latest)
	}
}

// confirmDown is the refusal when down would need a confirmation that
// cannot be asked.
const confirmDown = "migrate down drops durable's tables and every message in them; pass --yes to confirm (stdin is not a terminal)"

// migrateDown rolls back to target, or one step when target is -1.
func (a *app) migrateDown(parent context.Context, target int64, yes bool) error {
	if !yes && !a.isTerminal() {
		return usageErrorf(confirmDown)
	}
	if err := a.checkTarget(target); err != nil {
		return err
	}
	ctx, cancel := a.step(parent)
	defer cancel()
	d, err := a.open(ctx, openOptions{})
	if err != nil {
		return err
	}
	defer d.Close()
	p, err := d.provider(true)
	if err != nil {
		return err
	}
	if latest := latestVersion(p); target > latest {
		return usageErrorf("--to %d: there is no migration %d; the latest is %d", target, target, latest)
	}
	if err := a.adoptForeignHistory(ctx, d); err != nil {
		return err
	}
	states, err := d.migrationStates(ctx, p)
	if err != nil {
		return err
	}
	var applied []migrationState // newest first
	for _, s := range slices.Backward(states) {
		if s.State == string(goose.StateApplied) {
			applied = append(applied, s)
		}
	}
	if target < 0 { // one step: down to the next applied version below the newest
		target = 0
		if len(applied) > 1 {
			target = applied[1].Version
		}
	}
	var undo []string
	for _, s := range applied {
		if s.Version > target {
			undo = append(undo, s.Name)
		}
	}
	if len(undo) == 0 {
		return a.printRun(ctx, d, p, "down", nil)
	}
	cancel() // the prompt is not a database step
	if !yes {
		// Only rolling back 0001_init drops tables; later migrations
		// change indexes and columns.
		what := "changing durable's schema back"
		if target == 0 {
			what = "dropping durable's tables and every message in them"
		}
		fmt.Fprintf(a.stderr, "This rolls back %s on %s, %s.\nType yes to continue: ",
			strings.Join(undo, ", "), d.target, what)
		line, err := bufio.NewReader(a.stdin).ReadString('\n')
		if answer := strings.ToLower(strings.TrimSpace(line)); answer != "yes" && answer != "y" {
			if err != nil && answer == "" {
				return failuref("no answer on stdin; nothing was rolled back (pass --yes to skip the question)")
			}
			return failuref("not confirmed; nothing was rolled back")
		}
	}
	ctx, cancel = a.step(parent)
	defer cancel()
	results, err := p.DownTo(ctx, target)
	if err != nil {
		return migrationError("down", err)
	}
	return a.printRun(ctx, d, p, "down", results)
}

// statusResult is what status prints with --json.
type statusResult struct {
	Dialect      string           `json:"dialect"`
	Database     string           `json:"database"`
	VersionTable string           `json:"version_table"`
	Version      int64            `json:"version"`
	Latest       int64            `json:"latest"`
	Pending      int              `json:"pending"`
	Migrations   []migrationState `json:"migrations"`
	// SchemaVersion is max(version) of durable_schema_version, what durable
	// checks at startup, whichever tool applied the migrations.
	SchemaVersion int64 `json:"schema_version"`
}

func (a *app) migrateStatus(parent context.Context) error {
	ctx, cancel := a.step(parent)
	defer cancel()
	d, err := a.open(ctx, openOptions{})
	if err != nil {
		return err
	}
	defer d.Close()
	p, err := d.provider(false)
	if err != nil {
		return err
	}
	states, err := d.migrationStates(ctx, p)
	if err != nil {
		return err
	}
	st, err := migrations.Check(ctx, d.db, d.dialect)
	if err != nil {
		return err
	}
	schemaV, at := st.Version, st.AppliedAt
	// Migrations that another tool applied (durable_schema_version records
	// them, goose's table does not) are applied: `migrate up` records them.
	gooseV := currentVersion(states)
	if schemaV > gooseV {
		for i := range states {
			if states[i].Version <= schemaV && states[i].State != string(goose.StateApplied) {
				states[i].State = string(goose.StateApplied)
				states[i].By = "another tool"
				if t, ok := at[states[i].Version]; ok {
					states[i].AppliedAt = &t
				}
			}
		}
	}
	res := statusResult{Dialect: d.dialect, Database: d.target, VersionTable: migrations.GooseTable,
		Version: currentVersion(states), Latest: latestVersion(p), Migrations: states, SchemaVersion: schemaV}
	for _, s := range states {
		if s.State != string(goose.StateApplied) {
			res.Pending++
		}
	}
	if a.json {
		return a.printJSON(res)
	}
	fmt.Fprintf(a.stdout, "%s, version table %s\n\n", d.target, migrations.GooseTable)
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tNAME\tSTATE\tAPPLIED AT")
	for _, s := range states {
		at := "-"
		if s.AppliedAt != nil {
			at = s.AppliedAt.Format("2006-01-02 15:04:05 UTC")
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", s.Version, s.Name, s.State, at)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	fmt.Fprintln(a.stdout, versionLine(res.Version, res.Latest))
	if schemaV > gooseV {
		fmt.Fprintf(a.stdout, "note: versions %d to %d were applied by another tool (golang-migrate or copied SQL) and are not in %s yet; the next `durable migrate up` records them there\n",
			gooseV+1, schemaV, migrations.GooseTable)
	}
	return nil
}

// sqlMigration is one migration as sql prints it with --json.
type sqlMigration struct {
	Version   int64  `json:"version"`
	Name      string `json:"name"`
	Direction string `json:"direction"`
	SQL       string `json:"sql"`
}

// migrationSQL returns the migrations of dialect in the order to run them:
// up oldest first, down newest first; only version only when it is not 0.
// The SQL is that of the golang-migrate files, the source of truth.
func migrationSQL(dialect string, down bool, only int64) ([]sqlMigration, error) {
	fsys, err := migrations.FS(dialect)
	if err != nil {
		return nil, err
	}
	direction, suffix := "up", ".up.sql"
	if down {
		direction, suffix = "down", ".down.sql"
	}
	names, err := fs.Glob(fsys, "*"+suffix)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	if down {
		slices.Reverse(names)
	}
	var out []sqlMigration
	for _, n := range names {
		name := strings.TrimSuffix(n, suffix)
		num, _, _ := strings.Cut(name, "_")
		v, err := strconv.ParseInt(num, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("migration file %s: no version number", n)
		}
		if only != 0 && v != only {
			continue
		}
		b, err := fs.ReadFile(fsys, n)
		if err != nil {
			return nil, err
		}
		out = append(out, sqlMigration{Version: v, Name: name, Direction: direction, SQL: string(b)})
	}
	return out, nil
}

func (a *app) migrateSQL(down bool, only int64) error {
	dialect := a.dialect
	if a.dsn != "" {
		var err error
		if dialect, err = a.resolveDialect(); err != nil {
			return err
		}
	}
	if dialect == "" {
		return usageErrorf("which dialect? pass --dialect postgres or --dialect sqlite")
	}
	ms, err := migrationSQL(dialect, down, only)
	if err != nil {
		return err
	}
	if only != 0 && len(ms) == 0 {
		return usageErrorf("--version %d: there is no migration %d", only, only)
	}
	if a.json {
		return a.printJSON(ms)
	}
	w := bufio.NewWriter(a.stdout)
	for i, m := range ms {
		if i > 0 {
			w.WriteString("\n")
		}
		fmt.Fprintf(w, "-- durable migration %s (%s, %s): run it in one transaction\n", m.Name, m.Direction, dialect)
		w.WriteString(m.SQL)
		if !strings.HasSuffix(m.SQL, "\n") {
			w.WriteString("\n")
		}
	}
	return w.Flush()
}

// checkResult is what check prints with --json when the schema is right.
type checkResult struct {
	Dialect  string `json:"dialect"`
	Database string `json:"database"`
	OK       bool   `json:"ok"`
	Version  int    `json:"version"`
}

func (a *app) migrateCheck(parent context.Context) error {
	ctx, cancel := a.step(parent)
	defer cancel()
	d, err := a.open(ctx, openOptions{})
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.checkSchema(ctx); err != nil {
		return err
	}
	st, err := migrations.Check(ctx, d.db, d.dialect)
	if err != nil {
		return err
	}
	have := st.Version
	if a.json {
		return a.printJSON(checkResult{Dialect: d.dialect, Database: d.target, OK: true, Version: int(have)})
	}
	if have > dialects.SchemaVersion {
		fmt.Fprintf(a.stdout, "%s: durable schema at version %d, newer than this build's %d, which runs on it\n", d.target, have, dialects.SchemaVersion)
		return nil
	}
	fmt.Fprintf(a.stdout, "%s: durable schema at version %d, as this build needs\n", d.target, have)
	return nil
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
