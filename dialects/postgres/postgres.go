package postgres

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/internal/filter"
	"github.com/durable-go/durable/dialects/internal/keyscan"
	"github.com/durable-go/durable/internal/pgcopy"
)

// name is what Name returns and what errors report as the dialect.
const name = "postgres"

// OutboxChannel is the NOTIFY channel on which NotifyOutbox wakes relays;
// the payload is the destination's name. Notifications are hints: a relay
// still polls, because a notification is lost while it is disconnected and
// does not pass through transaction-mode poolers. The channel is the same
// whatever Config.Schema says: dialects on two schemas of one database wake
// each other's relays, which costs a poll and nothing more.
const OutboxChannel = "durable_outbox"

// copyThreshold is the batch size from which the pgx flavour writes outbox
// rows with COPY instead of one INSERT … FROM unnest statement; see
// pgcopy.Threshold for how it was chosen.
const copyThreshold = pgcopy.Threshold

// maxIdentifierLen is Postgres's NAMEDATALEN-1: longer names are silently
// truncated by the server, so they are refused instead.
const maxIdentifierLen = 63

// Config configures a dialect built by New or NewSQL. A nil *Config, like
// the zero Config, finds the durable tables through the connection's
// search_path.
type Config struct {
	// Schema, when set, makes the dialect use the durable tables of this
	// schema instead of finding them through the connection's search_path:
	// every statement then qualifies the tables with it. The name is used
	// as a quoted identifier, so it is case-sensitive and may hold any
	// character: "Durable" is the schema created with CREATE SCHEMA
	// "Durable". A name longer than 63 bytes or holding a NUL byte is
	// refused by New and NewSQL with an error matching ErrSchemaName.
	// Empty: search_path.
	Schema string
}

// ErrSchemaName is matched (errors.Is) by the error New and NewSQL return
// for a Config.Schema that is not a valid Postgres identifier.
var ErrSchemaName = errors.New("durable: postgres: invalid Config.Schema")

// core is the part shared by both flavours: the statements, with the schema
// substituted, and the code that builds their arguments and reads their rows.
// Its exported methods, those that take no transaction, are the flavours'
// own (promoted); each flavour adds the methods that take its transaction
// type.
type core struct {
	root  querier          // the pool or database, for statements outside a transaction
	conn  ownConn          // lends a connection of the pool or database
	q     *queries         // every statement, with the schema substituted
	table pgx.Identifier   // durable_outbox, qualified when a schema was given
	keys  *keyscan.Cursors // where each destination's next claim visits keys
}

// newCore returns the core for root and conn with the tables of schema
// (search_path when empty), or an error matching ErrSchemaName.
func newCore(root querier, conn ownConn, cfg *Config) (core, error) {
	var schema string
	if cfg != nil {
		schema = cfg.Schema
	}
	c := core{root: root, conn: conn, table: pgx.Identifier{"durable_outbox"}, keys: new(keyscan.Cursors)}
	qualifier := ""
	if schema != "" {
		if err := validSchema(schema); err != nil {
			return core{}, err
		}
		qualifier = pgx.Identifier{schema}.Sanitize() + "."
		c.table = pgx.Identifier{schema, "durable_outbox"}
	}
	c.q = newQueries(qualifier)
	return c, nil
}

func validSchema(s string) error {
	switch {
	case len(s) > maxIdentifierLen:
		return fmt.Errorf("%w: %q is longer than %d bytes", ErrSchemaName, s, maxIdentifierLen)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("%w: %q holds a NUL byte", ErrSchemaName, s)
	}
	return nil
}

// querier is what core needs from a connection, a pool or a transaction of
// either flavour; pgxQuerier and sqlQuerier adapt them.
type querier interface {
	exec(ctx context.Context, sql string, args ...any) error
	query(ctx context.Context, sql string, args ...any) (rows, error)
}

// rows is the common subset of pgx.Rows and *sql.Rows.
type rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// isSchemaCode reports whether err is the server saying that a table, a
// column or a schema does not exist: every statement of the dialect touches
// only durable tables, so the durable schema is missing or damaged.
func isSchemaCode(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "42P01", // undefined_table
		"42703", // undefined_column
		"3F000": // invalid_schema_name
		return true
	}
	return false
}

// versionLookupTimeout bounds the version lookup of opError, which needs a
// connection of its own while the caller's transaction holds one.
const versionLookupTimeout = 2 * time.Second

// opError turns a missing durable table, column or schema into a
// *dialects.SchemaError wrapping the server's error, and any other error of
// op into one that names it. The SchemaError carries the recorded schema
// version, read outside the caller's transaction (which the error aborted);
// 0 when it cannot be read.
func (c *core) opError(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if !isSchemaCode(err) {
		return fmt.Errorf("durable: postgres: %s: %w", op, err)
	}
	lctx, cancel := context.WithTimeout(ctx, versionLookupTimeout)
	defer cancel()
	have, verr := c.version(lctx)
	if verr != nil {
		have = 0
	}
	return &dialects.SchemaError{Dialect: name, Have: have, Want: dialects.SchemaVersion, Err: err}
}

