package durable

import (
	"context"
	"database/sql"
	"log/slog"
	"testing"

	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
)

// TestRegisteredBefore: of two processes of one name that register
// together, each may see the other in what RegisterIncarnation returns;
// only the one that registered second counts the other as earlier, so only
// it reports the other.
func TestRegisteredBefore(t *testing.T) {
	ctx := context.Background()
	db, err := sql.Open("sqlite", sqlite.DSN(testdb.SQLitePath(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if _, err := migrations.Up(ctx, db, migrations.SQLite); err != nil {
		t.Fatal(err)
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	node := func(name string) *Node[*sql.Tx] {
		n, err := NewNode(d, &Config[*sql.Tx]{Name: name, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	first, second := node("billing"), node("billing")
	for _, n := range []*Node[*sql.Tx]{first, second} {
		if _, err := d.RegisterIncarnation(ctx, n.inc.self); err != nil {
			t.Fatal(err)
		}
	}
	// Each as it would have seen the other had they registered together.
	if first.registeredBefore(ctx, []dialects.Incarnation{second.inc.self})(second.inc.self) {
		t.Error("the first registered counts the second as earlier")
	}
	if !second.registeredBefore(ctx, []dialects.Incarnation{first.inc.self})(first.inc.self) {
		t.Error("the second registered does not count the first as earlier")
	}
	// Another name needs no read and counts as earlier (it is not reported
	// as sharing the name anyway).
	other := node("orders")
	if !other.registeredBefore(ctx, []dialects.Incarnation{first.inc.self})(first.inc.self) {
		t.Error("an incarnation of another name is not counted as earlier")
	}
}
