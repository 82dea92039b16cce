package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	moderncsqlite "modernc.org/sqlite"

	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/migrations"
)

// database is the open database named by the global flags. Postgres is a
// pgx pool with a database/sql view of it (for goose); SQLite is a
// modernc.org/sqlite *sql.DB.
type database struct {
	dialect string // migrations.Postgres or migrations.SQLite
	// target names the database for messages, without credentials:
	// "postgres 127.0.0.1:5432/app (schema durable)", "sqlite /abs/app.db".
	target string
	db     *sql.DB
	pool   *pgxpool.Pool // postgres only
	schema string        // --schema, postgres only
	// createdSchema is set when open created the --schema schema.
	createdSchema bool
}

// Close releases the database's connections.
func (d *database) Close() {
	if d.db != nil {
		_ = d.db.Close()
	}
	if d.pool != nil {
		d.pool.Close()
	}
}

// openOptions says what a command needs from open.
type openOptions struct {
	// create lets a missing SQLite file, or a Postgres schema named by
	// --schema, be created (migrate up). Other commands report them missing.
	create bool
}

// resolveDialect returns the dialect from --dialect or, when it is empty,
// from the DSN. An explicit --dialect that contradicts the DSN is an error
// (exit 3), caught before anything is opened: a postgres:// URL handed to
// SQLite would otherwise become a file of that name.
func (a *app) resolveDialect() (string, error) {
	kind := dsnKind(a.dsn)
	if kind == kindBadPostgresURL {
		// Read as a path it would be a SQLite file that does not exist.
		return "", databaseErrorf(nil, "the DSN is not understood: it begins like a Postgres URL (%s) but not with postgres:// or postgresql://", badURLPrefix(a.dsn))
	}
	switch a.dialect {
	case "":
		switch kind {
		case kindPostgresURL, kindKeyValue:
			return migrations.Postgres, nil
		case kindSQLiteURI, kindPath:
			return migrations.SQLite, nil
		default:
			return "", databaseErrorf(nil, "unsupported DSN %s; durable speaks postgres:// URLs and SQLite files", schemeOf(a.dsn))
		}
	case migrations.SQLite:
		switch {
		case kind == kindKeyValue && isLibpqKeyValue(a.dsn):
			return "", databaseErrorf(nil, "--dialect sqlite does not match the DSN, a Postgres key=value string; pass --dialect postgres, or a SQLite file path")
		case kind == kindPostgresURL:
			return "", databaseErrorf(nil, "--dialect sqlite does not match the DSN, a postgres:// URL; pass --dialect postgres, or a SQLite file path")
		case kind == kindOtherURL:
			return "", databaseErrorf(nil, "--dialect sqlite does not match the DSN %s; pass a SQLite file path or a file: DSN", schemeOf(a.dsn))
		}
	case migrations.Postgres:
		switch kind {
		case kindSQLiteURI, kindPath:
			return "", databaseErrorf(nil, "--dialect postgres does not match the DSN, a SQLite file path; pass --dialect sqlite, or a postgres:// URL")
		}
	}
	return a.dialect, nil
}

// Kinds of DSN, told apart by their form alone.
const (
	kindPath           = iota // ./app.db: SQLite
	kindSQLiteURI             // file:app.db?...: SQLite
	kindPostgresURL           // postgres:// or postgresql://
	kindKeyValue              // host=db dbname=app: Postgres
	kindOtherURL              // mysql://...: neither
	kindBadPostgresURL        // postgres//..., postgres:/...: a typo, not a path
)

func dsnKind(dsn string) int {
	lower := strings.ToLower(dsn)
	switch {
	case strings.HasPrefix(lower, "postgres://"), strings.HasPrefix(lower, "postgresql://"):
		return kindPostgresURL
	case strings.HasPrefix(lower, "file:"):
		return kindSQLiteURI
	case looksLikeBadPostgresURL(lower):
		return kindBadPostgresURL
	case strings.Contains(dsn, "://"):
		return kindOtherURL
	case isKeyValue(dsn):
		return kindKeyValue
	default:
		return kindPath
	}
}

