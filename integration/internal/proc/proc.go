//go:build unix

package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Options configure Start. The zero value runs the binary with no
// arguments in the test's environment.
type Options struct {
	// Name prefixes the child's log lines. Default: the binary's file name.
	Name string
	// Args are the command-line arguments.
	Args []string
	// Env is added to the test's environment (later entries win).
	Env []string
	// Dir is the working directory. Default: the test's.
	Dir string
	// OnLine, if set, is called for every line the child writes, with
	// stream "stdout" or "stderr", from the goroutine reading that stream.
	OnLine func(stream, line string)
	// Logf receives the child's output lines. Default: tb.Logf.
	Logf func(format string, args ...any)
}

// Ready is the child's readiness line, parsed.
type Ready struct {
	Line   string            // the whole line, as printed
	Fields map[string]string // its key=value fields
}

// Get returns the value of field key, or "".
func (r Ready) Get(key string) string { return r.Fields[key] }

// Process is a running (or finished) child process.
type Process struct {
	name string
	cmd  *exec.Cmd
	out  *output

	done    chan struct{} // closed after the child exited and its output was drained
	waitErr error         // cmd.Wait's error, set before done closes

	mu     sync.Mutex
	killed bool // we sent SIGKILL
}

// Start starts bin as a child process. It fails the test if the binary
// cannot be started. A child still running when the test ends is killed.
func Start(tb testing.TB, bin string, opts Options) *Process {
	tb.Helper()
	name := opts.Name
	if name == "" {
		name = filepath.Base(bin)
	}
	logf := opts.Logf
	if logf == nil {
		logf = tb.Logf
	}
	p := &Process{name: name, done: make(chan struct{})}
	p.out = &output{logf: logf, name: name, onLine: opts.OnLine, ready: make(chan struct{})}

	cmd := exec.Command(bin, opts.Args...)
	cmd.Dir = opts.Dir
	// The race runtime sleeps a second at exit unless told not to; the
	// test's own GORACE, if any, comes later and wins.
	cmd.Env = append([]string{"GORACE=atexit_sleep_ms=0"}, os.Environ()...)
	cmd.Env = append(cmd.Env, opts.Env...)
	stdout := &streamWriter{out: p.out, stream: "stdout"}
	stderr := &streamWriter{out: p.out, stream: "stderr"}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = sysProcAttr()
	// A grandchild keeping the pipes open must not hang Wait.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		tb.Fatalf("proc: start %s: %v", name, err)
	}
	p.cmd = cmd
	go func() {
		err := cmd.Wait() // returns after both streams are copied
		stdout.flush()
		stderr.flush()
		p.waitErr = err
		close(p.done)
	}()
	tb.Cleanup(func() {
		p.Kill()
		p.out.close()
	})
	return p
}

// Pid is the child's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Name is the child's log name.
func (p *Process) Name() string { return p.name }

// WaitReady waits until the child prints its READY line and returns it. It
// fails when the child exits first or timeout passes; the error ends with
// the child's last lines of output. Once ready, later calls return the same
// line at once.
func (p *Process) WaitReady(timeout time.Duration) (Ready, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.out.ready:
		return p.out.readyLine(), nil
	default:
	}
	select {
	case <-p.out.ready:
		return p.out.readyLine(), nil
	case <-p.done:
		select {
		case <-p.out.ready: // printed READY, then exited
			return p.out.readyLine(), nil
		default:
		}
		return Ready{}, fmt.Errorf("proc: %s exited before it was ready (%v)\n%s", p.name, p.exitDescription(), p.out.tailText())
	case <-t.C:
		return Ready{}, fmt.Errorf("proc: %s not ready after %v\n%s", p.name, timeout, p.out.tailText())
	}
}

// Signal sends sig to the child.
func (p *Process) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return nil
		}
		return fmt.Errorf("proc: signal %s: %w", p.name, err)
	}
	return nil
}

// Kill sends SIGKILL to the child and its process group and waits until
// the child has exited and its output is drained. Killing a child that has
// already exited does nothing. It returns an error only if the signal could
// not be sent.
func (p *Process) Kill() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	p.mu.Lock()
	p.killed = true
	p.mu.Unlock()
	pid := p.cmd.Process.Pid
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("proc: kill %s: %w", p.name, err)
		}
	}
	<-p.done
	return nil
}

// Stop asks the child to exit with SIGTERM and waits up to timeout; a child
// still running then is killed and Stop reports it. Otherwise Stop returns
// the exit error: nil for exit status 0.
func (p *Process) Stop(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.waitErr
	default:
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return p.waitErr
	case <-t.C:
		p.Kill()
		return fmt.Errorf("proc: %s did not exit within %v of SIGTERM; killed\n%s", p.name, timeout, p.out.tailText())
	}
}

