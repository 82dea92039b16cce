//go:build unix

package history

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/integration/internal/pgserver"
)

func TestQuoteIdent(t *testing.T) {
	for in, want := range map[string]string{
		"effects":    `"effects"`,
		"s.effects":  `"s"."effects"`,
		`we"ird`:     `"we""ird"`,
		"Mixed Case": `"Mixed Case"`,
	} {
		if got := quoteIdent(in); got != want {
			t.Errorf("quoteIdent(%q) = %s, want %s", in, got, want)
		}
	}
}

// effectRows is what both dialect tests insert: m1 once, m2 twice (a
// double effect the table must keep), m3 three times.
var effectRows = []string{"m1", "m2", "m2", "m3", "m3", "m3"}

func checkCounts(t *testing.T, counts map[string]int) {
	t.Helper()
	if len(counts) != 3 || counts["m1"] != 1 || counts["m2"] != 2 || counts["m3"] != 3 {
		t.Fatalf("counts = %v, want m1:1 m2:2 m3:3", counts)
	}
	h := New()
	h.Committed(msg("m1"), msg("m2"), msg("m4"))
	h.AddEffects("billing", counts)
	r := h.Report()
	if len(r.Lost) != 1 || len(r.Duplicates) != 2 || len(r.Unexpected) != 1 {
		t.Fatalf("report = %+v", r)
	}
}

func TestSQLite(t *testing.T) {
	ctx := context.Background()
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "billing.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for range 2 { // IF NOT EXISTS: twice is fine
		for _, stmt := range EffectsTable("effects") {
			if _, err := db.ExecContext(ctx, stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
	}
	for _, id := range effectRows {
		if _, err := db.ExecContext(ctx, InsertEffect("effects"), id, "orders"); err != nil {
			t.Fatal(err)
		}
	}
	counts, err := CountEffectsSQL(ctx, db, "effects", "message_id")
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, counts)

	msgs, err := LoadMessagesSQL(ctx, db, `SELECT DISTINCT message_id, source, $1 FROM effects ORDER BY message_id`, "billing")
	if err != nil {
		t.Fatal(err)
	}
	if want := []Message{msg("m1"), msg("m2"), msg("m3")}; !slices.Equal(msgs, want) {
		t.Fatalf("LoadMessagesSQL = %v, want %v", msgs, want)
	}
	if _, err := CountEffectsSQL(ctx, db, "missing", "message_id"); err == nil {
		t.Fatal("counting a missing table succeeded")
	}
	if _, err := LoadMessagesSQL(ctx, db, `SELECT message_id FROM effects`); err == nil {
		t.Fatal("a one-column query loaded")
	}
}

func TestPostgres(t *testing.T) {
	ctx := context.Background()
	srv := pgserver.Start(t, nil)
	conn, err := pgx.Connect(ctx, srv.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE SCHEMA billing`); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range EffectsTable("billing.effects") {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	for _, id := range effectRows {
		if _, err := conn.Exec(ctx, InsertEffect("billing.effects"), id, "orders"); err != nil {
			t.Fatal(err)
		}
	}
	counts, err := CountEffects(ctx, conn, "billing.effects", "message_id")
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, counts)

	// A uuid id column counts as text.
	if _, err := conn.Exec(ctx, `CREATE TABLE orders (message_id uuid NOT NULL);
		INSERT INTO orders VALUES ('0190f0c8-0000-7000-8000-000000000001'), ('0190f0c8-0000-7000-8000-000000000001')`); err != nil {
		t.Fatal(err)
	}
	counts, err = CountEffects(ctx, conn, "orders", "message_id")
	if err != nil || counts["0190f0c8-0000-7000-8000-000000000001"] != 2 {
		t.Fatalf("uuid counts = %v, %v", counts, err)
	}
	msgs, err := LoadMessages(ctx, conn, `SELECT message_id::text, 'orders', 'billing' FROM orders LIMIT $1`, 1)
	if err != nil || len(msgs) != 1 || msgs[0].ID != "0190f0c8-0000-7000-8000-000000000001" || msgs[0].Destination != "billing" {
		t.Fatalf("LoadMessages = %v, %v", msgs, err)
	}
	if _, err := CountEffects(ctx, conn, "missing", "message_id"); err == nil {
		t.Fatal("counting a missing table succeeded")
	}
}