// isKeyValue reports whether dsn reads as a libpq keyword/value string:
// its first word is keyword=value (a SQLite path with '=' in the first word
// is possible, but then --dialect sqlite says so).
func isKeyValue(dsn string) bool {
	first, _, _ := strings.Cut(strings.TrimSpace(dsn), " ")
	k, _, ok := strings.Cut(first, "=")
	if !ok || k == "" || strings.ContainsAny(k, `/\.?`) {
		return false
	}
	return true
}

// isLibpqKeyValue reports whether the first keyword of a key=value DSN is
// one of libpq's common connection keywords.
func isLibpqKeyValue(dsn string) bool {
	first, _, _ := strings.Cut(strings.TrimSpace(dsn), " ")
	k, _, _ := strings.Cut(first, "=")
	switch strings.ToLower(k) {
	case "host", "hostaddr", "port", "dbname", "user", "password", "sslmode", "connect_timeout",
		"application_name", "options", "service", "target_session_attrs", "search_path":
		return true
	}
	return false
}

// looksLikeBadPostgresURL reports whether lower (a lower-cased DSN) starts
// with a Postgres scheme name followed by ':' or '/' but not by "://": a
// mistyped URL such as postgres//host/db or postgres:/host/db.
func looksLikeBadPostgresURL(lower string) bool {
	for _, scheme := range []string{"postgresql", "postgres"} {
		if rest, ok := strings.CutPrefix(lower, scheme); ok {
			return rest != "" && (rest[0] == ':' || rest[0] == '/') && !strings.HasPrefix(rest, "://")
		}
	}
	return false
}

// badURLPrefix is the beginning of a mistyped Postgres URL, up to its third
// character after the scheme name, without what follows (a password may).
func badURLPrefix(dsn string) string {
	n := len("postgres")
	if strings.HasPrefix(strings.ToLower(dsn), "postgresql") {
		n = len("postgresql")
	}
	end := n
	for end < len(dsn) && end < n+3 && (dsn[end] == ':' || dsn[end] == '/') {
		end++
	}
	return dsn[:end] + "..."
}

func schemeOf(dsn string) string {
	if s, _, ok := strings.Cut(dsn, "://"); ok {
		return s + "://..."
	}
	return "(unrecognised)"
}

// open connects to the database named by the flags and checks that it
// answers. Errors are classified: a bad or mismatched DSN, an unreachable
// server, a missing or foreign SQLite file all exit with code 3.
func (a *app) open(ctx context.Context, o openOptions) (*database, error) {
	if a.dsn == "" {
		return nil, usageErrorf("no database given: pass --dsn, or set %s", dsnEnv)
	}
	dialect, err := a.resolveDialect()
	if err != nil {
		return nil, err
	}
	if dialect == migrations.SQLite {
		return a.openSQLite(ctx, o)
	}
	return a.openPostgres(ctx, o)
}

func (a *app) openPostgres(ctx context.Context, o openOptions) (*database, error) {
	cfg, err := pgxpool.ParseConfig(a.dsn)
	if err != nil {
		return nil, databaseErrorf(err, "invalid postgres DSN: %v", err)
	}
	params := cfg.ConnConfig.RuntimeParams
	if a.schema != "" {
		params["search_path"] = pgx.Identifier{a.schema}.Sanitize()
	}
	hasTZ := false
	for k := range params {
		hasTZ = hasTZ || strings.EqualFold(k, "timezone")
	}
	if !hasTZ {
		// goose stamps its version table with now() in a timestamp column
		// without time zone: in UTC, its "applied at" reads unambiguously.
		params["timezone"] = "UTC"
	}
	cfg.MaxConns = 4
	cfg.MinConns = 0

	d := &database{dialect: migrations.Postgres, schema: a.schema, target: postgresTarget(cfg.ConnConfig, a.schema)}
	d.pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, databaseErrorf(err, "invalid postgres DSN: %v", err)
	}
	if err := d.pool.Ping(ctx); err != nil {
		d.Close()
		return nil, a.connectError(d.target, err)
	}
	d.db = stdlib.OpenDBFromPool(d.pool)
	if a.schema != "" && o.create {
		if d.createdSchema, err = d.ensurePostgresSchema(ctx); err != nil {
			d.Close()
			return nil, err
		}
	}
	return d, nil
}

