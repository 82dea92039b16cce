package postgres

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/durable-go/durable/dialects"
)

// name is what Name returns and what errors report as the dialect.
const name = "postgres"

// OutboxChannel is the NOTIFY channel on which NotifyOutbox wakes relays;
// the payload is the destination's name. Notifications are hints: a relay
// still polls, because a notification is lost while it is disconnected and
// does not pass through transaction-mode poolers. The channel is the same
// whatever WithSchema says: dialects on two schemas of one database wake each
// other's relays, which costs a poll and nothing more.
const OutboxChannel = "durable_outbox"

// CopyThreshold is the batch size from which the pgx flavour writes outbox
// rows with COPY instead of one INSERT … FROM unnest statement. COPY costs
// three more round trips (savepoint, describe, release) and a subtransaction,
// so small batches are faster as one statement; per row it is cheaper (no ON
// CONFLICT probe, binary rows, no RETURNING). Measured on the project's
// 2-core machine (BenchmarkInsertOutbox, and both paths interleaved, 200-byte
// payloads), the two cross between 100 and 250 rows and COPY is about 1.4
// times faster from 500 rows on, 1.6 times at 2,000. The threshold sits at
// 500 rather than at the crossing so that the subtransaction, which Postgres
// tracks per transaction, is spent only on true bulk writes.
const CopyThreshold = 500

// maxIdentifierLen is Postgres's NAMEDATALEN-1: longer names are silently
// truncated by the server, so they are refused instead.
const maxIdentifierLen = 63

// Option configures a dialect built by New or NewSQL.
type Option func(*config)

type config struct {
	schema    string
	schemaSet bool
}

// WithSchema makes the dialect use the durable tables of schema name instead
// of finding them through the connection's search_path. The name is used as
// a quoted identifier, so it is case-sensitive and may hold any character:
// WithSchema("Durable") is the schema created with CREATE SCHEMA "Durable".
// An empty name, one longer than 63 bytes or one holding a NUL byte is
// invalid, and every operation of the dialect then returns an error saying so.
func WithSchema(name string) Option {
	return func(c *config) { c.schema, c.schemaSet = name, true }
}

// core is the part shared by both flavours: the statements, with the schema
// substituted, and the code that builds their arguments and reads their rows.
type core struct {
	root  querier // the pool or database, for statements outside a transaction
	q     queries
	table pgx.Identifier // durable_outbox, qualified when a schema was given
	err   error          // an invalid option; returned by every operation
}

func newCore(root querier, opts []Option) core {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	c := core{root: root, table: pgx.Identifier{"durable_outbox"}}
	qualifier := ""
	if cfg.schemaSet {
		c.err = validSchema(cfg.schema)
		qualifier = pgx.Identifier{cfg.schema}.Sanitize() + "."
		c.table = pgx.Identifier{cfg.schema, "durable_outbox"}
	}
	c.q = newQueries(qualifier)
	return c
}

