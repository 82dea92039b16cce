package durable_test

import (
	"context"
	"database/sql"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/durabletest"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/outbox"
)

// Every consumer of the dialects' roles takes each dialect of this module
// without type arguments: the transaction type is inferred from the
// dialect's methods, and the results have the types asserted here. The
// function is compiled with the tests and never runs.
func _() {
	var (
		ctx   = context.Background()
		pgxD  *postgres.Dialect    // pgx/v5
		stdD  *postgres.SQLDialect // pgx's database/sql driver
		liteD *sqlite.Dialect      // modernc.org/sqlite
		pgxTx pgx.Tx
		sqlTx *sql.Tx
		tb    durabletest.TB
		ctb   durabletest.CleanupTB
		want  durabletest.Want
	)

	var r1, r2, r3 *outbox.Relay // the relay needs no transaction type
	r1, _ = outbox.NewRelay(pgxD, nil, nil)
	r2, _ = outbox.NewRelay(stdD, nil, nil)
	r3, _ = outbox.NewRelay(liteD, nil, nil)

	var ob1 *outbox.Outbox[pgx.Tx]
	var ob2, ob3 *outbox.Outbox[*sql.Tx]
	ob1, _ = outbox.New(pgxD, nil)
	ob2, _ = outbox.New(stdD, nil)
	ob3, _ = outbox.New(liteD, nil)

	var ib1 *inbox.Inbox[pgx.Tx]
	var ib2, ib3 *inbox.Inbox[*sql.Tx]
	ib1, _ = inbox.New(pgxD, nil, nil)
	ib2, _ = inbox.New(stdD, nil, nil)
	ib3, _ = inbox.New(liteD, nil, nil)

	var n1 *durable.Node[pgx.Tx]
	var n2, n3 *durable.Node[*sql.Tx]
	n1, _ = durable.NewNode(pgxD, &durable.Config[pgx.Tx]{})
	n2, _ = durable.NewNode(stdD, &durable.Config[*sql.Tx]{})
	n3, _ = durable.NewNode(liteD, &durable.Config[*sql.Tx]{})
	_, _, _, _, _, _, _, _, _, _, _, _ = r1, r2, r3, ob1, ob2, ob3, ib1, ib2, ib3, n1, n2, n3

	durabletest.RequireEnqueued(ctx, tb, pgxD, want)
	durabletest.RequireEnqueued(ctx, tb, stdD, want)
	durabletest.RequireEnqueued(ctx, tb, liteD, want)
	durabletest.RequireEnqueuedTx(ctx, tb, pgxD, pgxTx, want)
	durabletest.RequireEnqueuedTx(ctx, tb, stdD, sqlTx, want)
	durabletest.RequireEnqueuedTx(ctx, tb, liteD, sqlTx, want)
	// The Tx helpers take the dialect an Outbox returns.
	durabletest.RequireEnqueuedTx(ctx, tb, ob1.Dialect(), pgxTx, want)
	durabletest.NewPair(ctb, pgxD, liteD, nil)
}
