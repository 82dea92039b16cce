package migrations_test

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/durable-go/durable/migrations"
)

// toolTables are the migration tools' own version tables; a snapshot leaves
// them out, since each tool creates only its own.
var toolTables = []string{migrations.GooseTable, migrations.MigrateTable}

// snapshot describes the schema durable's migrations own, read from the
// database catalog, as sorted lines. Two databases have the same schema iff
// their snapshots are equal. It covers every object in the connection's
// current schema (Postgres) or database file (SQLite) except the tools'
// version tables and what belongs to them.
func snapshot(t testing.TB, dialect string, db *sql.DB) []string {
	t.Helper()
	var out []string
	switch dialect {
	case migrations.Postgres:
		out = pgSnapshot(t, db)
	case migrations.SQLite:
		out = sqliteSnapshot(t, db)
	default:
		t.Fatalf("snapshot: unknown dialect %q", dialect)
	}
	slices.Sort(out)
	return out
}

// pgQueries each return one text column, one line per catalog object, for
// the current schema; $1 is the list of tables to leave out.
var pgQueries = []string{
	// Tables, views, sequences and standalone composite types.
	`SELECT format('relation %s kind=%s persistence=%s rls=%s comment=%s view=%s',
	        c.relname, c.relkind, c.relpersistence, c.relrowsecurity,
	        coalesce(obj_description(c.oid, 'pg_class'), ''),
	        CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) ELSE '' END)
	 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
	   AND c.relname <> ALL ($1)`,
	// Columns: type with modifiers, nullability, default, identity,
	// generation, collation, comment.
	`SELECT format('column %s.%s #%s type=%s notnull=%s default=%s identity=%s generated=%s collation=%s comment=%s',
	        c.relname, a.attname, a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull,
	        coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity, a.attgenerated,
	        coalesce(co.collname, ''), coalesce(col_description(c.oid, a.attnum), ''))
	 FROM pg_attribute a
	 JOIN pg_class c ON c.oid = a.attrelid
	 JOIN pg_namespace n ON n.oid = c.relnamespace
	 LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
	 LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 0
	      AND co.collname <> 'default'
	 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
	   AND a.attnum > 0 AND NOT a.attisdropped AND c.relname <> ALL ($1)`,
	// The same columns as information_schema reports them.
	`SELECT format('information_schema column %s.%s #%s %s/%s nullable=%s default=%s identity=%s %s %s %s',
	        table_name, column_name, ordinal_position, data_type, udt_name, is_nullable,
	        coalesce(column_default, ''), is_identity, coalesce(identity_generation, ''),
	        coalesce(identity_start, ''), coalesce(identity_increment, ''))
	 FROM information_schema.columns
	 WHERE table_schema = current_schema() AND table_name <> ALL ($1)`,
	// Constraints: primary keys, unique, check, foreign keys, exclusion,
	// and (Postgres 18) not-null.
	`SELECT format('constraint %s on %s type=%s %s deferrable=%s deferred=%s valid=%s',
	        con.conname, c.relname, con.contype, pg_get_constraintdef(con.oid, true),
	        con.condeferrable, con.condeferred, con.convalidated)
	 FROM pg_constraint con
	 JOIN pg_class c ON c.oid = con.conrelid
	 JOIN pg_namespace n ON n.oid = c.relnamespace
	 WHERE n.nspname = current_schema() AND c.relname <> ALL ($1)`,
	// Indexes with their full definitions (columns, order, predicate,
	// uniqueness, method).
	`SELECT format('index %s on %s: %s primary=%s valid=%s comment=%s',
	        i.relname, t.relname, pg_get_indexdef(i.oid), x.indisprimary, x.indisvalid,
	        coalesce(obj_description(i.oid, 'pg_class'), ''))
	 FROM pg_index x
	 JOIN pg_class i ON i.oid = x.indexrelid
	 JOIN pg_class t ON t.oid = x.indrelid
	 JOIN pg_namespace n ON n.oid = t.relnamespace
	 WHERE n.nspname = current_schema() AND t.relname <> ALL ($1)`,
	// Sequences, with the column that owns them (identity or serial).
	`SELECT format('sequence %s %s start=%s increment=%s min=%s max=%s cache=%s cycle=%s owner=%s',
	        c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin,
	        s.seqmax, s.seqcache, s.seqcycle, coalesce(o.relname || '.' || a.attname, ''))
	 FROM pg_sequence s
	 JOIN pg_class c ON c.oid = s.seqrelid
	 JOIN pg_namespace n ON n.oid = c.relnamespace
	 LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
	      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
	 LEFT JOIN pg_class o ON o.oid = d.refobjid
	 LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
	 WHERE n.nspname = current_schema() AND (o.relname IS NULL OR o.relname <> ALL ($1))`,
	// Triggers written by the migrations (not the ones behind constraints).
	`SELECT format('trigger %s on %s: %s', tg.tgname, c.relname, pg_get_triggerdef(tg.oid, true))
	 FROM pg_trigger tg
	 JOIN pg_class c ON c.oid = tg.tgrelid
	 JOIN pg_namespace n ON n.oid = c.relnamespace
	 WHERE n.nspname = current_schema() AND NOT tg.tgisinternal AND c.relname <> ALL ($1)`,
	// Functions and procedures.
	`SELECT format('function %s(%s) kind=%s: %s', p.proname,
	        pg_get_function_identity_arguments(p.oid), p.prokind,
	        CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) ELSE '' END)
	 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
	 WHERE n.nspname = current_schema()`,
	// Enums, domains and ranges.
	`SELECT format('type %s kind=%s %s', t.typname, t.typtype,
	        CASE t.typtype
	          WHEN 'e' THEN (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
	                         FROM pg_enum e WHERE e.enumtypid = t.oid)
	          WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod)
	          ELSE '' END)
	 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
	 WHERE n.nspname = current_schema() AND t.typtype IN ('e', 'd', 'r', 'm')`,
}

