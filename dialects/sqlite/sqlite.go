package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/internal/filter"
	"github.com/durable-go/durable/dialects/internal/keyscan"
)

// name is the dialect's name, as returned by Dialect.Name.
const name = "sqlite"

// Dialect is durable's storage on SQLite through database/sql. Create it
// with New; it is safe for concurrent use.
//
// Its exported methods implement dialects.Dialect[*sql.Tx] (and the optional
// interfaces of package dialects) for durable's own packages (outbox, inbox,
// durable.Node, migrations); they are not meant to be called directly.
type Dialect struct {
	db      *sql.DB
	stmts   sync.Map        // statement text → *sql.Stmt prepared on db (see stmt)
	durable sync.Map        // *sql.Tx of BeginDurable → *durableConn
	keys    keyscan.Cursors // where each destination's next outbox claim visits keys
}

var (
	_ dialects.Dialect[*sql.Tx]         = (*Dialect)(nil)
	_ dialects.OutboxTxLister[*sql.Tx]  = (*Dialect)(nil)
	_ dialects.DurableBeginner[*sql.Tx] = (*Dialect)(nil)
)

// Config configures New. A nil *Config, like the zero Config, checks the
// connection settings.
type Config struct {
	// SkipDSNCheck makes New accept a database without checking its
	// connection settings (WAL, busy timeout, immediate transactions). Use
	// it only where those cannot apply, such as an in-memory database in a
	// test; without them, writers in other processes fail with SQLITE_BUSY.
	SkipDSNCheck bool
}

// newTimeout bounds the connection check New runs.
const newTimeout = 30 * time.Second

// New returns the dialect for db, a database opened with modernc.org/sqlite
// (or another SQLite driver with the same settings), preferably as
// sql.Open("sqlite", DSN(path)).
//
// New returns an error, rather than failing later, because it checks the
// connection settings durable relies on: it opens connections and returns a
// *DSNError (errors.Is ErrDSN) naming the missing DSN parameter when the
// journal is not WAL, no busy timeout is set, or BEGIN does not take the
// write lock (_txlock=immediate). See Config.SkipDSNCheck. A nil cfg means
// the defaults; New does not keep cfg.
//
// New sets db.SetMaxOpenConns(1): SQLite has one writer, and a single
// connection makes writers in this process queue in database/sql instead of
// failing with SQLITE_BUSY. A transaction therefore holds the only
// connection until it ends; see the package documentation, "One writer".
// Do not raise the limit afterwards.
//
// New does not check the schema; call CheckSchema once the migrations ran.
func New(db *sql.DB, cfg *Config) (*Dialect, error) {
	if db == nil {
		return nil, errors.New("durable/sqlite: New: nil *sql.DB")
	}
	if cfg == nil || !cfg.SkipDSNCheck {
		ctx, cancel := context.WithTimeout(context.Background(), newTimeout)
		err := checkDSN(ctx, db)
		cancel()
		if err != nil {
			db.SetMaxOpenConns(1)
			return nil, err
		}
	}
	db.SetMaxOpenConns(1)
	return &Dialect{db: db}, nil
}

// Name returns "sqlite".
func (d *Dialect) Name() string { return name }

// Begin starts a transaction. With the DSN's _txlock=immediate it holds the
// write lock from the start, and, as the pool has one connection, it waits
// for any other transaction of this *sql.DB to end first.
func (d *Dialect) Begin(ctx context.Context) (*sql.Tx, error) {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("durable/sqlite: begin: %w", err)
	}
	return tx, nil
}

// durableConn is the connection a transaction of BeginDurable holds, with
// the synchronous setting to give it back once the transaction ended.
type durableConn struct {
	conn *sql.Conn
	sync int // the connection's PRAGMA synchronous before
}

// syncFull is PRAGMA synchronous=FULL: in WAL mode, every commit syncs the
// log to disk.
const syncFull = 2

