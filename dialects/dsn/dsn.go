// Package dsn opens durable's database from a connection string, as the
// durable command does with --dsn: it tells a Postgres DSN (a postgres://
// URL or a libpq key=value string) from a SQLite one (a file path or a
// file: URI), opens the database, checks that it answers, and builds the
// dialect on it for tools (Admin). A DSN it does not understand is an error
// that says why, before anything is opened: a mistyped postgres URL handed
// to SQLite would otherwise become a file of that name.
//
//	db, err := dsn.Open(ctx, os.Getenv("DURABLE_DSN"), nil)
//	if err != nil {
//		return err
//	}
//	defer db.Close()
//	d, err := db.Admin()
//	...
//	store, err := deadletter.New(d, nil)
//
// Services that enqueue and handle messages build their dialect from their
// own pool or *sql.DB (postgres.New, sqlite.New), with the transaction type
// their code uses; this package is for tools that only inspect and operate.
// It depends on no migration tool.
package dsn

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

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/migrations"
)

// Dialect names, as Config.Dialect and DB.Dialect give them (the same as
// package migrations').
const (
	Postgres = migrations.Postgres
	SQLite   = migrations.SQLite
)

// Kind is the form of a DSN, told by its form alone.
type Kind int

// Kinds of DSN.
const (
	Path           Kind = iota // ./app.db: SQLite
	SQLiteURI                  // file:app.db?...: SQLite
	PostgresURL                // postgres:// or postgresql://
	KeyValue                   // host=db dbname=app: Postgres
	OtherURL                   // mysql://...: neither
	BadPostgresURL             // postgres//..., postgres:/...: a typo, not a path
)

// Dialect is the dialect a DSN of kind k is for: Postgres, SQLite, or ""
// for OtherURL and BadPostgresURL.
func (k Kind) Dialect() string {
	switch k {
	case Path, SQLiteURI:
		return SQLite
	case PostgresURL, KeyValue:
		return Postgres
	}
	return ""
}

