package sqlite

import "database/sql"

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
