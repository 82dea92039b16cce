package postgres_test

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/dialecttest"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/internal/testdb"
)

// The tests of this file run the dialect on Postgres with every transaction
// SERIALIZABLE (default_transaction_isolation, set per connection), the
// default isolation of CockroachDB and an option of YugabyteDB: Postgres's
// serializable snapshot isolation aborts with SQLSTATE 40001 where the
// default READ COMMITTED waits or skips, which is the first thing that
// changes on such engines. See docs/scaling.md.

// serializableDifferences are the conformance subtests whose strict
// expectations (no error at all) do not hold under SERIALIZABLE, each with
// the test of this file that asserts what does hold instead.
var serializableDifferences = map[string]string{
	"Relay/ConcurrentClaims":  "concurrent claims may fail with 40001; TestSerializableConcurrentClaims",
	"Inbox/ConcurrentClaims":  "concurrent claims may fail with 40001; TestSerializableConcurrentClaims",
	"Inbox/RescueSkipsLocked": "the batch beside a rescue may fail with 40001; TestSerializableRescueBesideBatch",
}

// openSerializable returns the pgx flavour on a fresh schema whose every
// connection starts its transactions SERIALIZABLE.
func openSerializable(t *testing.T, migrate bool) *postgres.Dialect {
	u, _ := testdb.PostgresSchema(t)
	pool := testdb.OpenPostgres(t, withParam(t, u, "default_transaction_isolation", "serializable"), migrate)
	return newPgx(t, pool, nil)
}

// TestConformanceSerializable runs the whole conformance suite with
// SERIALIZABLE transactions, but only when DURABLE_TEST_SERIALIZABLE is
// set: it takes as long as TestConformancePgx again (about 25 s on two
// busy cores). The subtests of serializableDifferences are skipped; the
// other tests of this file, which always run, cover them.
func TestConformanceSerializable(t *testing.T) {
	if os.Getenv("DURABLE_TEST_SERIALIZABLE") == "" {
		t.Skip("set DURABLE_TEST_SERIALIZABLE=1 to run the conformance suite with SERIALIZABLE transactions")
	}
	open := func(t *testing.T, migrate bool) *postgres.Dialect {
		for name, why := range serializableDifferences {
			if strings.HasSuffix(t.Name(), "/"+name) {
				t.Skip("SERIALIZABLE: " + why)
			}
		}
		return openSerializable(t, migrate)
	}
	dialecttest.Run(t, dialecttest.Harness[pgx.Tx]{
		Open:           func(t *testing.T) dialects.Dialect[pgx.Tx] { return open(t, true) },
		OpenUnmigrated: func(t *testing.T) dialects.Dialect[pgx.Tx] { return open(t, false) },
	})
}

// isSerialization reports whether err is a serialization failure (40001).
func isSerialization(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "40001"
}

// TestSerializableConcurrentClaims: claimers racing over one outbox
// destination, and over one inbox, never claim a row twice and claim every
// row in the end; a claim may fail with a serialization failure (which the
// relay and the workers retry after a backoff), never with another error.
func TestSerializableConcurrentClaims(t *testing.T) {
	const rows, claimers, limit = 60, 4, 5
	d := openSerializable(t, true)
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]dialects.OutboxRow, rows)
	in := make([]dialects.InboxRow, rows)
	for i := range rows {
		out[i] = dialecttest.Row(i, "billing")
		out[i].Key = "" // every row claimable at once
		in[i] = dialecttest.InboxRow(i, "orders")
	}
	if err := d.InsertOutbox(ctx, tx, out); err != nil {
		t.Fatal(err)
	}
	if _, err := d.InsertInbox(ctx, tx, in); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	claimOutbox := func(tok string) ([]string, error) {
		got, err := d.ClaimOutbox(ctx, dialects.OutboxClaim{Destination: "billing", Token: tok, Limit: limit, Lease: time.Hour})
		ids := make([]string, len(got))
		for i, r := range got {
			ids[i] = r.ID
		}
		return ids, err
	}
	claimInbox := func(tok string) ([]string, error) {
		got, err := d.ClaimInbox(ctx, dialects.InboxClaim{Token: tok, Worker: "w", Limit: limit, Lease: time.Hour})
		ids := make([]string, len(got))
		for i, r := range got {
			ids[i] = r.ID
		}
		return ids, err
	}
	for name, claim := range map[string]func(string) ([]string, error){"outbox": claimOutbox, "inbox": claimInbox} {
		var (
			mu       sync.Mutex
			owner    = map[string]string{}
			failures int
			wg       sync.WaitGroup
			errs     = make(chan error, claimers)
		)
		for c := range claimers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for round := 0; ctx.Err() == nil; round++ {
					tok := fmt.Sprintf("%s-c%d-%d", name, c, round)
					ids, err := claim(tok)
					mu.Lock()
					switch {
					case isSerialization(err):
						failures++
					case err != nil:
						mu.Unlock()
						errs <- err
						return
					}
					for _, id := range ids {
						if prev, dup := owner[id]; dup {
							mu.Unlock()
							errs <- fmt.Errorf("%s: %s claimed by %s and %s", name, id, prev, tok)
							return
						}
						owner[id] = tok
					}
					done := len(owner) == rows
					mu.Unlock()
					if done {
						return
					}
				}
				errs <- ctx.Err()
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if len(owner) != rows {
			t.Fatalf("%s: %d rows claimed, want %d", name, len(owner), rows)
		}
		t.Logf("%s: %d rows claimed by %d claimers; %d claims failed with 40001", name, rows, claimers, failures)
	}
}

