package durable_test

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

// TestNodeBadCredentials: a server that refuses the credentials (here: a
// role it does not know, SQLSTATE 28000; the test server trusts any
// password, so a wrong one would pass) answers, and waiting would not
// help: Run returns the refusal at once, without a single retry. With
// TestNodeWaitsForDatabase, TestNodeStartTimeout, TestNodeWrongDatabase and
// TestNodeUnmigrated it covers Run's start against the database.
func TestNodeBadCredentials(t *testing.T) {
	base, err := url.Parse(testdb.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	base.User = url.User("durable_no_such_role")
	pool := testdb.OpenPostgres(t, base.String(), false)
	waits := &countLog{sub: "the database does not answer"}
	n, err := durable.NewNode(openPostgres(t, pool), fastConfig(durable.Config[pgx.Tx]{Name: "a", Listener: listener(t), Logger: slog.New(waits)}))
	if err != nil {
		t.Fatal(err)
	}
	// Run's own context only bounds a hang: a Run that kept waiting would end with it and
	// return nil (a graceful stop), not the answer.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = n.Run(ctx)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code[:2] != "28" {
		t.Fatalf("Run = %v, want the server's refusal of the credentials (SQLSTATE class 28)", err)
	}
	if w := waits.count(); w != 0 {
		t.Fatalf("Run waited for the database %d times before returning its answer, want at once", w)
	}
}
