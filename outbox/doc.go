// Package outbox is the sending half of durable: Enqueue writes messages into
// the durable_outbox table inside the caller's own database transaction, so a
// message exists if and only if that transaction commits.
//
//	ob, err := outbox.New(postgres.New(pool), nil)
//	...
//	tx, _ := pool.Begin(ctx)
//	tx.Exec(ctx, `INSERT INTO orders (id, total) VALUES ($1, $2)`, id, total)
//	err = ob.Enqueue(ctx, tx, &outbox.Message{
//		Destination: "billing",
//		Topic:       "order.placed",
//		Payload:     body,
//	})
//	...
//	tx.Commit(ctx)
//
// Enqueue never commits, rolls back or opens a transaction of its own; its
// type parameter is the dialect's transaction type (pgx.Tx, *sql.Tx), so the
// compiler checks that the transaction handed in is the right kind.
package outbox