// TestSerializableRescueBesideBatch: a rescue beside a batch transaction
// that holds its expired rows (LockInbox) rescues only the free row, and
// the batch either settles its row or, under SERIALIZABLE, may fail with a
// serialization failure; then, once rolled back, its row is still running
// under its token, for the worker to settle as a failed attempt (or a
// rescue to take back): delayed, never lost.
func TestSerializableRescueBesideBatch(t *testing.T) {
	d := openSerializable(t, true)
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.InsertInbox(ctx, tx, []dialects.InboxRow{dialecttest.InboxRow(1, "orders"), dialecttest.InboxRow(2, "orders")}); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	claim := func(tok string) dialects.InboxRow {
		got, err := d.ClaimInbox(ctx, dialects.InboxClaim{Token: tok, Worker: tok, Limit: 1, Lease: time.Millisecond})
		if err != nil || len(got) != 1 {
			t.Fatalf("ClaimInbox(%s) = %d rows, %v", tok, len(got), err)
		}
		return got[0]
	}
	held, free := claim("held"), claim("free")
	key := func(r dialects.InboxRow) dialects.InboxKey { return dialects.InboxKey{Source: r.Source, ID: r.ID} }
	state := func(id string) dialects.InboxRow {
		t.Helper()
		rs, err := d.ListInbox(ctx, dialects.InboxQuery{IDs: []string{id}})
		if err != nil || len(rs) != 1 {
			t.Fatalf("ListInbox(%s) = %v, %v", id, rs, err)
		}
		return rs[0]
	}
	// Wait for the leases (1ms) to expire; the server runs on this host,
	// by this clock.
	deadline := time.Now().Add(time.Minute)
	for !time.Now().After(state(held.ID).LockedUntil) || !time.Now().After(state(free.ID).LockedUntil) {
		if time.Now().After(deadline) {
			t.Fatal("leases did not expire")
		}
		time.Sleep(time.Millisecond)
	}
	batch, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Rollback(ctx, batch) }()
	if k, err := d.LockInbox(ctx, batch, "held", []dialects.InboxKey{key(held)}); err != nil || len(k) != 1 {
		t.Fatalf("LockInbox = %v, %v", k, err)
	}
	if n, err := d.RescueInbox(ctx, 10); err != nil || n != 1 {
		t.Fatalf("RescueInbox beside the batch = %d, %v; want 1 (the free row)", n, err)
	}
	if r := state(free.ID); r.State != dialects.InboxStateReady {
		t.Fatalf("free row after the rescue: %s, want ready", r.State)
	}
	n, err := d.FinishInbox(ctx, batch, "held", []dialects.InboxOutcome{{Source: held.Source, ID: held.ID, Kind: dialects.InboxHandled}})
	if err == nil {
		err = d.Commit(ctx, batch)
	}
	switch {
	case err == nil:
		if n != 1 {
			t.Fatalf("FinishInbox settled %d rows, want 1", n)
		}
		if r := state(held.ID); r.State != dialects.InboxStateHandled {
			t.Fatalf("held row after the batch committed: %s, want handled", r.State)
		}
		t.Log("the batch committed beside the rescue")
	case isSerialization(err):
		if rbErr := d.Rollback(ctx, batch); rbErr != nil {
			t.Fatal(rbErr)
		}
		if r := state(held.ID); r.State != dialects.InboxStateRunning || r.LeaseToken != "held" {
			t.Fatalf("held row after the batch failed: %s under %q, want running under \"held\"", r.State, r.LeaseToken)
		}
		t.Logf("the batch failed with 40001 beside the rescue (%v); its row is still running under its token", err)
	default:
		t.Fatalf("FinishInbox or Commit beside the rescue: %v", err)
	}
}

// withParam returns the Postgres URL u with the run-time parameter name set
// to value (pgx sends unknown URL parameters to the server at connect).
func withParam(t *testing.T, u, name, value string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	q := p.Query()
	q.Set(name, value)
	p.RawQuery = q.Encode()
	return p.String()
}
