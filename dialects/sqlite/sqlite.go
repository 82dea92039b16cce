package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/internal/filter"
)

// Name is the dialect's name, as returned by Dialect.Name.
const Name = "sqlite"

// Dialect is durable's storage on SQLite through database/sql. It implements
// dialects.Dialect[*sql.Tx]. Create it with New; it is safe for concurrent
// use.
type Dialect struct {
	db *sql.DB
}

var _ dialects.Dialect[*sql.Tx] = (*Dialect)(nil)

// Option configures New.
type Option func(*config)

type config struct {
	skipDSNCheck bool
}

// SkipDSNCheck makes New accept a database without checking its connection
// settings (WAL, busy timeout, immediate transactions). Use it only where
// those cannot apply, such as an in-memory database in a test; without them,
// writers in other processes fail with SQLITE_BUSY.
func SkipDSNCheck() Option {
	return func(c *config) { c.skipDSNCheck = true }
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
// write lock (_txlock=immediate). See SkipDSNCheck.
//
// New sets db.SetMaxOpenConns(1): SQLite has one writer, and a single
// connection makes writers in this process queue in database/sql instead of
// failing with SQLITE_BUSY. A transaction therefore holds the only
// connection until it ends; see the package documentation, "One writer".
// Do not raise the limit afterwards.
//
// New does not check the schema; call CheckSchema once the migrations ran.
func New(db *sql.DB, opts ...Option) (*Dialect, error) {
	if db == nil {
		return nil, errors.New("durable/sqlite: New: nil *sql.DB")
	}
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	if !cfg.skipDSNCheck {
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

// DB returns the database the dialect works on.
func (d *Dialect) DB() *sql.DB { return d.db }

// Name returns "sqlite".
func (d *Dialect) Name() string { return Name }

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

// Commit commits tx.
func (d *Dialect) Commit(ctx context.Context, tx *sql.Tx) error {
	if tx == nil {
		return errNilTx
	}
	if err := tx.Commit(); err != nil {
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
	if err := tx.Rollback(); err != nil && !errors.Is(err, sql.ErrTxDone) {
		return fmt.Errorf("durable/sqlite: rollback: %w", err)
	}
	return nil
}

var errNilTx = errors.New("durable/sqlite: nil *sql.Tx")

// CheckSchema verifies that the durable migrations ran up to
// dialects.SchemaVersion, reading max(version) of durable_schema_version. A
// missing table, an older or a newer version is a *dialects.SchemaError.
func (d *Dialect) CheckSchema(ctx context.Context) error {
	have, err := schemaVersion(ctx, d.db)
	if err != nil && !isSchemaErr(err) {
		return fmt.Errorf("durable/sqlite: check schema: %w", err)
	}
	if have != dialects.SchemaVersion {
		return &dialects.SchemaError{Dialect: Name, Have: have, Want: dialects.SchemaVersion, Err: err}
	}
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
	return &dialects.SchemaError{Dialect: Name, Have: have, Want: dialects.SchemaVersion, Err: err}
}

// TimeLayout is the layout of every time durable stores in SQLite, always in
// UTC: the text SQLite's strftime('%Y-%m-%d %H:%M:%f') produces.
const TimeLayout = "2006-01-02 15:04:05.000"

func formatTime(t time.Time) string { return t.UTC().Format(TimeLayout) }

// parseTime reads a stored time. It accepts any number of fractional digits
// and, for values written by hand, an RFC 3339 form.
func parseTime(s string) (time.Time, error) {
	for _, layout := range []string{"2006-01-02 15:04:05.999999999", time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("durable/sqlite: cannot parse stored time %q (want %q, UTC)", s, TimeLayout)
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
	List:  func(vals []string) any { return jsonParam(vals) },
	Time:  func(t time.Time) any { return formatTime(t) },
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
	// ChunkRows is how many outbox rows one INSERT statement carries;
	// InsertOutbox splits larger calls into statements of this size.
	ChunkRows = maxParams / outboxColumns

	insertHead = "INSERT INTO durable_outbox (id, destination, topic, key, headers, payload, created_at, deliver_at, expires_at) VALUES "
	insertRow  = "(?,?,?,?,?,?,?,?,?)"

	savepoint = "durable_insert_outbox"
)

// chunkRows is ChunkRows; tests lower it to exercise chunking cheaply.
var chunkRows = ChunkRows

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
// Rows go in as multi-row INSERT statements of up to ChunkRows rows each (one
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
			_, err = tx.ExecContext(ctx, insertOneSQL, args...)
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
func (d *Dialect) ListOutbox(ctx context.Context, q dialects.OutboxQuery) ([]dialects.OutboxRow, error) {
	f := syntax.New(0)
	f.Eq("destination", q.Destination)
	f.In("id", q.IDs)
	stmt := f.Statement("SELECT "+listColumns+" FROM durable_outbox {where} ORDER BY seq {limit}", q.Limit)
	return queryAll(ctx, d.db, "list outbox", stmt, f.Args(), func(rs *sql.Rows, r *dialects.OutboxRow) error {
		return scanOutbox(rs, r)
	})
}
