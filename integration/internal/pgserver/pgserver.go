//go:build unix

package pgserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options configure Start; the zero value (or nil) is ready to use.
type Options struct {
	// Name tells servers apart in the log: lines are prefixed
	// "pg-<name>:<port>: ". Default: "pg:<port>: ".
	Name string
	// BinDir holds initdb and postgres. Default: found as the package doc
	// says.
	BinDir string
	// Params are server settings passed as -c name=value on every start,
	// over the defaults (see DefaultParams).
	Params map[string]string
	// Logf receives the server's log, line by line. Default: tb.Logf.
	Logf func(format string, args ...any)
	// StartTimeout bounds each start, crash recovery included. Default 60s.
	StartTimeout time.Duration
}

// DefaultParams are the settings every server starts with, before
// Options.Params.
var DefaultParams = map[string]string{
	"listen_addresses":        "127.0.0.1",
	"unix_socket_directories": "",
	"fsync":                   "on",
	"synchronous_commit":      "on",
	"full_page_writes":        "on",
	"shared_buffers":          "32MB",
	"max_connections":         "100",
	"log_line_prefix":         "%m [%p] ",
	"log_checkpoints":         "off",
}

// StopMode is how Stop shuts the server down.
type StopMode int

const (
	// Fast (SIGINT) rolls back open transactions, disconnects clients,
	// checkpoints and exits: `pg_ctl stop -m fast`.
	Fast StopMode = iota
	// Immediate (SIGQUIT) exits at once without a checkpoint, so the next
	// start runs crash recovery: `pg_ctl stop -m immediate`.
	Immediate
	// Smart (SIGTERM) waits for clients to disconnect: `pg_ctl stop -m smart`.
	Smart
)

func (m StopMode) String() string {
	switch m {
	case Fast:
		return "fast"
	case Immediate:
		return "immediate"
	case Smart:
		return "smart"
	}
	return fmt.Sprintf("StopMode(%d)", int(m))
}

func (m StopMode) signal() syscall.Signal {
	switch m {
	case Immediate:
		return syscall.SIGQUIT
	case Smart:
		return syscall.SIGTERM
	}
	return syscall.SIGINT
}

// ErrNotRunning is returned by Stop and Kill when the server is down.
var ErrNotRunning = errors.New("pgserver: server is not running")

// stopTimeout bounds a Stop before it falls back to SIGKILL.
const stopTimeout = 30 * time.Second

// Server is one private PostgreSQL server. Its methods may be called from
// any goroutine; lifecycle calls (Start, Stop, Restart, Kill) are serialized.
type Server struct {
	bin     string
	base    string // temporary directory holding data/
	dataDir string
	port    int
	cred    *syscall.Credential // nil: run as ourselves
	params  map[string]string
	timeout time.Duration
	log     *lineLog

	life    sync.Mutex // serializes Start/Stop/Kill
	mu      sync.Mutex
	running *postmaster // nil while down
	crashed bool        // killed since the last clean start
}

type postmaster struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the postmaster has exited
	err  error         // its Wait error, set before done closes
}

// Start creates a data directory with initdb and starts a server on a free
// port of 127.0.0.1, ready for connections. The server is stopped and its
// directory removed when the test ends. It skips the test (fails it under
// CI) when PostgreSQL is not installed.
func Start(tb testing.TB, opts *Options) *Server {
	tb.Helper()
	if opts == nil {
		opts = &Options{}
	}
	bin, err := findBinDir(opts.BinDir)
	if err != nil {
		unavailable(tb, err.Error())
	}
	cred, uid, gid, err := runAs()
	if err != nil {
		unavailable(tb, err.Error())
	}
	base, err := makeBase(uid, gid)
	if err != nil {
		tb.Fatalf("pgserver: %v", err)
	}
	logf := opts.Logf
	if logf == nil {
		logf = tb.Logf
	}
	s := &Server{
		bin:     bin,
		base:    base,
		dataDir: filepath.Join(base, "data"),
		cred:    cred,
		params:  make(map[string]string),
		timeout: opts.StartTimeout,
		log:     &lineLog{logf: logf},
	}
	if s.timeout <= 0 {
		s.timeout = 60 * time.Second
	}
	for k, v := range DefaultParams {
		s.params[k] = v
	}
	for k, v := range opts.Params {
		s.params[k] = v
	}
	tb.Cleanup(s.cleanup)

	if err := s.initdb(); err != nil {
		tb.Fatalf("pgserver: %v", err)
	}
	// A free port can be taken between our probe and the server's bind;
	// try a few.
	for attempt := 1; ; attempt++ {
		if s.port, err = freePort(); err != nil {
			tb.Fatalf("pgserver: %v", err)
		}
		if opts.Name != "" {
			s.log.setPrefix(fmt.Sprintf("pg-%s:%d: ", opts.Name, s.port))
		} else {
			s.log.setPrefix(fmt.Sprintf("pg:%d: ", s.port))
		}
		err = s.Start()
		if err == nil {
			return s
		}
		if attempt == 3 || !strings.Contains(err.Error(), "could not bind") {
			tb.Fatalf("pgserver: %v", err)
		}
	}
}

