//go:build unix

package pgserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a bound on a hang
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestKillKeepsCommittedRows is the crash the fault suite relies on: rows
// committed before a SIGKILL of every server process are there after the
// restart, rows of a transaction still open are not.
func TestKillKeepsCommittedRows(t *testing.T) {
	ctx := context.Background()
	begin := time.Now()
	srv := Start(t, nil)
	t.Logf("initdb + start: %v (port %d, data %s)", time.Since(begin), srv.Port(), srv.DataDir())
	if !srv.Running() || srv.PID() == 0 {
		t.Fatal("not running after Start")
	}
	if fi, err := os.Stat(srv.DataDir()); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data directory: %v %v", fi, err)
	}

	url, err := srv.CreateDatabase(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	if want := srv.URL("orders"); url != want {
		t.Fatalf("CreateDatabase URL = %s, want %s", url, want)
	}
	conn := connect(t, url)
	if _, err := conn.Exec(ctx, `CREATE TABLE orders (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO orders VALUES (1), (2)`); err != nil {
		t.Fatal(err)
	}
	open := connect(t, url)
	tx, err := open.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO orders VALUES (3)`); err != nil {
		t.Fatal(err)
	}

	oldPID := srv.PID()
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if srv.Running() {
		t.Fatal("running after Kill")
	}
	if err := syscallAlive(oldPID); err == nil {
		t.Fatalf("postmaster %d still alive after Kill", oldPID)
	}
	if err := srv.Kill(); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Kill of a stopped server = %v, want ErrNotRunning", err)
	}
	if _, err := conn.Exec(ctx, `SELECT 1`); err == nil {
		t.Fatal("a connection survived the kill")
	}

	begin = time.Now()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("start after SIGKILL (crash recovery): %v", time.Since(begin))
	if err := srv.Start(); err == nil {
		t.Fatal("a second Start succeeded")
	}
	var ids []int32
	rows, err := connect(t, srv.URL("orders")).Query(ctx, `SELECT id FROM orders ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	if ids, err = pgx.CollectRows(rows, pgx.RowTo[int32]); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 || ids[0] != 1 || ids[1] != 2 {
		t.Fatalf("rows after the crash = %v, want [1 2]", ids)
	}
}

// TestRestartWhileConnected: a client connected across a restart gets an
// error, a new connection works, and the port stays the same.
func TestRestartWhileConnected(t *testing.T) {
	ctx := context.Background()
	var (
		mu     sync.Mutex
		logged []string
	)
	srv := Start(t, &Options{
		Name:   "billing",
		Params: map[string]string{"max_connections": "20"},
		Logf: func(format string, args ...any) {
			line := fmt.Sprintf(format, args...)
			mu.Lock()
			logged = append(logged, line)
			mu.Unlock()
			t.Log(line)
		},
	})
	// The server's output reaches Logf through a pipe, copied by a
	// goroutine that may lag behind Start on a loaded machine: wait for the
	// first line.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := len(logged)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no line of the server's log within a minute")
		}
	}
	mu.Lock()
	if want := fmt.Sprintf("pg-billing:%d: ", srv.Port()); !strings.HasPrefix(logged[0], want) {
		t.Fatalf("log lines %q, want the prefix %q", logged, want)
	}
	mu.Unlock()
	port := srv.Port()
	conn := connect(t, srv.URL("postgres"))
	var maxConns string
	if err := conn.QueryRow(ctx, `SHOW max_connections`).Scan(&maxConns); err != nil || maxConns != "20" {
		t.Fatalf("max_connections = %q, %v; Options.Params not applied", maxConns, err)
	}
	var fsync string
	if err := conn.QueryRow(ctx, `SHOW fsync`).Scan(&fsync); err != nil || fsync != "on" {
		t.Fatalf("fsync = %q, %v", fsync, err)
	}

	for _, mode := range []StopMode{Fast, Immediate} {
		begin := time.Now()
		if err := srv.Restart(mode); err != nil {
			t.Fatalf("Restart(%s): %v", mode, err)
		}
		t.Logf("restart %s: %v", mode, time.Since(begin))
		if srv.Port() != port {
			t.Fatalf("port changed from %d to %d", port, srv.Port())
		}
		if _, err := conn.Exec(ctx, `SELECT 1`); err == nil {
			t.Fatalf("a client connected across Restart(%s) saw no error", mode)
		}
		conn = connect(t, srv.URL("postgres"))
		if _, err := conn.Exec(ctx, `SELECT 1`); err != nil {
			t.Fatalf("new connection after Restart(%s): %v", mode, err)
		}
	}

	// Stop and start by hand; Stop of a stopped server says so.
	conn.Close(ctx)
	if err := srv.Stop(Smart); err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(Fast); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Stop of a stopped server = %v, want ErrNotRunning", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill at the end: the cleanup must still leave nothing behind.
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
}