// postgresTarget describes a Postgres database for messages, without the
// password.
func postgresTarget(c *pgx.ConnConfig, schema string) string {
	host := c.Host
	if !strings.HasPrefix(host, "/") {
		host = net.JoinHostPort(host, strconv.Itoa(int(c.Port)))
	}
	s := fmt.Sprintf("postgres %s/%s", host, c.Database)
	if schema != "" {
		s += fmt.Sprintf(" (schema %s)", schema)
	} else if sp := c.RuntimeParams["search_path"]; sp != "" {
		s += fmt.Sprintf(" (search_path %s)", sp)
	}
	return s
}

// connectError explains why the server did not answer, in one line.
func (a *app) connectError(target string, err error) error {
	var (
		pgErr   *pgconn.PgError
		opErr   *net.OpError
		connErr *pgconn.ConnectError
		msg     string
	)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		msg = fmt.Sprintf("no answer within %s (--timeout)", a.timeout)
	case errors.Is(err, context.Canceled):
		msg = "interrupted"
	case errors.As(err, &pgErr):
		msg = pgErr.Error()
	case errors.As(err, &opErr):
		msg = opErr.Error()
	case errors.As(err, &connErr) && errors.Unwrap(connErr) != nil:
		// The attempts without pgconn's "failed to connect to `user=…`"
		// prefix: the target already says where.
		msg = errors.Unwrap(connErr).Error()
	default:
		msg = err.Error()
	}
	return databaseErrorf(err, "cannot connect to %s: %s", target, msg)
}

