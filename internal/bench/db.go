package bench

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/dsn"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/migrations"
)

// benchDefaultDSN is the Postgres server bench uses without --dsn: the
// local test server of the project's tests.
const benchDefaultDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// benchEnv is one workload's pair of databases: the sender's (the app's
// tables, the outbox, the plain table of the raw limit) and the receiver's
// (the inbox), with the dialects wrapped by the run's probe.
type benchEnv[TTx any] struct {
	sender, receiver dialects.Dialect[TTx]

	// begin, commit and rollback run the app's transactions on the sender's
	// database, as an application does, outside the dialect.
	begin    func(ctx context.Context) (TTx, error)
	commit   func(ctx context.Context, tx TTx) error
	rollback func(ctx context.Context, tx TTx)
	// business writes the app's own row (an order) in tx.
	business func(ctx context.Context, tx TTx, id int64) error
	// rawRow inserts one payload row into a plain table and commits, in one
	// statement: the cheapest durable write of one row.
	rawRow func(ctx context.Context, payload []byte) error
	// plainMessage writes the message as a plain row in tx, where durable
	// would enqueue it: the app transaction without durable.
	plainMessage func(ctx context.Context, tx TTx, payload []byte) error
	// rawBatch inserts n payload rows into a plain table in one transaction
	// (COPY on Postgres, one multi-row INSERT on SQLite).
	rawBatch func(ctx context.Context, n int, payload []byte) error
	// warm opens up to n connections of the sender's pool ahead of the run.
	warm func(ctx context.Context, n int)
	// backends lists the server processes of the run's connections, with
	// their roles, for the CPU accounting; nil on SQLite.
	backends func(ctx context.Context) map[int]string

	close func()
}

// benchTables are the plain tables of the app and of the raw limit.
var benchTables = map[string]string{
	migrations.Postgres: `CREATE TABLE bench_orders (id bigint PRIMARY KEY, total bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE bench_raw (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload bytea NOT NULL);
CREATE TABLE bench_messages (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic text NOT NULL, payload bytea NOT NULL)`,
	migrations.SQLite: `CREATE TABLE bench_orders (id INTEGER PRIMARY KEY, total INTEGER NOT NULL, created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')));
CREATE TABLE bench_raw (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE bench_messages (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL)`,
}

// benchUpSQL is durable's up migrations of dialect, oldest first, and the
// bench's own tables.
func benchUpSQL(dialect string) ([]string, error) {
	ms, err := migrations.List(dialect)
	if err != nil {
		return nil, err
	}
	fsys, err := migrations.FS(dialect)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ms)+1)
	for _, m := range ms {
		b, err := fs.ReadFile(fsys, m.Name+".up.sql")
		if err != nil {
			return nil, err
		}
		out = append(out, string(b))
	}
	return append(out, benchTables[dialect]), nil
}

func benchRandom() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// benchPG is the Postgres server bench runs on. Each workload gets two
// fresh schemas, dropped after it.
type benchPG struct {
	cfg     *pgxpool.Config
	admin   *pgxpool.Pool
	target  string
	version string
	run     string // random part of this run's schema names
}

// benchOpenPostgres connects to the server connString names. Its errors
// are *dsn.Error, as dsn.Open's.
func benchOpenPostgres(ctx context.Context, connString string) (*benchPG, error) {
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, &dsn.Error{Dialect: dsn.Postgres, Msg: fmt.Sprintf("invalid postgres DSN: %v", err), Err: err}
	}
	s := &benchPG{cfg: cfg, target: dsn.PostgresTarget(cfg.ConnConfig, ""), run: benchRandom()}
	ac := cfg.Copy()
	ac.MaxConns, ac.MinConns = 2, 0
	if s.admin, err = pgxpool.NewWithConfig(ctx, ac); err != nil {
		return nil, &dsn.Error{Dialect: dsn.Postgres, Msg: fmt.Sprintf("invalid postgres DSN: %v", err), Err: err}
	}
	if err := s.admin.QueryRow(ctx, "SHOW server_version").Scan(&s.version); err != nil {
		s.admin.Close()
		return nil, &dsn.Error{Dialect: dsn.Postgres, Target: s.target, Err: err,
			Msg: fmt.Sprintf("cannot connect to %s: %s", s.target, dsn.ConnectMessage(err))}
	}
	return s, nil
}

func (s *benchPG) close() { s.admin.Close() }

// appName is the application_name of the run's connections of one role
// (the admin pool has none), by which the CPU accounting finds their
// backends.
func (s *benchPG) appName(role string) string { return "durable-bench-" + s.run + "-" + role }

