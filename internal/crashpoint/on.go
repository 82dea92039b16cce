//go:build durable_crashpoints

package crashpoint

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// point is the armed crash point: the process dies at the n-th hit of name.
type point struct {
	name string
	n    int64
	hits atomic.Int64
}

// armed is read from the environment once, at start; nil: nothing armed.
var armed = mustParse(os.Getenv(EnvVar))

func mustParse(v string) *point {
	p, err := parse(v)
	if err != nil {
		panic(fmt.Sprintf("crashpoint: %s=%q: %v", EnvVar, v, err))
	}
	return p
}

// parse reads name:N or name (N = 1); "" arms nothing.
func parse(v string) (*point, error) {
	if v == "" {
		return nil, nil
	}
	name, n := v, int64(1)
	if i := strings.LastIndexByte(v, ':'); i >= 0 {
		var err error
		name = v[:i]
		if n, err = strconv.ParseInt(v[i+1:], 10, 64); err != nil || n < 1 {
			return nil, fmt.Errorf("the count after the colon must be a whole number of at least 1")
		}
	}
	if name == "" {
		return nil, fmt.Errorf("no point name")
	}
	return &point{name: name, n: n}, nil
}

// Hit marks the crash point name. If DURABLE_CRASHPOINT armed it, the
// N-th call writes "CRASHPOINT <name>" to standard error and kills the
// process with SIGKILL; Hit then never returns. Every other call does
// nothing.
func Hit(name string) {
	p := armed
	if p == nil || name != p.name || p.hits.Add(1) != p.n {
		return
	}
	_, _ = os.Stderr.Write([]byte("CRASHPOINT " + name + "\n"))
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}