// BeginDurable starts a transaction whose commit is synced to disk before
// Commit returns, whatever the DSN's synchronous setting (sqlite.DSN sets
// NORMAL, which syncs the log only at checkpoints, so a power loss may lose
// the last commits). It runs PRAGMA synchronous=FULL on the connection
// before BEGIN; the dialect's Commit or Rollback puts the setting back and
// releases the connection, so end the transaction with them. See
// dialects.DurableBeginner.
func (d *Dialect) BeginDurable(ctx context.Context) (*sql.Tx, error) {
	conn, err := d.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("durable/sqlite: begin: %w", err)
	}
	dc := &durableConn{conn: conn}
	if err := conn.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&dc.sync); err != nil {
		conn.Close()
		return nil, fmt.Errorf("durable/sqlite: begin: read synchronous: %w", err)
	}
	if dc.sync < syncFull {
		if _, err := conn.ExecContext(ctx, "PRAGMA synchronous = FULL"); err != nil {
			conn.Close()
			return nil, fmt.Errorf("durable/sqlite: begin: set synchronous: %w", err)
		}
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		dc.release()
		return nil, fmt.Errorf("durable/sqlite: begin: %w", err)
	}
	d.durable.Store(tx, dc)
	if beganDurable != nil {
		beganDurable(tx)
	}
	return tx, nil
}

// beganDurable, when set by a test, sees every transaction of BeginDurable
// as it starts.
var beganDurable func(*sql.Tx)

// release gives the connection its synchronous setting back and returns it
// to the pool. A connection whose setting cannot be put back is discarded
// rather than left syncing every commit.
func (dc *durableConn) release() {
	if dc.sync < syncFull {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := dc.conn.ExecContext(ctx, "PRAGMA synchronous = "+strconv.Itoa(dc.sync))
		cancel()
		if err != nil {
			_ = dc.conn.Raw(func(any) error { return driver.ErrBadConn })
		}
	}
	dc.conn.Close()
}

// endDurable releases the connection of a transaction of BeginDurable once
// it ended; it does nothing for another transaction.
func (d *Dialect) endDurable(tx *sql.Tx) {
	if dc, ok := d.durable.LoadAndDelete(tx); ok {
		dc.(*durableConn).release()
	}
}

// Commit commits tx.
func (d *Dialect) Commit(ctx context.Context, tx *sql.Tx) error {
	if tx == nil {
		return errNilTx
	}
	err := tx.Commit()
	d.endDurable(tx)
	if err != nil {
		return fmt.Errorf("durable/sqlite: commit: %w", err)
	}
	return nil
}

// Rollback rolls tx back. Rolling back a committed or rolled back transaction
// returns nil.
func (d *Dialect) Rollback(ctx context.Context, tx *sql.Tx) error {
	if tx == nil {
		return nil
	}
	err := tx.Rollback()
	d.endDurable(tx)
	if err != nil && !errors.Is(err, sql.ErrTxDone) {
		return fmt.Errorf("durable/sqlite: rollback: %w", err)
	}
	return nil
}

var errNilTx = errors.New("durable/sqlite: nil *sql.Tx")

// CheckSchema verifies that the durable migrations ran up to
// dialects.SchemaVersion, reading max(version) of durable_schema_version. A
// missing table or an older version is a *dialects.SchemaError; a newer one
// is accepted (see dialects.SchemaVersion, "Compatibility promise").
func (d *Dialect) CheckSchema(ctx context.Context) error {
	have, err := schemaVersion(ctx, d.db)
	if err != nil && !isSchemaErr(err) {
		return fmt.Errorf("durable/sqlite: check schema: %w", err)
	}
	if have < dialects.SchemaVersion {
		return &dialects.SchemaError{Dialect: name, Have: have, Want: dialects.SchemaVersion, Err: err}
	}
	d.prepare(ctx)
	return nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// schemaVersion returns the recorded schema version, 0 when none is; err is
// the driver's error when the version table is missing, with version 0.
func schemaVersion(ctx context.Context, q querier) (int, error) {
	var v sql.NullInt64
	if err := q.QueryRowContext(ctx, "SELECT max(version) FROM durable_schema_version").Scan(&v); err != nil {
		return 0, err
	}
	return int(v.Int64), nil
}

// isSchemaErr reports whether err says that one of durable's tables or
// columns does not exist, by the driver's message (no driver import here).
// Durable's statements name only durable's tables, so any such error is
// about them.
func isSchemaErr(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "no such table") || strings.Contains(msg, "no such column") ||
		strings.Contains(msg, "has no column named")
}