// backends returns the server process of each of the run's connections,
// with its role.
func (s *benchPG) backends(ctx context.Context) map[int]string {
	prefix := s.appName("")
	rows, err := s.admin.Query(ctx, `SELECT pid, application_name FROM pg_stat_activity WHERE starts_with(application_name, $1)`, prefix)
	if err != nil {
		return nil
	}
	defer rows.Close()
	out := make(map[int]string)
	for rows.Next() {
		var (
			pid  int
			name string
		)
		if err := rows.Scan(&pid, &name); err != nil {
			return nil
		}
		out[pid] = strings.TrimPrefix(name, prefix)
	}
	if rows.Err() != nil {
		return nil
	}
	return out
}

// create makes schema name, migrated and with the plain tables.
func (s *benchPG) create(ctx context.Context, name string) error {
	if _, err := s.admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create schema %s: %w", name, err)
	}
	pool, err := s.pool(ctx, name, "setup", 1)
	if err != nil {
		return err
	}
	defer pool.Close()
	stmts, err := benchUpSQL(migrations.Postgres)
	if err != nil {
		return err
	}
	for _, stmt := range stmts {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("migrate schema %s: %w", name, err)
		}
	}
	return nil
}

// pool opens a pool of at most conns connections on schema name (its
// search_path), named for role in pg_stat_activity so that the CPU of its
// backends can be told apart.
func (s *benchPG) pool(ctx context.Context, name, role string, conns int) (*pgxpool.Pool, error) {
	cfg := s.cfg.Copy()
	cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{name}.Sanitize()
	cfg.ConnConfig.RuntimeParams["application_name"] = s.appName(role)
	cfg.MaxConns = int32(conns)
	cfg.MinConns = 0
	return pgxpool.NewWithConfig(ctx, cfg)
}

// drop removes schema name; it runs even when ctx was cancelled (an
// interrupted bench still cleans up).
func (s *benchPG) drop(ctx context.Context, name string) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_, _ = s.admin.Exec(dctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{name}.Sanitize()+" CASCADE")
}

// The roles of the run's connections: the app's transactions and the raw
// limit; the sender's dialect (relay, and the sender's idle inbox); the
// receiver's dialect (deliveries and workers).
const (
	RoleApp   = "app"
	RoleRelay = "relay"
	RoleInbox = "inbox"
)

// env creates the sender's and the receiver's schemas for one workload.
func (s *benchPG) env(ctx context.Context, workload string, p *benchProbe, t benchTuning) (*benchEnv[pgx.Tx], error) {
	sName := fmt.Sprintf("durable_bench_%s_%s_sender", s.run, workload)
	rName := fmt.Sprintf("durable_bench_%s_%s_receiver", s.run, workload)
	var ap, sp, rp *pgxpool.Pool
	cleanup := func() {
		for _, pool := range []*pgxpool.Pool{ap, sp, rp} {
			if pool != nil {
				pool.Close()
			}
		}
		s.drop(ctx, sName)
		s.drop(ctx, rName)
	}
	err := s.create(ctx, sName)
	if err == nil {
		err = s.create(ctx, rName)
	}
	if err == nil {
		ap, err = s.pool(ctx, sName, RoleApp, t.AppConns)
	}
	if err == nil {
		sp, err = s.pool(ctx, sName, RoleRelay, t.SenderConns)
	}
	if err == nil {
		rp, err = s.pool(ctx, rName, RoleInbox, t.ReceiverConns)
	}
	if err != nil {
		cleanup()
		return nil, err
	}
	sd, err := postgres.New(sp, &postgres.Config{Schema: sName})
	if err != nil {
		cleanup()
		return nil, err
	}
	rd, err := postgres.New(rp, &postgres.Config{Schema: rName})
	if err != nil {
		cleanup()
		return nil, err
	}
	e := &benchEnv[pgx.Tx]{
		sender:   &benchPGDialect{Dialect: sd, p: p},
		receiver: &benchPGDialect{Dialect: rd, p: p},
		begin:    func(ctx context.Context) (pgx.Tx, error) { return ap.Begin(ctx) },
		commit:   func(ctx context.Context, tx pgx.Tx) error { return tx.Commit(ctx) },
		rollback: func(ctx context.Context, tx pgx.Tx) { _ = tx.Rollback(ctx) },
		business: func(ctx context.Context, tx pgx.Tx, id int64) error {
			_, err := tx.Exec(ctx, `INSERT INTO bench_orders (id, total) VALUES ($1, $2)`, id, 100+id%900)
			return err
		},
		plainMessage: func(ctx context.Context, tx pgx.Tx, payload []byte) error {
			_, err := tx.Exec(ctx, `INSERT INTO bench_messages (topic, payload) VALUES ($1, $2)`, "bench.w1", payload)
			return err
		},
		rawRow: func(ctx context.Context, payload []byte) error {
			_, err := ap.Exec(ctx, `INSERT INTO bench_raw (payload) VALUES ($1)`, payload)
			return err
		},
		rawBatch: func(ctx context.Context, n int, payload []byte) error {
			_, err := ap.CopyFrom(ctx, pgx.Identifier{"bench_raw"}, []string{"payload"},
				pgx.CopyFromSlice(n, func(int) ([]any, error) { return []any{payload}, nil }))
			return err
		},
		warm: func(ctx context.Context, n int) {
			conns := make([]*pgxpool.Conn, 0, n)
			for range n {
				c, err := ap.Acquire(ctx)
				if err != nil {
					break
				}
				conns = append(conns, c)
			}
			for _, c := range conns {
				c.Release()
			}
		},
		backends: s.backends,
		close:    cleanup,
	}
	return e, nil
}