// isUniqueViolation reports whether err is a unique_violation (23505).
func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

// isSerializationFailure reports whether err is a serialization_failure
// (40001).
func isSerializationFailure(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "40001"
}

// Name returns "postgres".
func (c *core) Name() string { return name }

// CheckSchema verifies that the durable migrations ran up to
// dialects.SchemaVersion, and returns a *dialects.SchemaError naming the
// missing migration otherwise. A newer schema is accepted (see
// dialects.SchemaVersion, "Compatibility promise").
func (c *core) CheckSchema(ctx context.Context) error {
	have, err := c.version(ctx)
	if err != nil {
		if isSchemaCode(err) {
			return &dialects.SchemaError{Dialect: name, Have: 0, Want: dialects.SchemaVersion, Err: err}
		}
		return fmt.Errorf("durable: postgres: check schema: %w", err)
	}
	if have < dialects.SchemaVersion {
		return &dialects.SchemaError{Dialect: name, Have: have, Want: dialects.SchemaVersion}
	}
	return nil
}

// version reads the recorded schema version through the dialect's pool or
// database; 0 when the version table is empty.
func (c *core) version(ctx context.Context) (int, error) {
	rs, err := c.root.query(ctx, c.q.schemaVersion)
	if err != nil {
		return 0, err
	}
	var have int
	err = scanOne(rs, &have)
	return have, err
}

// scanOne reads the single row of rs into dest and closes rs.
func scanOne(rs rows, dest ...any) error {
	defer rs.Close()
	if !rs.Next() {
		if err := rs.Err(); err != nil {
			return err
		}
		return sql.ErrNoRows
	}
	if err := rs.Scan(dest...); err != nil {
		return err
	}
	for rs.Next() { // read to the end, where a late error shows in Err
	}
	return rs.Err()
}