// schemaError turns a statement's "no such table/column" error into a
// *dialects.SchemaError that wraps it, reading the recorded version through q
// (the caller's transaction or the pool). Other errors are wrapped with op.
func schemaError(ctx context.Context, q querier, op string, err error) error {
	if !isSchemaErr(err) {
		return fmt.Errorf("durable/sqlite: %s: %w", op, err)
	}
	have, verr := schemaVersion(ctx, q)
	if verr != nil {
		have = 0
	}
	return &dialects.SchemaError{Dialect: name, Have: have, Want: dialects.SchemaVersion, Err: err}
}

// timeLayout is the layout of every time durable stores in SQLite, always in
// UTC: the text SQLite's strftime('%Y-%m-%d %H:%M:%f') produces.
const timeLayout = "2006-01-02 15:04:05.000"

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

// parseTime reads a stored time. It accepts any number of fractional digits
// and, for values written by hand, an RFC 3339 form.
func parseTime(s string) (time.Time, error) {
	for _, layout := range []string{"2006-01-02 15:04:05.999999999", time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("durable/sqlite: cannot parse stored time %q (want %q, UTC)", s, timeLayout)
}

func parseNullTime(s sql.NullString) (time.Time, error) {
	if !s.Valid || s.String == "" {
		return time.Time{}, nil
	}
	return parseTime(s.String)
}

// storedTime is a time column as scanned, and where its parsed value goes.
type storedTime struct {
	dst *time.Time
	src sql.NullString
}

// notNull is the scanned text of a NOT NULL time column.
func notNull(s string) sql.NullString { return sql.NullString{String: s, Valid: true} }

// parseTimes parses each stored time into its destination (NULL: zero).
func parseTimes(ts ...storedTime) error {
	for _, t := range ts {
		var err error
		if *t.dst, err = parseNullTime(t.src); err != nil {
			return err
		}
	}
	return nil
}

// timeOr is the stored form of t, or now when t is zero.
func timeOr(t time.Time, now string) string {
	if t.IsZero() {
		return now
	}
	return formatTime(t)
}

// nullTime is the stored form of t, or NULL when t is zero.
func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return formatTime(t)
}

// payloadOf stands an empty BLOB in for a nil payload: the column is NOT
// NULL.
func payloadOf(p []byte) []byte {
	if p == nil {
		return []byte{}
	}
	return p
}

