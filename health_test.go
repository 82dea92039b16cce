package durable_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/internal/testport"
)

// quiet discards a node's logs.
var quiet = slog.New(slog.DiscardHandler)

// probe sends one request to h and returns the status and body.
func probe(t *testing.T, h http.Handler, method string) (int, string, http.Header) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, "/readyz", nil))
	return rec.Code, rec.Body.String(), rec.Header()
}

// wantHealth checks n's report against checks, and that Ready agrees.
func wantHealth[TTx any](t *testing.T, n *durable.Node[TTx], checks map[string]string) durable.Health {
	t.Helper()
	h := n.Health(context.Background())
	ready := true
	for _, v := range checks {
		ready = ready && v == "ok"
	}
	if !reflect.DeepEqual(h.Checks, checks) || (h.Status == "ready") != ready || (h.Err == nil) != ready {
		t.Errorf("Health = %q %q (err %v)\nwant checks %q", h.Status, h.Checks, h.Err, checks)
	}
	if err := n.Ready(context.Background()); (err == nil) != ready {
		t.Errorf("Ready = %v, want ready %v", err, ready)
	}
	return h
}

// startNode runs n until the returned stop is called; stop returns Run's
// error.
func startNode[TTx any](n *durable.Node[TTx]) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	return func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return errors.New("Run did not return after cancel")
		}
	}
}

func TestReadySQLite(t *testing.T) {
	db, d := openSQLite(t)
	n, err := durable.NewNode(d, fastConfig(durable.Config[*sql.Tx]{Name: "health", Logger: quiet, Listener: listener(t)}))
	if err != nil {
		t.Fatal(err)
	}
	handler := n.ReadyHandler()

	// Before Run: the database is fine, the node is not running.
	h := wantHealth(t, n, map[string]string{
		"running":  "durable: node is not running: Run has not been called",
		"database": "ok", "schema": "ok",
		"listener": "not listening yet",
	})
	if !errors.Is(h.Err, durable.ErrNotRunning) || errors.Is(h.Err, dialects.ErrSchema) {
		t.Errorf("Err before Run = %v, want ErrNotRunning only", h.Err)
	}
	code, body, hdr := probe(t, handler, http.MethodGet)
	want := `{"status":"not ready","checks":{"database":"ok","listener":"not listening yet","running":"durable: node is not running: Run has not been called","schema":"ok"}}` + "\n"
	if code != http.StatusServiceUnavailable || body != want || hdr.Get("Content-Type") != "application/json" || hdr.Get("Cache-Control") != "no-store" {
		t.Errorf("GET before Run: %d %q %v, want 503 %q", code, body, hdr, want)
	}

	// Running: ready.
	stop := startNode(n)
	waitFor(t, "the node to be ready", func() (bool, error) { return n.Ready(context.Background()) == nil, nil })
	wantHealth(t, n, map[string]string{"running": "ok", "database": "ok", "schema": "ok", "listener": "ok"})
	code, body, _ = probe(t, handler, http.MethodGet)
	if want := `{"status":"ready","checks":{"database":"ok","listener":"ok","running":"ok","schema":"ok"}}` + "\n"; code != http.StatusOK || body != want {
		t.Errorf("GET while running: %d %q, want 200 %q", code, body, want)
	}
	if code, body, _ = probe(t, handler, http.MethodHead); code != http.StatusOK || body != "" {
		t.Errorf("HEAD while running: %d %q, want 200 and no body", code, body)
	}
	if code, _, hdr = probe(t, handler, http.MethodPost); code != http.StatusMethodNotAllowed || hdr.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d, Allow %q; want 405, GET, HEAD", code, hdr.Get("Allow"))
	}

	// The database goes away: not ready, and the report says why.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// Run may already be stopping: a part of it that touches the closed
	// database fails and ends it. The database's check reports why either
	// way.
	h = n.Health(context.Background())
	if h.Status != "not ready" || !strings.Contains(h.Checks["database"], "database is closed") || h.Checks["schema"] != "not checked: the database did not answer" {
		t.Errorf("Health with the database closed: %q %q", h.Status, h.Checks)
	}
	if errors.Is(h.Err, dialects.ErrSchema) || !errors.Is(h.Err, sql.ErrConnDone) && !strings.Contains(h.Err.Error(), "database is closed") {
		t.Errorf("Err with the database closed: %v", h.Err)
	}
	if code, _, _ = probe(t, handler, http.MethodGet); code != http.StatusServiceUnavailable {
		t.Errorf("GET with the database closed: %d, want 503", code)
	}

	// Stopped: not ready again.
	if err := stop(); err != nil {
		t.Logf("Run after the database was closed: %v", err)
	}
	h = n.Health(context.Background())
	if !errors.Is(h.Err, durable.ErrNotRunning) || h.Checks["running"] != "durable: node is not running: Run is stopping or has returned" ||
		h.Checks["listener"] != "the listener is closed" {
		t.Errorf("Health after Run returned: %q (err %v)", h.Checks, h.Err)
	}
}