func pgSnapshot(t testing.TB, db *sql.DB) []string {
	t.Helper()
	ctx := context.Background()
	var schema string
	if err := db.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	var out []string
	for _, q := range pgQueries {
		var args []any
		if strings.Contains(q, "$1") {
			args = append(args, toolTables)
		}
		out = append(out, queryLines(t, db, q, args...)...)
	}
	// Catalog functions qualify names outside the search path; the schema
	// name differs per test database, so drop it.
	for i, l := range out {
		out[i] = strings.ReplaceAll(l, schema+".", "")
	}
	return append(out, versionRows(t, db, `SELECT to_regclass('durable_schema_version') IS NOT NULL`)...)
}

func sqliteSnapshot(t testing.TB, db *sql.DB) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	var tables []string
	rows, err := db.QueryContext(ctx, `SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_schema
		WHERE name NOT LIKE 'sqlite\_%' ESCAPE '\' ORDER BY type, name`)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	for rows.Next() {
		var typ, name, tbl, text string
		if err := rows.Scan(&typ, &name, &tbl, &text); err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		if slices.Contains(toolTables, tbl) {
			continue
		}
		out = append(out, fmt.Sprintf("%s %s on %s: %s", typ, name, tbl, text))
		if typ == "table" {
			tables = append(tables, name)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	rows.Close()
	for _, pragma := range []string{"user_version", "application_id"} {
		// Listed when set, so an empty database has an empty snapshot.
		out = append(out, queryLines(t, db, `SELECT '`+pragma+` ' || `+pragma+` FROM pragma_`+pragma+` WHERE `+pragma+` <> 0`)...)
	}
	for _, tbl := range tables {
		out = append(out, queryLines(t, db, `SELECT format('table %s type=%s ncol=%d without_rowid=%d strict=%d', name, type, ncol, wr, strict)
			FROM pragma_table_list WHERE schema = 'main' AND name = ?`, tbl)...)
		out = append(out, queryLines(t, db, `SELECT format('column %s.%s #%d type=%s notnull=%d default=%s pk=%d hidden=%d',
			?1, name, cid, type, "notnull", coalesce(dflt_value, 'NULL'), pk, hidden) FROM pragma_table_xinfo(?1)`, tbl)...)
		out = append(out, queryLines(t, db, `SELECT format('foreign key %s #%d.%d %s -> %s.%s on update %s on delete %s match %s',
			?1, id, seq, "from", "table", coalesce("to", ''), on_update, on_delete, "match") FROM pragma_foreign_key_list(?1)`, tbl)...)
		for _, idx := range queryLines(t, db, `SELECT name FROM pragma_index_list(?)`, tbl) {
			out = append(out, queryLines(t, db, `SELECT format('index %s on %s unique=%d origin=%s partial=%d', name, ?1, "unique", origin, partial)
				FROM pragma_index_list(?1) WHERE name = ?2`, tbl, idx)...)
			out = append(out, queryLines(t, db, `SELECT format('index column %s #%d cid=%d name=%s desc=%d coll=%s key=%d',
				?1, seqno, cid, coalesce(name, CASE cid WHEN -1 THEN '<rowid>' ELSE '<expression>' END), "desc", coll, "key")
				FROM pragma_index_xinfo(?1)`, idx)...)
		}
	}
	return append(out, versionRows(t, db, `SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'durable_schema_version'`)...)
}

// versionRows returns the rows of durable_schema_version, which the
// migrations write and the dialects read.
func versionRows(t testing.TB, db *sql.DB, exists string) []string {
	t.Helper()
	var ok bool
	if err := db.QueryRow(exists).Scan(&ok); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if !ok {
		return nil
	}
	return queryLines(t, db, `SELECT 'row durable_schema_version ' || version || ' ' || name FROM durable_schema_version`)
}

// tables lists every table of the current schema (Postgres) or database
// (SQLite), tools' tables included.
func tables(t testing.TB, dialect string, db *sql.DB) []string {
	t.Helper()
	q := `SELECT tablename FROM pg_tables WHERE schemaname = current_schema()`
	if dialect == migrations.SQLite {
		q = `SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\'`
	}
	out := queryLines(t, db, q)
	slices.Sort(out)
	return out
}

func queryLines(t testing.TB, db *sql.DB, q string, args ...any) []string {
	t.Helper()
	rows, err := db.Query(q, args...)
	if err != nil {
		t.Fatalf("catalog query failed: %v\n%s", err, q)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatalf("catalog query: %v\n%s", err, q)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("catalog query: %v\n%s", err, q)
	}
	return out
}

// diffLines describes how sorted line sets a and b differ, or returns "".
func diffLines(aName string, a []string, bName string, b []string) string {
	var sb strings.Builder
	for _, l := range a {
		if _, found := slices.BinarySearch(b, l); !found {
			fmt.Fprintf(&sb, "  only after %s: %s\n", aName, l)
		}
	}
	for _, l := range b {
		if _, found := slices.BinarySearch(a, l); !found {
			fmt.Fprintf(&sb, "  only after %s: %s\n", bName, l)
		}
	}
	if sb.Len() == 0 && len(a) != len(b) {
		fmt.Fprintf(&sb, "  %d lines after %s, %d after %s (duplicates)\n", len(a), aName, len(b), bName)
	}
	return sb.String()
}

// TestSnapshotSeesChanges makes sure the catalog comparison is not blind:
// each small change to a migrated schema changes the snapshot, while a
// change to a tool's version table does not.
func TestSnapshotSeesChanges(t *testing.T) {
	changes := map[string][]string{
		migrations.Postgres: {
			`ALTER TABLE durable_outbox ALTER COLUMN attempts SET DEFAULT 1`,
			`ALTER TABLE durable_outbox ALTER COLUMN last_error SET NOT NULL`,
			`ALTER TABLE durable_leases ALTER COLUMN holder TYPE varchar(64)`,
			`DROP INDEX durable_outbox_sent_at_idx`,
			`CREATE INDEX durable_outbox_sent_at_idx ON durable_outbox (sent_at)`,
			`ALTER TABLE durable_inbox DROP CONSTRAINT durable_inbox_state_check`,
			`ALTER TABLE durable_inbox ADD CONSTRAINT durable_inbox_state_check CHECK (state IN ('ready', 'running'))`,
			`ALTER TABLE durable_inbox ADD COLUMN extra text`,
			`CREATE SEQUENCE durable_extra_seq`,
			`CREATE VIEW durable_extra AS SELECT id FROM durable_outbox`,
			`CREATE FUNCTION durable_extra_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'`,
			`CREATE TYPE durable_extra_state AS ENUM ('a', 'b')`,
			`UPDATE durable_schema_version SET name = 'changed'`,
		},
		migrations.SQLite: {
			`CREATE INDEX durable_extra_idx ON durable_outbox (topic)`,
			`DROP INDEX durable_outbox_sent_at_idx`,
			`ALTER TABLE durable_inbox ADD COLUMN extra TEXT DEFAULT 'x'`,
			`CREATE VIEW durable_extra AS SELECT id FROM durable_outbox`,
			`CREATE TABLE durable_extra_t (a INTEGER PRIMARY KEY, b TEXT NOT NULL UNIQUE) STRICT`,
			`PRAGMA user_version = 7`,
			`UPDATE durable_schema_version SET name = 'changed'`,
		},
	}
	ignored := map[string]string{
		migrations.Postgres: `CREATE INDEX durable_goose_extra_idx ON ` + migrations.GooseTable + ` (tstamp)`,
		migrations.SQLite:   `CREATE INDEX durable_goose_extra_idx ON ` + migrations.GooseTable + ` (tstamp)`,
	}
	for _, dialect := range []string{migrations.Postgres, migrations.SQLite} {
		t.Run(dialect, func(t *testing.T) {
			d := newDatabase(t, dialect)
			if err := newTool(t, "goose", d).up(); err != nil {
				t.Fatal(err)
			}
			prev := snapshot(t, dialect, d.db)
			if _, err := d.db.Exec(ignored[dialect]); err != nil {
				t.Fatal(err)
			}
			if now := snapshot(t, dialect, d.db); diffLines("before", prev, "after", now) != "" {
				t.Errorf("a change to goose's version table shows in the snapshot:\n%s", diffLines("before", prev, "after", now))
			}
			for _, c := range changes[dialect] {
				if _, err := d.db.Exec(c); err != nil {
					t.Fatalf("%s: %v", c, err)
				}
				now := snapshot(t, dialect, d.db)
				if diffLines("before", prev, "after", now) == "" {
					t.Errorf("the snapshot did not change after %s", c)
				}
				prev = now
			}
		})
	}
}