// Wait waits for the child to exit and returns cmd.Wait's error: nil for
// exit status 0, an *exec.ExitError otherwise (also after Kill).
func (p *Process) Wait() error {
	<-p.done
	return p.waitErr
}

// Done is closed when the child has exited and its output is drained.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the child has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode is the child's exit status, or -1 while it runs or when a signal
// ended it.
func (p *Process) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Killed reports whether Kill (or Stop's fallback) sent SIGKILL.
func (p *Process) Killed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.killed
}

func (p *Process) exitDescription() string {
	if p.waitErr == nil {
		return "exit status 0"
	}
	return p.waitErr.Error()
}

// FormatReady returns a readiness line (without newline) from key, value
// pairs: FormatReady("addr", a) is "READY addr=127.0.0.1:4000". A value with
// spaces, quotes or nothing in it is quoted.
func FormatReady(kv ...string) string {
	var b strings.Builder
	b.WriteString("READY")
	for i := 0; i+1 < len(kv); i += 2 {
		b.WriteByte(' ')
		b.WriteString(kv[i])
		b.WriteByte('=')
		v := kv[i+1]
		if v == "" || strings.ContainsAny(v, " \t\"\\") || !strconv.CanBackquote(v) {
			v = strconv.Quote(v)
		}
		b.WriteString(v)
	}
	return b.String()
}

// ParseReady parses a readiness line; ok is false if line is not one.
func ParseReady(line string) (r Ready, ok bool) {
	rest, found := strings.CutPrefix(line, "READY")
	if !found || (rest != "" && rest[0] != ' ' && rest[0] != '\t') {
		return Ready{}, false
	}
	r = Ready{Line: line, Fields: make(map[string]string)}
	for {
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" {
			return r, true
		}
		eq := strings.IndexByte(rest, '=')
		sp := strings.IndexAny(rest, " \t")
		if eq < 0 || (sp >= 0 && sp < eq) { // a bare word: a field with no value
			word := rest
			if sp >= 0 {
				word = rest[:sp]
			}
			r.Fields[word] = ""
			rest = rest[len(word):]
			continue
		}
		key := rest[:eq]
		rest = rest[eq+1:]
		if strings.HasPrefix(rest, `"`) {
			if prefix, err := strconv.QuotedPrefix(rest); err == nil {
				v, _ := strconv.Unquote(prefix)
				r.Fields[key] = v
				rest = rest[len(prefix):]
				continue
			}
		}
		end := strings.IndexAny(rest, " \t")
		if end < 0 {
			end = len(rest)
		}
		r.Fields[key] = rest[:end]
		rest = rest[end:]
	}
}

// output splits the child's streams into lines, logs them, finds the READY
// line and keeps the last lines for error messages.
type output struct {
	logf   func(format string, args ...any)
	name   string
	onLine func(stream, line string)
	ready  chan struct{} // closed at the first READY line on stdout

	mu     sync.Mutex
	parsed Ready
	tail   []string
	closed bool // the test is over: log nothing more
}

const tailLines = 20

type streamWriter struct {
	out    *output
	stream string
	buf    []byte
}

// Write is called by one os/exec copying goroutine per stream.
func (w *streamWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.out.line(w.stream, strings.TrimSuffix(string(w.buf[:i]), "\r"))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 { // a very long line: pass it on in pieces
		w.out.line(w.stream, string(w.buf))
		w.buf = w.buf[:0]
	}
	return len(b), nil
}

// flush passes on a last line that had no newline; call it once the stream
// is closed.
func (w *streamWriter) flush() {
	if len(w.buf) > 0 {
		w.out.line(w.stream, string(w.buf))
		w.buf = nil
	}
}

func (o *output) line(stream, line string) {
	o.mu.Lock()
	o.tail = append(o.tail, stream+": "+line)
	if len(o.tail) > tailLines {
		o.tail = o.tail[len(o.tail)-tailLines:]
	}
	if stream == "stdout" {
		select {
		case <-o.ready:
		default:
			if r, ok := ParseReady(line); ok {
				o.parsed = r
				close(o.ready)
			}
		}
	}
	if !o.closed {
		if stream == "stdout" {
			o.logf("%s: %s", o.name, line)
		} else {
			o.logf("%s %s: %s", o.name, stream, line)
		}
	}
	onLine := o.onLine
	o.mu.Unlock()
	if onLine != nil {
		onLine(stream, line)
	}
}

func (o *output) readyLine() Ready {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.parsed
}

func (o *output) tailText() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.tail) == 0 {
		return "(no output)"
	}
	return "last output:\n\t" + strings.Join(o.tail, "\n\t")
}

func (o *output) close() {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
}
