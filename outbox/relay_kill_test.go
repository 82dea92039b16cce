package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
	"github.com/durable-go/durable/transport/tcp"
)

// The test binary doubles as the relay process that TestRelayKilled kills:
// TestMain runs relayHelper instead of the tests when helperEnv is set.
const (
	helperEnv     = "DURABLE_RELAY_HELPER"
	helperDialect = "DURABLE_RELAY_HELPER_DIALECT" // "postgres" or "sqlite"
	helperDSN     = "DURABLE_RELAY_HELPER_DSN"
	helperAddr    = "DURABLE_RELAY_HELPER_ADDR"
	helperID      = "killed-relay"
)

// relayHelper runs a relay on the database and peer named by the
// environment until the process is killed; it returns an exit code only
// when it cannot start.
func relayHelper() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "relay helper:", err)
		return 2
	}
	client, err := tcp.NewClient(os.Getenv(helperAddr), &tcp.ClientConfig{NodeID: "killed", Logger: quiet})
	if err != nil {
		return fail(err)
	}
	senders := map[string]transport.Sender{"billing": client}
	// The lease is what the next relay waits out after the kill, so it is
	// short; but the send must not time out (and release the rows) before
	// the test killed the process, however slowly the test gets to it.
	cfg := &outbox.RelayConfig{
		ID: helperID, Logger: quiet, BatchSize: 10, InFlight: 1,
		Lease: 5 * time.Second, SendTimeout: 4 * time.Second, PollInterval: 50 * time.Millisecond,
	}
	ctx := context.Background()
	switch os.Getenv(helperDialect) {
	case "postgres":
		pool, err := pgxpool.New(ctx, os.Getenv(helperDSN))
		if err != nil {
			return fail(err)
		}
		d, err := postgres.New(pool, nil)
		if err != nil {
			return fail(err)
		}
		r, err := outbox.NewRelay(d, senders, cfg)
		if err != nil {
			return fail(err)
		}
		return fail(fmt.Errorf("Run returned: %v", r.Run(ctx)))
	case "sqlite":
		db, err := sql.Open("sqlite", os.Getenv(helperDSN))
		if err != nil {
			return fail(err)
		}
		d, err := sqlite.New(db, nil)
		if err != nil {
			return fail(err)
		}
		r, err := outbox.NewRelay(d, senders, cfg)
		if err != nil {
			return fail(err)
		}
		return fail(fmt.Errorf("Run returned: %v", r.Run(ctx)))
	}
	return fail(fmt.Errorf("unknown dialect %q", os.Getenv(helperDialect)))
}

// TestRelayKilled: a relay process killed (SIGKILL) after its batch reached
// the receiver and before it deleted the rows leaves them leased; once the
// lease expired, the next relay sends them again, and the receiver sees
// the same ids a second time (the inbox dedupes them).
func TestRelayKilled(t *testing.T) {
	t.Run("postgres", func(t *testing.T) {
		u, _ := testdb.PostgresSchema(t)
		d := pgDialect(t, testdb.OpenPostgres(t, u, true))
		testKilled(t, dialects.Dialect[pgxTx](d), "postgres", u)
	})
	t.Run("sqlite", func(t *testing.T) {
		path := testdb.SQLitePath(t)
		db, err := sql.Open("sqlite", sqlite.DSN(path))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		for _, stmt := range testdb.UpSQL(t, migrations.SQLite) {
			if _, err := db.Exec(stmt); err != nil {
				t.Fatal(err)
			}
		}
		d, err := sqlite.New(db, nil)
		if err != nil {
			t.Fatal(err)
		}
		testKilled(t, dialects.Dialect[sqlTx](d), "sqlite", sqlite.DSN(path))
	})
}

func testKilled[TTx any](t *testing.T, d dialects.Dialect[TTx], dialect, dsn string) {
	const total = 50
	rcv := newReceiver()
	var (
		first   sync.Once
		entered = make(chan []string, 1)
		killed  = make(chan struct{})
	)
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		isFirst := false
		first.Do(func() { isFirst = true })
		res, err := rcv.Deliver(ctx, b) // stored: the receiving side has it
		if isFirst {
			var ids []string
			for _, e := range b.Envelopes {
				ids = append(ids, e.ID)
			}
			entered <- ids
			<-killed // the sender dies before this ACK reaches it
		}
		return res, err
	})
	srv := startServer(t, h)
	// Registered after the server, so run before its close: a test that
	// fails before the kill must not leave the first handler blocked.
	var killOnce sync.Once
	t.Cleanup(func() { killOnce.Do(func() { close(killed) }) })
	ob := newOutbox(t, d, nil)
	var msgs []*outbox.Message
	for i := range total {
		msgs = append(msgs, relayMsg("billing", i))
	}
	mustEnqueue(t, ob, msgs...)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", helperDialect+"="+dialect, helperDSN+"="+dsn, helperAddr+"="+srv.addr)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	var firstIDs []string
	select {
	case firstIDs = <-entered:
	case err := <-exited:
		t.Fatalf("relay process exited early: %v\n%s", err, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("the relay process sent nothing in 30s\n%s", stderr.String())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("relay process: %v, want killed", err)
	}
	exited <- nil // for the cleanup
	killOnce.Do(func() { close(killed) })

	// Sent, not deleted: every row is still there, the sent ones leased by
	// the dead relay.
	rows := rowsOf(t, d)
	if len(rows) != total {
		t.Fatalf("%d rows after the kill, want %d", len(rows), total)
	}
	leased := map[string]bool{}
	for _, r := range rows {
		if strings.HasPrefix(r.LeaseToken, helperID+"/") {
			leased[r.ID] = true
		}
	}
	if len(firstIDs) != 10 || len(leased) != len(firstIDs) {
		t.Fatalf("sent %v, leased by the dead relay %v", firstIDs, leased)
	}
	for _, id := range firstIDs {
		if !leased[id] {
			t.Fatalf("%s was sent but is not leased by the dead relay", id)
		}
	}

	relay := newRelay(t, d, map[string]transport.Sender{"billing": newClient(t, srv.addr)}, fastRelay(nil))
	start(t, relay)
	rcv.waitDistinct(t, total, 60*time.Second)
	waitUntil(t, "an empty outbox", 30*time.Second, func() bool { return len(rowsOf(t, d)) == 0 })
	got, counts := rcv.snapshot()
	for _, id := range firstIDs {
		if counts[id] != 2 {
			t.Fatalf("%s received %d times, want twice (before the kill and after the restart)", id, counts[id])
		}
	}
	if len(got) != total+len(firstIDs) || len(counts) != total {
		t.Fatalf("%d deliveries of %d ids, want %d of %d", len(got), len(counts), total+len(firstIDs), total)
	}
	for _, g := range got {
		if leased[g.env.ID] && counts[g.env.ID] == 2 && g.env.SendAttempt == 2 {
			return // the resend carries its attempt number
		}
	}
	t.Fatal("no resent envelope carries Attempt 2")
}
