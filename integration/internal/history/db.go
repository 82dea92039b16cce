package history

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// PgxQuerier is satisfied by *pgxpool.Pool, *pgx.Conn and pgx.Tx.
type PgxQuerier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// SQLQuerier is satisfied by *sql.DB, *sql.Conn and *sql.Tx (SQLite, or
// Postgres through database/sql).
type SQLQuerier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// EffectsTable returns the statements that create an effects table named
// table, for Postgres and SQLite alike: columns message_id and source, a
// creation time, and a non-unique index on message_id. There is
// deliberately no unique constraint, so a double effect is two rows that
// CountEffects reports. Run each statement with Exec. On Postgres table may
// be schema-qualified ("s.effects").
func EffectsTable(table string) []string {
	last := table
	if i := strings.LastIndexByte(table, '.'); i >= 0 {
		last = table[i+1:]
	}
	return []string{
		"CREATE TABLE IF NOT EXISTS " + quoteIdent(table) + " (\n" +
			"\tmessage_id TEXT NOT NULL,\n" +
			"\tsource TEXT NOT NULL DEFAULT '',\n" +
			"\tcreated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP\n)",
		"CREATE INDEX IF NOT EXISTS " + quoteIdent(last+"_message_id") + " ON " + quoteIdent(table) + " (message_id)",
	}
}

// InsertEffect returns the statement a test handler runs, with the message
// id and its source as $1 and $2 (valid on Postgres and on modernc SQLite),
// to record one effect in a table made by EffectsTable.
func InsertEffect(table string) string {
	return "INSERT INTO " + quoteIdent(table) + " (message_id, source) VALUES ($1, $2)"
}

// CountEffects counts the rows of table by column (the message id) through
// pgx. Ids are read as text, so a uuid column works too.
func CountEffects(ctx context.Context, q PgxQuerier, table, column string) (map[string]int, error) {
	rows, err := q.Query(ctx, countQuery(table, column))
	if err != nil {
		return nil, fmt.Errorf("history: count effects in %s: %w", table, err)
	}
	return collectCounts(pgxRows{rows}, table)
}

// CountEffectsSQL is CountEffects through database/sql.
func CountEffectsSQL(ctx context.Context, q SQLQuerier, table, column string) (map[string]int, error) {
	rows, err := q.QueryContext(ctx, countQuery(table, column))
	if err != nil {
		return nil, fmt.Errorf("history: count effects in %s: %w", table, err)
	}
	return collectCounts(sqlRows{rows}, table)
}

// LoadMessages runs query through pgx and returns its rows as messages. The
// query must return three text columns: id, source, destination (an empty
// string for an unknown source). Typically it reads the senders' business rows,
// which commit together with the enqueue:
//
//	SELECT message_id, 'orders', 'billing' FROM orders
func LoadMessages(ctx context.Context, q PgxQuerier, query string, args ...any) ([]Message, error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("history: load messages: %w", err)
	}
	return collectMessages(pgxRows{rows})
}

// LoadMessagesSQL is LoadMessages through database/sql.
func LoadMessagesSQL(ctx context.Context, q SQLQuerier, query string, args ...any) ([]Message, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("history: load messages: %w", err)
	}
	return collectMessages(sqlRows{rows})
}

func countQuery(table, column string) string {
	col := quoteIdent(column)
	return "SELECT CAST(" + col + " AS TEXT), COUNT(*) FROM " + quoteIdent(table) + " GROUP BY " + col
}

// rows is what pgx.Rows and *sql.Rows have in common.
type rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

type pgxRows struct{ pgx.Rows }

type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { r.Rows.Close() }

func collectCounts(r rows, table string) (map[string]int, error) {
	defer r.Close()
	counts := make(map[string]int)
	for r.Next() {
		var id string
		var n int64
		if err := r.Scan(&id, &n); err != nil {
			return nil, fmt.Errorf("history: count effects in %s: %w", table, err)
		}
		counts[id] += int(n)
	}
	if err := r.Err(); err != nil {
		return nil, fmt.Errorf("history: count effects in %s: %w", table, err)
	}
	return counts, nil
}

func collectMessages(r rows) ([]Message, error) {
	defer r.Close()
	var msgs []Message
	for r.Next() {
		var m Message
		if err := r.Scan(&m.ID, &m.Source, &m.Destination); err != nil {
			return nil, fmt.Errorf("history: load messages (want id, source, destination as text): %w", err)
		}
		msgs = append(msgs, m)
	}
	if err := r.Err(); err != nil {
		return nil, fmt.Errorf("history: load messages: %w", err)
	}
	return msgs, nil
}

// quoteIdent quotes a possibly dotted identifier for Postgres and SQLite.
func quoteIdent(name string) string {
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = `"` + strings.ReplaceAll(p, `"`, `""`) + `"`
	}
	return strings.Join(parts, ".")
}
