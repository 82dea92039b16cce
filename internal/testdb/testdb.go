// Package testdb gives tests real databases: a fresh Postgres schema or a
// fresh SQLite file per test, migrated or not. It is imported by tests only.
//
// Postgres is found through DURABLE_TEST_DATABASE_URL (default
// postgres://postgres@127.0.0.1:5432/test?sslmode=disable). When it cannot be
// reached the test is skipped with a clear message, unless the CI environment
// variable is set: then the test fails, because CI must prove the Postgres
// path.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable/internal/testport"
	"github.com/durable-go/durable/migrations"
)

// DefaultPostgresURL is used when DURABLE_TEST_DATABASE_URL is not set.
const DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// PostgresURL returns the base URL of the test server, or skips (fails under
// CI) when the server is unreachable.
func PostgresURL(tb testing.TB) string {
	tb.Helper()
	u := os.Getenv("DURABLE_TEST_DATABASE_URL")
	if u == "" {
		u = DefaultPostgresURL
	}
	pgOnce.Do(func() {
		// Without CI a missing server skips the tests after a short look;
		// with CI the server must be there, so a busy machine gets a
		// minute of retries before the tests fail.
		patience := 5 * time.Second
		if os.Getenv("CI") != "" {
			patience = time.Minute
		}
		deadline := time.Now().Add(patience)
		for {
			pgErr = ping(u, min(10*time.Second, time.Until(deadline)))
			if pgErr == nil || time.Until(deadline) < time.Second {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
	if pgErr != nil {
		msg := fmt.Sprintf("Postgres at %s is not reachable (%v); set DURABLE_TEST_DATABASE_URL or run `make db/up`", redact(u), pgErr)
		if os.Getenv("CI") != "" {
			tb.Fatal("CI is set, Postgres tests must run: " + msg)
		}
		tb.Skip("skipping Postgres test: " + msg)
	}
	return u
}

var (
	pgOnce sync.Once
	pgErr  error
)

// ping connects to u and pings it within timeout.
func ping(u string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), max(timeout, time.Second))
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.Ping(ctx)
}

func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable DURABLE_TEST_DATABASE_URL)"
	}
	return p.Redacted()
}

// PostgresSchema creates a fresh schema for this test, dropped at cleanup,
// and returns a connection URL whose search_path points at it.
func PostgresSchema(tb testing.TB) (connURL, schema string) {
	tb.Helper()
	base := PostgresURL(tb)
	schema = "durable_test_" + randomHex(6)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		tb.Fatalf("testdb: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		tb.Fatalf("testdb: create schema: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			tb.Logf("testdb: drop schema %s: %v", schema, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			tb.Logf("testdb: drop schema %s: %v", schema, err)
		}
	})
	return WithSearchPath(tb, base, schema), schema
}

// WithSearchPath returns u with search_path set to schema.
func WithSearchPath(tb testing.TB, u, schema string) string {
	tb.Helper()
	p, err := url.Parse(u)
	if err != nil {
		tb.Fatalf("testdb: parse url: %v", err)
	}
	q := p.Query()
	q.Set("search_path", schema)
	p.RawQuery = q.Encode()
	return p.String()
}

// PostgresPool returns a pool on a fresh schema, migrated when migrate is
// true. The pool is closed at cleanup.
func PostgresPool(tb testing.TB, migrate bool) (*pgxpool.Pool, string) {
	tb.Helper()
	u, schema := PostgresSchema(tb)
	return OpenPostgres(tb, u, migrate), schema
}

// OpenPostgres opens a pool on connURL (pgxpool parameters such as
// pool_max_conns may be added to it), closed at cleanup, and applies the up
// migrations when migrate is true.
func OpenPostgres(tb testing.TB, connURL string, migrate bool) *pgxpool.Pool {
	tb.Helper()
	pool, err := pgxpool.New(context.Background(), connURL)
	if err != nil {
		tb.Fatalf("testdb: pool: %v", err)
	}
	tb.Cleanup(pool.Close)
	if migrate {
		for _, stmt := range UpSQL(tb, migrations.Postgres) {
			if _, err := pool.Exec(context.Background(), stmt); err != nil {
				tb.Fatalf("testdb: migrate: %v", err)
			}
		}
	}
	return pool
}

// SQLitePath returns the path of a new SQLite database file in the test's
// temporary directory. The file does not exist yet.
func SQLitePath(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(tb.TempDir(), "durable.db")
}

// UpSQL returns the contents of every up migration of dialect, in order.
func UpSQL(tb testing.TB, dialect string) []string {
	tb.Helper()
	fsys, err := migrations.FS(dialect)
	if err != nil {
		tb.Fatal(err)
	}
	names, err := fs.Glob(fsys, "*.up.sql")
	if err != nil {
		tb.Fatal(err)
	}
	sort.Strings(names)
	out := make([]string, 0, len(names))
	for _, n := range names {
		b, err := fs.ReadFile(fsys, n)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return strings.ToLower(hex.EncodeToString(b))
}

// UnreachablePostgres returns a pool on a local port where nothing listens,
// as a database that is down, and the port's address. The port is reserved
// for the test (testport.Reserve): on Linux it stays bound without
// listening, so connections are refused and no other socket (another
// test's listener) can take it meanwhile; elsewhere it is a freed port. The
// pool is closed at cleanup; nothing is created anywhere.
func UnreachablePostgres(tb testing.TB) (*pgxpool.Pool, string) {
	tb.Helper()
	addr := testport.Reserve(tb).Addr()
	return OpenPostgres(tb, "postgres://postgres@"+addr+"/test?sslmode=disable", false), addr
}
