package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// binary is the durable command, built once by TestMain; the tests execute
// it as users do.
var binary string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "durable-cli-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "durable")
	if runtime.GOOS == "windows" {
		binary += ".exe"
	}
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building the durable command: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// result is what one execution of the command produced.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// durable runs the command with args, an empty stdin that is not a
// terminal, and the test's environment without DURABLE_DSN.
func durable(t *testing.T, args ...string) result {
	t.Helper()
	return durableEnv(t, nil, args...)
}

// durableEnv is durable with env (KEY=value) added to the environment.
func durableEnv(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, dsnEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdin = strings.NewReader("")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("durable %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// mustSucceed runs the command and fails the test unless it exits 0 with
// nothing on stderr.
func mustSucceed(t *testing.T, args ...string) result {
	t.Helper()
	r := durable(t, args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("durable %s: want success, got %v", strings.Join(args, " "), r)
	}
	return r
}

// wantError checks that r failed with code and exactly the one line
// "durable: "+line on stderr, and printed nothing on stdout.
func wantError(t *testing.T, r result, code int, line string) {
	t.Helper()
	if r.code != code || r.stderr != "durable: "+line+"\n" || r.stdout != "" {
		t.Errorf("want exit %d and stderr line %q, got %v", code, "durable: "+line, r)
	}
}

// wantErrorPrefix is wantError for messages whose end comes from the
// database driver: one line, starting with "durable: "+prefix.
func wantErrorPrefix(t *testing.T, r result, code int, prefix string) {
	t.Helper()
	if r.code != code || !strings.HasPrefix(r.stderr, "durable: "+prefix) ||
		strings.Count(r.stderr, "\n") != 1 || !strings.HasSuffix(r.stderr, "\n") || r.stdout != "" {
		t.Errorf("want exit %d and one stderr line starting %q, got %v", code, "durable: "+prefix, r)
	}
}