// ensurePostgresSchema creates the schema named by --schema when it does not
// exist yet, for migrate up. It checks first so that a user without the
// CREATE privilege on the database can still migrate an existing schema.
func (d *database) ensurePostgresSchema(ctx context.Context) (created bool, err error) {
	var exists bool
	if err := d.db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)`, d.schema).Scan(&exists); err != nil {
		return false, fmt.Errorf("look up schema %s: %w", d.schema, err)
	}
	if exists {
		return false, nil
	}
	if _, err := d.db.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{d.schema}.Sanitize()); err != nil {
		return false, fmt.Errorf("create schema %s: %w", d.schema, err)
	}
	return true, nil
}

// SQLite result codes read from driver errors.
const (
	sqliteCantOpen = 14 // SQLITE_CANTOPEN
	sqliteNotADB   = 26 // SQLITE_NOTADB
)

func (a *app) openSQLite(ctx context.Context, o openOptions) (*database, error) {
	dsn := a.dsn
	path, memory, own := sqlitePath(dsn)
	if !own {
		// A plain path: open it with the settings durable's dialect needs.
		dsn = sqlite.DSN(path)
	}
	d := &database{dialect: migrations.SQLite, target: "sqlite " + path}
	if !memory {
		if abs, err := filepath.Abs(path); err == nil {
			path = abs
			d.target = "sqlite " + abs
		}
		st, err := os.Stat(path)
		switch {
		case errors.Is(err, fs.ErrNotExist) && !o.create:
			return nil, databaseErrorf(err, "sqlite database %s does not exist (durable migrate up creates it)", path)
		case errors.Is(err, fs.ErrNotExist):
			if _, err := os.Stat(filepath.Dir(path)); err != nil {
				return nil, databaseErrorf(err, "cannot create sqlite database %s: directory %s does not exist", path, filepath.Dir(path))
			}
		case err != nil:
			return nil, databaseErrorf(err, "cannot open sqlite database %s: %v", path, err)
		case st.IsDir():
			return nil, databaseErrorf(nil, "cannot open sqlite database %s: it is a directory", path)
		}
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, databaseErrorf(err, "invalid sqlite DSN: %v", err)
	}
	// SQLite has one writer; one connection keeps this process from racing
	// itself (sqlite.New, where used, sets the same).
	db.SetMaxOpenConns(1)
	d.db = db
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master").Scan(&n); err != nil {
		d.Close()
		var se *moderncsqlite.Error
		switch {
		case errors.As(err, &se) && se.Code()&0xff == sqliteNotADB:
			return nil, databaseErrorf(err, "%s is not a SQLite database", path)
		case errors.As(err, &se) && se.Code()&0xff == sqliteCantOpen:
			return nil, databaseErrorf(err, "cannot open sqlite database %s: %v", path, err)
		case errors.Is(err, context.DeadlineExceeded):
			return nil, databaseErrorf(err, "cannot open sqlite database %s: no answer within %s (--timeout; is another process holding a lock?)", path, a.timeout)
		}
		return nil, databaseErrorf(err, "cannot open sqlite database %s: %v", path, err)
	}
	return d, nil
}

// sqlitePath returns the file a SQLite DSN names, whether it is an
// in-memory database, and whether the DSN is the user's own (a file: URI or
// a path with a query string) rather than a plain path.
func sqlitePath(dsn string) (path string, memory, own bool) {
	if !strings.HasPrefix(strings.ToLower(dsn), "file:") {
		p, query, hasQuery := strings.Cut(dsn, "?")
		return p, p == ":memory:" || strings.Contains(query, "mode=memory"), hasQuery
	}
	rest := dsn[len("file:"):]
	rest, query, _ := strings.Cut(rest, "?")
	if strings.HasPrefix(rest, "//") { // file://authority/path
		rest = rest[2:]
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			rest = rest[i:]
		} else {
			rest = ""
		}
	}
	if p, err := url.PathUnescape(rest); err == nil {
		rest = p
	}
	return rest, rest == ":memory:" || rest == "" || strings.Contains(query, "mode=memory"), true
}

// checkSchema runs the dialect's own startup check: the durable schema must
// be at the version this build needs. A *dialects.SchemaError exits with
// code 4; a SQLite DSN without durable's settings with code 3.
func (d *database) checkSchema(ctx context.Context) error {
	switch d.dialect {
	case migrations.Postgres:
		dl, err := postgres.New(d.pool, &postgres.Config{Schema: d.schema})
		if err != nil {
			return err
		}
		return dl.CheckSchema(ctx)
	default:
		dl, err := sqlite.New(d.db, nil)
		if err != nil {
			return err
		}
		return dl.CheckSchema(ctx)
	}
}

// tableExists reports whether the current schema (Postgres) or the main
// database (SQLite) holds a table of that name, without creating anything.
func (d *database) tableExists(ctx context.Context, name string) (bool, error) {
	q := `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = $1)`
	if d.dialect == migrations.SQLite {
		q = `SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?)`
	}
	var ok bool
	if err := d.db.QueryRowContext(ctx, q, name).Scan(&ok); err != nil {
		return false, fmt.Errorf("look up table %s: %w", name, err)
	}
	return ok, nil
}

// maxVersion returns max(column) of table, 0 when the table is missing or
// empty.
func (d *database) maxVersion(ctx context.Context, table, column string) (int64, error) {
	ok, err := d.tableExists(ctx, table)
	if err != nil || !ok {
		return 0, err
	}
	var v sql.NullInt64
	if err := d.db.QueryRowContext(ctx, fmt.Sprintf("SELECT max(%s) FROM %s", column, table)).Scan(&v); err != nil {
		return 0, fmt.Errorf("read %s: %w", table, err)
	}
	return v.Int64, nil
}
