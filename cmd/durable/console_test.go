package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/durable-go/durable/console"
)

func TestConsoleNeedsCredentials(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.db")
	r := durableEnv(t, []string{console.EnvToken + "=", console.EnvReadOnlyToken + "=", console.EnvUsers + "="}, "console", "--dsn", path)
	wantError(t, r, exitUsage, "no credentials: set DURABLE_CONSOLE_TOKEN, DURABLE_CONSOLE_READONLY_TOKEN or DURABLE_CONSOLE_USERS")
	r = durableEnv(t, []string{console.EnvUsers + "=alice:pw:root"}, "console", "--dsn", path)
	wantError(t, r, exitUsage, `DURABLE_CONSOLE_USERS: durable/console: user 1 (alice): role "root" is neither "admin" nor "readonly"`)
}

// TestConsoleServes runs durable console in process on a migrated SQLite
// file and reads a page with the token of the environment.
func TestConsoleServes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.db")
	mustSucceed(t, "migrate", "up", "--dsn", path)
	t.Setenv(console.EnvToken, "s3cret")
	t.Setenv(console.EnvUsers, "")
	t.Setenv(console.EnvReadOnlyToken, "")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		defer pw.Close()
		done <- newApp(strings.NewReader(""), pw, io.Discard).execute(ctx, []string{"console", "--dsn", path, "--listen", "127.0.0.1:0", "--prefix", "/durable"})
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	url, _, ok := strings.Cut(strings.TrimPrefix(line, "durable console on "), " ")
	if !ok || !strings.HasPrefix(url, "http://127.0.0.1:") || !strings.HasSuffix(url, "/durable/") {
		t.Fatalf("first line: %q", line)
	}
	for _, c := range []struct {
		token string
		want  int
	}{{"", http.StatusUnauthorized}, {"s3cret", http.StatusOK}} {
		req, _ := http.NewRequest(http.MethodGet, url+"outbox", nil)
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("token %q: %d, want %d", c.token, resp.StatusCode, c.want)
		}
	}
	http.DefaultClient.CloseIdleConnections()
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Fatalf("exit %d", code)
		}
	case <-time.After(time.Minute):
		t.Fatal("durable console did not stop within a minute of its context's end")
	}
}
