//go:build durable_crashpoints

package crashpoint

import (
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// killed reports whether err says the process died of SIGKILL.
func killed(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// The child dies of SIGKILL at the armed hit of x, not before, and says so
// on stderr; hits of other names do not count.
func TestHitKills(t *testing.T) {
	for _, tc := range []struct {
		arm      string
		survived int // hits of x the child lives through
	}{
		{"x", 0},
		{"x:1", 0},
		{"x:2", 1},
		{"x:3", 2},
	} {
		stdout, stderr, err := runChild(t, tc.arm)
		if !killed(err) {
			t.Errorf("%s=%s: the child ended with %v, want death by SIGKILL\nstdout:\n%s\nstderr:\n%s", EnvVar, tc.arm, err, stdout, stderr)
			continue
		}
		if got := strings.Count(stdout, "survived hit"); got != tc.survived {
			t.Errorf("%s=%s: the child survived %d hits of x, want %d:\n%s", EnvVar, tc.arm, got, tc.survived, stdout)
		}
		if stderr != "CRASHPOINT x\n" {
			t.Errorf("%s=%s: stderr is %q, want %q", EnvVar, tc.arm, stderr, "CRASHPOINT x\n")
		}
	}
}

// A point never hit (or hit fewer times than armed) lets the process live.
func TestHitNotReached(t *testing.T) {
	for _, arm := range []string{"", "x:4", "y"} {
		stdout, stderr, err := runChild(t, arm)
		if err != nil || !strings.Contains(stdout, "survived hit 3") || strings.Contains(stderr, "CRASHPOINT") {
			t.Errorf("%s=%q: the child ended with %v\nstdout:\n%s\nstderr:\n%s", EnvVar, arm, err, stdout, stderr)
		}
	}
}

// A value that does not parse stops the process at start.
func TestBadValue(t *testing.T) {
	for _, arm := range []string{"x:", "x:0", "x:-1", "x:two", ":2"} {
		stdout, stderr, err := runChild(t, arm)
		if err == nil || killed(err) || !strings.Contains(stderr, "crashpoint: "+EnvVar) || strings.Contains(stdout, "survived") {
			t.Errorf("%s=%q: the child ended with %v, want a panic at start\nstdout:\n%s\nstderr:\n%s", EnvVar, arm, err, stdout, stderr)
		}
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		name string
		n    int64
	}{
		{"relay.after-ack", "relay.after-ack", 1},
		{"relay.after-ack:3", "relay.after-ack", 3},
		{"a:b:2", "a:b", 2},
	} {
		p, err := parse(tc.in)
		if err != nil || p == nil || p.name != tc.name || p.n != tc.n {
			t.Errorf("parse(%q) = %+v, %v; want %s:%d", tc.in, p, err, tc.name, tc.n)
		}
	}
	if p, err := parse(""); p != nil || err != nil {
		t.Errorf("parse(\"\") = %+v, %v; want nothing armed", p, err)
	}
}
