// Package pgcopy holds the batch size from which the Postgres dialect's pgx
// flavour writes outbox rows with COPY, for that dialect and for the tests
// of other packages that need a batch to take the COPY path.
package pgcopy

// Threshold is the batch size from which the pgx flavour writes outbox
// rows with COPY instead of one INSERT … FROM unnest statement. COPY costs
// three more round trips (savepoint, describe, release) and a subtransaction,
// so small batches are faster as one statement; per row it is cheaper (no ON
// CONFLICT probe, binary rows, no RETURNING). Measured on the project's
// 2-core machine (BenchmarkInsertOutbox in dialects/postgres, and both paths
// interleaved, 200-byte payloads), the two cross between 100 and 250 rows and
// COPY is about 1.4 times faster from 500 rows on, 1.6 times at 2,000. The
// threshold sits at 500 rather than at the crossing so that the
// subtransaction, which Postgres tracks per transaction, is spent only on
// true bulk writes.
const Threshold = 500
