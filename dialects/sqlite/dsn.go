package sqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// dsnParams is the query string DSN appends to a path: the connection
// settings durable needs on every pooled connection, in the syntax of
// modernc.org/sqlite (each _pragma value runs as "PRAGMA <value>" when the
// driver opens a connection; _txlock sets the mode of BEGIN).
const dsnParams = "_pragma=busy_timeout(5000)" +
	"&_pragma=journal_mode(WAL)" +
	"&_pragma=synchronous(NORMAL)" +
	"&_pragma=foreign_keys(1)" +
	"&_txlock=immediate"

// DSN returns the recommended modernc.org/sqlite data source name for the
// database file at path: a file: URI carrying the connection settings
// durable needs, in the syntax of modernc.org/sqlite:
//
//	_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)&_txlock=immediate
//
// The path is escaped for a SQLite URI ('%', '?' and '#' are
// percent-encoded), so any file name works, and an absolute path gets an
// empty authority ("file:///abs/path"), as SQLite's URI rules ask; on
// Windows, backslashes become slashes and a drive letter is kept
// ("file:///C:/dir/app.db"). A relative path stays relative to the working
// directory.
func DSN(path string) string {
	p := filepath.ToSlash(path)
	if filepath.VolumeName(path) != "" && !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	var b strings.Builder
	b.Grow(len("file://") + len(p) + 8 + 1 + len(dsnParams))
	b.WriteString("file:")
	if strings.HasPrefix(p, "/") {
		b.WriteString("//")
	}
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case '%', '?', '#':
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('?')
	b.WriteString(dsnParams)
	return b.String()
}

// ErrDSN is matched (errors.Is) by every *DSNError.
var ErrDSN = errors.New("durable: sqlite connection settings missing from the DSN")

// DSNError reports a database whose connections lack a setting durable needs.
// New returns it; open the *sql.DB with DSN(path), or add Param to your own
// DSN.
type DSNError struct {
	Param string // the DSN parameter to add, e.g. "_txlock=immediate"
	Found string // what the connection has instead
}

// Error names the missing parameter and points to DSN.
func (e *DSNError) Error() string {
	return fmt.Sprintf("durable: sqlite database opened without %s (found %s): durable needs it on every pooled connection, so it must be in the DSN; open the *sql.DB with sqlite.DSN(path), or add %s to your DSN",
		e.Param, e.Found, e.Param)
}

// Is reports whether target is ErrDSN.
func (e *DSNError) Is(target error) bool { return target == ErrDSN }

// sqliteBusy is SQLite's primary result code SQLITE_BUSY.
const sqliteBusy = 5

// checkDSN verifies, on real connections of db, the settings DSN provides:
// WAL journal, a busy timeout, and BEGIN IMMEDIATE. It needs two connections
// at once, so it raises db's limit to two; New lowers it to one afterwards.
//
// WAL and the busy timeout are read back with PRAGMA. Immediate transactions
// have no PRAGMA: the check begins a transaction on one connection and tries
// to take the write lock from a second one, with that connection's busy
// timeout set to zero. With _txlock=immediate the first already holds the lock
// and the attempt fails at once with SQLITE_BUSY; with a deferred BEGIN it
// succeeds. The second connection is discarded afterwards, so its changed
// busy timeout never reaches the pool. (If another process happens to hold
// the write lock during the probe, a deferred BEGIN passes unnoticed: the
// check errs only on the lenient side.)
func checkDSN(ctx context.Context, db *sql.DB) (err error) {
	db.SetMaxOpenConns(2)
	c1, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("durable/sqlite: connect: %w", err)
	}
	defer c1.Close()

	var mode string
	if err := c1.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("durable/sqlite: read journal_mode: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return &DSNError{Param: "_pragma=journal_mode(WAL)", Found: "journal_mode=" + mode}
	}
	var timeout int64
	if err := c1.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&timeout); err != nil {
		return fmt.Errorf("durable/sqlite: read busy_timeout: %w", err)
	}
	if timeout <= 0 {
		return &DSNError{Param: "_pragma=busy_timeout(5000)", Found: fmt.Sprintf("busy_timeout=%d", timeout)}
	}

	tx, err := c1.BeginTx(ctx, nil)
	if err != nil {
		var coded interface{ Code() int }
		if errors.As(err, &coded) && coded.Code()&0xff == sqliteBusy {
			return fmt.Errorf("durable/sqlite: New checks the connection settings in a write transaction, and another connection or process held the database's write lock for longer than busy_timeout (%d ms); retry New when it is free: %w", timeout, err)
		}
		return fmt.Errorf("durable/sqlite: begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()

	c2, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("durable/sqlite: connect: %w", err)
	}
	defer func() {
		// Discard the probe connection: its busy timeout was changed.
		_ = c2.Raw(func(any) error { return driver.ErrBadConn })
		_ = c2.Close()
	}()
	if _, err := c2.ExecContext(ctx, "PRAGMA busy_timeout = 0"); err != nil {
		return fmt.Errorf("durable/sqlite: probe: %w", err)
	}
	_, err = c2.ExecContext(ctx, "BEGIN IMMEDIATE")
	if err == nil {
		_, _ = c2.ExecContext(ctx, "ROLLBACK")
		return &DSNError{Param: "_txlock=immediate", Found: "deferred transactions"}
	}
	if isBusy(err) {
		return nil
	}
	return fmt.Errorf("durable/sqlite: probe BEGIN IMMEDIATE: %w", err)
}

// isBusy reports whether err is SQLITE_BUSY (or SQLITE_LOCKED), recognised by
// message so that this package needs no driver import.
func isBusy(err error) bool {
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "database is locked") ||
		strings.Contains(msg, "sqlite_busy") ||
		strings.Contains(msg, "database table is locked")
}
