//go:build unix

package proc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	code := Main(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// long bounds what must happen (a start, an echo, an exit): a bound on a
// hang, not on speed.
const long = time.Minute

func child(t *testing.T) string {
	t.Helper()
	return Build(t, "./internal/child")
}

// lines collects OnLine calls.
type lines struct {
	mu  sync.Mutex
	all []string
}

func (l *lines) add(stream, line string) {
	l.mu.Lock()
	l.all = append(l.all, stream+":"+line)
	l.mu.Unlock()
}

func (l *lines) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, x := range l.all {
		if x == s {
			return true
		}
	}
	return false
}

func TestReadyEchoAndStop(t *testing.T) {
	var seen lines
	p := Start(t, child(t), Options{
		Name:   "echo",
		Env:    []string{"CHILD_VALUE=two words"},
		Args:   []string{"-stderr", "hello from stderr"},
		OnLine: seen.add,
	})
	ready, err := p.WaitReady(long)
	if err != nil {
		t.Fatal(err)
	}
	if ready.Get("pid") != strconv.Itoa(p.Pid()) || ready.Get("value") != "two words" || !strings.HasPrefix(ready.Line, "READY ") {
		t.Fatalf("ready = %+v (pid %d)", ready, p.Pid())
	}
	again, err := p.WaitReady(0)
	if err != nil || again.Line != ready.Line {
		t.Fatalf("second WaitReady = %+v, %v", again, err)
	}

	c, err := net.DialTimeout("tcp", ready.Get("addr"), long)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("ping"))
	got := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(long))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	c.Close()

	if err := p.Stop(long); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if !p.Exited() || p.ExitCode() != 0 || p.Killed() {
		t.Fatalf("after Stop: exited=%v code=%d killed=%v", p.Exited(), p.ExitCode(), p.Killed())
	}
	if !seen.has("stdout:STOPPING") || !seen.has("stderr:hello from stderr") || !seen.has("stdout:starting") {
		t.Fatalf("OnLine saw %v", seen.all)
	}
	if err := p.Stop(time.Second); err != nil {
		t.Fatalf("Stop of an exited child = %v, want its exit error (nil)", err)
	}
}

func TestKill(t *testing.T) {
	p := Start(t, child(t), Options{})
	if _, err := p.WaitReady(long); err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	var ee *exec.ExitError
	err := p.Wait()
	if !errors.As(err, &ee) {
		t.Fatalf("Wait after Kill = %v, want an ExitError", err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("Wait after Kill = %v, want killed by SIGKILL", err)
	}
	if !p.Killed() || p.ExitCode() != -1 {
		t.Fatalf("killed=%v code=%d", p.Killed(), p.ExitCode())
	}
	if err := p.Kill(); err != nil {
		t.Fatalf("second Kill: %v", err)
	}
	if err := syscall.Kill(p.Pid(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("child %d still exists after Kill: %v", p.Pid(), err)
	}
}

func TestStopFallsBackToKill(t *testing.T) {
	var seen lines
	p := Start(t, child(t), Options{Args: []string{"-ignore-term"}, OnLine: seen.add})
	if _, err := p.WaitReady(long); err != nil {
		t.Fatal(err)
	}
	// First make sure the child got a SIGTERM and ignored it, however long
	// that takes: Stop's error must then show that in the child's output.
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(long); !seen.has("stdout:ignoring SIGTERM"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			seen.mu.Lock()
			defer seen.mu.Unlock()
			t.Fatalf("the child did not say it ignored SIGTERM within %v: %v", long, seen.all)
		}
	}
	start := time.Now()
	err := p.Stop(200 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not exit") || !strings.Contains(err.Error(), "ignoring SIGTERM") {
		t.Fatalf("Stop of a child ignoring SIGTERM = %v", err)
	}
	// At least the timeout; at most a bound on a hang of the kill.
	if el := time.Since(start); el < 200*time.Millisecond || el > long {
		t.Fatalf("Stop took %v", el)
	}
	if !p.Exited() || !p.Killed() {
		t.Fatal("child not killed after the Stop timeout")
	}
}

func TestExitBeforeReady(t *testing.T) {
	p := Start(t, child(t), Options{Args: []string{"-exit", "3", "-stderr", "cannot open database"}})
	_, err := p.WaitReady(long)
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") ||
		!strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "stderr: cannot open database") {
		t.Fatalf("WaitReady = %v", err)
	}
	if p.ExitCode() != 3 || p.Killed() {
		t.Fatalf("code=%d killed=%v", p.ExitCode(), p.Killed())
	}
	var ee *exec.ExitError
	if err := p.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("Wait = %v", err)
	}
}