func validSchema(s string) error {
	switch {
	case s == "":
		return errors.New("durable: postgres: WithSchema: empty schema name")
	case len(s) > maxIdentifierLen:
		return fmt.Errorf("durable: postgres: WithSchema: schema name %q is longer than %d bytes", s, maxIdentifierLen)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("durable: postgres: WithSchema: schema name %q holds a NUL byte", s)
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

func (c *core) checkSchema(ctx context.Context) error {
	if c.err != nil {
		return c.err
	}
	have, err := c.version(ctx)
	if err != nil {
		if isSchemaCode(err) {
			return &dialects.SchemaError{Dialect: name, Have: 0, Want: dialects.SchemaVersion, Err: err}
		}
		return fmt.Errorf("durable: postgres: check schema: %w", err)
	}
	if have != dialects.SchemaVersion {
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

// emptyPayload stands in for a nil payload: the column is NOT NULL and a nil
// []byte would be sent as NULL.
var emptyPayload = []byte{}

func payloadOf(r *dialects.OutboxRow) []byte {
	if r.Payload == nil {
		return emptyPayload
	}
	return r.Payload
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

// insertUnnest writes rows with one INSERT … FROM unnest statement. When
// fewer rows went in than were given, it deletes those that did and returns
// the DuplicateError; the transaction stays usable throughout.
func (c *core) insertUnnest(ctx context.Context, q querier, rows []dialects.OutboxRow) error {
	n := len(rows)
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
		payloads[i] = payloadOf(r)
		created[i], deliver[i], expires[i] = nullTime(r.CreatedAt), nullTime(r.DeliverAt), nullTime(r.ExpiresAt)
	}
	rs, err := q.query(ctx, c.q.insertOutbox, ids, dests, topics, keys, headers, payloads, created, deliver, expires)
	if err != nil {
		return c.opError(ctx, "insert outbox", err)
	}
	seqs := make([]int64, 0, n)
	err = func() error {
		defer rs.Close()
		for rs.Next() {
			var seq int64
			if err := rs.Scan(&seq); err != nil {
				return err
			}
			seqs = append(seqs, seq)
		}
		return rs.Err()
	}()
	if err != nil {
		return c.opError(ctx, "insert outbox", err)
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
	rs, err := q.query(ctx, c.q.existing, dests, ids)
	if err != nil {
		return c.opError(ctx, "insert outbox: find duplicate", err)
	}
	stored := make(map[outboxKey]bool)
	func() {
		defer rs.Close()
		for rs.Next() {
			var k outboxKey
			if err = rs.Scan(&k.destination, &k.id); err != nil {
				return
			}
			stored[k] = true
		}
		err = rs.Err()
	}()
	if err != nil {
		return c.opError(ctx, "insert outbox: find duplicate", err)
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

// listQuery builds the ListOutbox statement and its arguments.
func (c *core) listQuery(f dialects.OutboxQuery) (string, []any) {
	var (
		b     strings.Builder
		args  []any
		where []string
	)
	b.WriteString(c.q.listOutbox)
	if f.Destination != "" {
		args = append(args, f.Destination)
		where = append(where, fmt.Sprintf("destination = $%d", len(args)))
	}
	if len(f.IDs) > 0 {
		args = append(args, f.IDs)
		where = append(where, fmt.Sprintf("id = ANY($%d::text[])", len(args)))
	}
	if len(where) > 0 {
		b.WriteString("\nWHERE ")
		b.WriteString(strings.Join(where, " AND "))
	}
	b.WriteString("\nORDER BY seq")
	if f.Limit > 0 {
		args = append(args, f.Limit)
		fmt.Fprintf(&b, "\nLIMIT $%d", len(args))
	}
	return b.String(), args
}

func (c *core) listOutbox(ctx context.Context, f dialects.OutboxQuery) ([]dialects.OutboxRow, error) {
	if c.err != nil {
		return nil, c.err
	}
	text, args := c.listQuery(f)
	rs, err := c.root.query(ctx, text, args...)
	if err != nil {
		return nil, c.opError(ctx, "list outbox", err)
	}
	defer rs.Close()
	var out []dialects.OutboxRow
	for rs.Next() {
		var (
			r                            dialects.OutboxRow
			headers                      []byte
			expires, lockedUntil, sentAt sql.NullTime
			lockedBy, lastError          sql.NullString
		)
		err := rs.Scan(&r.Seq, &r.ID, &r.Destination, &r.Topic, &r.Key, &headers, &r.Payload,
			&r.CreatedAt, &r.DeliverAt, &expires, &r.Attempts, &lockedBy, &lockedUntil, &lastError, &sentAt)
		if err != nil {
			return nil, c.opError(ctx, "list outbox", err)
		}
		if err := json.Unmarshal(headers, &r.Headers); err != nil {
			return nil, fmt.Errorf("durable: postgres: list outbox: headers of %q: %w", r.ID, err)
		}
		r.ExpiresAt, r.LockedUntil, r.SentAt = expires.Time, lockedUntil.Time, sentAt.Time
		r.LockedBy, r.LastError = lockedBy.String, lastError.String
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		return nil, c.opError(ctx, "list outbox", err)
	}
	return out, nil
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
