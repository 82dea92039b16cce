//go:build unix

package proc

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"strings"
	"sync"
	"testing"
	"time"
)

// builds holds the binaries of one test binary's run.
var builds struct {
	mu     sync.Mutex
	active bool   // Main is running the tests
	dir    string // created on the first Build
	byKey  map[string]*build
}

type build struct {
	once sync.Once
	path string
	err  error
}

// Main runs the tests (m.Run) and then removes every binary Build made.
// Call it from TestMain of any package that uses Build:
//
//	func TestMain(m *testing.M) { os.Exit(proc.Main(m)) }
//
// m is usually *testing.M; any Run() int will do, so Main composes with
// other wrappers.
func Main(m interface{ Run() int }) int {
	builds.mu.Lock()
	builds.active = true
	builds.mu.Unlock()
	defer func() {
		builds.mu.Lock()
		defer builds.mu.Unlock()
		builds.active = false
		if builds.dir != "" {
			os.RemoveAll(builds.dir)
			builds.dir = ""
		}
		builds.byKey = nil
	}()
	return m.Run()
}

// Build compiles the main package pkg with `go build` and returns the path of
// the executable. pkg is an import path or a directory relative to the test's
// package ("./internal/child"). Each pkg and flags pair is built once per
// test binary; later calls return the same path at once. Under -race the
// helper is built with -race. A failed build fails the test with the
// compiler's output. Build requires TestMain to run the tests through Main.
func Build(tb testing.TB, pkg string, buildFlags ...string) string {
	tb.Helper()
	flags := append([]string(nil), buildFlags...)
	if raceEnabled && !containsFlag(flags, "-race") {
		flags = append(flags, "-race")
	}
	key := pkg + "\x00" + strings.Join(flags, "\x00")

	builds.mu.Lock()
	if !builds.active {
		builds.mu.Unlock()
		tb.Fatalf("proc.Build(%q): run the tests through proc.Main in TestMain, which removes the builds", pkg)
		return ""
	}
	if builds.dir == "" {
		dir, err := os.MkdirTemp("", "durable-proc-")
		if err != nil {
			builds.mu.Unlock()
			tb.Fatalf("proc.Build: %v", err)
			return ""
		}
		builds.dir = dir
		builds.byKey = make(map[string]*build)
	}
	b, ok := builds.byKey[key]
	if !ok {
		b = &build{}
		builds.byKey[key] = b
	}
	out := fmt.Sprintf("%s/%s-%d", builds.dir, binName(pkg), len(builds.byKey))
	builds.mu.Unlock()

	b.once.Do(func() { b.path, b.err = goBuild(pkg, out, flags) })
	if b.err != nil {
		tb.Fatalf("proc.Build: %v", b.err)
		return ""
	}
	return b.path
}

func goBuild(pkg, out string, flags []string) (string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("go command not found: %w", err)
	}
	args := append([]string{"build", "-o", out}, flags...)
	args = append(args, pkg)
	start := time.Now()
	cmd := exec.Command(gobin, args...)
	if output, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, output)
	}
	if d := time.Since(start); d > 20*time.Second {
		fmt.Fprintf(os.Stderr, "proc: building %s took %v\n", pkg, d.Round(time.Second))
	}
	return out, nil
}

func containsFlag(flags []string, f string) bool {
	for _, x := range flags {
		if x == f || strings.HasPrefix(x, f+"=") {
			return true
		}
	}
	return false
}

// binName is a file name for pkg: its last path element.
func binName(pkg string) string {
	name := path.Base(strings.TrimRight(pkg, "/"))
	if name == "." || name == "/" || name == "" {
		return "helper"
	}
	return name
}
