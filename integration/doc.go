// Package integration is durable's fault suite: the sending and the receiving
// service run as real subprocesses and exchange messages through a TCP proxy
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
//     relay sends to the receivers through a faultproxy. The orders table is
//     the truth: a message exists iff its row committed.
//   - receivers ("billing"): the handler writes an effect row in the
//     transaction that completes the message (the effects table has no
//     unique constraint, so a double effect shows), then may fail on purpose
//     (the effect must roll back and the message be retried); a poison
//     message fails permanently and must end in the dead letters with no
//     effect. For keyed messages the handler records order violations.
//
// Several senders share one database (their relays compete for the rows)
// and several receivers share the other (the proxy moves between them).
//
// Fault loops run at once for the length of the scenario, each driven by a
// random generator seeded from the scenario's seed:
//
//   - the network loop, on the proxy: cut every connection, cut after a
//     random number of bytes in one or both directions (mid-frame), cut at
//     the next byte a receiver sends (an ACK, most likely: the batch is in
//     the inbox, the relay never hears of it), stall
//     (longer than the client's timeouts, so batches are given up and then
//     still arrive), add latency, limit the bandwidth, reset new connections,
//     refuse connections, switch to another receiver;
//   - the crash loop: SIGKILL a sender or a receiver at a random moment;
//     make a sender kill itself right after a COMMIT returned (before its
//     relay could send the message), or a receiver inside its handler
//     (after the effect was written, before the inbox completed the
//     message); SIGKILL every sender the moment bytes, most likely an ACK,
//     reach them (between acknowledgement and deletion); stop a service
//     gracefully (SIGTERM, which must succeed); kill every service at once.
//     Every service is started again after a random delay;
//   - on Postgres, the database loop: restart a server (fast, or immediate
//     with crash recovery), or SIGKILL it and start it again.
//
// The receivers' handler also fails now and then on its own: an error, a
// panic, a failed statement it ignores (which aborts a Postgres
// transaction), a hang past the inbox lease and at times the handler
// timeout. Each of these must roll the effect back and retry.
//
// Commit-then-send and handler-then-completion are hit exactly, from the
// application's code (the helper SIGKILLs itself on SIGUSR1, see
// internal/cmd/node). The other windows inside the library, between
// acknowledgement and deletion in the relay and between the inbox's commit
// and its ACK, are hit statistically: kills timed on the traffic and at
// random moments of a steady stream, and cuts at the ACK, which the sender
// cannot tell from a receiver that died there. Aiming at those exact points
// needs crash hooks in the library. Each scenario logs how many kills found
// rows leased to the killed process.
//
// Then the faults heal, the senders restart to relay without enqueuing, and
// the test waits until the outbox is empty and every inbox message is
// handled. The history checker (internal/history) compares the committed
// business rows with the effects and dead letters and fails on any lost
// message (committed, no effect, no dead letter), any duplicate effect, any
// unexpected effect (a rolled back or unknown message), a poison message
// with an effect or a normal one in the dead letters, a sender-side dead
// letter, a commit the sender saw succeed without its row, a per-key order
// violation, and a service that exited on its own.
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
