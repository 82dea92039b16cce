// Package integration is durable's fault suite: the sending and the receiving
// service run as real subprocesses and exchange messages through TCP proxies
// while the test breaks everything it can, then checks that every committed
// message had exactly one effect.
//
// # The scenario
//
// Each test builds internal/cmd/node once and runs it as two kinds of
// service, on two databases of their own (SQLite files, or two private
// PostgreSQL servers started from the installed binaries in a temporary
// folder):
//
//   - senders ("orders"): in one transaction, a business row in the orders
//     table and one enqueued message; a few transactions roll back on
//     purpose, a few messages are poison, some carry an ordering key. The
//     relay sends to the receivers through faultproxies. The orders table is
//     the truth: a message exists iff its row committed.
//   - receivers ("billing"): the handler writes an effect row in the
//     transaction that completes the message (the effects table has no
//     unique constraint, so a double effect shows; a column names the
//     receiver that wrote it), then may fail on purpose (the effect must
//     roll back and the message be retried); a poison
//     message fails permanently and must end in the dead letters with no
//     effect. For keyed messages the handler records order violations.
//
// Several senders share one database (their relays compete for the rows)
// and several receivers share the other. The senders reach the receivers in
// one of two ways:
//
//   - one proxy (TestFaultSQLite, two senders and two receivers): every
//     sender dials it as its peer's one address (durable.Peer.Addr), and the
//     test moves it between the receivers;
//   - a proxy per receiver (TestFaultPostgres, three senders and three
//     receivers): each proxy keeps its address and follows its receiver to
//     its new port after every restart; the senders get all of them as the
//     peer's instances (durable.Peer.Addrs, a tcp.Balancer), so that every
//     receiver takes deliveries at once. The check then requires that each
//     receiver handled messages, and logs each one's share.
//
// Fault loops run at once for the length of the scenario, each driven by a
// random generator seeded from the scenario's seed:
//
//   - the network loop, on the proxy (with a proxy per receiver: on one
//     receiver's, or on all of them): cut every connection, cut after a
//     random number of bytes in one or both directions (mid-frame), cut at
//     the next byte a receiver sends (an ACK, most likely: the batch is in
//     the inbox, the relay never hears of it), stall
//     (longer than the client's timeouts, so batches are given up and then
//     still arrive), add latency, limit the bandwidth, reset new connections,
//     refuse connections; with one proxy, switch to another receiver; with
//     a proxy per receiver, partition one receiver (cut its connections,
//     then refuse or reset new ones for 1 to 4 s) while the others must take
//     its share;
//   - the crash loop: SIGKILL a sender or a receiver at a random moment;
//     make a sender kill itself right after a COMMIT returned (before its
//     relay could send the message), or a receiver inside its handler
//     (after the effect was written, before the inbox completed the
//     message); SIGKILL every sender the moment bytes, most likely an ACK,
//     reach them (between acknowledgement and deletion); stop a service
//     gracefully (SIGTERM, which must succeed); kill every service at once.
//     Every service is started again after a random delay;
//   - the crash-point loop: SIGKILL a sender or a receiver and start it
//     again with one of the library's crash points armed (see below), wait
//     until it killed itself there, start it again unarmed. It takes turns
//     with the crash loop, so that the two never act on a service at once;
//   - on Postgres, the database loop: restart a server (fast, or immediate
//     with crash recovery), or SIGKILL it and start it again.
//
// The receivers' handler also fails now and then on its own: an error, a
// panic, a failed statement it ignores (which aborts a Postgres
// transaction), a hang past the inbox lease and at times the handler
// timeout. Each of these must roll the effect back and retry.
//
// Then the faults heal, the senders restart to relay without enqueuing, and
// the test waits until the outbox is empty and every inbox message is
// handled. The history checker (internal/history) compares the committed
// business rows with the effects and dead letters and fails on any lost
// message (committed, no effect, no dead letter), any duplicate effect, any
// unexpected effect (a rolled back or unknown message), a poison message
// with an effect or a normal one in the dead letters, a sender-side dead
// letter, a commit the sender saw succeed without its row, a per-key order
// violation, and a service that exited on its own (an armed one too,
// unless it died at its point).
//
// # Exact crashes
//
// The four windows where a crash matters, commit-then-send, send-then-delete,
// insert-then-ACK and handler-then-completion, are hit exactly, not only by
// chance. Commit-then-send and handler-then-completion are hit from the
// application's code: on SIGUSR1 the helper SIGKILLs itself right after its
// next COMMIT returned, or in its next handler after the effect was written
// (see internal/cmd/node). All four are hit inside the library at its crash
// points (internal/crashpoint): calls of crashpoint.Hit, empty functions in a
// normal build; the helper is built with the tag durable_crashpoints, where
// DURABLE_CRASHPOINT=name:N makes the process write "CRASHPOINT name" on
// stderr and SIGKILL itself the N-th time it gets to the point name. The
// points:
//
//   - relay.after-claim: rows claimed, not sent yet (commit-then-send);
//   - relay.after-ack: the batch acknowledged, its rows not deleted yet
//     (send-then-delete);
//   - relay.after-delete: the rows deleted;
//   - inbox.after-insert-commit (after the inbox's transaction committed)
//     and tcp.before-ack-write (before the ACK is written): the batch is in
//     the inbox, the sender does not know it (insert-then-ACK);
//   - inbox.inline.after-handlers: the handlers of an inline batch ran, its
//     transaction has not committed (only a receiver that handles inline
//     gets there);
//   - inbox.after-claim, inbox.after-handlers and inbox.after-finish: a
//     worker claimed a batch; ran its handlers and has not completed it
//     (handler-then-completion); committed its completion.
//
// The crash-point loop arms them round robin, the windows' points first, at
// their N-th hit with N from 1 to 3, so that every scenario arms each at
// least once. An armed receiver becomes the proxy's target (with a proxy per
// receiver, the balancers reach it as any other); the workers'
// points are armed preferably, and the inline point only, in a receiver whose
// next start runs that path. A service that does not get to its point within
// 5 s is killed; while the point's window has not been hit, it is armed again
// at the next turn, up to twice in a row. A scenario of the test's full length fails unless each of
// the four windows was hit exactly at least once, and logs how often each
// point was armed and reached. The kills at random moments and timed on the
// traffic, and the cuts at the ACK (which the sender cannot tell from a
// receiver that died there), still hit the same windows with interleavings no
// fixed point gives. Each scenario logs how many kills found rows leased to
// the killed process.
//
// # A handler that kills its process
//
// TestKillingHandler runs one receiver, restarted whenever it dies as a
// supervisor would, and sends it a batch that holds one killer message,
// whose handler SIGKILLs the process every time it runs. The receiver must
// die exactly 1+MaxAttempts times (once in the inline delivery, which
// counts no attempt, then once per worker attempt), the killer must end in
// the dead letters ("gave up") with no effect, and every other message of
// its batch must have one effect and no dead letter.
//
// # Running it
//
// go test ./integration runs one scenario per dialect with a fixed seed, in
// parallel, a little under a minute each plus the drain (Postgres is
// skipped when initdb and postgres are not installed, and fails then under
// CI). The helper services are built without the race detector, even under
// go test -race, because SQLite under -race crawls; -race-helpers builds
// them with it. -short skips the suite.
//
// A soak runs scenario after scenario with random seeds and stops at the
// first failure, printing its seed:
//
//	go test ./integration -run Fault -soak=30m -timeout=0 -v
//
// -length sets the fault phase of each scenario. To replay a seed:
//
//	go test ./integration -run '^TestFaultSQLite$' -seed=123456 -length=45s -v
//
// A seed fixes the schedule of faults and their parameters, not the
// interleaving of the processes with them, so a replay repeats the same
// trouble at the same moments, not the same bytes.
package integration