// benchSQLite holds the temporary directory of the SQLite databases.
type benchSQLite struct {
	dir     string
	version string
}

func benchOpenSQLite(ctx context.Context) (*benchSQLite, error) {
	dir, err := os.MkdirTemp("", "durable-bench-")
	if err != nil {
		return nil, err
	}
	s := &benchSQLite{dir: dir}
	db, err := sql.Open("sqlite", ":memory:")
	if err == nil {
		err = db.QueryRowContext(ctx, "SELECT sqlite_version()").Scan(&s.version)
		_ = db.Close()
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func (s *benchSQLite) close() { _ = os.RemoveAll(s.dir) }

func (s *benchSQLite) database(ctx context.Context, name string) (*sql.DB, *sqlite.Dialect, error) {
	path := filepath.Join(s.dir, name+".db")
	db, err := sql.Open("sqlite", sqlite.DSN(path))
	if err != nil {
		return nil, nil, err
	}
	stmts, err := benchUpSQL(migrations.SQLite)
	if err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	for _, stmt := range stmts {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			_ = db.Close()
			return nil, nil, fmt.Errorf("migrate %s: %w", path, err)
		}
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	return db, d, nil
}

// env creates the sender's and the receiver's database files for one
// workload; both are removed after it.
func (s *benchSQLite) env(ctx context.Context, workload string, p *benchProbe) (*benchEnv[*sql.Tx], error) {
	var sdb, rdb *sql.DB
	cleanup := func() {
		for _, db := range []*sql.DB{sdb, rdb} {
			if db != nil {
				_ = db.Close()
			}
		}
		for _, side := range []string{"sender", "receiver"} {
			base := filepath.Join(s.dir, workload+"-"+side+".db")
			for _, suffix := range []string{"", "-wal", "-shm"} {
				_ = os.Remove(base + suffix)
			}
		}
	}
	sdb, sd, err := s.database(ctx, workload+"-sender")
	if err != nil {
		cleanup()
		return nil, err
	}
	rdb, rd, err := s.database(ctx, workload+"-receiver")
	if err != nil {
		cleanup()
		return nil, err
	}
	e := &benchEnv[*sql.Tx]{
		sender:   &benchSQLiteDialect{Dialect: sd, p: p},
		receiver: &benchSQLiteDialect{Dialect: rd, p: p},
		begin:    func(ctx context.Context) (*sql.Tx, error) { return sdb.BeginTx(ctx, nil) },
		commit:   func(_ context.Context, tx *sql.Tx) error { return tx.Commit() },
		rollback: func(_ context.Context, tx *sql.Tx) { _ = tx.Rollback() },
		business: func(ctx context.Context, tx *sql.Tx, id int64) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO bench_orders (id, total) VALUES (?, ?)`, id, 100+id%900)
			return err
		},
		plainMessage: func(ctx context.Context, tx *sql.Tx, payload []byte) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO bench_messages (topic, payload) VALUES (?, ?)`, "bench.w1", payload)
			return err
		},
		rawRow: func(ctx context.Context, payload []byte) error {
			_, err := sdb.ExecContext(ctx, `INSERT INTO bench_raw (payload) VALUES (?)`, payload)
			return err
		},
		rawBatch: func(ctx context.Context, n int, payload []byte) error {
			var b strings.Builder
			b.WriteString(`INSERT INTO bench_raw (payload) VALUES `)
			args := make([]any, n)
			for i := range n {
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString("(?)")
				args[i] = payload
			}
			_, err := sdb.ExecContext(ctx, b.String(), args...)
			return err
		},
		warm:  func(context.Context, int) {},
		close: cleanup,
	}
	return e, nil
}