func TestReadyTimeout(t *testing.T) {
	p := Start(t, child(t), Options{Args: []string{"-no-ready"}})
	_, err := p.WaitReady(150 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "not ready after 150ms") {
		t.Fatalf("WaitReady = %v", err)
	}
	if p.Exited() {
		t.Fatal("child exited")
	}
	// Left running on purpose: the test's cleanup must kill it.
}

func TestPartialLastLine(t *testing.T) {
	var seen lines
	p := Start(t, child(t), Options{Args: []string{"-partial", "no newline"}, OnLine: seen.add})
	if err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	if !seen.has("stdout:no newline") {
		t.Fatalf("OnLine saw %v", seen.all)
	}
}

func TestBuildIsCached(t *testing.T) {
	a := child(t)
	// Without a go command on PATH, a second build would fail the test:
	// the cached one does not run it, however slow the machine.
	t.Setenv("PATH", t.TempDir())
	b := child(t)
	if a != b {
		t.Fatalf("two builds: %s, %s", a, b)
	}
	if fi, err := os.Stat(a); err != nil || fi.Mode().Perm()&0o100 == 0 {
		t.Fatalf("binary %s: %v %v", a, fi, err)
	}
}

func TestBuildFailureFailsTheTest(t *testing.T) {
	ft := &fakeTB{TB: t}
	ft.run(func() { Build(ft, "./internal/does-not-exist") })
	if !ft.failed || !strings.Contains(ft.msg, "does-not-exist") {
		t.Fatalf("failed=%v msg=%q", ft.failed, ft.msg)
	}
	// The failure is cached too: a second call fails at once.
	ft = &fakeTB{TB: t}
	ft.run(func() { Build(ft, "./internal/does-not-exist") })
	if !ft.failed {
		t.Fatal("second Build of a broken package passed")
	}
}

func TestFormatAndParseReady(t *testing.T) {
	line := FormatReady("addr", "127.0.0.1:4000", "name", "two words", "empty", "", "q", `say "hi"`, "eq", "a=b")
	want := `READY addr=127.0.0.1:4000 name="two words" empty="" q="say \"hi\"" eq=a=b`
	if line != want {
		t.Fatalf("FormatReady = %s\nwant          %s", line, want)
	}
	r, ok := ParseReady(line)
	if !ok {
		t.Fatal("not parsed")
	}
	for k, v := range map[string]string{"addr": "127.0.0.1:4000", "name": "two words", "empty": "", "q": `say "hi"`, "eq": "a=b"} {
		if got, present := r.Fields[k]; !present || got != v {
			t.Errorf("field %s = %q (present %v), want %q", k, got, present, v)
		}
	}
	if r, ok := ParseReady("READY"); !ok || len(r.Fields) != 0 {
		t.Fatalf("bare READY = %+v, %v", r, ok)
	}
	if r, ok := ParseReady("READY  flag x=1"); !ok || r.Fields["x"] != "1" {
		t.Fatalf("READY with a bare word = %+v, %v", r, ok)
	} else if _, present := r.Fields["flag"]; !present {
		t.Fatalf("bare word lost: %+v", r)
	}
	for _, not := range []string{"READYish", "NOT READY", "", "ready x=1"} {
		if _, ok := ParseReady(not); ok {
			t.Errorf("ParseReady(%q) accepted", not)
		}
	}
}

// fakeTB records Fatalf instead of ending the test.
type fakeTB struct {
	testing.TB
	failed bool
	msg    string
}

type stopNow struct{}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
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

func TestBuildNeedsMain(t *testing.T) {
	builds.mu.Lock()
	builds.active = false
	builds.mu.Unlock()
	defer func() {
		builds.mu.Lock()
		builds.active = true
		builds.mu.Unlock()
	}()
	ft := &fakeTB{TB: t}
	ft.run(func() { Build(ft, "./internal/child") })
	if !ft.failed || !strings.Contains(ft.msg, "proc.Main") {
		t.Fatalf("failed=%v msg=%q", ft.failed, ft.msg)
	}
}
