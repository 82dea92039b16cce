package sqlite

// SetChunkRows lowers the rows per INSERT statement for a test and returns a
// function that restores it.
func SetChunkRows(n int) (restore func()) {
	old := chunkRows
	chunkRows = n
	return func() { chunkRows = old }
}
