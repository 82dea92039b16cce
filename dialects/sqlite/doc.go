// Package sqlite is durable's dialect for SQLite through database/sql, written
// for modernc.org/sqlite (pure Go, driver name "sqlite"). It is a
// dialects.Dialect[*sql.Tx], so outbox.Enqueue takes the application's own
// *sql.Tx.
//
// This package does not import the driver: the application does, so it
// compiles only the driver it uses.
//
//	import (
//		"database/sql"
//
//		_ "modernc.org/sqlite"
//
//		"github.com/durable-go/durable/dialects/sqlite"
//	)
//
//	db, err := sql.Open("sqlite", sqlite.DSN("/var/lib/app/app.db"))
//	if err != nil { ... }
//	d, err := sqlite.New(db, nil) // checks the DSN; the pool now has one connection
//	if err != nil { ... }
//	tx, err := d.Begin(ctx)
//	if err != nil { ... }
//	defer d.Rollback(ctx, tx)
//	// ... the application's own writes in tx ...
//	err = d.InsertOutbox(ctx, tx, rows) // or outbox.Enqueue(ctx, tx, msgs...)
//	if err != nil { ... }
//	err = d.Commit(ctx, tx)
//
// # Connection settings
//
// SQLite applies PRAGMAs per connection, and database/sql opens connections
// whenever it likes, so the settings durable relies on must be in the DSN,
// where the driver applies them to every connection it opens. DSN builds the
// recommended one: WAL journal (readers never block the writer), a 5 s busy
// timeout (a writer in another process is waited for, not failed with
// SQLITE_BUSY), synchronous=NORMAL (safe in WAL mode; a power loss may lose
// the last commits but never corrupts the file), foreign keys on, and
// _txlock=immediate, so that BEGIN takes the write lock at once and a
// transaction that reads before it writes cannot fail with SQLITE_BUSY when it
// upgrades. New refuses a database opened without WAL, a busy timeout or
// immediate transactions, with a *DSNError naming the missing parameter.
//
// # What reaches the disk before it leaves
//
// With synchronous=NORMAL, SQLite syncs its log to disk only at checkpoints,
// so a power loss or an operating system crash may take back the last
// commits. Durable makes sure nothing leaves a database that could be taken
// back: the relay's claim and the inbox's storing of a delivered batch commit
// with synchronous=FULL (BeginDurable), which writes the log out to disk with
// every commit before it. So a message is on disk, with the app's rows of its
// transaction, before the relay sends it, and a delivered batch is on disk
// before the peer is told it may delete its copy. Other commits keep the
// DSN's setting: what a power loss takes back of them is taken back whole
// and done again.
//
// # One writer
//
// SQLite allows one writer at a time. New therefore calls db.SetMaxOpenConns(1):
// inside one process, concurrent writers queue for the single connection in
// database/sql, in order, instead of racing for the file lock and polling in
// SQLite's busy handler (which is unfair and, under load, ends in
// SQLITE_BUSY). Between processes the busy timeout and immediate transactions
// take over.
//
// The consequence: a transaction holds the only connection until it commits
// or rolls back. Every dialect call that needs its own connection (Begin,
// CheckSchema, ListOutbox, and the relay and workers that use this dialect)
// waits for it, and a goroutine that calls one of them while it holds a
// transaction on the same *sql.DB waits until its context ends. Inside a
// transaction, use the methods that take the transaction (ListOutboxTx to
// read the outbox). Keep transactions short, as SQLite wants anyway. Reads
// queue too; an application that needs concurrent reads can open a second,
// read-only *sql.DB on the same file for them.
//
// # Storage format
//
// Times are TEXT in UTC, 'YYYY-MM-DD HH:MM:SS.SSS' (millisecond precision,
// truncated), the format of SQLite's strftime('%Y-%m-%d %H:%M:%f'), so they
// sort as text and compare with datetime('now') in plain SQL. Headers are a
// JSON object in TEXT, payloads a BLOB.
package sqlite
