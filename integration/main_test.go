package integration

import (
	"flag"
	"os"
	"testing"
	"time"

	"github.com/durable-go/durable/integration/internal/proc"
)

var (
	soakFlag = flag.Duration("soak", 0,
		"run each fault test this long, scenario after scenario with random seeds (0: one scenario with the test's fixed seed)")
	seedFlag = flag.Uint64("seed", 0,
		"seed of the fault schedule (0: the test's fixed seed, or random ones under -soak)")
	lengthFlag = flag.Duration("length", 0,
		"length of the fault phase of each scenario (0: the test's default)")
	raceHelpersFlag = flag.Bool("race-helpers", false,
		"build the helper services with -race when the tests run with -race (slow: SQLite under -race crawls)")
)

func TestMain(m *testing.M) { os.Exit(proc.Main(m)) }

// helperBinary builds the node helper once per test binary, with the
// library's crash points (the build tag durable_crashpoints, see
// internal/crashpoint). It is built without the race detector unless
// -race-helpers is given: the services run the library's code under faults at
// a realistic speed, and the library's own tests run under -race.
func helperBinary(t *testing.T) string {
	t.Helper()
	start := time.Now()
	var bin string
	if *raceHelpersFlag {
		bin = proc.Build(t, "./internal/cmd/node", "-tags=durable_crashpoints")
	} else {
		bin = proc.Build(t, "./internal/cmd/node", "-tags=durable_crashpoints", "-race=false")
	}
	if d := time.Since(start); d > time.Second {
		t.Logf("built the node helper in %v", d.Round(100*time.Millisecond))
	}
	return bin
}