// unavailable skips the test, or fails it when CI is set.
func unavailable(tb testing.TB, why string) {
	tb.Helper()
	if os.Getenv("CI") != "" {
		tb.Fatalf("CI is set, the PostgreSQL server tests must run: %s", why)
	}
	tb.Skipf("skipping: cannot run a private PostgreSQL server: %s", why)
}

// Port is the server's TCP port on 127.0.0.1; it stays the same across
// restarts.
func (s *Server) Port() int { return s.port }

// Addr is 127.0.0.1:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// DataDir is the server's data directory.
func (s *Server) DataDir() string { return s.dataDir }

// URL is a connection URL for database db as superuser postgres. The
// database "postgres" always exists.
func (s *Server) URL(db string) string {
	u := fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", s.Addr(), db)
	return u
}

// CreateDatabase creates database name and returns its URL.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return "", fmt.Errorf("pgserver: create database %s: %w", name, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgserver: create database %s: %w", name, err)
	}
	return s.URL(name), nil
}

// Running reports whether the postmaster is up (started and not exited).
func (s *Server) Running() bool {
	s.mu.Lock()
	pm := s.running
	s.mu.Unlock()
	if pm == nil {
		return false
	}
	select {
	case <-pm.done:
		return false
	default:
		return true
	}
}

// PID is the postmaster's process id, or 0 while the server is down.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running == nil {
		return 0
	}
	return s.running.cmd.Process.Pid
}

// Start starts the server (again) on its port and waits until it accepts
// connections; after a crash this includes WAL recovery. It fails if the
// server is already running.
func (s *Server) Start() error {
	s.life.Lock()
	defer s.life.Unlock()
	return s.start()
}

func (s *Server) start() error {
	s.mu.Lock()
	if pm := s.running; pm != nil {
		select {
		case <-pm.done:
		default:
			s.mu.Unlock()
			return errors.New("pgserver: already running")
		}
	}
	s.mu.Unlock()

	args := []string{"-D", s.dataDir, "-p", strconv.Itoa(s.port)}
	keys := make([]string, 0, len(s.params))
	for k := range s.params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+s.params[k])
	}
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), args...)
	cmd.Dir = s.base
	cmd.Env = childEnv()
	cmd.Stdout = s.log
	cmd.Stderr = s.log
	cmd.SysProcAttr = sysProcAttr(s.cred)
	cmd.WaitDelay = 5 * time.Second // a stray grandchild must not hang Wait on the log pipe
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgserver: start postgres: %w", err)
	}
	pm := &postmaster{cmd: cmd, done: make(chan struct{})}
	go func() {
		pm.err = cmd.Wait()
		s.log.flush()
		close(pm.done)
	}()
	s.mu.Lock()
	s.running = pm
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if err := s.waitReady(ctx, pm); err != nil {
		s.killGroup(pm)
		return fmt.Errorf("pgserver: start: %w\n%s", err, s.log.tailText())
	}
	s.mu.Lock()
	s.crashed = false
	s.mu.Unlock()
	return nil
}

