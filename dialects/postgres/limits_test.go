package postgres

import "testing"

// TestDocumentedLimits: the documentation of InsertOutbox and of the package
// give the COPY threshold as a number; keep them in step with the constant.
func TestDocumentedLimits(t *testing.T) {
	if copyThreshold != 500 {
		t.Errorf("copyThreshold = %d; update the 500 in doc.go and in Dialect.InsertOutbox's doc", copyThreshold)
	}
}