// TestReadyStopped: after a clean stop the node is not ready, the database
// being fine.
func TestReadyStopped(t *testing.T) {
	_, d := openSQLite(t)
	n, err := durable.NewNode(d, fastConfig(durable.Config[*sql.Tx]{Name: "health", Logger: quiet, Listener: listener(t)}))
	if err != nil {
		t.Fatal(err)
	}
	stop := startNode(n)
	waitFor(t, "the node to be ready", func() (bool, error) { return n.Ready(context.Background()) == nil, nil })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	wantHealth(t, n, map[string]string{
		"running":  "durable: node is not running: Run is stopping or has returned",
		"database": "ok", "schema": "ok",
		"listener": "the listener is closed",
	})
}

// TestReadyUnmigrated: a database without durable's schema is reachable but
// not ready, and Run refuses to start on it.
func TestReadyUnmigrated(t *testing.T) {
	db, err := sql.Open("sqlite", sqlite.DSN(testdb.SQLitePath(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	d, err := sqlite.New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := durable.NewNode(d, fastConfig(durable.Config[*sql.Tx]{Name: "health", Logger: quiet}))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Run(context.Background()); !errors.Is(err, dialects.ErrSchema) {
		t.Fatalf("Run on an unmigrated database = %v, want a schema error", err)
	}
	h := n.Health(context.Background())
	if h.Checks["database"] != "ok" || !strings.HasPrefix(h.Checks["schema"], "durable: sqlite schema is at version 0, need version 4") ||
		h.Checks["running"] != "durable: node is not running: Run is stopping or has returned" || len(h.Checks) != 3 {
		t.Errorf("Health on an unmigrated database: %q", h.Checks)
	}
	if !errors.Is(h.Err, dialects.ErrSchema) || !errors.Is(h.Err, durable.ErrNotRunning) {
		t.Errorf("Err = %v, want both ErrSchema and ErrNotRunning", h.Err)
	}
}

// TestReadyPostgres: a node that does not listen is ready while it runs; a
// node whose database is unreachable is not.
func TestReadyPostgres(t *testing.T) {
	pool, _ := testdb.PostgresPool(t, true)
	n, err := durable.NewNode(openPostgres(t, pool), fastConfig(durable.Config[pgx.Tx]{Name: "health", Logger: quiet}))
	if err != nil {
		t.Fatal(err)
	}
	wantHealth(t, n, map[string]string{"running": "durable: node is not running: Run has not been called", "database": "ok", "schema": "ok"})
	stop := startNode(n)
	waitFor(t, "the node to be ready", func() (bool, error) { return n.Ready(context.Background()) == nil, nil })
	wantHealth(t, n, map[string]string{"running": "ok", "database": "ok", "schema": "ok"})
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// A server where nothing listens (a reserved port: refused, and nobody else's meanwhile).
	down, err := pgxpool.New(context.Background(), "postgres://postgres@"+testport.Reserve(t).Addr()+"/test?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	n, err = durable.NewNode(openPostgres(t, down), fastConfig(durable.Config[pgx.Tx]{Name: "health", Logger: quiet}))
	if err != nil {
		t.Fatal(err)
	}
	h := n.Health(context.Background())
	if !strings.Contains(h.Checks["database"], "connect") || h.Checks["schema"] != "not checked: the database did not answer" || h.Status != "not ready" {
		t.Errorf("Health with the database unreachable: %q %q", h.Status, h.Checks)
	}
	code, body, _ := probe(t, n.ReadyHandler(), http.MethodGet)
	var got durable.Health
	if err := json.Unmarshal([]byte(body), &got); err != nil || code != http.StatusServiceUnavailable || !reflect.DeepEqual(got.Checks, h.Checks) {
		t.Errorf("GET with the database unreachable: %d %q (%v)", code, body, err)
	}
}
