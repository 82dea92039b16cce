// Package inbox is the receiving half of durable. An Inbox stores the
// batches a transport delivers (it is a transport.Handler) and runs workers
// that hand each message to its handler inside the transaction that marks it
// done.
//
//	mux := inbox.NewMux[pgx.Tx]()
//	mux.HandleFunc("order.placed", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
//		_, err := tx.Exec(ctx, `INSERT INTO invoices (order_id) VALUES ($1)`, orderID(m))
//		return err // nil: done; an error: retried with backoff; inbox.Permanent(err): dead letter now
//	})
//	d, err := postgres.New(pool, nil)
//	...
//	ib, err := inbox.New(d, mux, &inbox.Config{Concurrency: 8})
//	...
//	srv, err := tcp.NewServer(ib, &tcp.ServerConfig{...}) // the transport stores batches with ib.Deliver
//	...
//	err = ib.Run(ctx) // workers, until ctx ends
//
// # Guarantees
//
// Deliver stores a batch in one transaction keyed by (source, message id)
// and returns only after it committed, so the sender is acknowledged only
// for stored messages, and a resend is acknowledged as a duplicate and
// stored once.
//
// A handler's writes in its tx commit together with the message's
// completion, so inside the receiver's database the effect happens exactly
// once. Effects outside that database (HTTP calls, e-mail, other databases)
// happen at least once: a handler may run again after a failure, a timeout
// or a crash, and should be idempotent there.
//
// Nothing is dropped: a message that cannot be processed ends in the dead
// letters (table durable_dead_letters, side "inbox") with its reason, every
// attempt's error and their times, where plain SQL can read it (see
// docs/dead-letters.md) and Replay can put it back.
//
// # Deduplication and retention
//
// A message is recognised as a duplicate while it is in the inbox, which
// keeps handled messages for Config.Retention (the dedupe window, 7 days by
// default), and while it is in the dead letters, replayed or not, until
// purged. A duplicate of a dead letter is not stored: it was received, and
// its fate was decided; Replay is the way to run it again. A message that
// arrives again after its handled row left the window is stored and handled
// again; pick a window longer than any sender's retry horizon. Handled rows
// past the window are deleted 1,000 at a time through an index, never by one
// unbounded DELETE.
//
// # Workers
//
// Each worker claims a batch of due messages with a lease (FOR UPDATE SKIP
// LOCKED on Postgres, one UPDATE … RETURNING on SQLite), which counts an
// attempt, and commits the claim. It then opens one transaction for the
// batch: it locks the rows still leased to it, runs the handlers one after
// the other, and settles every message of the batch in bulk (one statement
// on Postgres) before committing. Each handler's work follows a savepoint
// of its own, so that a failing handler is rolled back alone and every
// handler runs once per attempt. With the pgx dialect the savepoint is set
// when the handler first uses tx (dialects.TxWatcher): a handler that does
// not touch the database costs none. Otherwise it is set before each
// handler: one round trip per message on Postgres (measured on W2 with a
// handler that does not use tx: about 16,000 messages/s instead of 30,000),
// a few microseconds on SQLite.
// Every change is guarded by the message's state and lease token: a worker
// whose lease expired and whose messages were rescued or claimed by another
// changes nothing. A batch transaction holds its rows, so a lease only needs
// to cover the time from claim to lock; leases of crashed workers are
// rescued by any inbox, every RescueInterval.
//
// Messages with the same ordering key (Envelope.Key) from the same source
// are handled one at a time, in the order they arrived; one waiting for a
// retry holds the later ones back, one that goes to the dead letters
// releases them. A replayed message joins the end of its key's queue.
//
// Concurrency is per queue: the default queue serves every topic not given
// to a Queue of its own. A worker holds one database connection for the
// duration of a batch; size the pool for the workers of all queues plus the
// transport's deliveries.
//
// # Inline handling
//
// With Config.Inline (on by default in a durable.Node), a delivered batch
// is handled in the transaction that stores it, while Run runs: Deliver
// inserts the messages already marked handled (one attempt), runs their
// handlers in that transaction, one after the other, and commits; only
// then does the sender get its ACK. A
// message then costs one write instead of four (insert, claim, lock,
// settle) and never waits for a worker: on the project's 2-core machine it
// took the bulk benchmark from 16,000 to about 46,000 messages/s end to end on
// Postgres and the commit → handler latency at 200 messages/s from 5 to
// 1 ms (docs/benchmarks.md). The guarantees are the same: the handler's
// writes and the message's row commit together or not at all, and a resend
// waits for the first delivery's transaction and is then a duplicate.
//
// A message is stored for the workers instead, in the same transaction,
// when its topic has no handler (the inbox has none, or its handler is a
// Mux without one for the topic) or a Queue of its own (a queue exists to
// give its topics workers and a concurrency of their own), when it is due
// later or expired, or when another message of its ordering key is still
// unfinished in the inbox. Each inline handler runs after a savepoint, as
// in a worker's batch, and runs once per attempt: a handler that fails (an
// error of any kind, Retry included, or a panic) is rolled back to its
// savepoint alone, and its message is settled in the same transaction as a
// worker would settle it: a failed attempt with its error, retried by the
// workers after Backoff or dead-lettered (a Retry snoozes it without
// counting one). The other messages of
// the delivery are handled inline all the same. Once InlineTimeout has
// passed for the batch's handlers, the running handler sees its ctx end
// (a failed attempt) and the messages not started yet are stored for the
// workers without counting one. Only when the transaction itself fails is
// the whole delivery rolled back and stored for the workers, which then
// run its handlers again: the first run's work was lost with its
// transaction. A process that dies in the middle of an inline batch loses
// its transaction and sends no ACK: the sender sends the batch again, and a
// message sent before (its envelope's Attempt above 1) is always stored for
// the workers. So a handler that kills the process (a fatal error, an
// exit, the OOM killer) does not do it again at every resend: the workers
// count an attempt when they claim a message, and dead-letter it after
// MaxAttempts. A worker that claims a batch holding messages whose last
// attempt was lost (a worker died or stalled past its lease) runs them one
// at a time, so that such a message costs the others of its first batch one
// attempt, not one per crash.
//
// Handlers run inline in the transport's delivery, so their time adds to
// the sender's wait for its ACK (keep InlineTimeout well under the
// sender's ACK timeout), and the batches a sender has in flight are the
// inline concurrency. Topics with slow handlers belong in a Queue.
//
// # Failures
//
// A handler's error rolls back its writes and retries the message after
// Backoff (exponential, 2 s doubling to at most an hour, with jitter), up
// to MaxAttempts (10) attempts, then dead-letters it with reason
// handler_error; both can be set per topic (Config.Topics). Retry(after)
// snoozes a message without counting an attempt; Permanent(err) dead-letters
// it at once (reason permanent); a *DecodeError (see JSON) is reason
// decode_error; a topic without a handler is retried for NoHandlerGrace
// (five minutes; a rolling deploy may bring the handler meanwhile), then
// it is reason no_handler, replayable once a handler is deployed; an
// expired message (ExpiresAt passed) is
// reason expired and never handled. A panic is an error carrying its stack;
// a handler that overruns HandlerTimeout sees its ctx end. Each attempt's
// error, with its number and time, is appended to the message's error
// history, which follows it into the dead letters and across replays.
//
// A handler must not commit or roll back tx: the inbox ends it, with the
// completion of every message of the batch. With the pgx dialect, tx's
// Commit and Rollback return dialects.ErrHandlerEndsTx and leave it open
// (dialects.TxGuard). A *sql.Tx cannot be guarded: a handler that ends one
// commits or undoes the writes of the handlers before it in the batch,
// whose messages then run again (their effects may commit twice), and,
// with inline handling, may leave the messages after it stored as handled
// without their handler having run.
//
// A handler that returns nil but leaves tx unusable (it swallowed a failed
// statement on Postgres) is found at the next savepoint step: its work is
// rolled back to its savepoint and it fails with the transaction's error.
// If the transaction cannot be saved at all (pgx closes the connection
// when a handler's ctx ends during a statement), the batch is rolled back:
// the message whose handler broke it counts a failed attempt, and the
// others are released without counting theirs; their handlers run again,
// their work having been lost with the transaction. If the commit itself
// fails, every message of the batch counts a failed attempt.
//
// # Pauses and throughput
//
// An operator pauses a queue (DefaultQueue or a Queue's name) with
// dialects.Controller.Pause, kind dialects.PauseQueue, or `durable pause
// --queue`. Run reads durable_pauses before its workers start and then once
// per PollInterval: while a queue is paused its workers claim nothing and
// no message of it is handled inline (only the default queue's topics are),
// but Deliver still stores and acknowledges what arrives, so the senders
// keep going; resumed, the workers take the waiting messages up at once.
// A pause or a resume seen is logged at Info. Run also counts the messages
// handled and dead-lettered per topic per minute and adds them to
// durable_throughput every Config.ThroughputFlush and when it returns.
//
// # SQLite
//
// SQLite has one writer, and the dialect one connection: a batch
// transaction holds it while its handlers run, and Deliver, claims and the
// other workers wait meanwhile. The default concurrency is therefore 1;
// keep handlers short. A handler must use its tx only: any other use of the
// database waits for the connection the batch holds, forever.
//
// # Shutdown
//
// When Run's context ends, workers stop claiming; a handler in flight
// finishes (within its timeout), the messages of its batch that had not
// started are released, the batch commits, and Run returns nil.
package inbox
