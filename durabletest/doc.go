// Package durabletest helps the users of durable test their own services,
// as River's rivertest does for River jobs: on the sending side it asserts
// what the app enqueued, on the receiving side it runs the app's handlers the
// way the inbox does. It works on any dialect, against the real database of
// the test (a SQLite file in t.TempDir(), a Postgres schema).
//
// # Sending: what did the app enqueue?
//
//	d, _ := sqlite.New(db, nil) // or postgres.New(pool, nil): any dialect
//	ob, _ := outbox.New(d, nil)
//	placeOrder(ctx, db, ob, order) // the code under test: business rows + ob.Enqueue in one transaction
//	m := durabletest.RequireEnqueued(ctx, t, d, durabletest.Want{
//		Destination: "billing",
//		Topic:       "order.placed",
//		JSON:        map[string]any{"order": 42, "total": 4200},
//	})
//	// m is the *outbox.Message, with its ID, headers and payload.
//
// RequireEnqueued asserts that exactly one committed outbox message matches;
// RequireNotEnqueued that none does; RequireManyEnqueued that the messages
// matching any of several Wants are exactly those, in enqueue order. Their
// Tx variants (RequireEnqueuedTx, ...) look inside the app's transaction
// before it commits, through the optional dialects.OutboxTxLister that
// every dialect of this module implements. A failure lists what the outbox
// holds, each message with the first field that does not match:
//
//	durabletest: RequireEnqueued: no outbox message matches Want{Destination: "billing", Topic: "order.placed"}; the outbox holds 1:
//	  1. id "order-42" → "billing", topic "order.created", payload "{\"order\":42}": topic "order.created", want "order.placed"
//
// # Receiving: what does the handler do with a message?
//
//	mux := inbox.NewMux[*sql.Tx]()
//	registerHandlers(mux) // the code under test: the app's handlers
//	ib, _ := inbox.New(d, mux, &inbox.Config{Backoff: func(int) time.Duration { return 0 }, MaxAttempts: 3})
//	msg := &inbox.Message{Source: "shop", Envelope: transport.Envelope{Topic: "order.placed", Payload: body}}
//	res := durabletest.Work(ctx, t, ib, msg)
//	if res[0].State != durabletest.Handled {
//		t.Fatalf("order.placed: %s, %s", res[0].State, res[0].LastError)
//	}
//	// then assert the handler's effects in the database
//
// Work delivers the messages through the inbox's public Deliver, as the TCP
// server does, runs the inbox's workers until each message is handled or
// dead-lettered, stops them, and returns each message's State, attempts,
// dead-letter reason and errors.
//
// # Both: two services over the network
//
//	billing := inbox.NewMux[*sql.Tx]()
//	registerBillingHandlers(billing) // the code under test, receiving side
//	p := durabletest.NewPair(t, shopDialect, billingDialect, &durabletest.PairConfig[pgx.Tx, *sql.Tx]{
//		Sender:   durable.Config[pgx.Tx]{Name: "shop"},
//		Receiver: durable.Config[*sql.Tx]{Name: "billing", Handler: billing},
//	})
//	p.Start() // stopped when the test ends
//	placeOrder(ctx, shopDB, p.Sender.Outbox(), order)
//	p.WaitSettled(ctx, t) // everything enqueued so far: handled or dead-lettered
//	// then assert billing's effects in its database
//
// NewPair builds two durable.Nodes on their own databases (of any dialects),
// the receiver listening on 127.0.0.1 and the sender pointed at it, sharing a
// random secret; Start runs them until the test ends. WaitSettled waits until
// every message the sender's outbox held for the receiver when it was called
// is handled or dead-lettered on either side, and otherwise fails the test
// with where each message is: in the sender's outbox (its attempts and last
// error), in the receiver's inbox (its state), or sent and not received.
//
// # Choices, and why
//
// The helpers take a TB, the two methods of testing.TB they use, rather
// than testing.TB itself, whose unexported method lets no other type
// implement it: any *testing.T fits, and so do the recording fakes of this
// package's own tests (which check that every helper fails when it should)
// and the printing one of its examples.
//
// The sending helpers filter the outbox in SQL by Destination and ID, which
// dialects.OutboxQuery already has, and compare Topic, Key, Headers and
// the payload in Go. A test's outbox holds a handful of rows, the failure
// message needs the rows that did not match anyway, and the storage contract
// every dialect implements stays as it was. They take the dialect, as
// River's helpers take the driver, so that they need no Outbox, and of it
// only the role they call: dialects.Inspector (the dialect the test built),
// and for the Tx variants dialects.Enqueuer of tx's type (ob.Dialect()
// fits too).
//
// Work takes inbox.Message values, the handler's view of a message,
// because that is what a handler's author has in mind; they carry the
// Source that ordering keys and deduplication depend on. It waits for the
// final outcome, not for one attempt as River's Worker.Work does: after a
// failed attempt the message is ready for its next one, which may be
// running by the time the test looks, so only handled and dead-lettered are
// states stable enough to assert. Retries run as the inbox is configured:
// make them short in tests. Work needs nothing of the inbox but its public
// API (Deliver, Run, Dialect() as a dialects.Inspector for ListInbox,
// DeadLetters), so inbox is unchanged.
//
// Every helper bounds its database work by ctx, or by DefaultTimeout when
// ctx has no deadline, and stops every goroutine it starts before it
// returns.
package durabletest