// String describes the kind, as error messages name it.
func (k Kind) String() string {
	switch k {
	case Path:
		return "a SQLite file path"
	case SQLiteURI:
		return "a SQLite file: URI"
	case PostgresURL:
		return "a postgres:// URL"
	case KeyValue:
		return "a Postgres key=value string"
	case OtherURL:
		return "a URL of another database"
	case BadPostgresURL:
		return "a mistyped Postgres URL"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// KindOf classifies dsn by its form.
func KindOf(dsn string) Kind {
	lower := strings.ToLower(dsn)
	switch {
	case strings.HasPrefix(lower, "postgres://"), strings.HasPrefix(lower, "postgresql://"):
		return PostgresURL
	case strings.HasPrefix(lower, "file:"):
		return SQLiteURI
	case looksLikeBadPostgresURL(lower):
		return BadPostgresURL
	case strings.Contains(dsn, "://"):
		return OtherURL
	case isKeyValue(dsn):
		return KeyValue
	default:
		return Path
	}
}

// isKeyValue reports whether dsn reads as a libpq keyword/value string:
// its first word is keyword=value (a SQLite path with '=' in the first word
// is possible, but then Config.Dialect SQLite says so).
func isKeyValue(dsn string) bool {
	first, _, _ := strings.Cut(strings.TrimSpace(dsn), " ")
	k, _, ok := strings.Cut(first, "=")
	if !ok || k == "" || strings.ContainsAny(k, `/\.?`) {
		return false
	}
	return true
}

// IsLibpqKeyValue reports whether the first keyword of a key=value DSN is
// one of libpq's common connection keywords: such a DSN is not a SQLite
// file even when the dialect asked for is SQLite.
func IsLibpqKeyValue(dsn string) bool {
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

// Scheme is the scheme of a URL DSN followed by "://...", without the
// rest (which may hold a password), or "(unrecognised)".
func Scheme(dsn string) string {
	if s, _, ok := strings.Cut(dsn, "://"); ok {
		return s + "://..."
	}
	return "(unrecognised)"
}

// ErrUnsupported is matched by the error of a DSN that is neither
// Postgres's nor SQLite's, or a mistyped Postgres URL.
var ErrUnsupported = errors.New("durable/dsn: DSN not understood")

// unsupportedError is an error matching ErrUnsupported, with its own
// message.
type unsupportedError struct{ msg string }

func (e *unsupportedError) Error() string        { return e.msg }
func (e *unsupportedError) Is(target error) bool { return target == ErrUnsupported }

func unsupported(format string, args ...any) error {
	return &unsupportedError{msg: fmt.Sprintf(format, args...)}
}

// MismatchError is the error of a DSN that is not of the dialect asked for
// (Config.Dialect).
type MismatchError struct {
	Dialect string // the dialect asked for
	Kind    Kind   // the DSN's
	Scheme  string // the DSN's scheme (see Scheme), for an OtherURL
}

func (e *MismatchError) Error() string {
	if e.Kind == OtherURL {
		return fmt.Sprintf("dialect %s does not match the DSN %s", e.Dialect, e.Scheme)
	}
	return fmt.Sprintf("dialect %s does not match the DSN, %s", e.Dialect, e.Kind)
}

// Dialect returns the dialect of dsn: want when it is set and the DSN can
// be of it, otherwise the one its form says. A DSN of another database, or
// a mistyped Postgres URL, gives an error matching ErrUnsupported; want
// contradicting the DSN a *MismatchError. An unknown want is returned as
// is, for Open to refuse.
func Dialect(dsn, want string) (string, error) {
	kind := KindOf(dsn)
	if kind == BadPostgresURL {
		// Read as a path it would be a SQLite file that does not exist.
		return "", unsupported("the DSN is not understood: it begins like a Postgres URL (%s) but not with postgres:// or postgresql://", badURLPrefix(dsn))
	}
	switch want {
	case "":
		if d := kind.Dialect(); d != "" {
			return d, nil
		}
		return "", unsupported("unsupported DSN %s; durable speaks postgres:// URLs and SQLite files", Scheme(dsn))
	case SQLite:
		if (kind == KeyValue && IsLibpqKeyValue(dsn)) || kind == PostgresURL || kind == OtherURL {
			return "", &MismatchError{Dialect: want, Kind: kind, Scheme: Scheme(dsn)}
		}
	case Postgres:
		if kind == SQLiteURI || kind == Path {
			return "", &MismatchError{Dialect: want, Kind: kind, Scheme: Scheme(dsn)}
		}
	}
	return want, nil
}

// Config says how Open opens a database. A nil *Config is the zero value.
type Config struct {
	// Dialect is Postgres or SQLite; empty: the one the DSN's form says.
	Dialect string
	// Schema (Postgres) is the schema durable's tables are in: Open puts
	// it first in the search_path and Admin passes it to postgres.Config.Schema.
	// Empty: the DSN's search_path.
	Schema string
	// Create lets Open create a missing SQLite file (its directory must
	// exist) or a missing Postgres Schema. Without it they are errors
	// (ErrNotExist for the file).
	Create bool
	// MaxConns bounds the Postgres pool; 0: pgxpool's default.
	MaxConns int32
	// RuntimeParams (Postgres) are session parameters set unless the DSN
	// sets them (compared without case), such as {"timezone": "UTC"}.
	RuntimeParams map[string]string
}

// DB is a database Open opened. Close releases it.
type DB struct {
	// Dialect is Postgres or SQLite.
	Dialect string
	// Target names the database for messages, without credentials:
	// "postgres 127.0.0.1:5432/app (schema durable)", "sqlite /abs/app.db".
	Target string
	// SQL is a database/sql view of the database: pgx's stdlib driver on
	// Pool for Postgres, modernc.org/sqlite with one connection for SQLite
	// (SQLite has one writer: one connection keeps a tool from racing
	// itself).
	SQL *sql.DB
	// Pool is the pgx pool (Postgres only).
	Pool *pgxpool.Pool
	// Schema is Config.Schema (Postgres only).
	Schema string
	// CreatedSchema is set when Open created Schema (Config.Create).
	CreatedSchema bool
}

// Close releases the database's connections.
func (db *DB) Close() {
	if db.SQL != nil {
		_ = db.SQL.Close()
	}
	if db.Pool != nil {
		db.Pool.Close()
	}
}

// Admin is what tools use of a dialect, whatever its transaction type: its
// name, the schema check, the stats of both sides, the dead letters (for
// package deadletter), the listings of the outbox and the inbox (for the
// console) and the operators' part (pauses, audit, throughput).
type Admin interface {
	Name() string
	CheckSchema(ctx context.Context) error
	OutboxStats(ctx context.Context) ([]dialects.OutboxStats, error)
	InboxStats(ctx context.Context) (dialects.InboxStats, error)
	dialects.DeadLetterStore
	// ListOutbox and ListInbox serve the console's pending and in-flight
	// lists (dialects.Inspector).
	ListOutbox(ctx context.Context, q dialects.OutboxQuery) ([]dialects.OutboxRow, error)
	ListInbox(ctx context.Context, q dialects.InboxQuery) ([]dialects.InboxRow, error)
	dialects.Controller
}

// Admin builds the dialect on db: postgres.New on Pool (with
// postgres.Config.Schema set to Schema) or sqlite.New on SQL, which refuses
// a SQLite DSN without durable's settings (*sqlite.DSNError). It does not
// check the schema.
func (db *DB) Admin() (Admin, error) {
	if db.Dialect == Postgres {
		d, err := postgres.New(db.Pool, &postgres.Config{Schema: db.Schema})
		if err != nil {
			return nil, err
		}
		return d, nil
	}
	d, err := sqlite.New(db.SQL, nil)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// ErrNotExist is matched by the error of a SQLite file that does not exist
// when Config.Create is not set.
var ErrNotExist = errors.New("durable/dsn: database does not exist")

// Error is the error of a database Open could not open: an invalid DSN, a
// server that does not answer, a SQLite file that is missing, a directory,
// or not a database. Its message names the database without credentials.
type Error struct {
	Dialect string // Postgres or SQLite
	Target  string // as DB.Target names it; empty for an invalid DSN
	Msg     string // the whole message
	Err     error  // the cause, if any
}

func (e *Error) Error() string { return e.Msg }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Open opens the database dsn names and checks that it answers. cfg may be
// nil. Errors: ErrUnsupported or *MismatchError for a DSN of no dialect or
// of another than cfg.Dialect, *Error for a database that cannot be opened
// (wrapping the driver's error, context.DeadlineExceeded when ctx ended
// first, and ErrNotExist for a missing SQLite file).
func Open(ctx context.Context, dsn string, cfg *Config) (*DB, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if dsn == "" {
		return nil, unsupported("empty DSN")
	}
	dialect, err := Dialect(dsn, c.Dialect)
	if err != nil {
		return nil, err
	}
	switch dialect {
	case SQLite:
		return openSQLite(ctx, dsn, &c)
	case Postgres:
		return openPostgres(ctx, dsn, &c)
	}
	return nil, fmt.Errorf("durable/dsn: unknown dialect %q: want %s or %s", dialect, Postgres, SQLite)
}

func openPostgres(ctx context.Context, dsn string, c *Config) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, &Error{Dialect: Postgres, Msg: fmt.Sprintf("invalid postgres DSN: %v", err), Err: err}
	}
	params := cfg.ConnConfig.RuntimeParams
	if c.Schema != "" {
		params["search_path"] = pgx.Identifier{c.Schema}.Sanitize()
	}
	for k, v := range c.RuntimeParams {
		set := false
		for have := range params {
			set = set || strings.EqualFold(have, k)
		}
		if !set {
			params[k] = v
		}
	}
	if c.MaxConns > 0 {
		cfg.MaxConns = c.MaxConns
		cfg.MinConns = 0
	}
	db := &DB{Dialect: Postgres, Schema: c.Schema, Target: PostgresTarget(cfg.ConnConfig, c.Schema)}
	db.Pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, &Error{Dialect: Postgres, Msg: fmt.Sprintf("invalid postgres DSN: %v", err), Err: err}
	}
	if err := db.Pool.Ping(ctx); err != nil {
		db.Close()
		return nil, &Error{Dialect: Postgres, Target: db.Target, Msg: fmt.Sprintf("cannot connect to %s: %s", db.Target, ConnectMessage(err)), Err: err}
	}
	db.SQL = stdlib.OpenDBFromPool(db.Pool)
	if c.Schema != "" && c.Create {
		if db.CreatedSchema, err = db.ensureSchema(ctx); err != nil {
			db.Close()
			return nil, err
		}
	}
	return db, nil
}

// PostgresTarget describes a Postgres database for messages, without the
// password, as DB.Target does.
func PostgresTarget(c *pgx.ConnConfig, schema string) string {
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

// ConnectMessage explains in one line why a Postgres server did not
// answer a connection or a ping: the server's error, the network's, or
// pgconn's attempts without its "failed to connect to `user=…`" prefix.
func ConnectMessage(err error) string {
	var (
		pgErr   *pgconn.PgError
		opErr   *net.OpError
		connErr *pgconn.ConnectError
	)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "no answer before the deadline"
	case errors.Is(err, context.Canceled):
		return "interrupted"
	case errors.As(err, &pgErr):
		return pgErr.Error()
	case errors.As(err, &opErr):
		return opErr.Error()
	case errors.As(err, &connErr) && errors.Unwrap(connErr) != nil:
		return errors.Unwrap(connErr).Error()
	}
	return err.Error()
}

// ensureSchema creates Schema when it does not exist yet. It checks first
// so that a user without the CREATE privilege on the database can still
// work in an existing schema.
func (db *DB) ensureSchema(ctx context.Context) (created bool, err error) {
	var exists bool
	if err := db.SQL.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)`, db.Schema).Scan(&exists); err != nil {
		return false, fmt.Errorf("look up schema %s: %w", db.Schema, err)
	}
	if exists {
		return false, nil
	}
	if _, err := db.SQL.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{db.Schema}.Sanitize()); err != nil {
		return false, fmt.Errorf("create schema %s: %w", db.Schema, err)
	}
	return true, nil
}

// SQLite result codes read from driver errors.
const (
	sqliteCantOpen = 14 // SQLITE_CANTOPEN
	sqliteNotADB   = 26 // SQLITE_NOTADB
)

func openSQLite(ctx context.Context, dsn string, c *Config) (*DB, error) {
	path, memory, own := SQLitePath(dsn)
	if !own {
		// A plain path: open it with the settings durable's dialect needs.
		dsn = sqlite.DSN(path)
	}
	db := &DB{Dialect: SQLite, Target: "sqlite " + path}
	fail := func(err error, format string, args ...any) (*DB, error) {
		return nil, &Error{Dialect: SQLite, Target: db.Target, Msg: fmt.Sprintf(format, args...), Err: err}
	}
	if !memory {
		if abs, err := filepath.Abs(path); err == nil {
			path = abs
			db.Target = "sqlite " + abs
		}
		st, err := os.Stat(path)
		switch {
		case errors.Is(err, fs.ErrNotExist) && !c.Create:
			return fail(errors.Join(ErrNotExist, err), "sqlite database %s does not exist", path)
		case errors.Is(err, fs.ErrNotExist):
			if _, err := os.Stat(filepath.Dir(path)); err != nil {
				return fail(err, "cannot create sqlite database %s: directory %s does not exist", path, filepath.Dir(path))
			}
		case err != nil:
			return fail(err, "cannot open sqlite database %s: %v", path, err)
		case st.IsDir():
			return fail(nil, "cannot open sqlite database %s: it is a directory", path)
		}
	}
	sdb, err := sql.Open("sqlite", dsn)
	if err != nil {
		return fail(err, "invalid sqlite DSN: %v", err)
	}
	sdb.SetMaxOpenConns(1)
	db.SQL = sdb
	var n int
	if err := sdb.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master").Scan(&n); err != nil {
		db.Close()
		var se *moderncsqlite.Error
		switch {
		case errors.As(err, &se) && se.Code()&0xff == sqliteNotADB:
			return fail(err, "%s is not a SQLite database", path)
		case errors.As(err, &se) && se.Code()&0xff == sqliteCantOpen:
			return fail(err, "cannot open sqlite database %s: %v", path, err)
		case errors.Is(err, context.DeadlineExceeded):
			return fail(err, "cannot open sqlite database %s: no answer before the deadline (is another process holding a lock?)", path)
		}
		return fail(err, "cannot open sqlite database %s: %v", path, err)
	}
	return db, nil
}

// SQLitePath returns the file a SQLite DSN names, whether it is an
// in-memory database, and whether the DSN is the user's own (a file: URI or
// a path with a query string) rather than a plain path, which Open opens
// with sqlite.DSN's settings.
func SQLitePath(dsn string) (path string, memory, own bool) {
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