// waitReady waits until the postmaster reports "ready" in postmaster.pid
// (PostgreSQL 10 and later) or, for older servers, until a connection
// succeeds; then it checks with one query. It fails when the postmaster
// exits or ctx ends. Reading the pid file first keeps the server log free of
// "the database system is starting up" from our own probes.
func (s *Server) waitReady(ctx context.Context, pm *postmaster) error {
	pidFile := filepath.Join(s.dataDir, "postmaster.pid")
	pid := strconv.Itoa(pm.cmd.Process.Pid)
	var last error
	for {
		status := readyStatus(pidFile, pid)
		if status == "ready" || status == "" {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			conn, err := pgx.Connect(cctx, s.URL("postgres"))
			if err == nil {
				err = conn.Ping(cctx)
				conn.Close(context.Background())
			}
			cancel()
			if err == nil {
				return nil
			}
			last = err
		} else {
			last = fmt.Errorf("postmaster status %q", status)
		}
		select {
		case <-pm.done:
			return fmt.Errorf("postgres exited during startup (%v)", pm.err)
		case <-ctx.Done():
			return fmt.Errorf("not ready after %v: %v", s.timeout, last)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// readyStatus reads the status line of postmaster.pid if the file belongs to
// postmaster pid: "ready", "starting", "stopping"..., "starting" while the
// file is missing or stale, or "" when it has no status line yet.
func readyStatus(pidFile, pid string) string {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return "starting"
	}
	lines := strings.Split(string(b), "\n")
	if strings.TrimSpace(lines[0]) != pid {
		return "starting" // left by a killed server
	}
	if len(lines) < 8 {
		return "" // no status line (before PostgreSQL 10), or being written
	}
	return strings.TrimSpace(lines[7])
}

// Stop shuts the server down in the given mode and waits for every server
// process to exit. If it takes longer than 30 seconds the server is killed.
func (s *Server) Stop(mode StopMode) error {
	s.life.Lock()
	defer s.life.Unlock()
	return s.stop(mode)
}

func (s *Server) stop(mode StopMode) error {
	pm := s.current()
	if pm == nil {
		return ErrNotRunning
	}
	if err := pm.cmd.Process.Signal(mode.signal()); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("pgserver: stop %s: %w", mode, err)
	}
	select {
	case <-pm.done:
	case <-time.After(stopTimeout):
		s.killGroup(pm)
		return fmt.Errorf("pgserver: stop %s: still running after %v, killed", mode, stopTimeout)
	}
	waitGroupGone(pm.cmd.Process.Pid, 10*time.Second)
	return nil
}

// Restart stops the server in the given mode and starts it again on the
// same port. Clients connected across a restart get an error; new
// connections work once Restart returns.
func (s *Server) Restart(mode StopMode) error {
	s.life.Lock()
	defer s.life.Unlock()
	if err := s.stop(mode); err != nil && !errors.Is(err, ErrNotRunning) {
		return err
	}
	return s.start()
}

// Kill sends SIGKILL to the postmaster and all its backends at once and
// waits until they are gone. Committed transactions survive (the WAL is
// fsynced at commit); the next Start runs crash recovery.
func (s *Server) Kill() error {
	s.life.Lock()
	defer s.life.Unlock()
	pm := s.current()
	if pm == nil {
		return ErrNotRunning
	}
	s.killGroup(pm)
	s.mu.Lock()
	s.crashed = true
	s.mu.Unlock()
	return nil
}

// current returns the running postmaster, or nil.
func (s *Server) current() *postmaster {
	s.mu.Lock()
	pm := s.running
	s.mu.Unlock()
	if pm == nil {
		return nil
	}
	select {
	case <-pm.done:
		return nil
	default:
		return pm
	}
}

// killGroup SIGKILLs the postmaster's process group and waits for it.
func (s *Server) killGroup(pm *postmaster) {
	pid := pm.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-pm.done
	waitGroupGone(pid, 10*time.Second)
}

// cleanup stops the server and removes its directory. A server left killed
// is started and stopped once more, so that PostgreSQL itself releases the
// shared memory the killed one left behind.
func (s *Server) cleanup() {
	s.life.Lock()
	defer s.life.Unlock()
	if s.current() == nil && s.crashedSinceStart() && s.port != 0 {
		if err := s.start(); err != nil {
			s.log.printf("pgserver: cleanup start: %v", err)
		}
	}
	if pm := s.current(); pm != nil {
		if err := s.stop(Immediate); err != nil {
			s.log.printf("pgserver: cleanup: %v", err)
		}
	}
	s.log.close()
	if err := os.RemoveAll(s.base); err != nil {
		fmt.Fprintf(os.Stderr, "pgserver: remove %s: %v\n", s.base, err)
	}
}

func (s *Server) crashedSinceStart() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.crashed
}

func (s *Server) initdb() error {
	cmd := exec.Command(filepath.Join(s.bin, "initdb"),
		"-D", s.dataDir,
		"--auth=trust", "--username=postgres",
		"--encoding=UTF8", "--locale=C",
		// initdb's own final sync only guards against an OS crash, which
		// the suite does not simulate; the server itself runs with fsync on.
		"--no-sync",
	)
	cmd.Dir = s.base
	cmd.Env = childEnv()
	cmd.SysProcAttr = sysProcAttr(s.cred)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	return nil
}

