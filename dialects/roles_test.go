package dialects

import (
	"slices"
	"testing"
)

// Every Dialect plays every role: a dialect that passes dialecttest fits
// every consumer. The function is compiled with the tests and never runs.
func _[TTx any](d Dialect[TTx]) {
	var (
		_ TxBeginner[TTx]   = d
		_ Enqueuer[TTx]     = d
		_ RelayStore        = d
		_ InboxDialect[TTx] = d
		_ NodeDialect[TTx]  = d
		_ Inspector         = d
	)
}

// TestMigrationNames: the names follow the versions, and a caller that
// changes the returned slice changes nothing else.
func TestMigrationNames(t *testing.T) {
	got := MigrationNames()
	want := []string{"0001_init", "0002_outbox_claim", "0003_nodes", "0004_control"}
	if !slices.Equal(got, want) || len(got) != SchemaVersion {
		t.Fatalf("MigrationNames() = %v, want %v (SchemaVersion %d)", got, want, SchemaVersion)
	}
	got[0] = "changed"
	if again := MigrationNames(); !slices.Equal(again, want) {
		t.Fatalf("MigrationNames() after changing an earlier result = %v, want %v", again, want)
	}
	if m := (&SchemaError{Have: 0, Want: SchemaVersion}).Missing(); !slices.Equal(m, want) {
		t.Fatalf("Missing() after changing MigrationNames' result = %v, want %v", m, want)
	}
}