// jsonParam encodes v, which holds only strings, numbers and slices of them
// (and so always encodes), as one JSON parameter: lists travel as JSON arrays
// read with json_each, whatever their length.
func jsonParam(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// scanAll reads every row of rs with scan and closes rs.
func scanAll[T any](rs *sql.Rows, scan func(rs *sql.Rows, v *T) error) ([]T, error) {
	defer rs.Close()
	var out []T
	for rs.Next() {
		var v T
		if err := scan(rs, &v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rs.Err()
}

// queryAll runs stmt through q and reads every row with scan. Errors name
// op; a missing table or column is a *dialects.SchemaError.
func queryAll[T any](ctx context.Context, q queryer, op, stmt string, args []any, scan func(rs *sql.Rows, v *T) error) ([]T, error) {
	rs, err := q.QueryContext(ctx, stmt, args...)
	if err != nil {
		return nil, schemaError(ctx, q, op, err)
	}
	out, err := scanAll(rs, scan)
	if err != nil {
		return nil, schemaError(ctx, q, op, err)
	}
	return out, nil
}

// scanKey scans a row of (source, id).
func scanKey(rs *sql.Rows, k *dialects.InboxKey) error { return rs.Scan(&k.Source, &k.ID) }

// exec runs a statement through q and returns the number of rows it changed.
func exec(ctx context.Context, q queryer, op, stmt string, args ...any) (int, error) {
	res, err := q.ExecContext(ctx, stmt, args...)
	if err != nil {
		return 0, schemaError(ctx, q, op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("durable/sqlite: %s: %w", op, err)
	}
	return int(n), nil
}

// queryer is a *sql.DB or a *sql.Tx.
type queryer interface {
	querier
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// syntax is how the statements write what package filter builds: lists
// travel as one JSON parameter, so they may be of any length.
var syntax = filter.Syntax{
	Param: func(n int) string { return "?" + strconv.Itoa(n) },
	In:    func(col, param string) string { return col + " IN (SELECT value FROM json_each(" + param + "))" },
	// instr rather than LIKE: the text needs no escaping of % and _. SQLite's
	// lower folds ASCII letters only.
	Contains: func(col, param string) string { return "instr(lower(" + col + "), lower(" + param + ")) > 0" },
	List:     func(vals []string) any { return jsonParam(vals) },
	Time:     func(t time.Time) any { return formatTime(t) },
}

// valuesSQL returns head, n times row separated by commas, and tail: a
// multi-row INSERT.
func valuesSQL(head, row, tail string, n int) string {
	var b strings.Builder
	b.Grow(len(head) + n*(len(row)+1) + len(tail))
	b.WriteString(head)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(row)
	}
	b.WriteString(tail)
	return b.String()
}

// Outbox insert: one multi-row statement per chunk. SQLite binds at most
// maxParams parameters per statement (SQLITE_MAX_VARIABLE_NUMBER, 32766 since
// SQLite 3.32), so a chunk holds maxParams/outboxColumns rows.
const (
	maxParams     = 32766
	outboxColumns = 9
	// maxChunkRows is how many outbox rows one INSERT statement carries;
	// InsertOutbox splits larger calls into statements of this size.
	maxChunkRows = maxParams / outboxColumns

	insertHead = "INSERT INTO durable_outbox (id, destination, topic, key, headers, payload, created_at, deliver_at, expires_at) VALUES "
	insertRow  = "(?,?,?,?,?,?,?,?,?)"

	savepoint = "durable_insert_outbox"
)

// chunkRows is maxChunkRows; tests lower it to exercise chunking cheaply.
var chunkRows = maxChunkRows

func insertSQL(n int) string { return valuesSQL(insertHead, insertRow, "", n) }

var insertOneSQL = insertSQL(1)

// isDuplicate reports whether err is the violation of durable_outbox's
// unique (destination, id), by the driver's message.
func isDuplicate(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "UNIQUE constraint failed: durable_outbox.destination, durable_outbox.id") ||
		strings.Contains(msg, "durable_outbox_destination_id_key")
}

// InsertOutbox writes rows to durable_outbox in tx, all or nothing.
//
// Rows go in as multi-row INSERT statements of up to 3,640 rows each (one
// prepared statement serves all full-size chunks). A (destination, id) that
// already exists, or appears twice in rows, violates the table's unique key:
// SQLite then undoes the failing statement, and InsertOutbox returns a
// *dialects.DuplicateError naming the first such row in call order. A call of
// more than one chunk runs inside a savepoint, rolled back on any error, so
// earlier chunks do not stay either. On every error tx stays usable (unless
// SQLite itself ended it) and holds nothing of the call.
//
// The plain INSERT, rather than ON CONFLICT DO NOTHING with a count of the
// returned rows, is deliberate: the common call (one chunk) is then a single
// statement on success and on a duplicate alike, with no rows to return and
// nothing to delete afterwards.
//
// Zero CreatedAt and DeliverAt are stored as now, zero ExpiresAt as NULL
// (never), nil Headers as '{}', a nil Payload as an empty BLOB. Seq and the
// delivery-state fields of rows are ignored.
func (d *Dialect) InsertOutbox(ctx context.Context, tx *sql.Tx, rows []dialects.OutboxRow) (err error) {
	if tx == nil {
		return errNilTx
	}
	if len(rows) == 0 {
		return nil
	}
	chunk := chunkRows

	if len(rows) > chunk {
		// A savepoint makes a multi-statement call atomic inside the
		// caller's transaction: whatever fails in a later chunk (a
		// duplicate, a cancelled context), rolling back to it leaves tx
		// as it was.
		if _, err := tx.ExecContext(ctx, "SAVEPOINT "+savepoint); err != nil {
			return schemaError(ctx, tx, "insert outbox", err)
		}
		defer func() {
			// Clean up even if ctx is done: tx must not keep part of the call.
			cctx := context.WithoutCancel(ctx)
			if err != nil {
				if _, rerr := tx.ExecContext(cctx, "ROLLBACK TO "+savepoint); rerr != nil {
					err = errors.Join(err, fmt.Errorf("durable/sqlite: undo the failed insert (the transaction may hold part of it; roll it back): %w", rerr))
					return
				}
			}
			if _, rerr := tx.ExecContext(cctx, "RELEASE "+savepoint); rerr != nil {
				err = errors.Join(err, fmt.Errorf("durable/sqlite: release savepoint: %w", rerr))
			}
		}()
	}

	now := formatTime(time.Now())
	enc := newHeaderEncoder()

	var full *sql.Stmt
	if len(rows) >= 2*chunk {
		full, err = tx.PrepareContext(ctx, insertSQL(chunk))
		if err != nil {
			return schemaError(ctx, tx, "insert outbox", err)
		}
		defer full.Close()
	}

	args := make([]any, 0, min(len(rows), chunk)*outboxColumns)
	for part := range slices.Chunk(rows, chunk) {
		args = args[:0]
		for i := range part {
			r := &part[i]
			headers, err := enc.encode(r.Headers)
			if err != nil {
				return fmt.Errorf("durable/sqlite: insert outbox: headers of %q: %w", r.ID, err)
			}
			args = append(args, r.ID, r.Destination, r.Topic, r.Key, headers, payloadOf(r.Payload),
				timeOr(r.CreatedAt, now), timeOr(r.DeliverAt, now), nullTime(r.ExpiresAt))
		}
		switch {
		case full != nil && len(part) == chunk:
			_, err = full.ExecContext(ctx, args...)
		case len(part) == 1:
			_, err = d.prep(ctx, tx, insertOneSQL).ExecContext(ctx, insertOneSQL, args...)
		default:
			_, err = tx.ExecContext(ctx, insertSQL(len(part)), args...)
		}
		if err != nil {
			if isDuplicate(err) {
				return d.duplicate(ctx, tx, rows, len(rows) > chunk)
			}
			return schemaError(ctx, tx, "insert outbox", err)
		}
	}
	return nil
}

// duplicate finds the first row of a failed call that is a duplicate, of an
// earlier row of the call or of a row that existed before it. The failed
// statement is undone already; with a savepoint (a multi-chunk call) it rolls
// back to it first, so the table holds exactly what existed before the call.
// Then it looks up the call's keys in one statement.
func (d *Dialect) duplicate(ctx context.Context, tx *sql.Tx, rows []dialects.OutboxRow, inSavepoint bool) error {
	type key struct{ dest, id string }
	pairs := make([][2]string, len(rows))
	for i, r := range rows {
		pairs[i] = [2]string{r.Destination, r.ID}
	}
	if inSavepoint {
		if _, err := tx.ExecContext(ctx, "ROLLBACK TO "+savepoint); err != nil {
			return fmt.Errorf("durable/sqlite: insert outbox: %w", err)
		}
	}
	found, err := queryAll(ctx, tx, "insert outbox", `SELECT o.destination, o.id FROM durable_outbox o
		JOIN json_each(?) j ON o.destination = json_extract(j.value, '$[0]') AND o.id = json_extract(j.value, '$[1]')`,
		[]any{jsonParam(pairs)}, func(rs *sql.Rows, k *key) error { return rs.Scan(&k.dest, &k.id) })
	if err != nil {
		return err
	}
	existing := make(map[key]bool, len(found))
	for _, k := range found {
		existing[k] = true
	}
	seen := make(map[key]bool, len(rows))
	for _, r := range rows {
		k := key{r.Destination, r.ID}
		if seen[k] || existing[k] {
			return &dialects.DuplicateError{Destination: r.Destination, ID: r.ID}
		}
		seen[k] = true
	}
	// The unique key failed, yet no duplicate is found: should not happen;
	// report it without naming an id.
	return &dialects.DuplicateError{Destination: rows[0].Destination}
}

// headerEncoder writes header maps as compact JSON without HTML escaping, so
// the stored text reads naturally in plain SQL.
type headerEncoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

func newHeaderEncoder() *headerEncoder {
	h := &headerEncoder{}
	h.enc = json.NewEncoder(&h.buf)
	h.enc.SetEscapeHTML(false)
	return h
}

func (h *headerEncoder) encode(m map[string]string) (string, error) {
	if len(m) == 0 {
		return "{}", nil
	}
	h.buf.Reset()
	if err := h.enc.Encode(m); err != nil {
		return "", err
	}
	return strings.TrimSuffix(h.buf.String(), "\n"), nil
}

const listColumns = "seq, id, destination, topic, key, headers, payload, created_at, deliver_at, expires_at, attempts, locked_by, locked_until, last_error, sent_at"

// ListOutbox returns the outbox rows that match q, in enqueue (seq) order.
// IDs are passed as one JSON parameter, so the list may be of any length.
//
// It reads through the dialect's one connection, so it waits for a
// transaction in progress to end; ListOutboxTx reads in that transaction.
func (d *Dialect) ListOutbox(ctx context.Context, q dialects.OutboxQuery) ([]dialects.OutboxRow, error) {
	return listOutbox(ctx, d.db, q)
}

// ListOutboxTx returns the outbox rows that match q as tx sees them, those it
// enqueued included, in enqueue (seq) order; see dialects.OutboxTxLister.
func (d *Dialect) ListOutboxTx(ctx context.Context, tx *sql.Tx, q dialects.OutboxQuery) ([]dialects.OutboxRow, error) {
	if tx == nil {
		return nil, errNilTx
	}
	return listOutbox(ctx, tx, q)
}

// listOutbox runs ListOutbox's statement through q: the database or a
// caller's transaction.
func listOutbox(ctx context.Context, q queryer, query dialects.OutboxQuery) ([]dialects.OutboxRow, error) {
	f := syntax.New(0)
	f.Eq("destination", query.Destination)
	f.In("id", query.IDs)
	stmt := f.Statement("SELECT "+listColumns+" FROM durable_outbox {where} ORDER BY seq {limit}", query.Limit)
	return queryAll(ctx, q, "list outbox", stmt, f.Args(), func(rs *sql.Rows, r *dialects.OutboxRow) error {
		return scanOutbox(rs, r)
	})
}

// preparedSQL are the hot statements with a fixed text that CheckSchema
// prepares once the schema is known to be there.
var preparedSQL = []string{insertOneSQL, sqlOutboxKeys, sqlClaim, sqlAckDelete, sqlInboxClaim, sqlInboxLock, sqlInboxFinishUpdate}

// prepare prepares preparedSQL on the dialect's database, once; it is called
// by CheckSchema, outside any transaction (with the dialect's one
// connection, preparing while a transaction holds it would wait for it).
// A statement that fails to prepare is simply not kept.
func (d *Dialect) prepare(ctx context.Context) {
	for _, q := range preparedSQL {
		if _, ok := d.stmts.Load(q); ok {
			continue
		}
		st, err := d.db.PrepareContext(ctx, q)
		if err != nil {
			continue
		}
		if _, loaded := d.stmts.LoadOrStore(q, st); loaded {
			_ = st.Close()
		}
	}
}

// prep returns q, through which query runs prepared once it is (see
// prepare): SQLite parses and plans a statement each time it is prepared,
// which costs about as much as running a one-row insert, and the dialect's
// one connection keeps the prepared ones. q is d.db or a *sql.Tx; other
// statements run through q unchanged.
func (d *Dialect) prep(ctx context.Context, q queryer, query string) queryer {
	v, ok := d.stmts.Load(query)
	if !ok {
		return q
	}
	st := v.(*sql.Stmt)
	if tx, ok := q.(*sql.Tx); ok {
		st = tx.StmtContext(ctx, st)
	}
	return prepared{queryer: q, query: query, st: st}
}

// prepared runs its query through st, and any other through queryer.
type prepared struct {
	queryer
	query string
	st    *sql.Stmt
}

func (p prepared) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if query == p.query {
		return p.st.QueryContext(ctx, args...)
	}
	return p.queryer.QueryContext(ctx, query, args...)
}

func (p prepared) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if query == p.query {
		return p.st.ExecContext(ctx, args...)
	}
	return p.queryer.ExecContext(ctx, query, args...)
}
