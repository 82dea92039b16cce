// Package durable moves messages between services with guaranteed delivery,
// through the database each service already has (Postgres or SQLite).
//
// A service enqueues messages into an outbox table in its own transaction; a
// relay sends what committed over an authenticated TCP connection to the
// peer, which stores each batch in its inbox table before acknowledging; the
// peer's workers run a handler in the transaction that marks the message
// done; what keeps failing goes to a dead-letter table.
//
// A Node wires the parts together for one service:
//
//	mux := inbox.NewMux[pgx.Tx]()
//	mux.HandleFunc("invoice.paid", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
//		_, err := tx.Exec(ctx, `UPDATE orders SET paid = true WHERE id = $1`, orderID(m))
//		return err
//	})
//	d, err := postgres.New(pool, nil) // or sqlite.New(db, nil), with *sql.Tx for pgx.Tx
//	...
//	node, err := durable.NewNode(d, &durable.Config[pgx.Tx]{
//		Name:    "orders",
//		Listen:  ":7400",
//		Secret:  secret,
//		Peers:   map[string]durable.Peer{"billing": {Addr: "billing.internal:7400"}},
//		Handler: mux,
//	})
//	go node.Run(ctx)
//
//	tx, _ := pool.Begin(ctx)
//	tx.Exec(ctx, `INSERT INTO orders ...`)
//	node.Enqueue(ctx, tx, &outbox.Message{Destination: "billing", Topic: "order.placed", Payload: body})
//	tx.Commit(ctx)
//
// The parts are usable on their own: package outbox (Enqueue, Relay), inbox
// (Inbox, Mux, dead letters), transport/tcp (Client, Server), dialects/postgres
// and dialects/sqlite, and migrations for goose and golang-migrate.
package durable