// childEnv is our environment without PG* variables, which would steer
// initdb and postgres.
func childEnv() []string {
	env := make([]string, 0, len(os.Environ())+1)
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

// runAs returns the credential to run the server with: nil when we are not
// root, the postgres user's when we are.
func runAs() (cred *syscall.Credential, uid, gid int, err error) {
	if os.Geteuid() != 0 {
		return nil, os.Geteuid(), os.Getegid(), nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, 0, 0, fmt.Errorf("running as root, PostgreSQL refuses root and there is no postgres OS user to run it as (%v)", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil, 0, 0, fmt.Errorf("postgres user has non-numeric ids %q/%q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid, gid, nil
}

// makeBase creates a private temporary directory owned by uid/gid under the
// first temporary root that user can reach.
func makeBase(uid, gid int) (string, error) {
	var tried []string
	for _, root := range []string{os.TempDir(), "/tmp", "/var/tmp"} {
		if slices.Contains(tried, root) {
			continue
		}
		tried = append(tried, root)
		if !reachable(root, uid, gid) {
			continue
		}
		dir, err := os.MkdirTemp(root, "durable-pgserver-")
		if err != nil {
			continue
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("chown %s: %w", dir, err)
		}
		return dir, nil
	}
	return "", fmt.Errorf("no temporary directory reachable by uid %d among %v", uid, tried)
}

// reachable reports whether uid/gid can search every directory from / to
// dir (root can always).
func reachable(dir string, uid, gid int) bool {
	if uid == 0 {
		return true
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || !fi.IsDir() {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return true // cannot tell; let initdb say
		}
		perm := fi.Mode().Perm()
		var ok2 bool
		switch {
		case int(st.Uid) == uid:
			ok2 = perm&0o100 != 0
		case int(st.Gid) == gid:
			ok2 = perm&0o010 != 0
		default:
			ok2 = perm&0o001 != 0
		}
		if !ok2 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// findBinDir locates the directory holding initdb and postgres.
func findBinDir(explicit string) (string, error) {
	var candidates []string
	if explicit != "" {
		candidates = append(candidates, explicit)
	} else {
		if d := os.Getenv("DURABLE_PG_BINDIR"); d != "" {
			candidates = append(candidates, d)
		}
		if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
			candidates = append(candidates, strings.TrimSpace(string(out)))
		}
		for _, pattern := range []string{"/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql*/bin"} {
			matches, _ := filepath.Glob(pattern)
			slices.SortFunc(matches, func(a, b string) int { return versionOf(b) - versionOf(a) })
			candidates = append(candidates, matches...)
		}
		if p, err := exec.LookPath("initdb"); err == nil {
			if r, err := filepath.EvalSymlinks(p); err == nil {
				p = r
			}
			candidates = append(candidates, filepath.Dir(p))
		}
	}
	for _, d := range candidates {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	if explicit != "" {
		return "", fmt.Errorf("no initdb and postgres in %s", explicit)
	}
	return "", errors.New("PostgreSQL server binaries (initdb, postgres) not found: install PostgreSQL or set DURABLE_PG_BINDIR")
}

// versionOf extracts the major version from a path like
// /usr/lib/postgresql/15/bin, or 0.
func versionOf(path string) int {
	for _, part := range strings.FieldsFunc(path, func(r rune) bool { return r < '0' || r > '9' }) {
		if v, err := strconv.Atoi(part); err == nil {
			return v
		}
	}
	return 0
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// lineLog passes the server's output to a log function line by line and
// keeps the last lines for error messages. After close it drops output, so
// nothing is logged after the test has ended.
type lineLog struct {
	logf func(format string, args ...any)

	mu     sync.Mutex
	prefix string
	buf    []byte
	tail   []string
	closed bool
}

const tailLines = 30

var _ io.Writer = (*lineLog)(nil)

func (w *lineLog) setPrefix(p string) {
	w.mu.Lock()
	w.prefix = p
	w.mu.Unlock()
}

func (w *lineLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.emit(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

func (w *lineLog) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.emit(string(w.buf))
		w.buf = nil
	}
}

// emit logs one line; w.mu is held.
func (w *lineLog) emit(line string) {
	w.tail = append(w.tail, line)
	if len(w.tail) > tailLines {
		w.tail = w.tail[len(w.tail)-tailLines:]
	}
	if !w.closed {
		w.logf("%s%s", w.prefix, line)
	}
}

// printf logs a line of our own.
func (w *lineLog) printf(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.logf(format, args...)
	}
}

func (w *lineLog) tailText() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.tail) == 0 {
		return "(no server output)"
	}
	return "server log (last lines):\n\t" + strings.Join(w.tail, "\n\t")
}

func (w *lineLog) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}
