// Package postgres is durable's PostgreSQL dialect, in two flavours that
// share every statement:
//
//   - [New] over a pgx/v5 pool: a dialects.Dialect[pgx.Tx], whose large
//     batches go through COPY;
//   - [NewSQL] over a *sql.DB opened with pgx's database/sql driver
//     (github.com/jackc/pgx/v5/stdlib, driver name "pgx"): a
//     dialects.Dialect[*sql.Tx].
//
// Both implement dialects.Notifier: [Dialect.NotifyOutbox] queues a NOTIFY on
// [OutboxChannel] that Postgres delivers when the caller's transaction
// commits, and never when it rolls back.
//
// Usage, with the migrations in migrations/postgres applied:
//
//	pool, err := pgxpool.New(ctx, "postgres://app@db/app")
//	if err != nil {
//		return err // a malformed DSN is reported here, by pgxpool
//	}
//	d, err := postgres.New(pool, nil) // or &postgres.Config{Schema: "durable"}
//	if err != nil {
//		return err // a nil pool or an invalid Config.Schema
//	}
//	if err := d.CheckSchema(ctx); err != nil {
//		return err // *dialects.SchemaError: names the missing migration
//	}
//	tx, err := d.Begin(ctx)
//	if err != nil {
//		return err
//	}
//	defer d.Rollback(ctx, tx)
//	err = d.InsertOutbox(ctx, tx, []dialects.OutboxRow{{
//		Envelope:    transport.Envelope{ID: "order-42", Topic: "order.placed", Payload: body},
//		Destination: "billing",
//	}})
//	if err != nil {
//		return err // errors.Is(err, dialects.ErrDuplicateID) for a reused id
//	}
//	if err := d.NotifyOutbox(ctx, tx, []string{"billing"}); err != nil {
//		return err
//	}
//	return d.Commit(ctx, tx)
//
// Applications normally use this package through outbox.New and
// durable.NewNode rather than calling the dialect themselves.
//
// # Schema
//
// By default the durable tables are found through the connection's
// search_path, exactly where the migrations created them. [Config].Schema
// names a schema instead, and every statement then qualifies the tables with
// it, so durable can live in its own schema without touching search_path; run
// the migrations with that schema first on the search_path (for example
// ?search_path=durable in the migration tool's DSN).
//
// # Errors
//
// New and NewSQL validate their [Config] up front: a Schema that is not a
// valid Postgres identifier is an error matching [ErrSchemaName].
//
// A database where the migrations did not run (or an older one) yields a
// *dialects.SchemaError, from [Dialect.CheckSchema] and from any statement
// that meets a missing durable table or column. A reused (destination, id)
// yields a *dialects.DuplicateError, and the caller's transaction stays
// usable.
//
// Connection errors are pgx's own and reach the caller unchanged: this
// package never opens a connection. pgxpool.New and pgx.ParseConfig reject a
// malformed DSN; a well-formed DSN pointing at an unreachable server or with
// wrong credentials fails on the first use, so call pool.Ping (or
// CheckSchema) at startup to fail fast. The same holds for sql.Open, which
// connects lazily; use db.PingContext.
//
// # Performance
//
// No operation issues a statement per row. InsertOutbox writes a batch with
// one INSERT … SELECT FROM unnest(…) statement (arrays as parameters, so no
// 65,535-parameter limit and no chunking); on the pgx flavour batches of
// 500 rows or more use COPY inside a savepoint.
package postgres
