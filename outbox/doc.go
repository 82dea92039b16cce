// Package outbox is the sending half of durable: Enqueue writes messages into
// the durable_outbox table inside the caller's own database transaction, so a
// message exists if and only if that transaction commits, and a Relay sends
// the committed messages to their destinations.
//
//	d, err := postgres.New(pool, nil)
//	...
//	ob, err := outbox.New(d, nil)
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
//
// # Relay
//
// A Relay claims committed rows with a lease, sends them in batches through
// one transport.Sender per destination (a tcp.Client to the peer's inbox),
// and deletes them once the peer acknowledged them. It resends until the
// peer acknowledges, so delivery is at least once; the receiving inbox
// stores each message id once. A message the peer refuses for good, or one
// that expires before it could be sent, goes to durable_dead_letters (side
// "outbox") with the reason and the error.
//
//	billing, err := tcp.NewClient("billing.internal:7400", &tcp.ClientConfig{NodeID: "shop", TLS: tlsConfig})
//	...
//	relay, err := outbox.NewRelay(d, map[string]transport.Sender{"billing": billing},
//		&outbox.RelayConfig{Outbox: ob}) // Enqueue in this process wakes the relay
//	...
//	err = relay.Run(ctx) // until ctx ends; the batches in flight finish first
//
// The relay polls every RelayConfig.PollInterval; wake-ups from Enqueue
// (RelayConfig.Outbox) or Postgres NOTIFY (Config.Notify) only cut the
// latency. Several relays, in one process or many, may share an outbox:
// claims never hand the same row to two of them. See Relay for ordering
// keys, retries and stopping.
package outbox
