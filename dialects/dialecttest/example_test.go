package dialecttest_test

import (
	"database/sql"
	"path/filepath"
	"testing"

	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/dialecttest"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/migrations"
)

// A dialect's own test runs the conformance suite with a Harness that opens a fresh database
// per subtest, migrated or not. This is how the SQLite dialect runs it (in a _test.go file, as
// func TestConformance(t *testing.T)).
func Example() {
	open := func(t *testing.T, migrate bool) dialects.Dialect[*sql.Tx] {
		db, err := sql.Open("sqlite", sqlite.DSN(filepath.Join(t.TempDir(), "conformance.db")))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		if migrate {
			if _, err := migrations.Up(t.Context(), db, migrations.SQLite); err != nil {
				t.Fatal(err)
			}
		}
		d, err := sqlite.New(db, nil)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	testConformance := func(t *testing.T) {
		dialecttest.Run(t, dialecttest.Harness[*sql.Tx]{
			Open:           func(t *testing.T) dialects.Dialect[*sql.Tx] { return open(t, true) },
			OpenUnmigrated: func(t *testing.T) dialects.Dialect[*sql.Tx] { return open(t, false) },
		})
	}
	_ = testConformance
}
