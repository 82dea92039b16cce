package outbox_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
)

// TestRelayThroughPgBouncer runs the enqueue path and a relay through
// PgBouncer in transaction mode, which passes no notifications and keeps no
// session state between transactions: the relay runs with NoListen, the
// pool with default_query_exec_mode=exec (no named prepared statements),
// and the dialect with Config.Schema (the pooler refuses a search_path
// start-up parameter). A trickle of messages, one at a time, arrives by
// polling alone; a batch of 500 (written with COPY) arrives whole; the
// outbox ends empty. The trickle's latencies are logged beside those of a
// relay that LISTENs on a direct connection: the polling floor. Each
// message of the trickle is enqueued at a random moment of the poll cycle. The test is
// skipped when pgbouncer is not installed (Debian: apt-get install
// pgbouncer), and fails then when CI is set. DURABLE_TRICKLE=n sends n messages per trickle (default 3);
// DURABLE_POLL sets the polling relay's PollInterval (default 1s).
func TestRelayThroughPgBouncer(t *testing.T) {
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		// Debian installs it in /usr/sbin, which a user's PATH may lack.
		bin, err = exec.LookPath("/usr/sbin/pgbouncer")
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("pgbouncer is not installed, and CI must test the relay through a transaction-mode pooler (.ci/run installs Debian's pgbouncer)")
		}
		t.Skip("pgbouncer is not installed (Debian: apt-get install pgbouncer); the relay through a transaction-mode pooler is not tested")
	}
	trickle, poll := 3, time.Second
	if v := os.Getenv("DURABLE_TRICKLE"); v != "" {
		if trickle, err = strconv.Atoi(v); err != nil || trickle < 1 {
			t.Fatalf("DURABLE_TRICKLE=%q", v)
		}
	}
	if v := os.Getenv("DURABLE_POLL"); v != "" {
		if poll, err = time.ParseDuration(v); err != nil {
			t.Fatalf("DURABLE_POLL=%q", v)
		}
	}
	direct, schema := testdb.PostgresSchema(t)
	testdb.OpenPostgres(t, direct, true).Close() // migrate
	bouncer := startPgBouncer(t, bin, direct)

	t.Run("pgbouncer-poll", func(t *testing.T) {
		pool := testdb.OpenPostgres(t, bouncer, false)
		d, err := postgres.New(pool, &postgres.Config{Schema: schema})
		if err != nil {
			t.Fatal(err)
		}
		ob := newOutbox(t, d, nil)
		cfg := fastRelay(nil)
		cfg.NoListen, cfg.PollInterval = true, poll
		lat := relayTrickle(t, d, ob, cfg, trickle)
		t.Logf("through pgbouncer, NoListen, PollInterval %v: %d messages one at a time, latency p50 %v, max %v",
			poll, trickle, lat[len(lat)/2], lat[len(lat)-1])
	})
	t.Run("direct-listen", func(t *testing.T) {
		pool := testdb.OpenPostgres(t, direct, false)
		d, err := postgres.New(pool, nil)
		if err != nil {
			t.Fatal(err)
		}
		ob := newOutbox(t, d, &outbox.Config{Notify: true})
		cfg := fastRelay(nil)
		cfg.PollInterval = poll
		lat := relayTrickle(t, d, ob, cfg, trickle)
		t.Logf("direct, LISTEN/NOTIFY, PollInterval %v: %d messages one at a time, latency p50 %v, max %v",
			poll, trickle, lat[len(lat)/2], lat[len(lat)-1])
	})
}

// relayTrickle runs a relay for d with cfg, enqueues n messages one at a
// time through ob, each at a random moment after the previous one was
// acknowledged, then 500 in one
// transaction; it checks that every message arrived and the outbox ended
// empty, and returns the trickle's latencies (enqueue committed to
// delivered), sorted.
func relayTrickle(t *testing.T, d *postgres.Dialect, ob *outbox.Outbox[pgx.Tx], cfg *outbox.RelayConfig, n int) []time.Duration {
	rcv := newReceiver()
	srv := startServer(t, rcv)
	relay := newRelay(t, d, map[string]transport.Sender{"billing": newClient(t, srv.addr)}, cfg)
	start(t, relay)
	lat := make([]time.Duration, n)
	for i := range n {
		// A message of a trickle comes at any moment of the relay's poll
		// cycle: not at once after the previous ACK, which the relay
		// follows with a claim of its own.
		waitUntil(t, "the previous message's ACK", time.Minute, func() bool { return unsent(t, d) == 0 })
		time.Sleep(rand.N(cfg.PollInterval))
		mustEnqueue(t, ob, relayMsg("billing", i))
		began := time.Now()
		rcv.waitDistinct(t, i+1, time.Minute)
		lat[i] = time.Since(began)
	}
	bulk := make([]*outbox.Message, 500)
	for i := range bulk {
		bulk[i] = relayMsg("billing", n+i)
	}
	mustEnqueue(t, ob, bulk...)
	rcv.waitDistinct(t, n+len(bulk), time.Minute)
	waitUntil(t, "the outbox to empty", time.Minute, func() bool { return unsent(t, d) == 0 })
	if _, counts := rcv.snapshot(); len(counts) != n+len(bulk) {
		t.Fatalf("%d distinct messages received, want %d", len(counts), n+len(bulk))
	}
	slices.Sort(lat)
	return lat
}

// startPgBouncer runs pgbouncer in transaction mode on a free loopback port
// in front of the server of the Postgres URL direct, until the test ends,
// and returns the URL of direct's database through it (without
// search_path, which the pooler refuses, and with
// default_query_exec_mode=exec).
func startPgBouncer(t *testing.T, bin, direct string) string {
	t.Helper()
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "5432"
	}
	user := u.User.Username()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	_ = ln.Close() // pgbouncer binds it next; a race with another listener only fails the start
	dir := t.TempDir()
	ini := fmt.Sprintf(`[databases]
* = host=%s port=%s
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = transaction
max_client_conn = 200
default_pool_size = 20
`, host, port, addr.Port, filepath.Join(dir, "users.txt"))
	if os.Geteuid() == 0 {
		ini += "user = postgres\n" // pgbouncer refuses to run as root
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "users.txt"), []byte(strconv.Quote(user)+` ""`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pgbouncer.ini"), []byte(ini), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	out := &logSink{}
	cmd.Stdout, cmd.Stderr = (*sinkWriter)(out), (*sinkWriter)(out)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	q := u.Query()
	q.Del("search_path")
	q.Set("default_query_exec_mode", "exec")
	u.Host, u.RawQuery = addr.String(), q.Encode()
	bouncer := u.String()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("pgbouncer exited: %v\n%s", err, out.dump())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		pool, err := pgxpool.New(ctx, bouncer)
		if err == nil {
			err = pool.Ping(ctx)
			pool.Close()
		}
		cancel()
		if err == nil {
			return bouncer
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgbouncer did not accept connections within 30s: %v\n%s", err, out.dump())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sinkWriter keeps a process's output in a logSink, a line per Write.
type sinkWriter logSink

func (w *sinkWriter) Write(p []byte) (int, error) {
	s := (*logSink)(w)
	s.mu.Lock()
	s.lines = append(s.lines, string(p))
	s.mu.Unlock()
	return len(p), nil
}
