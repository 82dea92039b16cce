package migrations

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"
)

// LockID is the Postgres advisory lock that Up and `durable migrate` hold
// while they migrate, so that processes migrating one database at once
// wait for each other. It is derived from GooseTable, so durable's
// migrations never wait on an application's own goose run (goose's default
// lock id).
var LockID = int64(crc32.ChecksumIEEE([]byte(GooseTable)))

// Migration is one of durable's migrations.
type Migration struct {
	Version int64  // 1, 2, ...
	Name    string // "0001_init"
}

// Status is what Up did or Check found: the version durable_schema_version
// records, the latest this build embeds, and the migrations applied by the
// call (Up) or still pending (Check).
type Status struct {
	Dialect string
	Version int64       // max(version) of durable_schema_version; 0 without it
	Latest  int64       // the latest migration this build embeds
	Applied []Migration // applied by Up, in order
	Pending []Migration // migrations above Version

	// Check also reports what it found beside durable_schema_version, for
	// tools that show the history (the other calls leave these zero):
	//
	// AppliedAt is when each version durable_schema_version records was
	// applied. GooseTableExists reports whether goose's version table
	// (GooseTable) exists, and GooseVersion is the highest version_id it
	// records (0 when it is empty or missing): lower than Version when
	// another tool applied migrations that goose's table does not know of
	// yet (Adopt records them).
	AppliedAt        map[int64]time.Time
	GooseTableExists bool
	GooseVersion     int64
}

