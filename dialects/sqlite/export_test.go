package sqlite

import "database/sql"

// DSNParams is the query string DSN appends to a path.
const DSNParams = dsnParams

// DB returns the database the dialect works on.
func (d *Dialect) DB() *sql.DB { return d.db }

// SetChunkRows lowers the rows per INSERT statement for a test and returns a
// function that restores it.
func SetChunkRows(n int) (restore func()) {
	old := chunkRows
	chunkRows = n
	return func() { chunkRows = old }
}

// OnBeginDurable makes f see every transaction of BeginDurable as it starts,
// until the returned function is called.
func OnBeginDurable(f func(*sql.Tx)) (restore func()) {
	beganDurable = f
	return func() { beganDurable = nil }
}