// scanAll reads every row of rs with scan and closes rs.
func scanAll[T any](rs rows, scan func(rs rows, v *T) error) ([]T, error) {
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

// queryAll runs stmt through q and reads every row with scan; errors name op.
func queryAll[T any](ctx context.Context, c *core, q querier, op, stmt string, args []any, scan func(rs rows, v *T) error) ([]T, error) {
	rs, err := q.query(ctx, stmt, args...)
	if err != nil {
		return nil, c.opError(ctx, op, err)
	}
	out, err := scanAll(rs, scan)
	if err != nil {
		return nil, c.opError(ctx, op, err)
	}
	return out, nil
}

// scanValue scans a row of one column.
func scanValue[T any](rs rows, v *T) error { return rs.Scan(v) }

// count runs through q a statement whose single result row is a count.
func (c *core) count(ctx context.Context, q querier, op, stmt string, args ...any) (int, error) {
	var n int64
	rs, err := q.query(ctx, stmt, args...)
	if err == nil {
		err = scanOne(rs, &n)
	}
	if err != nil {
		return 0, c.opError(ctx, op, err)
	}
	return int(n), nil
}

// syntax is how the statements write what package filter builds.
var syntax = filter.Syntax{
	Param: func(n int) string { return "$" + strconv.Itoa(n) },
	In:    func(col, param string) string { return col + " = ANY(" + param + "::text[])" },
	// strpos rather than ILIKE: the text needs no escaping of % and _.
	Contains: func(col, param string) string { return "strpos(lower(" + col + "), lower(" + param + "::text)) > 0" },
	List:     func(vals []string) any { return vals },
	Time:     func(t time.Time) any { return t },
}

// micros converts a duration to the microseconds the statements take,
// rounding a positive remainder up so that a tiny positive duration stays
// positive.
func micros(d time.Duration) int64 {
	us := d / time.Microsecond
	if d%time.Microsecond > 0 {
		us++
	}
	return int64(us)
}

// emptyPayload stands in for a nil payload: the column is NOT NULL and a nil
// []byte would be sent as NULL.
var emptyPayload = []byte{}

func payloadOf(p []byte) []byte {
	if p == nil {
		return emptyPayload
	}
	return p
}

// headersJSON encodes headers as a JSON object; nil is "{}".
func headersJSON(h map[string]string) (string, error) {
	if len(h) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(h)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// nullTime is NULL for the zero time.
func nullTime(t time.Time) pgtype.Timestamptz {
	return pgtype.Timestamptz{Time: t, Valid: !t.IsZero()}
}

// utc returns the time of t in UTC, or the zero time for NULL.
func utc(t sql.NullTime) time.Time {
	if !t.Valid {
		return time.Time{}
	}
	return t.Time.UTC()
}

// insertUnnest writes rows with one INSERT … FROM unnest statement. When
// fewer rows went in than were given, it deletes those that did and returns
// the DuplicateError; the transaction stays usable throughout.
func (c *core) insertUnnest(ctx context.Context, q querier, rows []dialects.OutboxRow) error {
	n := len(rows)
	if n == 1 {
		r := &rows[0]
		h, err := headersJSON(r.Headers)
		if err != nil {
			return fmt.Errorf("durable: postgres: insert outbox: headers of %q: %w", r.ID, err)
		}
		seqs, err := queryAll(ctx, c, q, "insert outbox", c.q.insertOutboxOne,
			[]any{r.ID, r.Destination, r.Topic, r.Key, h, payloadOf(r.Payload),
				nullTime(r.CreatedAt), nullTime(r.DeliverAt), nullTime(r.ExpiresAt)}, scanValue[int64])
		if err != nil {
			return err
		}
		if len(seqs) == 1 {
			return nil
		}
		return c.duplicate(ctx, q, rows, nil, nil)
	}
	var (
		ids, dests, topics, keys, headers = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		payloads                          = make([][]byte, n)
		created, deliver, expires         = make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n)
	)
	for i := range rows {
		r := &rows[i]
		h, err := headersJSON(r.Headers)
		if err != nil {
			return fmt.Errorf("durable: postgres: insert outbox: headers of %q: %w", r.ID, err)
		}
		ids[i], dests[i], topics[i], keys[i], headers[i] = r.ID, r.Destination, r.Topic, r.Key, h
		payloads[i] = payloadOf(r.Payload)
		created[i], deliver[i], expires[i] = nullTime(r.CreatedAt), nullTime(r.DeliverAt), nullTime(r.ExpiresAt)
	}
	seqs, err := queryAll(ctx, c, q, "insert outbox", c.q.insertOutbox,
		[]any{ids, dests, topics, keys, headers, payloads, created, deliver, expires}, scanValue[int64])
	if err != nil {
		return err
	}
	if len(seqs) == n {
		return nil
	}
	if len(seqs) > 0 {
		if err := q.exec(ctx, c.q.deleteSeqs, seqs); err != nil {
			return c.opError(ctx, "insert outbox: undo after a duplicate", err)
		}
	}
	return c.duplicate(ctx, q, rows, dests, ids)
}

// outboxKey identifies an outbox row.
type outboxKey struct{ destination, id string }

func scanOutboxKey(rs rows, k *outboxKey) error { return rs.Scan(&k.destination, &k.id) }

// duplicate builds the DuplicateError of a failed call whose rows are no
// longer in the transaction: the first row, in call order, that repeats an
// earlier row of the call or a row already stored. dests and ids are the
// rows' columns, or nil to be built here.
func (c *core) duplicate(ctx context.Context, q querier, rows []dialects.OutboxRow, dests, ids []string) error {
	if dests == nil {
		dests, ids = make([]string, len(rows)), make([]string, len(rows))
		for i := range rows {
			dests[i], ids[i] = rows[i].Destination, rows[i].ID
		}
	}
	found, err := queryAll(ctx, c, q, "insert outbox: find duplicate", c.q.existing, []any{dests, ids}, scanOutboxKey)
	if err != nil {
		return err
	}
	stored := make(map[outboxKey]bool, len(found))
	for _, k := range found {
		stored[k] = true
	}
	seen := make(map[outboxKey]bool, len(rows))
	for i := range rows {
		k := outboxKey{rows[i].Destination, rows[i].ID}
		if stored[k] || seen[k] {
			return &dialects.DuplicateError{Destination: k.destination, ID: k.id}
		}
		seen[k] = true
	}
	// The conflicting row is not visible to this transaction (a snapshot
	// older than its commit) or was deleted since: the database refused a
	// row without our being able to say which.
	dup := &dialects.DuplicateError{Destination: rows[0].Destination}
	for i := range rows {
		if rows[i].Destination != dup.Destination {
			dup.Destination = ""
			break
		}
	}
	return dup
}

// ListOutbox returns the rows of durable_outbox matching q in enqueue (seq)
// order, every column included; NULL times are zero.
func (c *core) ListOutbox(ctx context.Context, q dialects.OutboxQuery) ([]dialects.OutboxRow, error) {
	return c.listOutbox(ctx, c.root, q)
}

// listOutbox runs ListOutbox's statement through db: the pool or database,
// or a caller's transaction (ListOutboxTx).
func (c *core) listOutbox(ctx context.Context, db querier, q dialects.OutboxQuery) ([]dialects.OutboxRow, error) {
	f := syntax.New(0)
	f.Eq("destination", q.Destination)
	f.In("id", q.IDs)
	return queryAll(ctx, c, db, "list outbox", f.Statement(c.q.listOutbox, q.Limit), f.Args(), func(rs rows, r *dialects.OutboxRow) error {
		return scanOutbox(rs, r)
	})
}

func (c *core) notifyOutbox(ctx context.Context, q querier, destinations []string) error {
	if len(destinations) == 0 {
		return nil
	}
	if err := q.exec(ctx, sqlNotifyOutbox, destinations); err != nil {
		return fmt.Errorf("durable: postgres: notify outbox: %w", err)
	}
	return nil
}