// List returns the migrations of dialect in order.
func List(dialect string) ([]Migration, error) {
	fsys, err := FS(dialect)
	if err != nil {
		return nil, err
	}
	names, err := fs.Glob(fsys, "*.up.sql")
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, n := range names {
		name := strings.TrimSuffix(n, ".up.sql")
		num, _, _ := strings.Cut(name, "_")
		v, err := strconv.ParseInt(num, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("durable/migrations: bad migration name %q", n)
		}
		out = append(out, Migration{Version: v, Name: name})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Up applies the durable migrations that db lacks, for people who run no
// migration tool: at the start of a service, before durable.NewNode. dialect
// is Postgres or SQLite; db is a *sql.DB of pgx's stdlib driver
// (stdlib.OpenDBFromPool(pool) for a pgxpool.Pool) or of modernc.org/sqlite.
//
// Each migration runs in a transaction of its own, which also records it in
// durable_schema_version, in goose's table (GooseTable) and in
// golang-migrate's (MigrateTable), so that `durable migrate`, goose and
// golang-migrate all see what is applied and any of them can take over.
// Up also completes the tables of a database that one of those tools
// migrated: a history that durable_schema_version has and a tool's table
// lacks is added to it (the tables are created in the tools' own formats
// when missing).
//
// Processes that run Up on one database at the same time wait for each
// other: on Postgres under the advisory lock LockID (which `durable migrate`
// takes too), on SQLite under the write lock of each migration's
// transaction (BEGIN IMMEDIATE), in which the version is read again. On
// Postgres the tables are created in the connection's current schema (the
// first of its search_path), as the tools do.
//
// Up never rolls back; use the CLI or a tool for that.
func Up(ctx context.Context, db *sql.DB, dialect string) (Status, error) {
	return run(ctx, db, dialect, modeUp)
}

// Check reports the version of db's durable schema and the migrations this
// build has that it lacks, without changing anything or taking a lock.
func Check(ctx context.Context, db *sql.DB, dialect string) (Status, error) {
	return run(ctx, db, dialect, modeCheck)
}

// Adopt records the migrations that durable_schema_version says are applied
// in goose's and golang-migrate's tables, as Up does, and applies nothing:
// for a database migrated by one tool (or by SQL copied into an
// application's own migrations) that is to be migrated by another from now
// on. `durable migrate` adopts such a history before it runs goose.
func Adopt(ctx context.Context, db *sql.DB, dialect string) (Status, error) {
	return run(ctx, db, dialect, modeAdopt)
}

// What run does.
const (
	modeCheck = iota
	modeAdopt
	modeUp
)

func run(ctx context.Context, db *sql.DB, dialect string, mode int) (st Status, err error) {
	all, err := List(dialect)
	if err != nil {
		return st, err
	}
	st = Status{Dialect: dialect, Latest: all[len(all)-1].Version}
	conn, err := db.Conn(ctx)
	if err != nil {
		return st, fmt.Errorf("durable/migrations: %w", err)
	}
	defer conn.Close()
	m := &migrator{conn: conn, dialect: dialect}
	if dialect == SQLite {
		// Wait for other processes' locks inside SQLite as well (a
		// transaction that must wait for readers to commit); the
		// connection goes back to db with its own setting.
		var prev int
		if err := conn.QueryRowContext(ctx, `PRAGMA busy_timeout`).Scan(&prev); err != nil {
			return st, fmt.Errorf("durable/migrations: %w", err)
		}
		if prev < sqliteBusyTimeout {
			if _, err := conn.ExecContext(ctx, fmt.Sprintf(`PRAGMA busy_timeout = %d`, sqliteBusyTimeout)); err != nil {
				return st, fmt.Errorf("durable/migrations: %w", err)
			}
			defer conn.ExecContext(context.WithoutCancel(ctx), fmt.Sprintf(`PRAGMA busy_timeout = %d`, prev))
		}
	}
	if mode != modeCheck && dialect == Postgres {
		if err := m.lock(ctx); err != nil {
			return st, err
		}
		defer m.unlock()
	}
	// On SQLite a read can meet another process's write lock (SQLITE_BUSY
	// without a busy_timeout): read again after a pause.
	err = retryBusy(ctx, func() (err error) {
		st.Version, err = m.version(ctx, conn)
		return err
	})
	if err != nil {
		return st, err
	}
	if mode == modeCheck {
		for _, mg := range all {
			if mg.Version > st.Version {
				st.Pending = append(st.Pending, mg)
			}
		}
		err = retryBusy(ctx, func() (err error) { return m.history(ctx, &st) })
		return st, err
	}
	fsys, err := FS(dialect)
	if err != nil {
		return st, err
	}
	for _, mg := range all {
		if mg.Version <= st.Version || mode != modeUp {
			continue
		}
		body, err := fs.ReadFile(fsys, mg.Name+".up.sql")
		if err != nil {
			return st, err
		}
		applied, err := m.apply(ctx, mg, string(body))
		if err != nil {
			return st, fmt.Errorf("durable/migrations: %s on %s: %w", mg.Name, dialect, err)
		}
		if applied {
			st.Applied = append(st.Applied, mg)
		}
		st.Version = mg.Version
	}
	// A database migrated by a tool (or before this function recorded
	// them all) gets the tools' tables completed.
	if err := m.inTx(ctx, func(tx *sql.Tx) error { return m.record(ctx, tx, st.Version) }); err != nil {
		return st, fmt.Errorf("durable/migrations: recording the history for goose and golang-migrate: %w", err)
	}
	return st, nil
}

// sqliteBusyTimeout is the busy_timeout (ms) Up sets on its SQLite
// connection while it runs.
const sqliteBusyTimeout = 30000

// migrator runs statements on one connection.
type migrator struct {
	conn    *sql.Conn
	dialect string
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func (m *migrator) lock(ctx context.Context) error {
	if _, err := m.conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, LockID); err != nil {
		return fmt.Errorf("durable/migrations: taking the migration lock: %w", err)
	}
	return nil
}

func (m *migrator) unlock() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Closing the connection would release it too, but it returns to the
	// pool: release it explicitly.
	_, _ = m.conn.ExecContext(ctx, `SELECT pg_advisory_unlock($1)`, LockID)
}

// tableExists reports whether name exists in the schema the statements
// use.
func (m *migrator) tableExists(ctx context.Context, q querier, name string) (bool, error) {
	var n int
	var err error
	if m.dialect == Postgres {
		err = q.QueryRowContext(ctx, `SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = $1`, name).Scan(&n)
	} else {
		err = q.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?`, name).Scan(&n)
	}
	return n > 0, err
}

// version reads max(version) of durable_schema_version, 0 without it.
func (m *migrator) version(ctx context.Context, q querier) (int64, error) {
	ok, err := m.tableExists(ctx, q, "durable_schema_version")
	if err != nil {
		return 0, fmt.Errorf("durable/migrations: reading the schema version: %w", err)
	}
	if !ok {
		return 0, nil
	}
	var v sql.NullInt64
	if err := q.QueryRowContext(ctx, `SELECT max(version) FROM durable_schema_version`).Scan(&v); err != nil {
		return 0, fmt.Errorf("durable/migrations: reading the schema version: %w", err)
	}
	return v.Int64, nil
}

// history fills st's AppliedAt, GooseTableExists and GooseVersion.
func (m *migrator) history(ctx context.Context, st *Status) error {
	ok, err := m.tableExists(ctx, m.conn, "durable_schema_version")
	if err != nil {
		return fmt.Errorf("durable/migrations: reading the schema history: %w", err)
	}
	st.AppliedAt = make(map[int64]time.Time)
	if ok {
		rows, err := m.conn.QueryContext(ctx, `SELECT version, applied_at FROM durable_schema_version`)
		if err != nil {
			return fmt.Errorf("durable/migrations: reading the schema history: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var v int64
			var at any
			if err := rows.Scan(&v, &at); err != nil {
				return fmt.Errorf("durable/migrations: reading the schema history: %w", err)
			}
			switch at := at.(type) {
			case time.Time:
				st.AppliedAt[v] = at.UTC()
			case string: // SQLite's text timestamps
				if t, err := time.ParseInLocation("2006-01-02 15:04:05.999999999", at, time.UTC); err == nil {
					st.AppliedAt[v] = t
				}
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("durable/migrations: reading the schema history: %w", err)
		}
	}
	if st.GooseTableExists, err = m.tableExists(ctx, m.conn, GooseTable); err != nil || !st.GooseTableExists {
		return err
	}
	var v sql.NullInt64
	if err := m.conn.QueryRowContext(ctx, `SELECT max(version_id) FROM `+GooseTable).Scan(&v); err != nil {
		return fmt.Errorf("durable/migrations: reading %s: %w", GooseTable, err)
	}
	st.GooseVersion = v.Int64
	return nil
}

// inTx runs fn in a transaction of m's connection: on SQLite one that takes
// the write lock at once (BEGIN IMMEDIATE), waiting while another process
// holds it.
func (m *migrator) inTx(ctx context.Context, fn func(*sql.Tx) error) error {
	if m.dialect == SQLite {
		return m.inImmediateTx(ctx, fn)
	}
	tx, err := m.conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// inImmediateTx is inTx on SQLite. database/sql cannot begin an IMMEDIATE
// transaction on a connection opened without _txlock=immediate, so the
// transaction is driven by hand; fn gets a nil *sql.Tx and must use
// m.conn (see exec).
func (m *migrator) inImmediateTx(ctx context.Context, fn func(*sql.Tx) error) error {
	err := retryBusy(ctx, func() error {
		_, err := m.conn.ExecContext(ctx, `BEGIN IMMEDIATE`)
		return err
	})
	if err != nil {
		return err
	}
	if err := fn(nil); err != nil {
		_, _ = m.conn.ExecContext(context.WithoutCancel(ctx), `ROLLBACK`)
		return err
	}
	if _, err := m.conn.ExecContext(ctx, `COMMIT`); err != nil {
		_, _ = m.conn.ExecContext(context.WithoutCancel(ctx), `ROLLBACK`)
		return err
	}
	return nil
}

// retryBusy runs fn until it returns anything but SQLite's "database is
// locked", with a growing pause, until ctx ends.
func retryBusy(ctx context.Context, fn func() error) error {
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		err := fn()
		if err == nil || !isBusy(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the SQLite write lock: %w (last: %w)", ctx.Err(), err)
		case <-time.After(wait):
		}
	}
}

func isBusy(err error) bool {
	s := err.Error()
	return strings.Contains(s, "SQLITE_BUSY") || strings.Contains(s, "database is locked")
}

// q returns tx, or m's connection inside a hand-driven SQLite transaction.
func (m *migrator) q(tx *sql.Tx) querier {
	if tx == nil {
		return m.conn
	}
	return tx
}

// apply runs one migration and records it, unless the version it reads
// again inside its transaction shows that another process applied it.
func (m *migrator) apply(ctx context.Context, mg Migration, body string) (applied bool, err error) {
	err = m.inTx(ctx, func(tx *sql.Tx) error {
		q := m.q(tx)
		cur, err := m.version(ctx, q)
		if err != nil {
			return err
		}
		if cur >= mg.Version {
			return nil
		}
		if cur != mg.Version-1 {
			return fmt.Errorf("the schema is at version %d, which is not the one before it", cur)
		}
		if _, err := q.ExecContext(ctx, body); err != nil {
			return err
		}
		applied = true
		return m.record(ctx, tx, mg.Version)
	})
	return applied, err
}

// record makes goose's and golang-migrate's tables say that every version
// up to v is applied: it creates them in the tools' formats when missing,
// adds to goose's the versions it lacks, and sets golang-migrate's single
// row to v (clean).
func (m *migrator) record(ctx context.Context, tx *sql.Tx, v int64) error {
	if v == 0 {
		return nil
	}
	q := m.q(tx)
	pg := m.dialect == Postgres
	ok, err := m.tableExists(ctx, q, GooseTable)
	if err != nil {
		return err
	}
	if !ok {
		create := `CREATE TABLE ` + GooseTable + ` (
	id integer PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY,
	version_id bigint NOT NULL,
	is_applied boolean NOT NULL,
	tstamp timestamp NOT NULL DEFAULT now()
)`
		if !pg {
			create = `CREATE TABLE ` + GooseTable + ` (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	version_id INTEGER NOT NULL,
	is_applied INTEGER NOT NULL,
	tstamp TIMESTAMP DEFAULT (datetime('now'))
)`
		}
		if _, err := q.ExecContext(ctx, create); err != nil {
			return err
		}
		// goose's first row, version 0, as goose writes it.
		if _, err := q.ExecContext(ctx, m.param(`INSERT INTO `+GooseTable+` (version_id, is_applied) VALUES (0, $1)`), true); err != nil {
			return err
		}
	}
	// goose reads the newest row of each version (by id) and applies what
	// has none or whose newest says not applied.
	for ver := int64(1); ver <= v; ver++ {
		var applied sql.NullBool
		err := q.QueryRowContext(ctx, m.param(`SELECT is_applied FROM `+GooseTable+` WHERE version_id = $1 ORDER BY id DESC LIMIT 1`), ver).Scan(&applied)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if applied.Valid && applied.Bool {
			continue
		}
		if _, err := q.ExecContext(ctx, m.param(`INSERT INTO `+GooseTable+` (version_id, is_applied) VALUES ($1, $2)`), ver, true); err != nil {
			return err
		}
	}

	ok, err = m.tableExists(ctx, q, MigrateTable)
	if err != nil {
		return err
	}
	if !ok {
		stmts := []string{`CREATE TABLE ` + MigrateTable + ` (version bigint not null primary key, dirty boolean not null)`}
		if !pg {
			stmts = []string{
				`CREATE TABLE ` + MigrateTable + ` (version uint64,dirty bool)`,
				`CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON ` + MigrateTable + ` (version)`,
			}
		}
		for _, s := range stmts {
			if _, err := q.ExecContext(ctx, s); err != nil {
				return err
			}
		}
	}
	var cur sql.NullInt64
	var dirty sql.NullBool
	err = q.QueryRowContext(ctx, `SELECT version, dirty FROM `+MigrateTable+` LIMIT 1`).Scan(&cur, &dirty)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if err == nil && cur.Int64 == v && !dirty.Bool {
		return nil
	}
	if _, err := q.ExecContext(ctx, `DELETE FROM `+MigrateTable); err != nil {
		return err
	}
	_, err = q.ExecContext(ctx, m.param(`INSERT INTO `+MigrateTable+` (version, dirty) VALUES ($1, $2)`), v, false)
	return err
}

// param rewrites $n placeholders for SQLite (?n).
func (m *migrator) param(stmt string) string {
	if m.dialect == Postgres {
		return stmt
	}
	return strings.ReplaceAll(stmt, "$", "?")
}
