package sqlite

import "testing"

// TestDocumentedLimits: the documentation of InsertOutbox and InsertInbox
// give the rows per statement as numbers; keep them in step with the
// constants.
func TestDocumentedLimits(t *testing.T) {
	if maxChunkRows != 3640 {
		t.Errorf("maxChunkRows = %d; update the 3,640 in Dialect.InsertOutbox's doc", maxChunkRows)
	}
	if maxInboxChunkRows != 2978 {
		t.Errorf("maxInboxChunkRows = %d; update the 2,978 in Dialect.InsertInbox's doc", maxInboxChunkRows)
	}
}