func TestCreateDatabaseErrors(t *testing.T) {
	srv := Start(t, nil)
	ctx := context.Background()
	if _, err := srv.CreateDatabase(ctx, `odd "name"`); err != nil {
		t.Fatalf("a name needing quotes: %v", err)
	}
	if _, err := srv.CreateDatabase(ctx, `odd "name"`); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("duplicate database: %v", err)
	}
	if err := srv.Stop(Fast); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := srv.CreateDatabase(cctx, "down"); err == nil {
		t.Fatal("CreateDatabase on a stopped server succeeded")
	}
}

func TestFindBinDir(t *testing.T) {
	if _, err := findBinDir(t.TempDir()); err == nil {
		t.Fatal("an empty directory passed as BinDir")
	}
	dir := t.TempDir()
	for _, name := range []string{"initdb", "postgres"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := findBinDir(dir); err != nil || got != dir {
		t.Fatalf("findBinDir(%s) = %s, %v", dir, got, err)
	}
	if v := versionOf("/usr/lib/postgresql/16/bin"); v != 16 {
		t.Fatalf("versionOf = %d", v)
	}
	if v := versionOf("/usr/pgsql-13/bin"); v != 13 {
		t.Fatalf("versionOf = %d", v)
	}
}

func TestReachable(t *testing.T) {
	if !reachable("/", 12345, 12345) {
		t.Fatal("/ unreachable")
	}
	dir := t.TempDir()
	private := filepath.Join(dir, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	inner := filepath.Join(private, "inner")
	if err := os.Mkdir(inner, 0o777); err != nil {
		t.Fatal(err)
	}
	uid, gid := os.Getuid(), os.Getgid()
	if !reachable(inner, uid, gid) {
		t.Fatal("own directory unreachable")
	}
	if reachable(inner, uid+1000, gid+1000) {
		t.Fatal("a 0700 parent owned by someone else counted as reachable")
	}
}

func TestChildEnvDropsPGVariables(t *testing.T) {
	t.Setenv("PGDATA", "/elsewhere")
	t.Setenv("PGPORT", "1")
	for _, kv := range childEnv() {
		if strings.HasPrefix(kv, "PG") {
			t.Fatalf("child environment keeps %s", kv)
		}
	}
}

func TestUnavailableSkipsOrFailsUnderCI(t *testing.T) {
	t.Setenv("CI", "")
	ft := &fakeTB{TB: t}
	ft.run(func() { unavailable(ft, "no binaries") })
	if !ft.skipped || ft.failed || !strings.Contains(ft.msg, "no binaries") {
		t.Fatalf("without CI: skipped=%v failed=%v msg=%q", ft.skipped, ft.failed, ft.msg)
	}
	t.Setenv("CI", "true")
	ft = &fakeTB{TB: t}
	ft.run(func() { unavailable(ft, "no binaries") })
	if ft.skipped || !ft.failed || !strings.Contains(ft.msg, "CI is set") {
		t.Fatalf("with CI: skipped=%v failed=%v msg=%q", ft.skipped, ft.failed, ft.msg)
	}
}

// fakeTB records Skipf and Fatalf instead of acting on them.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

type stopNow struct{}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, sprintf(format, args...)
	panic(stopNow{})
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, sprintf(format, args...)
	panic(stopNow{})
}

func (f *fakeTB) run(fn func()) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(stopNow); !ok {
				panic(r)
			}
		}
	}()
	fn()
}

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

// syscallAlive reports (nil) whether pid exists and is not a zombie.
func syscallAlive(pid int) error {
	if err := syscall.Kill(pid, 0); err != nil {
		return err
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil // not Linux: kill(2) said it exists
	}
	if i := strings.LastIndexByte(string(b), ')'); i > 0 && strings.HasPrefix(strings.TrimSpace(string(b[i+1:])), "Z") {
		return errors.New("zombie")
	}
	return nil
}
